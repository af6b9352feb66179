"""One contract for every SQL dialect (PostgreSQL, MariaDB/MySQL, SQLite), run against the real servers.

Each dialect gets the same suite: the Dialect chosen from the URL, quoting of hostile identifiers, portable
types as reflected, the torture table's round trip, plan-then-restore, the replace/merge/append modes and undo.
PostgreSQL runs in a database of its own, MariaDB in `test` under table names of its own (dropped afterwards),
SQLite in a file under tmp_path.
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from statekit.archive.reader import Archive
from statekit.config import DbConfig
from statekit.errors import Refused, StatekitError
from statekit.model import RestoreOptions
from statekit.tiers.sql import plan_db_restore
from statekit.tiers.sql.connect import DbTarget
from statekit.tiers.sql.dialects import DIALECTS, Dialect, dialect_for
from statekit.tiers.sql.schema import ARCHIVE_DIALECTS
from tests.db_support import FileUndo, restore, snap

# Names no dialect may mangle: quotes of every kind, spaces, dots, a percent sign, non-ASCII letters.
TORTURE = 'tor"ture `x`'
HOSTILE = ['we"ird', "back`tick", "sp ace", "dot.ted", "per%cent", "ünï", "O'Brien", "select"]


class Db:
    """One database of one dialect, with the tables of this test named under a prefix of their own."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.dialect = DbTarget(url, must_exist=False).dialect

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    def q(self, base: str) -> str:
        return self.dialect.quote(self.name(base))

    def run(self, *statements: str) -> None:
        """Statements as they are (no parameters, so a % in a name is only a %), then COMMIT."""
        with self.engine.connect() as conn:
            raw: Any = conn.connection.driver_connection
            cur = raw.cursor()
            for s in statements:
                cur.execute(s)
            cur.close()
            raw.commit()

    def rows(self, base: str) -> list[tuple[Any, ...]]:
        """Every row in the order of the first column, as the driver returns it."""
        with self.engine.connect() as conn:
            raw: Any = conn.connection.driver_connection
            cur = raw.cursor()
            cur.execute(f"SELECT * FROM {self.q(base)} ORDER BY 1")
            out = [tuple(r) for r in cur.fetchall()]
            cur.close()
            raw.rollback()
            return out

    def tables(self) -> set[str]:
        with self.engine.connect() as conn:
            return {n for n in sa.inspect(conn).get_table_names() if n.startswith(self.prefix)}

    def cfg(self) -> dict[str, Any]:
        return {"include": [f"{self.prefix}*"]}

    def drop_all(self) -> None:
        for name in sorted(self.tables(), key=lambda n: "child" not in n):
            self.run(f"DROP TABLE {self.dialect.quote(name)}")


@pytest.fixture(params=DIALECTS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    name = request.param
    prefix = f"c{uuid.uuid4().hex[:6]}_"
    if name == "postgresql":
        yield Db(request.getfixturevalue("pg_url"), prefix)
        return
    if name == "sqlite":
        path = tmp_path / "contract.db"
        sa.create_engine(f"sqlite:///{path}").dispose()
        path.touch()
        yield Db(f"sqlite:///{path}", prefix)
        return
    url = os.environ.get("STATEKIT_TEST_MYSQL_URL")
    if not url:
        pytest.skip("STATEKIT_TEST_MYSQL_URL is not set")
    d = Db(make_url(url).update_query_dict({"charset": "utf8mb4"}).render_as_string(hide_password=False), prefix)
    try:
        yield d
    finally:
        d.drop_all()
        d.engine.dispose()


def _torture(db: Db) -> None:
    """A keyed table with a hostile name and hostile column names, every portable type, edge values; a parent
    and a child with a foreign key."""
    md = sa.MetaData()
    big = 2**63 - 1
    t = sa.Table(
        db.name(TORTURE), md,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column('we"ird', sa.Text), sa.Column("back`tick", sa.String(40)), sa.Column("select", sa.Integer),
        sa.Column("sp ace", sa.Boolean), sa.Column("num", sa.Numeric(30, 10)), sa.Column("dbl", sa.Double),
        sa.Column("d", sa.Date), sa.Column("ts", sa.DateTime), sa.Column("bin", sa.LargeBinary),
        sa.Column("ünï", sa.SmallInteger),
    )  # fmt: skip
    parent = sa.Table(db.name("parent"), md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False))
    child = sa.Table(
        db.name("child"), md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("p", sa.Integer, sa.ForeignKey(parent.c.id)),
    )  # fmt: skip
    rows: list[dict[str, Any]] = [
        {"id": 1},
        {
            "id": 2, 'we"ird': "", "back`tick": "", "select": -(2**31), "sp ace": False,
            "num": decimal.Decimal("-12345678901234567890.0123456789"), "dbl": -1.7976931348623157e308,
            "d": dt.date(1000, 1, 1), "ts": dt.datetime(1970, 1, 1, 0, 0, 0, 1), "bin": b"", "ünï": -32768,
        },
        {
            "id": big, 'we"ird': "tab\there\nnew\r\\ 'q' \"dq\" ` 😀 مرحبا" + "long " * 20000,
            "back`tick": "émoji 😀", "select": 2**31 - 1, "sp ace": True,
            "num": decimal.Decimal("12345678901234567890.0000000001"), "dbl": 2.2250738585072014e-308,
            "d": dt.date(9999, 12, 31), "ts": dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
            "bin": bytes(range(256)) * 3, "ünï": 32767,
        },
    ]  # fmt: skip
    with warnings.catch_warnings(), db.engine.connect() as conn:
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        md.create_all(conn)
        conn.execute(t.insert(), rows)
        conn.execute(parent.insert(), [{"id": 1}, {"id": 2}])
        conn.execute(child.insert(), [{"id": 10, "p": 1}, {"id": 11, "p": 2}, {"id": 12, "p": None}])
        conn.commit()


TABLES = (TORTURE, "parent", "child")


def _everything(db: Db) -> dict[str, list[tuple[Any, ...]]]:
    return {t: db.rows(t) for t in TABLES}


def test_the_dialect_comes_from_the_url_and_knows_its_archive_name(db: Db) -> None:
    assert isinstance(db.dialect, Dialect)
    assert db.dialect is dialect_for(db.dialect.name)
    assert set(DIALECTS) == set(ARCHIVE_DIALECTS)
    assert db.dialect.extended_types == ARCHIVE_DIALECTS[db.dialect.name]
    with db.engine.connect() as conn:
        assert db.dialect.server_version(conn)
        assert db.dialect.quote("x") == conn.dialect.identifier_preparer.quote_identifier("x")


def test_hostile_identifiers_are_quoted_and_round_trip(db: Db, tmp_path: Path) -> None:
    for i, name in enumerate(HOSTILE):
        table = db.q(f"{i}{name}")
        col = db.dialect.quote(name)
        db.run(f"CREATE TABLE {table} ({col} INTEGER PRIMARY KEY)", f"INSERT INTO {table} ({col}) VALUES ({i})")
        assert db.rows(f"{i}{name}") == [(i,)]
    with warnings.catch_warnings(), db.engine.connect() as conn:
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        tables = db.dialect.reflect(conn, [], db.cfg()["include"], [])[0]
        conn.rollback()
    reflected = {t.name: ([c.name for c in t.columns], t.primary_key) for t in tables}
    assert reflected == {db.name(f"{i}{name}"): ([name], [name]) for i, name in enumerate(HOSTILE)}
    archive, _ = snap(db.url, tmp_path / "a.statekit", **db.cfg())
    for i, name in enumerate(HOSTILE):
        db.run(f"DELETE FROM {db.q(f'{i}{name}')}")
    restore(archive, db.url)
    assert [db.rows(f"{i}{name}") for i, name in enumerate(HOSTILE)] == [[(i,)] for i in range(len(HOSTILE))]
    db.drop_all()
    restore(archive, db.url, mode="merge")  # every table created again, under its own name
    assert db.tables() == {db.name(f"{i}{name}") for i, name in enumerate(HOSTILE)}


def test_types_are_reflected_as_portable_kinds(db: Db) -> None:
    _torture(db)
    with warnings.catch_warnings(), db.engine.connect() as conn:
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        db.dialect.begin_snapshot(conn)
        tables, enums, domains, _ = db.dialect.reflect(conn, [], db.cfg()["include"], [])
        db.dialect.end_snapshot(conn)
    assert (enums, domains) == ([], [])
    by_name = {t.name: t for t in tables}
    assert [t.name for t in tables].index(db.name("parent")) < [t.name for t in tables].index(db.name("child"))
    torture = by_name[db.name(TORTURE)]
    kinds = {c.name: c.type["kind"] for c in torture.columns}
    expected_bool = "int" if db.dialect.name == "mysql" else "bool"  # MySQL's BOOL is TINYINT(1)
    assert kinds == {
        "id": "int", 'we"ird': "text", "back`tick": "text", "select": "int", "sp ace": expected_bool,
        "num": "numeric", "dbl": "float", "d": "date", "ts": "timestamp", "bin": "bytes", "ünï": "int",
    }  # fmt: skip
    assert torture.primary_key == ["id"]
    assert by_name[db.name("child")].foreign_keys[0]["ref_table"] == db.name("parent")


def test_torture_round_trip(db: Db, tmp_path: Path) -> None:
    _torture(db)
    before = _everything(db)
    archive, summary = snap(db.url, tmp_path / "a.statekit", **db.cfg())
    assert summary.details["dialect"] == db.dialect.name
    encodings = set(summary.details["encoding"].split("+"))
    assert encodings <= {"copy", "pgbinary"} if db.dialect.native_copy else encodings == {"jsonl"}
    db.drop_all()
    restore(archive, db.url)
    assert _everything(db) == before


def test_plan_then_restore(db: Db, tmp_path: Path) -> None:
    _torture(db)
    before = _everything(db)
    archive, _ = snap(db.url, tmp_path / "a.statekit", **db.cfg())
    db.run(f"DELETE FROM {db.q('child')} WHERE id = 12", f"INSERT INTO {db.q('parent')} (id) VALUES (3)")
    changed = _everything(db)
    plan = plan_db_restore(archive, RestoreOptions(tier="db", target=db.url), DbConfig())
    assert plan.dry_run and plan.problems == []
    lines = {p["table"].rpartition(".")[2]: p for p in plan.plan}
    assert lines[db.name("parent")]["remove"] == 3 and lines[db.name("parent")]["rows"] == 2
    assert lines[db.name("child")]["action"] == "replace"
    assert _everything(db) == changed  # the plan wrote nothing
    report = restore(archive, db.url)
    assert report.counts["rows"] == 3 + 2 + 3
    assert _everything(db) == before


def test_replace_merge_append(db: Db, tmp_path: Path) -> None:
    kv = db.q("kv")
    db.run(f"CREATE TABLE {kv} (k INTEGER PRIMARY KEY, v VARCHAR(20))", f"INSERT INTO {kv} VALUES (1, 'a'), (2, 'b')")
    archive, _ = snap(db.url, tmp_path / "a.statekit", **db.cfg())
    db.run(f"DELETE FROM {kv}", f"INSERT INTO {kv} VALUES (2, 'old'), (3, 'c')")
    restore(archive, db.url, mode="merge")
    assert db.rows("kv") == [(1, "a"), (2, "b"), (3, "c")]
    with pytest.raises((StatekitError, sa.exc.IntegrityError)):
        restore(archive, db.url, mode="append")
    assert db.rows("kv") == [(1, "a"), (2, "b"), (3, "c")]  # the failed append changed nothing
    db.run(f"DELETE FROM {kv} WHERE k < 3")
    restore(archive, db.url, mode="append")
    assert db.rows("kv") == [(1, "a"), (2, "b"), (3, "c")]
    restore(archive, db.url, mode="replace")
    assert db.rows("kv") == [(1, "a"), (2, "b")]


def test_undo_puts_back_what_the_restore_replaced(db: Db, tmp_path: Path) -> None:
    _torture(db)
    archive, _ = snap(db.url, tmp_path / "a.statekit", **db.cfg())
    db.run(
        f"DELETE FROM {db.q('child')} WHERE id = 12",
        f"INSERT INTO {db.q('parent')} (id) VALUES (3)",
        f"UPDATE {db.q(TORTURE)} SET {db.dialect.quote('select')} = 5 WHERE id = 1",
    )
    before = _everything(db)
    undo = FileUndo(tmp_path / "undo.statekit")
    report = restore(archive, db.url, undo=undo)
    assert undo.sealed and report.undo_archive == str(tmp_path / "undo.statekit")
    assert _everything(db) != before
    restore(Archive(tmp_path / "undo.statekit"), db.url)
    assert _everything(db) == before


def test_an_incompatible_target_is_refused_and_left_alone(db: Db, tmp_path: Path) -> None:
    kv = db.q("kv")
    db.run(f"CREATE TABLE {kv} (k INTEGER PRIMARY KEY, v VARCHAR(200))", f"INSERT INTO {kv} VALUES (1, 'long')")
    archive, _ = snap(db.url, tmp_path / "a.statekit", **db.cfg())
    db.run(f"DROP TABLE {kv}", f"CREATE TABLE {kv} (k INTEGER PRIMARY KEY, v VARCHAR(2))")
    db.run(f"INSERT INTO {kv} VALUES (5, 'x')")
    if db.dialect.dynamic_typing:
        restore(archive, db.url)  # any value fits any column
        assert db.rows("kv") == [(1, "long")]
        return
    with pytest.raises(Refused, match="longer values"):
        restore(archive, db.url)
    assert db.rows("kv") == [(5, "x")]
