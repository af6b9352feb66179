"""SQLite (the standard library's sqlite3): one file, dynamic typing, everything in one transaction."""

from __future__ import annotations

import datetime as dt
import decimal
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from statekit.errors import ConfigError, TierUnavailable
from statekit.tiers.sql.dialects.base import MAX_TYPE_TEXT, Dialect, DropAt, Extras, refuse_type, utc_naive
from statekit.tiers.sql.schema import ColumnDesc, TableDesc, base_kind

if TYPE_CHECKING:
    import sqlalchemy as sa

# SQLite's own type-name grammar, restricted to unquoted identifiers and plain numbers.
_TYPE = re.compile(
    r"(?:[A-Za-z_][A-Za-z0-9_]*(?: [A-Za-z_][A-Za-z0-9_]*)*(?: ?\( ?[+-]?\d{1,9} ?(?:, ?[+-]?\d{1,9} ?)?\))?)?"
)

# The keywords SQLite's parser does not take as a word of a type name (those it does fall back to a name): each
# ends the type, most of them start a column constraint ("integer references victim", "integer default (5)").
_NOT_TYPE_WORD = re.compile(
    r"(?i)\b(?:ADD|ALL|ALTER|AND|AS|AUTOINCREMENT|BETWEEN|CASE|CHECK|COLLATE|COMMIT|CONSTRAINT|CREATE|CROSS"
    r"|DEFAULT|DEFERRABLE|DELETE|DISTINCT|DROP|ELSE|ESCAPE|EXCEPT|EXISTS|FILTER|FOREIGN|FROM|FULL|GROUP|HAVING|IN"
    r"|INDEX|INDEXED|INNER|INSERT|INTERSECT|INTO|IS|ISNULL|JOIN|LEFT|LIMIT|NATURAL|NOT|NOTHING|NOTNULL|NULL|ON|OR"
    r"|ORDER|OUTER|OVER|PRIMARY|REFERENCES|RETURNING|RIGHT|SELECT|SET|TABLE|THEN|TO|TRANSACTION|UNION|UNIQUE"
    r"|UPDATE|USING|VALUES|WHEN|WHERE|WINDOW)\b"
)


def sqlite_type_ok(text: str, what: str) -> bool:
    """SQLite: its type-name grammar (any names, numeric arguments), no word SQLite reads as the end of the
    type; CorruptArchive otherwise."""
    if len(text) > MAX_TYPE_TEXT or not _TYPE.fullmatch(text):
        raise refuse_type(what, text)
    if _NOT_TYPE_WORD.search(text):
        raise refuse_type(what, text)
    return True


class SQLite(Dialect):
    """SQLite: the URL's file, any value in any column, DDL inside the one transaction."""

    name: ClassVar[str] = "sqlite"
    driver: ClassVar[str] = "pysqlite"
    dynamic_typing: ClassVar[bool] = True
    native_ddl_has_indexes: ClassVar[bool] = False
    drop_at: ClassVar[DropAt] = "before_commit"

    def engine_options(self) -> dict[str, Any]:
        # Transactions are begun explicitly (BEGIN / BEGIN IMMEDIATE): pysqlite's implicit ones do not
        # cover SELECTs, so a snapshot would not be one read transaction.
        return {"isolation_level": "AUTOCOMMIT"}

    def check_url(self, database: str | None, shown_url: str, *, must_exist: bool) -> None:
        db = database or ""
        if db in ("", ":memory:"):
            raise ConfigError(f"db url {shown_url}: an in-memory SQLite database cannot be backed up")
        if must_exist and not Path(db).is_file():
            raise TierUnavailable(f"db {shown_url}: SQLite file {db} does not exist")

    def uses_password(self) -> bool:
        return False

    def missing_database(self, database: str | None) -> bool:
        return not Path(database or "").exists()

    def server_version(self, conn: sa.Connection) -> str:
        return str(conn.exec_driver_sql("SELECT sqlite_version()").scalar())

    def begin_snapshot(self, conn: sa.Connection) -> str:
        # The engine is in autocommit: BEGIN defers the lock to the first read, which then holds one snapshot.
        conn.exec_driver_sql("BEGIN")
        return "one read transaction"

    def end_snapshot(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql("ROLLBACK")

    def reflect_extras(self, conn: sa.Connection, tables: list[TableDesc], *, with_sequences: bool) -> Extras:
        for t in tables:
            ddl = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (t.name,)
            ).scalar()
            t.native_ddl = str(ddl) if ddl else None
            t.indexes = [
                str(r[0])
                for r in conn.exec_driver_sql(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                    (t.name,),
                )
            ]
        return [], []

    def sa_type(self, col: ColumnDesc) -> Any:
        if base_kind(col.type)["kind"] == "numeric":
            import sqlalchemy as sa

            return sa.Text()  # NUMERIC affinity would turn long decimals into lossy REALs
        return super().sa_type(col)

    def native_type_ok(self, text: str, what: str) -> bool:
        return sqlite_type_ok(text, what)

    def begin_load(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    def commit(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql("COMMIT")

    def rollback(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql("ROLLBACK")

    def fit_value(self, v: Any) -> Any:
        """Decimals as text (exact), dates and times as ISO text (as SQLAlchemy stores them), booleans as 0/1."""
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, decimal.Decimal):
            return str(v)
        if isinstance(v, dt.datetime):
            return utc_naive(v).isoformat(" ")
        if isinstance(v, (dt.date, dt.time)):
            return v.isoformat()
        if isinstance(v, dt.timedelta):
            return v.total_seconds()
        return v
