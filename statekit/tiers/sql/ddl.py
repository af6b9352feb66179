"""Creating missing tables in a restore target from the archived schema, under the trust model.

An archive that is not trusted (signed by a key the user trusts, or restored with --trust-archive-sql) is data:
a missing table is built only from the structured description — quoted names, type names that pass a strict
grammar and (PostgreSQL) the server's own `to_regtype()` with the name as a bound parameter, NOT NULL, identity,
primary key, unique keys, foreign keys with a whitelisted action, enums with quoted labels, domains without
their default or checks. Every SQL expression of the archive (defaults, checks, generated columns, index
definitions, the source's CREATE TABLE, sequences) is left out and listed as skipped.

A trusted archive gets the exact copy: PostgreSQL native types, constraint definitions, enums, domains and
owned sequences; MySQL SHOW CREATE TABLE; SQLite the sqlite_master statement; another dialect a SQLAlchemy
Table built from the portable types, compiled for the target.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from statekit.tiers.sql.dialects import Dialect
from statekit.tiers.sql.dialects.base import MAX_TYPE_TEXT, shown
from statekit.tiers.sql.dialects.postgresql import native_create_table, native_foreign_keys, qident, qtable
from statekit.tiers.sql.pgtypes import ARRAY_DIMS, PG_IDENT, PgTypeCheck, archived_types, domains_in_order
from statekit.tiers.sql.schema import ColumnDesc, DbSchema, TableDesc, base_kind

if TYPE_CHECKING:
    import sqlalchemy as sa

ARCHIVE_SQL = "archive SQL"


@dataclass
class TableDdl:
    """How one missing table is created: statements before the data, indexes and foreign keys after it, the
    statement classes shown in the plan, and what of the archive's SQL is not applied."""

    before: list[str] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)
    foreign_keys: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class CreatePlan:
    """The DDL of one restore: shared prerequisites (schemas, enums, domains), then each table's own."""

    prelude: list[str] = field(default_factory=list)
    prelude_classes: list[str] = field(default_factory=list)
    prelude_skipped: list[str] = field(default_factory=list)
    tables: dict[str, TableDdl] = field(default_factory=dict)  # by TableDesc.key
    problems: list[str] = field(default_factory=list)
    # What the prelude creates, none of it on the target when planned (the undo archive lists it: its restore
    # drops it again): schemas, and enums and domains as (archived schema or None, name), in creation order.
    created_schemas: list[str] = field(default_factory=list)
    created_types: list[tuple[str | None, str]] = field(default_factory=list)

    def before(self) -> list[str]:
        """Everything that runs before the data, in order."""
        return [*self.prelude, *(s for t in self.tables.values() for s in t.before)]

    def after(self) -> list[str]:
        """Everything that runs after the data: indexes first, foreign keys last."""
        tables = list(self.tables.values())
        return [s for t in tables for s in t.indexes] + [s for t in tables for s in t.foreign_keys]


# -- type names -------------------------------------------------------------------------------------------


@cache
def _native_types() -> tuple[type[Any], type[Any]]:
    """The SQLAlchemy column types of a validated native type name, plain and integer (defined on first use:
    only a restore that builds a table with SQLAlchemy loads it)."""
    import sqlalchemy as sa

    class Native(sa.types.UserDefinedType[Any]):
        """A column type rendered as a validated native type name."""

        cache_ok = True

        def __init__(self, text: str) -> None:
            self.text = text

        def get_col_spec(self, **kw: Any) -> str:
            return self.text

    class NativeInt(Native):
        """A validated native integer type: SQLAlchemy may make it the table's auto-increment column."""

        cache_ok = True

        @property
        def _type_affinity(self) -> type[sa.types.TypeEngine[Any]]:
            return sa.Integer

    return Native, NativeInt


# -- PostgreSQL into PostgreSQL ---------------------------------------------------------------------------

SchemaMap = Callable[[str | None], str | None]


def pg_plan(
    conn: Any,
    desc: DbSchema,
    create: list[tuple[TableDesc, str | None]],
    *,
    trusted: bool,
    map_schema: SchemaMap,
) -> CreatePlan:
    """The DDL that creates the given tables (with the schemas, enums, domains and sequences they need) on a
    PostgreSQL target (`conn`: a psycopg connection to it); `map_schema` turns an archived schema name into
    the target's. A sequence a serial column of a trusted archive names that exists already is used as it is:
    the new table does not take it over (an undo, dropping the table, would drop it too) and the restore does
    not move it. An untrusted archive's serial column gets a new sequence of its own (_pg_untrusted_table)."""
    plan = CreatePlan()
    if not create:
        return plan
    schemas = sorted({s for _, s in create if s})
    present = _schemas_present(conn, schemas)
    for name in schemas:
        plan.prelude.append(f"CREATE SCHEMA IF NOT EXISTS {qident(name)}")
        _add(plan.prelude_classes, "CREATE SCHEMA")
        if name not in present:
            plan.created_schemas.append(name)
    for e in desc.enums:
        if not _exists(conn, e.get("schema"), e["name"]):
            labels = ", ".join(_lit(x) for x in e["labels"])
            plan.prelude.append(f"CREATE TYPE {qtable(e.get('schema'), e['name'])} AS ENUM ({labels})")
            _add(plan.prelude_classes, "CREATE TYPE … AS ENUM")
            plan.created_types.append((e.get("schema"), e["name"]))
    check = PgTypeCheck(conn, archived_types(desc))
    set_columns = conn.info.server_version >= 150000  # ON DELETE SET NULL (k1)
    for d in domains_in_order(desc.domains, check):
        if _exists(conn, d.get("schema"), d["name"]):
            continue
        dname = qtable(d.get("schema"), d["name"])
        base = d["type"]
        if not trusted:
            # an enum or domain of the archive by its quoted name, else a type name the target knows
            archived = check.archived(base)
            if archived is not None:
                base = archived
            elif not check.known(base, f"domain {d['name']} type"):
                plan.problems.append(f"domain {shown(d['name'])}: type {shown(d['type'])} does not exist in the target")
                continue
        stmt = f"CREATE DOMAIN {dname} AS {base}"
        if d.get("nullable") is False:
            stmt += " NOT NULL"
        if trusted:
            if d.get("default") is not None:
                stmt += f" DEFAULT {d['default']}"
            for ck in d.get("checks", []):
                stmt += (f" CONSTRAINT {qident(ck['name'])}" if ck.get("name") else "") + f" CHECK ({ck['check']})"
        else:
            if d.get("default") is not None:
                plan.prelude_skipped.append(f"default of domain {shown(d['name'])}")
            for ck in d.get("checks", []):
                plan.prelude_skipped.append(f"check {shown(ck.get('name') or '?')} of domain {shown(d['name'])}")
        plan.prelude.append(stmt)
        _add(plan.prelude_classes, f"CREATE DOMAIN ({ARCHIVE_SQL}: default, checks)" if trusted else "CREATE DOMAIN")
        plan.created_types.append((d.get("schema"), d["name"]))
    seq_exists = _SequenceCheck(conn)
    seq_exists.prefetch([seq for table, _ in create for seq in _serial_sequences(table, trusted=trusted)])
    for table, schema in create:
        if trusted:
            plan.tables[table.key] = _pg_trusted_table(table, schema, seq_exists=seq_exists)
        else:
            plan.tables[table.key] = _pg_untrusted_table(
                table, schema, check, plan.problems, map_schema, set_columns=set_columns
            )
    return plan


class _SequenceCheck:
    """Whether a sequence name (as a nextval default or pg_get_serial_sequence writes it) names a relation on
    the target: `to_regclass()` with the name as a bound parameter. `conn` is a psycopg connection."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._cache: dict[str, bool] = {}

    def prefetch(self, names: list[str]) -> None:
        """Check all of `names` in one statement (one by one, should one of them not parse)."""
        names = sorted(set(names) - self._cache.keys())
        if not names:
            return
        import psycopg

        try:
            rows = self._conn.execute(
                "SELECT u.n, to_regclass(u.n) IS NOT NULL FROM unnest(%s::text[]) AS u(n)", (names,)
            ).fetchall()
            self._cache.update({str(n): bool(found) for n, found in rows})
        except psycopg.Error:
            pass  # asked one by one when needed
        finally:
            self._conn.rollback()

    def __call__(self, name: str) -> bool:
        if name not in self._cache:
            import psycopg

            try:
                row = self._conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
                self._cache[name] = bool(row and row[0])
            except psycopg.Error:
                self._cache[name] = False  # not a name the server parses: CREATE SEQUENCE says why
            finally:
                self._conn.rollback()
        return self._cache[name]


def _serial_sequences(table: TableDesc, *, trusted: bool) -> list[str]:
    """The sequence names the serial columns of `table` name (those _pg_trusted_table creates when missing;
    _pg_untrusted_table uses none: PostgreSQL names the sequences it creates)."""
    if not trusted:
        return []
    return [
        c.sequence for c in table.columns if c.sequence and c.identity is None and c.default and "nextval(" in c.default
    ]


_KEPT_SEQUENCE = "nextval of an existing sequence (kept as it is: not taken over by the table, not moved)"


def _pg_trusted_table(
    table: TableDesc, schema: str | None, *, seq_exists: Callable[[str], bool] = lambda _: False
) -> TableDdl:
    """The source's own CREATE TABLE, indexes and foreign keys; `seq_exists` tells the sequences of serial columns
    that are on the target already (used as they are, see pg_plan)."""
    out = TableDdl()
    owned: list[str] = []
    for col in table.columns:
        # serial columns: the default names its sequence, which must exist before the table does
        if col.sequence and col.identity is None and col.default and "nextval(" in col.default:
            if seq_exists(col.sequence):
                _add(out.classes, _KEPT_SEQUENCE)
                continue
            out.before.append(f"CREATE SEQUENCE IF NOT EXISTS {col.sequence}")
            owned.append(f"ALTER SEQUENCE {col.sequence} OWNED BY {qtable(schema, table.name)}.{qident(col.name)}")
            _add(out.classes, f"CREATE SEQUENCE ({ARCHIVE_SQL})")
    out.before.append(native_create_table(table, schema))
    _add(
        out.classes,
        f"CREATE TABLE ({ARCHIVE_SQL}: native types, defaults, checks, exclusion constraints, generated columns)",
    )
    out.before.extend(owned)
    # Indexes after the data (faster to build once), foreign keys last (they may need a unique index).
    out.indexes.extend(table.indexes)
    if table.indexes:
        _add(out.classes, f"CREATE INDEX ({ARCHIVE_SQL})")
    fks = native_foreign_keys(table, schema)
    out.foreign_keys.extend(fks)
    if fks:
        _add(out.classes, f"ADD FOREIGN KEY ({ARCHIVE_SQL})")
    return out


def _pg_untrusted_table(
    table: TableDesc,
    schema: str | None,
    check: PgTypeCheck,
    problems: list[str],
    map_schema: SchemaMap,
    *,
    set_columns: bool = True,
) -> TableDdl:
    """CREATE TABLE and its foreign keys from the structured description alone; `set_columns`: the target
    takes ON DELETE SET NULL (k1) (PostgreSQL 15+; an older one gets the action on every column of the key, and
    the plan lists the column list as skipped). A serial column becomes smallserial/serial/bigserial: PostgreSQL
    creates its sequence under a name of its own choosing (never one that exists), owned by the column; the
    archive's sequence name is not used, and an existing sequence is never taken over."""
    out = TableDdl()
    name = qtable(schema, table.name)
    lines: list[str] = []
    owned: list[str] = []
    for c in table.columns:
        if c.generated is not None:
            out.skipped.append(f"generated column {shown(c.name)}")
            continue
        serial = _serial_type(c)
        typ = serial or _pg_column_type(c, check, problems, table)
        if typ is None:
            continue
        parts = [qident(c.name), typ]
        if c.identity is not None:
            parts.append(f"GENERATED {'ALWAYS' if c.identity['always'] else 'BY DEFAULT'} AS IDENTITY")
        elif serial is not None:
            _add(out.classes, _NEW_SEQUENCE)
            if c.nullable:  # serial implies NOT NULL
                owned.append(f"ALTER TABLE {name} ALTER COLUMN {qident(c.name)} DROP NOT NULL")
        elif c.default is not None:
            out.skipped.append(f"default of {shown(c.name)}")
        if not c.nullable:
            parts.append("NOT NULL")
        lines.append(" ".join(parts))
    omitted = {c.name for c in table.columns if c.generated is not None}
    if set(table.primary_key) & omitted:
        problems.append(f"{shown(table.key)}: the primary key includes a generated column")
    elif table.primary_key:
        lines.append(f"PRIMARY KEY ({_cols(table.primary_key)})")
    for u in table.unique:
        if set(u) & omitted:
            out.skipped.append(f"unique key ({shown(', '.join(u))}) on a generated column")
        elif u != table.primary_key:
            lines.append(f"UNIQUE ({_cols(u)})")
    for con in table.constraints:
        if con["type"] not in ("p", "u", "f"):
            out.skipped.append(f"constraint {shown(con['name'])}")
    for ix in table.indexes:
        out.skipped.append(f"index {shown(_index_name(ix))}")
    out.before.append(f"CREATE TABLE {name} (\n  " + ",\n  ".join(lines) + "\n)")
    out.before.extend(owned)
    out.classes.append("CREATE TABLE (names, validated types, NOT NULL, identity, primary key, unique)")
    for fk in table.foreign_keys:
        fk_name = shown(fk.get("name") or "?")
        if set(fk["columns"]) & omitted:
            out.skipped.append(f"foreign key {fk_name} on a generated column")
            continue
        if fk.get("on_delete_columns") and not set_columns:
            out.skipped.append(f"the column list of foreign key {fk_name}'s ON DELETE action")
        out.foreign_keys.append(f"ALTER TABLE {name} ADD {_fk_clause(fk, map_schema, set_columns=set_columns)}")
    if out.foreign_keys:
        out.classes.append("ADD FOREIGN KEY")
    return out


_SERIAL = re.compile(r"nextval\('((?:[^'\x00]|'')+)'::regclass\)")
_PG_NAME = re.compile(rf"{PG_IDENT}(?:\.{PG_IDENT})?")


def serial_sequence(default: str) -> str | None:
    """The sequence name of a serial column's default, `nextval('<name>'::regclass)` exactly, when the name is
    a plain (possibly quoted, possibly qualified) identifier; None for any other default."""
    m = _SERIAL.fullmatch(default)
    if m is None:
        return None
    seq = m.group(1).replace("''", "'")
    return seq if len(seq) <= MAX_TYPE_TEXT and _PG_NAME.fullmatch(seq) else None


_SERIALS = {"smallint": "smallserial", "integer": "serial", "bigint": "bigserial"}
_NEW_SEQUENCE = "serial column (a new sequence, named by PostgreSQL and owned by the column)"


def _serial_type(c: ColumnDesc) -> str | None:
    """smallserial, serial or bigserial for a serial column of an untrusted archive: a plain integer column
    whose default is `nextval('<name>'::regclass)` (the name is not used); None for any other column."""
    if c.identity is not None or c.default is None or c.type.get("kind") != "int":
        return None
    return _SERIALS.get(c.native) if serial_sequence(c.default) is not None else None


def _pg_column_type(c: ColumnDesc, check: PgTypeCheck, problems: list[str], table: TableDesc) -> str | None:
    ptype = c.type
    dims = ""
    if ptype.get("kind") == "array" and isinstance(ptype.get("item"), dict):
        found = ARRAY_DIMS.search(c.native)
        dims = "[]" * max(1, found.group(0).count("[")) if found else "[]"
        ptype = ptype["item"]
    if ptype.get("kind") in ("enum", "domain") and ptype.get("name"):
        # names of types the archive describes structurally: quoted here, created by pg_plan if missing
        return qtable(ptype.get("schema"), ptype["name"]) + dims
    if not check.known(c.native, f"column {table.key}.{c.name} type"):
        problems.append(f"{shown(table.key)}.{shown(c.name)}: type {shown(c.native)} does not exist in the target")
        return None
    return c.native


def _fk_clause(fk: dict[str, Any], map_schema: SchemaMap, *, set_columns: bool) -> str:
    head = f"CONSTRAINT {qident(fk['name'])} " if fk.get("name") else ""
    ref = qtable(map_schema(fk.get("ref_schema")), fk["ref_table"])
    clause = f"{head}FOREIGN KEY ({_cols(fk['columns'])}) REFERENCES {ref} ({_cols(fk['ref_columns'])})"
    # the actions were checked against a fixed list when db/schema.json was read, and on_delete_columns
    # against the key's own columns (only with SET NULL / SET DEFAULT)
    if fk.get("on_delete"):
        clause += f" ON DELETE {fk['on_delete'].upper()}"
        if fk.get("on_delete_columns") and set_columns:
            clause += f" ({_cols(fk['on_delete_columns'])})"
    if fk.get("on_update"):
        clause += f" ON UPDATE {fk['on_update'].upper()}"
    return clause


def _cols(names: list[str]) -> str:
    return ", ".join(qident(n) for n in names)


_INDEX_NAME = re.compile(r'CREATE (?:UNIQUE )?INDEX (?:IF NOT EXISTS )?("(?:[^"]|"")+"|[^\s(]+)', re.IGNORECASE)


def _index_name(definition: str) -> str:
    m = _INDEX_NAME.match(definition)
    return m.group(1) if m else definition[:40]


def _exists(conn: Any, schema: str | None, name: str) -> bool:
    if schema:
        row = conn.execute(
            "SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = %s AND t.typname = %s",
            (schema, name),
        ).fetchone()
    else:
        row = conn.execute("SELECT count(*) FROM pg_type WHERE typname = %s", (name,)).fetchone()
    conn.rollback()
    return bool(row and row[0])


def _schemas_present(conn: Any, names: list[str]) -> set[str]:
    """Which of the schemas `names` exist on the target."""
    if not names:
        return set()
    rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (names,)).fetchall()
    conn.rollback()
    return {str(r[0]) for r in rows}


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _add(classes: list[str], what: str) -> None:
    if what not in classes:
        classes.append(what)


# -- every other combination: MySQL, SQLite, and across dialects -----------------------------------------


def generic_plan(
    desc: DbSchema,
    create: list[tuple[TableDesc, str | None, str | None]],
    dialect: sa.Dialect,
    present: set[str],
    *,
    trusted: bool,
    target: Dialect,
) -> CreatePlan:
    """CREATE TABLE statements for MySQL and SQLite targets (and PostgreSQL from another dialect). Each entry
    of `create` is (table, target schema, staging name or None); foreign keys go only to tables in `present`."""
    plan = CreatePlan()
    same = desc.dialect == target.name
    for table, schema, staging in create:
        out = TableDdl()
        stmt = target.native_statement(table, staging) if trusted and same else None
        if stmt is not None:
            out.before.append(stmt)
            out.classes.append(f"CREATE TABLE ({ARCHIVE_SQL}: the source's own statement)")
            if not target.native_ddl_has_indexes:
                out.before.extend(table.indexes)
                if table.indexes:
                    out.classes.append(f"CREATE INDEX ({ARCHIVE_SQL})")
        else:
            natives = _validated_natives(table, target, plan.problems) if same and not trusted else {}
            out.before.append(
                sa_create_statement(
                    table, dialect, target, schema, present, name=staging, natives=natives, trusted=trusted
                )
            )
            what = "validated types" if same else "portable types"
            out.classes.append(f"CREATE TABLE (names, {what}, NOT NULL, primary key, unique, foreign keys)")
            if not trusted:
                out.skipped.extend(_untrusted_skips(table, same))
            elif any(c.generated is not None for c in table.columns):
                out.classes.append(f"generated columns ({ARCHIVE_SQL})")
        if staging:
            out.classes.append("under a staging name, renamed into place with the data")
        plan.tables[table.key] = out
    return plan


def _validated_natives(table: TableDesc, target: Dialect, problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in table.data_columns:
        what = f"column {table.key}.{c.name} type"
        if not target.validates_native(c):
            continue
        if target.native_type_ok(c.native, what):
            native, native_int = _native_types()
            out[c.name] = native_int(c.native) if base_kind(c.type)["kind"] == "int" else native(c.native)
        else:
            problems.append(
                f"{shown(table.key)}.{shown(c.name)}: type {shown(c.native)} is not a type statekit creates from an "
                "unsigned archive; create the table first, or restore with --signer / --trust-archive-sql"
            )
    return out


def _untrusted_skips(table: TableDesc, same: bool) -> list[str]:
    out = [f"generated column {shown(c.name)}" for c in table.columns if c.generated is not None]
    out += [f"default of {shown(c.name)}" for c in table.columns if c.default is not None and c.generated is None]
    if same and table.native_ddl:
        out.append("the source's CREATE TABLE (its defaults, checks, indexes and options)")
    out += [f"index {shown(_index_name(ix))}" for ix in table.indexes]
    out += [f"constraint {shown(con['name'])}" for con in table.constraints if con["type"] not in ("p", "u", "f")]
    return out


def sa_create_statement(
    table: TableDesc,
    dialect: sa.Dialect,
    target: Dialect,
    schema: str | None,
    present: set[str],
    *,
    name: str | None = None,
    natives: dict[str, Any] | None = None,
    trusted: bool = True,
) -> str:
    """CREATE TABLE from the description, compiled by SQLAlchemy (which quotes every name); `natives` maps
    column names to validated native types (else the portable type is used); foreign keys only towards tables
    in `present` (existing or being created), since a dangling reference would make the statement fail.
    Generated columns keep their expression only when `trusted`, else they are left out."""
    import sqlalchemy as sa
    from sqlalchemy.schema import CreateTable

    md = sa.MetaData()
    natives = natives or {}
    cols = []
    for c in table.columns:
        if c.generated is not None and not trusted:
            continue
        kw: dict[str, Any] = {"nullable": c.nullable}
        pk = c.name in table.primary_key
        kw["primary_key"] = pk
        auto = pk and (c.autoincrement or c.identity is not None or c.sequence is not None)
        kw["autoincrement"] = bool(auto) if pk else False
        args: list[Any] = []
        if c.generated is not None:
            args.append(sa.Computed(sa.text(c.generated), persisted=True))
        cols.append(sa.Column(c.name, natives.get(c.name) or target.sa_type(c), *args, **kw))
    kept = {c.name for c in cols}
    constraints: list[Any] = [
        sa.UniqueConstraint(*u) for u in table.unique if u != table.primary_key and set(u) <= kept
    ]
    # Referenced tables are stand-ins in the MetaData (Column objects, never "table.column" strings, which
    # SQLAlchemy would split at dots inside names); a self reference points at the table being created.
    refs: dict[str, sa.Table] = {}
    selfrefs: list[dict[str, Any]] = []
    for fk in table.foreign_keys:
        if fk["ref_table"] not in present or not set(fk["columns"]) <= kept:
            continue
        if fk["ref_table"] == table.name:
            selfrefs.append(fk)
            continue
        ref = refs.get(fk["ref_table"])
        if ref is None:
            ref = refs[fk["ref_table"]] = sa.Table(fk["ref_table"], md)
        for rc in fk["ref_columns"]:
            if rc not in ref.c:
                ref.append_column(sa.Column(rc, sa.Integer))
        constraints.append(_sa_fk(fk, [ref.c[rc] for rc in fk["ref_columns"]]))
    t = sa.Table(name or table.name, md, *cols, *constraints, schema=schema)
    for fk in selfrefs:
        if all(rc in t.c for rc in fk["ref_columns"]):
            t.append_constraint(_sa_fk(fk, [t.c[rc] for rc in fk["ref_columns"]]))
    return str(CreateTable(t).compile(dialect=dialect)).strip()


def _sa_fk(fk: dict[str, Any], targets: list[sa.Column[Any]]) -> sa.ForeignKeyConstraint:
    import sqlalchemy as sa

    # the actions were checked against a fixed list when db/schema.json was read
    return sa.ForeignKeyConstraint(
        fk["columns"],
        targets,
        ondelete=fk["on_delete"].upper() if fk.get("on_delete") else None,
        onupdate=fk["on_update"].upper() if fk.get("on_update") else None,
    )
