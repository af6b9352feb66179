"""PostgreSQL: quoting, the catalogue extras of a schema description, native CREATE TABLE, and its Dialect.

Beyond SQLAlchemy's Inspector, a PostgreSQL description carries exact native types (format_type), constraint
definitions, indexes, owned sequences with their position, enums and domains, and a native CREATE TABLE.
"""

from __future__ import annotations

from typing import Any, ClassVar

import sqlalchemy as sa

from statekit.tiers.sql.dialects.base import Dialect, DropAt, Extras, driver_sql, union_selects
from statekit.tiers.sql.pgbinary import wire_token
from statekit.tiers.sql.schema import ColumnDesc, TableDesc, base_kind

_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


def qident(name: str) -> str:
    """A PostgreSQL quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def qtable(schema: str | None, name: str) -> str:
    """A quoted, schema-qualified table name."""
    return f"{qident(schema)}.{qident(name)}" if schema else qident(name)


def copy_columns(table: TableDesc) -> str:
    """The quoted column list of COPY (generated columns excluded: the target recomputes them)."""
    return ", ".join(qident(c.name) for c in table.data_columns)


# -- catalog extras ---------------------------------------------------------------------------------------

# One statement each for every selected table: a schema of hundreds of tables costs a handful of round trips,
# not a few per table. `sel` is the selection, given as two parallel arrays (schema names, table names).
_SELECTED = "unnest(CAST(:s AS text[]), CAST(:t AS text[])) AS sel(s, t)"

_COLUMNS_SQL = f"""
SELECT sel.s, sel.t, a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity::text,
       pg_get_serial_sequence(quote_ident(n.nspname) || '.' || quote_ident(c.relname), a.attname),
       ty.typname, tn.nspname, ty.typtype::text
FROM {_SELECTED}
JOIN pg_namespace n ON n.nspname = sel.s
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = sel.t
JOIN pg_attribute a ON a.attrelid = c.oid
JOIN pg_type ty ON ty.oid = a.atttypid
JOIN pg_namespace tn ON tn.oid = ty.typnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.oid, a.attnum
"""

_CONSTRAINTS_SQL = f"""
SELECT sel.s, sel.t, con.conname, con.contype::text, pg_get_constraintdef(con.oid)
FROM {_SELECTED}
JOIN pg_namespace n ON n.nspname = sel.s
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = sel.t
JOIN pg_constraint con ON con.conrelid = c.oid
ORDER BY c.oid, con.contype, con.conname
"""

_INDEXES_SQL = f"""
SELECT sel.s, sel.t, pg_get_indexdef(i.indexrelid) AS def
FROM {_SELECTED}
JOIN pg_namespace n ON n.nspname = sel.s
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = sel.t
JOIN pg_index i ON i.indrelid = c.oid
WHERE NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid)
ORDER BY c.oid, def
"""


def _by_table(conn: sa.Connection, sql: str, tables: list[TableDesc]) -> dict[tuple[str, str], list[Any]]:
    """The rows of one catalogue statement over every table, grouped by (schema, table) in their order."""
    out: dict[tuple[str, str], list[Any]] = {}
    if not tables:
        return out
    params = {"s": [t.schema for t in tables], "t": [t.name for t in tables]}
    for row in conn.execute(sa.text(sql), params):
        out.setdefault((str(row[0]), str(row[1])), []).append(row[2:])
    return out


def _sequence_values(conn: sa.Connection, names: list[str]) -> list[tuple[int, bool]]:
    """last_value and is_called of each sequence (names as pg_get_serial_sequence gives them: quoted and
    qualified), a hundred per statement."""
    out: list[tuple[int, bool]] = []
    for sql in union_selects([f"last_value, is_called FROM {name}" for name in names]):
        rows = sorted(conn.exec_driver_sql(driver_sql(conn, sql)).fetchall())
        out.extend((int(last), bool(called)) for _, last, called in rows)
    return out


def pg_extras(
    conn: sa.Connection, tables: list[TableDesc], *, with_sequences: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Add exact native types, constraint definitions, owned sequences (with their position), a native
    CREATE TABLE and the data encoding to each table; return the enums and domains the tables use. A table
    whose every archived column has a binary wire token (tiers.sql.pgbinary) is archived as binary COPY, any
    other as COPY text."""
    columns = _by_table(conn, _COLUMNS_SQL, tables)
    constraints = _by_table(conn, _CONSTRAINTS_SQL, tables)
    indexes = _by_table(conn, _INDEXES_SQL, tables)
    for t in tables:
        key = (str(t.schema), t.name)
        by_name = {c.name: c for c in t.columns}
        wire: dict[str, str | None] = {}
        for name, native, identity, seq, typname, typschema, typtype in columns.get(key, []):
            col = by_name.get(name)
            if col is None:
                continue
            wire[name] = wire_token(str(typname), str(typschema), str(typtype))
            col.native = str(native)
            if identity in ("a", "d"):
                col.identity = {"always": identity == "a"}
            col.sequence = str(seq) if seq else None
        t.constraints = [
            {"name": str(n), "type": str(ct), "definition": str(d)} for n, ct, d in constraints.get(key, [])
        ]
        tokens = [wire.get(c.name) for c in t.data_columns]
        if tokens and all(tokens):
            t.encoding, t.wire = "pgbinary", [str(w) for w in tokens]
        else:
            t.encoding, t.wire = "copy", []
        t.indexes = [str(r[0]) for r in indexes.get(key, [])]
        t.native_ddl = native_create_table(t)
    if with_sequences:
        owned = [(t, c) for t in tables for c in t.columns if c.sequence]
        values = _sequence_values(conn, [str(c.sequence) for _, c in owned])
        for (t, col), (last, called) in zip(owned, values, strict=True):
            t.sequences.append({"column": col.name, "name": col.sequence, "last_value": last, "is_called": called})
    used_enums: set[str] = set()
    used_domains: set[str] = set()
    for t in tables:
        for c in t.columns:
            _collect_types(c.type, used_enums, used_domains)
    insp: Any = sa.inspect(conn)  # the PostgreSQL inspector (get_enums, get_domains)
    enums = [
        {"schema": e["schema"], "name": e["name"], "labels": list(e["labels"])}
        for e in insp.get_enums(schema="*")
        if e["name"] in used_enums
    ]
    domains = [
        {
            "schema": d["schema"],
            "name": d["name"],
            "type": d["type"],
            "nullable": d["nullable"],
            "default": d["default"],
            "checks": [{"name": ck["name"], "check": ck["check"]} for ck in d["constraints"]],
        }
        for d in insp.get_domains(schema="*")
        if d["name"] in used_domains and d["schema"] not in ("information_schema", "pg_catalog")
    ]
    return enums, domains


def _collect_types(ptype: dict[str, Any], enums: set[str], domains: set[str]) -> None:
    kind = ptype.get("kind")
    if kind == "enum" and ptype.get("name"):
        enums.add(str(ptype["name"]))
    elif kind == "domain":
        domains.add(str(ptype["name"]))
        _collect_types(ptype["base"], enums, domains)
    elif kind == "array":
        _collect_types(ptype["item"], enums, domains)


def native_column(c: ColumnDesc) -> str:
    """One column of a native CREATE TABLE."""
    parts = [qident(c.name), c.native]
    if c.generated is not None:
        parts.append(f"GENERATED ALWAYS AS ({c.generated}) STORED")
    elif c.identity is not None:
        parts.append(f"GENERATED {'ALWAYS' if c.identity['always'] else 'BY DEFAULT'} AS IDENTITY")
    elif c.default is not None:
        parts.append(f"DEFAULT {c.default}")
    if not c.nullable:
        parts.append("NOT NULL")
    return " ".join(parts)


def native_create_table(t: TableDesc, schema: str | None = None) -> str:
    """CREATE TABLE with columns, primary key, unique and check constraints; foreign keys are added later
    (native_foreign_keys) once every table exists."""
    lines = [native_column(c) for c in t.columns]
    for con in t.constraints:
        if con["type"] in ("p", "u", "c"):
            lines.append(f"CONSTRAINT {qident(con['name'])} {con['definition']}")
    body = ",\n  ".join(lines)
    return f"CREATE TABLE {qtable(schema if schema is not None else t.schema, t.name)} (\n  {body}\n)"


def native_foreign_keys(t: TableDesc, schema: str | None = None) -> list[str]:
    """ALTER TABLE … ADD CONSTRAINT for each foreign key, as the source defined it."""
    name = qtable(schema if schema is not None else t.schema, t.name)
    return [
        f"ALTER TABLE {name} ADD CONSTRAINT {qident(con['name'])} {con['definition']}"
        for con in t.constraints
        if con["type"] == "f"
    ]


class PostgreSQL(Dialect):
    """PostgreSQL (psycopg 3): named schemas, COPY both ways, enums, domains, arrays, transactional DDL."""

    name: ClassVar[str] = "postgresql"
    driver: ClassVar[str] = "psycopg"
    named_schemas: ClassVar[bool] = True
    native_copy: ClassVar[bool] = True
    extended_types: ClassVar[bool] = True
    defers_constraints: ClassVar[bool] = True
    sets_sequences: ClassVar[bool] = True
    drop_at: ClassVar[DropAt] = "first"

    def quote(self, name: str) -> str:
        return qident(name)

    def server_version(self, conn: sa.Connection) -> str:
        return str(conn.exec_driver_sql("SHOW server_version").scalar())

    def begin_snapshot(self, conn: sa.Connection) -> str:
        # Connection.execution_options changes the connection itself: the next statement opens the snapshot
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        conn.exec_driver_sql("SELECT 1")
        return "REPEATABLE READ"

    def list_schemas(self, conn: sa.Connection, wanted: list[str]) -> list[str | None]:
        """The configured schemas, else every user schema."""
        if wanted:
            return list(wanted)
        names = sa.inspect(conn).get_schema_names()
        return [n for n in names if not n.startswith(_SYSTEM_SCHEMAS)]

    def reflect_extras(self, conn: sa.Connection, tables: list[TableDesc], *, with_sequences: bool) -> Extras:
        return pg_extras(conn, tables, with_sequences=with_sequences)

    def sa_type(self, col: ColumnDesc) -> Any:
        kind = base_kind(col.type)["kind"]
        if kind == "timestamptz":
            return sa.DateTime(timezone=True)
        if kind == "uuid":
            return sa.Uuid()
        return super().sa_type(col)

    def overriding_identity(self, table: TableDesc) -> str:
        return "OVERRIDING SYSTEM VALUE " if any(c.identity for c in table.data_columns) else ""
