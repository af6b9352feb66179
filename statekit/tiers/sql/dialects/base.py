"""What every SQL dialect answers: the one place where the db tier's code asks "which database is this?".

A `Dialect` is chosen once from the database URL (or an archive's `dialect` field) and the rest of the db tier
asks it: how to quote a name, whether tables live in named schemas, how to begin a read snapshot, what it
knows beyond SQLAlchemy's Inspector, which SQLAlchemy type stores a portable type exactly, how the generic
load begins, orders its DDL and commits. Reflection (the portable part) is shared here; each dialect adds its
extras.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from statekit.errors import CorruptArchive
from statekit.textfmt import printable
from statekit.tiers.sql.schema import (
    SCHEMA_MEMBER,
    ColumnDesc,
    TableDesc,
    base_kind,
    fk_order,
    matches,
    member_prefix,
    portable_type,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

Extras = tuple[list[dict[str, Any]], list[dict[str, Any]]]
Reflected = tuple[list[TableDesc], list[dict[str, Any]], list[dict[str, Any]], str | None]
DropAt = Literal["first", "before_commit", "after_commit"]

MAX_TYPE_TEXT = 200


def shown(text: str, limit: int = 60) -> str:
    """An archive-supplied name made safe to print: what a terminal would act on escaped (textfmt.printable),
    long names cut."""
    return printable(text) if len(text) <= limit else printable(text[:limit]) + "…"


def refuse_type(what: str, text: str) -> CorruptArchive:
    """The error for an archived type name that is not a plain name (an untrusted archive's DDL)."""
    return CorruptArchive(
        f"archive member {SCHEMA_MEMBER}: {what} '{shown(text)}' is not a plain type name; an archive that is "
        "not signed by a trusted key only creates tables from plain type names"
    )


class Dialect:
    """One SQL engine as the db tier sees it. Subclasses set the class attributes and override the hooks."""

    name: ClassVar[str]
    driver: ClassVar[str]  # the SQLAlchemy driver statekit installs for it
    named_schemas: ClassVar[bool] = False  # tables live in named schemas the archive keeps (PostgreSQL)
    native_copy: ClassVar[bool] = False  # COPY text in the archive, COPY both ways, parallel jobs
    extended_types: ClassVar[bool] = False  # enums, domains and arrays of its own (PostgreSQL)
    dynamic_typing: ClassVar[bool] = False  # any value fits any column (SQLite)
    transactional_ddl: ClassVar[bool] = True  # CREATE/DROP/RENAME share the load's transaction
    stages_new_tables: ClassVar[bool] = False  # new tables load under a staging name, renamed at the end
    native_ddl_has_indexes: ClassVar[bool] = True  # the archived CREATE TABLE carries the indexes
    defers_constraints: ClassVar[bool] = False  # SET CONSTRAINTS ALL DEFERRED during a load
    sets_sequences: ClassVar[bool] = False  # sequence positions are restored after the data
    drop_at: ClassVar[DropAt] = "first"  # where an undo archive's DROP TABLE runs in the generic load
    quote_char: ClassVar[str] = '"'

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    # -- names --------------------------------------------------------------------------------------------

    def quote(self, name: str) -> str:
        """A quoted identifier (any text, including the quote character)."""
        q = self.quote_char
        return q + name.replace(q, q + q) + q

    def qualified(self, schema: str | None, name: str) -> str:
        """A quoted table name, schema-qualified where the dialect has named schemas."""
        if schema and self.named_schemas:
            return f"{self.quote(schema)}.{self.quote(name)}"
        return self.quote(name)

    def key_parts(self) -> int:
        """How many dot-separated parts a plain target table key may have."""
        return 2 if self.named_schemas else 1

    # -- connections --------------------------------------------------------------------------------------

    def engine_options(self) -> dict[str, Any]:
        """Extra create_engine() options."""
        return {}

    def check_url(self, database: str | None, shown_url: str, *, must_exist: bool) -> None:
        """Refuse a URL this dialect cannot back up or restore (raises ConfigError / TierUnavailable)."""

    def uses_password(self) -> bool:
        """Whether $STATEKIT_DB_PASSWORD applies."""
        return True

    def missing_database(self, database: str | None) -> bool:
        """Whether the target does not exist yet (a SQLite file a restore will create)."""
        return False

    def server_version(self, conn: sa.Connection) -> str:
        """The server's version string."""
        raise NotImplementedError

    # -- snapshot -----------------------------------------------------------------------------------------

    def begin_snapshot(self, conn: sa.Connection) -> str:
        """Open the read transaction every table is read in; returns its description for snapshot.json."""
        raise NotImplementedError

    def end_snapshot(self, conn: sa.Connection) -> None:
        """Close the read transaction (nothing was written)."""
        conn.rollback()

    def list_schemas(self, conn: sa.Connection, wanted: list[str]) -> list[str | None]:
        """Schemas to reflect: the configured ones, else the connection's default."""
        return list(wanted) if wanted else [None]

    def reflect(
        self,
        conn: sa.Connection,
        schemas: list[str],
        include: list[str],
        exclude: list[str],
        *,
        with_sequences: bool = True,
    ) -> Reflected:
        """Reflect the selected tables (FK order), enums, domains and the default schema, on `conn` (so inside
        the caller's snapshot transaction)."""
        import sqlalchemy as sa

        insp = sa.inspect(conn)
        default_schema = insp.default_schema_name
        tables: list[TableDesc] = []
        for schema in self.list_schemas(conn, schemas):
            real_schema = schema if schema is not None else default_schema
            names = insp.get_table_names(schema=schema)
            keys = [n for n in names if matches(f"{real_schema}.{n}" if real_schema else n, n, include or ["*"])]
            keys = [n for n in keys if not matches(f"{real_schema}.{n}" if real_schema else n, n, exclude)]
            if keys:
                tables.extend(_reflect_tables(conn, insp, schema, real_schema, keys))
        enums, domains = self.reflect_extras(conn, tables, with_sequences=with_sequences)
        return fk_order(tables), enums, domains, default_schema

    def reflect_extras(self, conn: sa.Connection, tables: list[TableDesc], *, with_sequences: bool) -> Extras:
        """Add what only this dialect knows to the reflected tables; return the enums and domains they use."""
        return [], []

    # -- creating tables ----------------------------------------------------------------------------------

    def sa_type(self, col: ColumnDesc) -> Any:
        """A SQLAlchemy type that stores this portable type exactly."""
        import sqlalchemy as sa

        p = base_kind(col.type)
        kind = p["kind"]
        if kind == "int":
            bits = int(p.get("bits") or 64)
            return sa.SmallInteger() if bits <= 16 else sa.Integer() if bits <= 32 else sa.BigInteger()
        if kind == "bool":
            return sa.Boolean()
        if kind == "numeric":
            prec, scale = p.get("precision"), p.get("scale")
            return sa.Numeric(int(prec), scale) if prec else sa.Numeric()
        if kind == "float":
            return sa.REAL() if p.get("bits") == 32 else sa.Double()
        if kind == "text":
            length = p.get("length")
            if length:
                return sa.CHAR(length) if p.get("fixed") else sa.String(length)
            return sa.Text()
        if kind == "enum":
            return sa.String(max((len(x) for x in p.get("labels") or []), default=1))
        if kind == "bytes":
            return sa.LargeBinary()
        if kind == "date":
            return sa.Date()
        if kind == "time":
            return sa.Time()
        if kind in ("timestamp", "timestamptz"):
            return sa.DateTime(timezone=False)
        if kind == "uuid":
            return sa.String(36)
        if kind in ("json", "jsonb"):
            return sa.JSON()
        return sa.Text()

    def native_type_ok(self, text: str, what: str) -> bool:
        """For an unsigned archive: whether a same-dialect native type name may be used as is (False: the
        portable type is used); CorruptArchive for text that is not a type name at all."""
        return False

    def validates_native(self, col: ColumnDesc) -> bool:
        """Whether a column's native type is validated (else rebuilt from the portable type)."""
        return True

    def native_statement(self, table: TableDesc, staging: str | None = None) -> str | None:
        """The source's own CREATE TABLE for this dialect (only for a trusted archive)."""
        return table.native_ddl or None

    # -- the generic (row by row) load ---------------------------------------------------------------------

    def begin_load(self, conn: sa.Connection) -> None:
        """Session settings and the start of the load's transaction."""

    def commit(self, conn: sa.Connection) -> None:
        """Commit the load's transaction."""
        conn.commit()

    def rollback(self, conn: sa.Connection) -> None:
        """Roll the load's transaction back."""
        conn.rollback()

    def overriding_identity(self, table: TableDesc) -> str:
        """What an INSERT needs to write identity columns as archived ("" if nothing)."""
        return ""

    def upsert(self, insert: str, key: list[str], rest: list[str]) -> str:
        """`insert` turned into an insert-or-update on `key` (merge mode)."""
        q = self.quote
        action = "DO UPDATE SET " + ", ".join(f"{q(c)} = excluded.{q(c)}" for c in rest) if rest else "DO NOTHING"
        return f"{insert} ON CONFLICT ({', '.join(q(c) for c in key)}) {action}"

    def fit_value(self, v: Any) -> Any:
        """A decoded archive value as the driver takes it (None, UUIDs and JSON handled before)."""
        return v

    def row_adapter(self, kinds: list[str]) -> Callable[[list[Any]], tuple[Any, ...]]:
        """A row converter for the target driver: UUIDs as text, JSON as text, then `fit_value`."""
        fit = self.fit_value

        def conv(v: Any) -> Any:
            if v is None:
                return None
            if isinstance(v, uuid.UUID):
                return str(v)
            if isinstance(v, (dict, list)):
                return json.dumps(v, ensure_ascii=False)
            return fit(v)

        def row(values: list[Any]) -> tuple[Any, ...]:
            return tuple(conv(v) for v, _ in zip(values, kinds))

        return row


def driver_sql(conn: sa.Connection, text: str) -> str:
    """A statement for exec_driver_sql: drivers whose placeholders start with % (psycopg, pymysql) take a
    literal % (in a quoted name, say) only doubled."""
    return text.replace("%", "%%") if conn.dialect.paramstyle in ("format", "pyformat") else text


def union_selects(selects: list[str], per: int = 100) -> Iterator[str]:
    """One row from each select list (`count(*) FROM t`, `EXISTS (SELECT 1 FROM t)`: a SELECT without its
    keyword and without ORDER BY or LIMIT), `per` of them to a statement: `SELECT 0, … UNION ALL SELECT 1, …`.
    Each row starts with its place in `selects` (sort by it: UNION ALL keeps no order). Many tables cost a few
    round trips, not one each; plain SELECTs, as SQLite's compound statements want them."""
    for lo in range(0, len(selects), per):
        yield " UNION ALL ".join(f"SELECT {lo + i}, {expr}" for i, expr in enumerate(selects[lo : lo + per]))


def utc_naive(v: dt.datetime) -> dt.datetime:
    """An aware instant as a naive UTC datetime (naive ones as they are)."""
    return v.astimezone(dt.UTC).replace(tzinfo=None) if v.tzinfo is not None else v


def _reflect_tables(
    conn: sa.Connection, insp: Any, schema: str | None, real_schema: str | None, keys: list[str]
) -> list[TableDesc]:
    cols = insp.get_multi_columns(schema=schema, filter_names=keys)
    pks = insp.get_multi_pk_constraint(schema=schema, filter_names=keys)
    fks = insp.get_multi_foreign_keys(schema=schema, filter_names=keys)
    uqs = insp.get_multi_unique_constraints(schema=schema, filter_names=keys)
    idx = insp.get_multi_indexes(schema=schema, filter_names=keys)
    out: list[TableDesc] = []
    for name in keys:
        k = (schema, name)
        columns = [
            ColumnDesc(
                name=c["name"],
                type=portable_type(c["type"]),
                native=_native(c["type"], conn),
                nullable=bool(c["nullable"]),
                default=None if c.get("default") is None else str(c["default"]),
                generated=str(c["computed"]["sqltext"]) if c.get("computed") else None,
                identity={"always": bool(c["identity"].get("always"))} if c.get("identity") else None,
                autoincrement=c.get("autoincrement") is True,
            )
            for c in cols.get(k, [])
        ]
        out.append(
            TableDesc(
                schema=real_schema,
                name=name,
                member=member_prefix(real_schema, name),
                columns=columns,
                primary_key=list((pks.get(k) or {}).get("constrained_columns") or []),
                unique=_unique_sets(uqs.get(k, []), idx.get(k, [])),
                foreign_keys=[
                    {
                        "name": fk.get("name"),
                        "columns": list(fk["constrained_columns"]),
                        "ref_schema": fk.get("referred_schema") or real_schema,
                        "ref_table": fk["referred_table"],
                        "ref_columns": list(fk["referred_columns"]),
                        "on_delete": (fk.get("options") or {}).get("ondelete"),
                        "on_update": (fk.get("options") or {}).get("onupdate"),
                    }
                    for fk in fks.get(k, [])
                ],
            )
        )
    return out


def _unique_sets(constraints: list[Any], indexes: list[Any]) -> list[list[str]]:
    # Unique indexes count as unique keys too (Prisma, for one, makes indexes rather than constraints);
    # expression indexes have None among their columns and stay native-only.
    out = [list(u["column_names"]) for u in constraints]
    for ix in indexes:
        cols = list(ix.get("column_names") or [])
        if ix.get("unique") and cols and None not in cols and cols not in out:
            out.append(cols)
    return out


def _native(t: Any, conn: sa.Connection) -> str:
    try:
        return str(t.compile(dialect=conn.dialect))
    except Exception:
        return str(getattr(t, "__visit_name__", "unknown"))
