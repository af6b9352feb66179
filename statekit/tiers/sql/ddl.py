"""Creating missing tables in a restore target from the archived schema.

Same dialect: the source's own DDL (PostgreSQL: native types, constraint definitions, enums, domains and
owned sequences; MySQL: SHOW CREATE TABLE; SQLite: the sqlite_master statement), so the copy is exact.
Another dialect: a SQLAlchemy Table built from the portable types, compiled for the target.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql as my_types
from sqlalchemy.schema import CreateTable

from statekit.tiers.sql.postgres import native_create_table, native_foreign_keys, qident, qtable
from statekit.tiers.sql.schema import ColumnDesc, DbSchema, TableDesc, base_kind

# -- PostgreSQL into PostgreSQL ---------------------------------------------------------------------------


def pg_create_statements(
    conn: Any, desc: DbSchema, create: list[tuple[TableDesc, str | None]]
) -> tuple[list[str], list[str]]:
    """Statements that create the given tables (with the schemas, enums, domains and sequences they need)
    and, separately, their foreign keys (run after the data is in)."""
    before: list[str] = []
    after: list[str] = []
    if not create:
        return before, after
    for name in sorted({s for _, s in create if s}):
        before.append(f"CREATE SCHEMA IF NOT EXISTS {qident(name)}")
    for e in desc.enums:
        if not _exists(conn, e.get("schema"), e["name"]):
            labels = ", ".join(_lit(x) for x in e["labels"])
            before.append(f"CREATE TYPE {qtable(e.get('schema'), e['name'])} AS ENUM ({labels})")
    for d in desc.domains:
        if not _exists(conn, d.get("schema"), d["name"]):
            stmt = f"CREATE DOMAIN {qtable(d.get('schema'), d['name'])} AS {d['type']}"
            if d.get("default") is not None:
                stmt += f" DEFAULT {d['default']}"
            if d.get("nullable") is False:
                stmt += " NOT NULL"
            for ck in d.get("checks", []):
                stmt += f" CONSTRAINT {qident(ck['name'])} CHECK ({ck['check']})"
            before.append(stmt)
    for table, schema in create:
        owned: list[str] = []
        for col in table.columns:
            # serial columns: the default names its sequence, which must exist before the table does
            if col.sequence and col.identity is None and col.default and "nextval(" in col.default:
                before.append(f"CREATE SEQUENCE IF NOT EXISTS {col.sequence}")
                owned.append(f"ALTER SEQUENCE {col.sequence} OWNED BY {qtable(schema, table.name)}.{qident(col.name)}")
        before.append(native_create_table(table, schema))
        before.extend(owned)
        # Indexes after the data (faster to build once), foreign keys last (they may need a unique index).
        after[:0] = table.indexes
        after.extend(native_foreign_keys(table, schema))
    return before, after


def _exists(conn: Any, schema: str | None, name: str) -> bool:
    with conn.cursor() as cur:
        if schema:
            cur.execute(
                "SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = %s AND t.typname = %s",
                (schema, name),
            )
        else:
            cur.execute("SELECT count(*) FROM pg_type WHERE typname = %s", (name,))
        row = cur.fetchone()
        return bool(row and row[0])


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# -- MySQL into MySQL, SQLite into SQLite -----------------------------------------------------------------

_AUTO_INC = re.compile(r"\s+AUTO_INCREMENT=\d+")


def native_statement(table: TableDesc, dialect: str) -> str | None:
    """The source's own CREATE TABLE for the same dialect (MySQL: without the AUTO_INCREMENT position,
    which the inserted ids advance anyway)."""
    if not table.native_ddl:
        return None
    if dialect == "mysql":
        return _AUTO_INC.sub("", table.native_ddl)
    return table.native_ddl


# -- any dialect from the portable description ------------------------------------------------------------


def sa_type(col: ColumnDesc, dialect: str) -> Any:
    """A SQLAlchemy type that stores this portable type exactly in `dialect` (wide enough on MySQL, whose
    TEXT/BLOB stop at 64 KiB and whose DECIMAL defaults to (10,0))."""
    p = base_kind(col.type)
    kind = p["kind"]
    if kind == "int":
        bits = int(p.get("bits", 64))
        return sa.SmallInteger() if bits <= 16 else sa.Integer() if bits <= 32 else sa.BigInteger()
    if kind == "bool":
        return sa.Boolean()
    if kind == "numeric":
        if dialect == "sqlite":
            return sa.Text()  # NUMERIC affinity would turn long decimals into lossy REALs
        prec, scale = p.get("precision"), p.get("scale")
        if prec:
            return sa.Numeric(min(int(prec), 65) if dialect == "mysql" else int(prec), scale)
        return sa.Numeric(65, 30) if dialect == "mysql" else sa.Numeric()
    if kind == "float":
        return sa.REAL() if p.get("bits") == 32 else sa.Double()
    if kind == "text":
        length = p.get("length")
        if length:
            return sa.CHAR(length) if p.get("fixed") else sa.String(length)
        return my_types.LONGTEXT() if dialect == "mysql" else sa.Text()
    if kind == "enum":
        labels = p.get("labels") or []
        if dialect == "mysql":
            return my_types.ENUM(*labels)
        return sa.String(max((len(x) for x in labels), default=1))
    if kind == "bytes":
        return my_types.LONGBLOB() if dialect == "mysql" else sa.LargeBinary()
    if kind == "date":
        return sa.Date()
    if kind == "time":
        return my_types.TIME(fsp=6) if dialect == "mysql" else sa.Time()
    if kind in ("timestamp", "timestamptz"):
        if dialect == "mysql":
            return my_types.DATETIME(fsp=6)
        return sa.DateTime(timezone=kind == "timestamptz" and dialect == "postgresql")
    if kind == "uuid":
        return sa.Uuid() if dialect == "postgresql" else sa.String(36)
    if kind in ("json", "jsonb"):
        return sa.JSON()
    return sa.Text()


def sa_create_statement(table: TableDesc, dialect: sa.Dialect, schema: str | None, present: set[str]) -> str:
    """CREATE TABLE for another dialect; foreign keys only towards tables in `present` (existing or being
    created), since a dangling reference would make the statement fail."""
    md = sa.MetaData()
    cols = []
    for c in table.columns:
        kw: dict[str, Any] = {"nullable": c.nullable}
        pk = c.name in table.primary_key
        kw["primary_key"] = pk
        auto = pk and (c.autoincrement or c.identity is not None or c.sequence is not None)
        kw["autoincrement"] = bool(auto) if pk else False
        args: list[Any] = []
        if c.generated is not None:
            args.append(sa.Computed(sa.text(c.generated), persisted=True))
        cols.append(sa.Column(c.name, sa_type(c, dialect.name), *args, **kw))
    constraints: list[Any] = [sa.UniqueConstraint(*u) for u in table.unique]
    for fk in table.foreign_keys:
        if fk["ref_table"] not in present:
            continue
        constraints.append(
            sa.ForeignKeyConstraint(
                fk["columns"],
                [f"{fk['ref_table']}.{rc}" for rc in fk["ref_columns"]],
                ondelete=fk.get("on_delete"),
                onupdate=fk.get("on_update"),
            )
        )
    # Referenced tables need to exist in the MetaData for the ForeignKey targets to resolve.
    for fk in table.foreign_keys:
        if fk["ref_table"] in present and fk["ref_table"] not in md.tables and fk["ref_table"] != table.name:
            sa.Table(fk["ref_table"], md, *[sa.Column(rc, sa.Integer) for rc in fk["ref_columns"]])
    t = sa.Table(table.name, md, *cols, *constraints, schema=schema)
    return str(CreateTable(t).compile(dialect=dialect)).strip()
