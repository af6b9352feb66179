"""Snapshot consistency under concurrent writes, and all-or-nothing restores (failed last table, killed
connection, archive damaged at its end) on real servers."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from statekit.errors import CorruptArchive, TierError, TierUnavailable
from statekit.tiers.sql.connect import DbTarget
from tests.db_support import execute, fetch, restore, snap

ACCOUNTS = 100_000
START = 100


def _sum_archive(archive: Any) -> dict[str, int]:
    """Sum of the amount column per table, read straight from the archived data segments."""
    from statekit.tiers.base import decode
    from statekit.tiers.sql.members import DbDecoder

    totals: dict[str, int] = {}
    for segment in decode(archive, DbDecoder()):
        table = str(segment.table["name"])
        for row in segment.rows():
            totals[table] = totals.get(table, 0) + int(str(row[1]))
    return totals


@pytest.mark.parametrize("jobs", [1, 2])
def test_snapshot_is_consistent_while_a_writer_moves_money(pg_url: str, tmp_path: Path, jobs: int) -> None:
    """Money moves from acct_a to acct_b in committed transactions while the snapshot is under way (right
    after its first data segment, so at least one table is still to be read): the archive holds the state of
    the moment the snapshot began, in both tables, not a mix."""
    for t in ("acct_a", "acct_b"):
        execute(
            pg_url,
            f"CREATE TABLE {t} (id int PRIMARY KEY, amount bigint NOT NULL, pad text)",
            f"INSERT INTO {t} SELECT g, {START}, repeat('x', 200) FROM generate_series(1, {ACCOUNTS}) g",
        )
    conninfo = DbTarget(pg_url).psycopg_conninfo()
    moved = [0]

    def transfers_while_snapshotting(tier: str, rows: int, nbytes: int) -> None:
        if moved[0]:
            return
        rnd = random.Random(7)
        with psycopg.connect(conninfo, autocommit=False) as conn:
            for _ in range(200):
                k = rnd.randint(1, 50)
                conn.execute("UPDATE acct_a SET amount = amount - %s WHERE id = %s", (k, rnd.randint(1, ACCOUNTS)))
                conn.execute("UPDATE acct_b SET amount = amount + %s WHERE id = %s", (k, rnd.randint(1, ACCOUNTS)))
                conn.commit()
                moved[0] += k

    archive, _ = snap(pg_url, tmp_path / "a.statekit", jobs=jobs, progress=transfers_while_snapshotting)
    assert moved[0] > 0
    assert _sum_archive(archive) == {"acct_a": ACCOUNTS * START, "acct_b": ACCOUNTS * START}
    assert fetch(pg_url, "SELECT (SELECT sum(amount) FROM acct_a), (SELECT sum(amount) FROM acct_b)") == [
        (ACCOUNTS * START - moved[0], ACCOUNTS * START + moved[0])
    ]


def _three_tables(url: str, dialect: str, *, check: bool) -> None:
    big = "BIGINT" if dialect != "sqlite" else "INTEGER"
    stmts = [f"CREATE TABLE t{i} (id {big} PRIMARY KEY, val INTEGER)" for i in (1, 2)]
    stmts.append(f"CREATE TABLE t3 (id {big} PRIMARY KEY, val INTEGER{' CHECK (val < 1000)' if check else ''})")
    execute(url, *stmts)


def _contents(url: str) -> list[list[tuple[Any, ...]]]:
    return [fetch(url, f"SELECT id, val FROM t{i} ORDER BY id") for i in (1, 2, 3)]


@pytest.fixture
def sqlite_pair(tmp_path: Path) -> tuple[str, str]:
    a, b = tmp_path / "src.sqlite", tmp_path / "dst.sqlite"
    for p in (a, b):
        sa.create_engine(f"sqlite:///{p}").connect().close()
    return f"sqlite:///{a}", f"sqlite:///{b}"


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
def test_restore_failing_on_its_last_table_leaves_the_target_unchanged(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if dialect == "postgresql":
        src, dst = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_url2")
    elif dialect == "mysql":
        src = request.getfixturevalue("mysql_url")
        import pymysql
        from sqlalchemy.engine import make_url

        u = make_url(src)
        name = (u.database or "") + "_dst"
        conn = pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "")
        conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        conn.close()
        dst = u.set(database=name).render_as_string(hide_password=False)
        request.addfinalizer(lambda: execute(src, f"DROP DATABASE IF EXISTS `{name}`"))
    else:
        src, dst = request.getfixturevalue("sqlite_pair")
    _three_tables(src, dialect, check=False)
    execute(src, *[f"INSERT INTO t{i} VALUES (1, {i}), (2, 5000)" for i in (1, 2, 3)])
    archive, _ = snap(src, tmp_path / "a.statekit")
    _three_tables(dst, dialect, check=True)
    execute(dst, *[f"INSERT INTO t{i} VALUES (7, {i * 10})" for i in (1, 2, 3)])
    before = _contents(dst)
    with pytest.raises(TierError):
        restore(archive, dst)
    assert _contents(dst) == before


def test_restore_whose_connection_is_killed_leaves_the_target_unchanged(
    pg_url: str, pg_url2: str, tmp_path: Path
) -> None:
    for url in (pg_url, pg_url2):
        _three_tables(url, "postgresql", check=False)
    execute(pg_url, *[f"INSERT INTO t{i} SELECT g, g FROM generate_series(1, 1000) g" for i in (1, 2, 3)])
    execute(pg_url2, *[f"INSERT INTO t{i} VALUES (7, {i})" for i in (1, 2, 3)])
    archive, _ = snap(pg_url, tmp_path / "a.statekit")
    before = _contents(pg_url2)
    killed: list[int] = []

    target_db = make_url(pg_url2).database

    def kill(tier: str, rows: int, nbytes: int) -> None:
        if killed:
            return
        killed.extend(
            r[0]
            for r in fetch(
                pg_url,
                "SELECT pg_terminate_backend(pid)::int FROM pg_stat_activity "
                "WHERE application_name = 'statekit-restore' AND pid <> pg_backend_pid() "
                f"AND datname = '{target_db}'",  # this test's restore only, not another one on the same server
            )
        )

    with pytest.raises((TierUnavailable, TierError)):
        restore(archive, pg_url2, progress=kill)
    assert killed == [1]
    assert _contents(pg_url2) == before


def test_archive_damaged_at_its_end_rolls_the_restore_back(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    for url in (pg_url, pg_url2):
        _three_tables(url, "postgresql", check=False)
    execute(pg_url, *[f"INSERT INTO t{i} VALUES (1, 1)" for i in (1, 2, 3)])
    execute(pg_url2, *[f"INSERT INTO t{i} VALUES (9, 9)" for i in (1, 2, 3)])
    archive, _ = snap(pg_url, tmp_path / "a.statekit")
    before = _contents(pg_url2)
    # Rewrite the archive with a bad manifest hash: data reads fine, the pass fails only at its end.
    from statekit.archive.reader import Archive
    from statekit.archive.writer import ArchiveWriter
    from statekit.fsio import atomic_output

    bad = tmp_path / "bad.statekit"
    with atomic_output(bad) as fh:
        w = ArchiveWriter(fh, recipients=None)
        for m in archive.members("db/"):
            w.add(m.name, m.read_all())
        w.entries[-1].sha256 = "0" * 64
        w.finish({})
    with pytest.raises(CorruptArchive):
        restore(Archive(bad), pg_url2)
    assert _contents(pg_url2) == before
