"""PostgreSQL: quoting, native DDL, and its Dialect.

The catalogue is read by tiers.sql.pgcatalog (plain psycopg), which also owns the quoting and the native
CREATE TABLE its descriptions carry; they are exported here too, beside COPY's column list and the foreign
keys a native load adds once every table exists. Importing this module does not import SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from statekit.tiers.sql import pgcatalog
from statekit.tiers.sql.dialects.base import Dialect, DropAt, Reflected
from statekit.tiers.sql.pgcatalog import native_column, native_create_table, qident, qtable
from statekit.tiers.sql.schema import ColumnDesc, TableDesc, base_kind

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = [
    "PostgreSQL",
    "copy_columns",
    "native_column",
    "native_create_table",
    "native_foreign_keys",
    "qident",
    "qtable",
]


def copy_columns(table: TableDesc) -> str:
    """The quoted column list of COPY (generated columns excluded: the target recomputes them)."""
    return ", ".join(qident(c.name) for c in table.data_columns)


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

    def reflect(
        self,
        conn: sa.Connection,
        schemas: list[str],
        include: list[str],
        exclude: list[str],
        *,
        with_sequences: bool = True,
    ) -> Reflected:
        """The catalogue as pgcatalog reads it (every user schema when `schemas` is empty), on the psycopg
        connection under `conn` and in its transaction (begun here if `conn` has none yet, so the caller's
        commit or rollback ends it)."""
        if not conn.in_transaction():
            conn.begin()
        pg: Any = conn.connection.driver_connection
        return pgcatalog.reflect(pg, schemas, include, exclude, with_sequences=with_sequences)

    def sa_type(self, col: ColumnDesc) -> Any:
        import sqlalchemy as sa

        kind = base_kind(col.type)["kind"]
        if kind == "timestamptz":
            return sa.DateTime(timezone=True)
        if kind == "uuid":
            return sa.Uuid()
        return super().sa_type(col)

    def overriding_identity(self, table: TableDesc) -> str:
        return "OVERRIDING SYSTEM VALUE " if any(c.identity for c in table.data_columns) else ""
