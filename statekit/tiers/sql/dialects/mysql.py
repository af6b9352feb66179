"""MySQL and MariaDB (pymysql): one database per URL, DDL that commits at once, `SHOW CREATE TABLE`."""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any, ClassVar

from statekit.tiers.sql.dialects.base import (
    MAX_TYPE_TEXT,
    Dialect,
    DropAt,
    Extras,
    driver_sql,
    refuse_type,
    utc_naive,
)
from statekit.tiers.sql.schema import ColumnDesc, TableDesc, base_kind

if TYPE_CHECKING:
    import sqlalchemy as sa

_CHARS = re.compile(r"[A-Za-z0-9_ (),]*")
_TYPE = re.compile(
    r"(?:TINYINT|SMALLINT|MEDIUMINT|INT|INTEGER|BIGINT|DECIMAL|NUMERIC|DEC|FIXED|FLOAT|DOUBLE|DOUBLE PRECISION"
    r"|REAL|BIT|BOOL|BOOLEAN|DATE|DATETIME|TIMESTAMP|TIME|YEAR|CHAR|VARCHAR|NCHAR|NVARCHAR|BINARY|VARBINARY"
    r"|TINYBLOB|BLOB|MEDIUMBLOB|LONGBLOB|TINYTEXT|TEXT|MEDIUMTEXT|LONGTEXT|JSON|UUID|INET4|INET6|GEOMETRY|POINT"
    r"|LINESTRING|POLYGON|MULTIPOINT|MULTILINESTRING|MULTIPOLYGON|GEOMETRYCOLLECTION)"
    r"(?: ?\(\d{1,5}(?:, ?\d{1,3})?\))?(?: UNSIGNED)?(?: ZEROFILL)?"
    r"(?: CHARACTER SET [A-Za-z0-9_]{1,64})?(?: COLLATE [A-Za-z0-9_]{1,64})?",
    re.IGNORECASE,
)
_AUTO_INC = re.compile(r"\s+AUTO_INCREMENT=\d+")
_CREATE_HEAD = re.compile(r"CREATE TABLE `(?:[^`]|``)+`")
_ESCAPES = {"0": "\0", "n": "\n", "r": "\r", "Z": "\x1a", "\\": "\\", "'": "'", '"': '"'}


def my_type_ok(text: str, what: str) -> bool:
    """MySQL/MariaDB: True for a plain built-in type name; CorruptArchive for anything that is not a name."""
    if len(text) > MAX_TYPE_TEXT or not _CHARS.fullmatch(text):
        raise refuse_type(what, text)
    return bool(_TYPE.fullmatch(text))


def _unescape(label: str) -> str:
    # SQLAlchemy reads MySQL enum labels from SHOW CREATE TABLE with their backslash escapes still in
    out: list[str] = []
    chars = iter(label)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append(_ESCAPES.get(nxt, nxt))
        else:
            out.append(ch)
    return "".join(out)


def _unquote_names(t: TableDesc) -> None:
    # SQLAlchemy reads column names out of SHOW CREATE TABLE and leaves a backtick in a name doubled
    def fix(names: list[str]) -> list[str]:
        return [n.replace("``", "`") for n in names]

    for c in t.columns:
        c.name = c.name.replace("``", "`")
    t.primary_key = fix(t.primary_key)
    t.unique = [fix(u) for u in t.unique]
    for fk in t.foreign_keys:
        fk["columns"], fk["ref_columns"] = fix(fk["columns"]), fix(fk["ref_columns"])


class MySQL(Dialect):
    """MySQL and MariaDB: tables of the URL's database, DDL outside transactions (new tables are staged)."""

    name: ClassVar[str] = "mysql"
    driver: ClassVar[str] = "pymysql"
    transactional_ddl: ClassVar[bool] = False
    stages_new_tables: ClassVar[bool] = True
    drop_at: ClassVar[DropAt] = "after_commit"
    quote_char: ClassVar[str] = "`"

    def server_version(self, conn: sa.Connection) -> str:
        return str(conn.exec_driver_sql("SELECT VERSION()").scalar())

    def begin_snapshot(self, conn: sa.Connection) -> str:
        conn.exec_driver_sql("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        return "REPEATABLE READ, WITH CONSISTENT SNAPSHOT"

    def reflect_extras(self, conn: sa.Connection, tables: list[TableDesc], *, with_sequences: bool) -> Extras:
        for t in tables:
            _unquote_names(t)
            row = conn.exec_driver_sql(driver_sql(conn, f"SHOW CREATE TABLE {self.quote(t.name)}")).fetchone()
            t.native_ddl = str(row[1]) if row else None
            for c in t.columns:
                if c.type.get("kind") == "enum":
                    c.type["labels"] = [_unescape(x) for x in c.type["labels"]]
        return [], []

    def sa_type(self, col: ColumnDesc) -> Any:
        """Wide enough: MySQL's TEXT/BLOB stop at 64 KiB and its DECIMAL defaults to (10,0)."""
        # SQLAlchemy's MySQL dialect (all its drivers with it) loads only when a MySQL database is in play
        import sqlalchemy as sa
        from sqlalchemy.dialects import mysql as my_types

        p = base_kind(col.type)
        kind = p["kind"]
        if kind == "numeric":
            prec, scale = p.get("precision"), p.get("scale")
            return sa.Numeric(min(int(prec), 65), scale) if prec else sa.Numeric(65, 30)
        if kind == "text" and not p.get("length"):
            return my_types.LONGTEXT()
        if kind == "enum":
            # SQLAlchemy doubles both quotes and backslashes in the labels: no label can end its literal early
            return my_types.ENUM(*(p.get("labels") or []))
        if kind == "bytes":
            return my_types.LONGBLOB()
        if kind == "time":
            return my_types.TIME(fsp=6)
        if kind in ("timestamp", "timestamptz"):
            return my_types.DATETIME(fsp=6)
        return super().sa_type(col)

    def native_type_ok(self, text: str, what: str) -> bool:
        return my_type_ok(text, what)

    def validates_native(self, col: ColumnDesc) -> bool:
        return bool(base_kind(col.type)["kind"] != "enum")  # rebuilt from its labels

    def native_statement(self, table: TableDesc, staging: str | None = None) -> str | None:
        """Without the AUTO_INCREMENT position (the inserted ids advance it anyway), under `staging` if given,
        ready for pymysql (whose placeholders start with %: a literal % doubled)."""
        if not table.native_ddl:
            return None
        stmt = _AUTO_INC.sub("", table.native_ddl)
        if staging:
            stmt, n = _CREATE_HEAD.subn(f"CREATE TABLE `{staging}`", stmt, count=1)
            if not n:
                return None
        return stmt.replace("%", "%%")

    def begin_load(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql("SET SESSION foreign_key_checks = 0")
        conn.exec_driver_sql("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')")

    def upsert(self, insert: str, key: list[str], rest: list[str]) -> str:
        q = self.quote
        upd = ", ".join(f"{q(c)} = VALUES({q(c)})" for c in (rest or key[:1]))
        return f"{insert} ON DUPLICATE KEY UPDATE {upd}"

    def fit_value(self, v: Any) -> Any:
        """DATETIME has no zone: instants go in as UTC."""
        return utc_naive(v) if isinstance(v, dt.datetime) else v
