"""Restoring a db undo archive drops the tables its restore created, and nothing else.

A restore of an archive holding tables a (already on the target) and b (not) creates b; the undo command it
prints (run as printed, no target flag) puts a's old rows back, drops b, and leaves every other table alone.
The plan shows the drop. A crafted undo archive whose `created_by_restore` is malformed is exit 3 with the
target unchanged; one naming tables that were not created drops none of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.test_restore_undo import _env, printed_command, run_printed, sk


def _exec(url: str, *stmts: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for stmt in stmts:
                conn.exec_driver_sql(stmt)
    finally:
        engine.dispose()


def _state(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the database and its rows, in key order."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            q = conn.dialect.identifier_preparer.quote
            names = sorted(sa.inspect(conn).get_table_names())
            return {n: [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {q(n)} ORDER BY 1")] for n in names}
    finally:
        engine.dispose()


def _setup(src: str, dst: str) -> None:
    _exec(
        src,
        "CREATE TABLE a (id int NOT NULL PRIMARY KEY, note varchar(40) NOT NULL)",
        "INSERT INTO a VALUES (1, 'new-1'), (2, 'new-2'), (3, 'new-3')",
        "CREATE TABLE b (id int NOT NULL PRIMARY KEY, a_id int NOT NULL REFERENCES a (id))",
        "INSERT INTO b VALUES (10, 1), (20, 2)",
    )
    _exec(
        dst,
        "CREATE TABLE a (id int NOT NULL PRIMARY KEY, note varchar(40) NOT NULL)",
        "INSERT INTO a VALUES (1, 'old-1'), (7, 'old-7')",
        "CREATE TABLE c (id int NOT NULL PRIMARY KEY, v varchar(20) NOT NULL)",
        "INSERT INTO c VALUES (1, 'keep')",
    )


def _restore(src: str, dst: str, tmp_path: Path, age_keys: tuple[str, str]) -> tuple[str, dict[str, str]]:
    """Snapshot `src`, restore it into `dst` (not the configured database); the undo archive's path and env."""
    identity, recipient = age_keys
    archive = tmp_path / "d.statekit"
    proc = sk("snapshot", "--db-url", src, "--to", str(archive), "-r", recipient)
    assert proc.returncode == 0, proc.stderr
    env = _env(STATEKIT_DB_URL=src)
    proc = sk("restore", str(archive), "--tier", "db", "--target-url", dst, "-i", identity, "--yes",
              "--undo-dir", str(tmp_path), env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(_state(dst)) == ["a", "b", "c"]
    return proc.stderr, env


@pytest.fixture
def sqlite_urls(tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield f"sqlite:///{tmp_path / 'src.db'}", f"sqlite:///{tmp_path / 'dst.db'}"


@pytest.fixture(params=["postgresql", "sqlite"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url"), request.getfixturevalue("pg_url2")
    return f"sqlite:///{tmp_path / 'src.db'}", f"sqlite:///{tmp_path / 'dst.db'}"


def test_undo_drops_the_tables_its_restore_created(
    urls: tuple[str, str], tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    identity, _ = age_keys
    src, dst = urls
    _setup(src, dst)
    source, before = _state(src), _state(dst)
    err, env = _restore(src, dst, tmp_path, age_keys)
    command = printed_command(err)
    assert command[command.index("--target-url") + 1] == dst  # not the configured database: named
    undo = command[2]
    plan = sk("restore", undo, "--tier", "db", "--target-url", dst, "-i", identity, "--dry-run", env=env)
    assert plan.returncode == 0, plan.stderr
    drops = [ln for ln in plan.stdout.splitlines() if "drop" in ln.split()[:2]]
    assert len(drops) == 1 and "table: " in drops[0] and "sql: DROP TABLE" in drops[0], plan.stdout
    assert drops[0].split("table: ")[1].split()[0] in ("b", "public.b"), drops[0]
    assert sorted(_state(dst)) == ["a", "b", "c"]  # a dry run changes nothing

    proc = run_printed(command, env)
    assert proc.returncode == 0, proc.stderr
    assert "drop" in proc.stdout and "DROP TABLE" in proc.stdout
    assert _state(dst) == before  # a has its old rows, b is gone, c is untouched
    assert _state(src) == source
    # the undo of the undo brings b back
    proc = run_printed(printed_command(proc.stderr), env)
    assert proc.returncode == 0, proc.stderr
    after = _state(dst)
    assert after["b"] == source["b"] and after["a"] == source["a"] and after["c"] == before["c"]


def test_mysql_undo_drops_the_tables_its_restore_created(
    mysql_url: str, tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    src = f"sqlite:///{tmp_path / 'src.db'}"
    _setup(src, mysql_url)
    before = _state(mysql_url)
    err, env = _restore(src, mysql_url, tmp_path, age_keys)
    proc = run_printed(printed_command(err), env)
    assert proc.returncode == 0, proc.stderr
    assert "DROP TABLE" in proc.stdout
    assert _state(mysql_url) == before


# -- crafted undo archives ------------------------------------------------------------------------------------


def _rewrite(path: Path, out: Path, age_keys: tuple[str, str], change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the archive at `path` (same members) with its snapshot.json changed by `change`."""
    from statekit.archive.format import RESERVED_MEMBERS
    from statekit.archive.keys import X25519Identity, X25519Recipient
    from statekit.archive.reader import Archive
    from statekit.archive.writer import ArchiveWriter
    from statekit.fsio import atomic_output

    identity, recipient = age_keys
    source = Archive(path, [X25519Identity.from_string(Path(identity).read_text().split()[0])])
    snapshot = json.loads(json.dumps(source.snapshot))
    for key in ("format", "format_version", "snapshot_id", "statekit_version"):
        snapshot.pop(key, None)
    change(snapshot)
    metas = {m["name"]: m.get("meta") for m in source.manifest["members"]}
    with atomic_output(out) as fh:
        writer = ArchiveWriter(fh, recipients=[X25519Recipient.from_string(recipient)])
        for m in source.members():
            if m.name not in RESERVED_MEMBERS:
                writer.add(m.name, m.read_all(), meta=metas.get(m.name))
        writer.finish(snapshot)
    return out


def _craft(undo: Path, out: Path, age_keys: tuple[str, str], listed: Any) -> Path:
    """A copy of the undo archive `undo` whose db tier lists `listed` as created_by_restore."""

    def change(snapshot: dict[str, Any]) -> None:
        for tier in snapshot["tiers"]:
            if tier["tier"] == "db":
                tier["details"]["created_by_restore"] = listed

    return _rewrite(undo, out, age_keys, change)


@pytest.mark.parametrize(
    "listed",
    [
        ['b"; DROP TABLE c; --'],
        ["b; DROP TABLE c"],
        ["main.b"],
        ["x" * 65],
        ["b", 7],
        "b",
        ["b"] * 10_001,
    ],
    ids=["quote", "semicolon", "schema-on-sqlite", "too-long", "not-a-string", "not-a-list", "too-many"],
)
def test_malformed_created_by_restore_is_exit_3_and_changes_nothing(
    listed: Any, sqlite_urls: tuple[str, str], tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    src, dst = sqlite_urls
    _setup(src, dst)
    err, env = _restore(src, dst, tmp_path, age_keys)
    restored = _state(dst)
    crafted = _craft(Path(printed_command(err)[2]), tmp_path / "crafted.statekit", age_keys, listed)
    for extra in (["--dry-run"], ["--yes"]):
        proc = sk("restore", str(crafted), "--tier", "db", "--target-url", dst, "-i", age_keys[0], "--undo-dir",
                  str(tmp_path), *extra, env=env)  # fmt: skip
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "created_by_restore" in proc.stderr
        assert _state(dst) == restored


def test_listed_tables_that_were_not_created_are_not_dropped(
    sqlite_urls: tuple[str, str], tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    src, dst = sqlite_urls
    _setup(src, dst)
    err, env = _restore(src, dst, tmp_path, age_keys)
    restored = _state(dst)
    # a: held by the undo archive (restored, never dropped); nosuch: not on the target; b: not listed
    crafted = _craft(Path(printed_command(err)[2]), tmp_path / "crafted.statekit", age_keys, ["a", "nosuch"])
    args = ["restore", str(crafted), "--tier", "db", "--target-url", dst, "-i", age_keys[0], "--undo-dir",
            str(tmp_path)]  # fmt: skip
    plan = sk(*args, "--dry-run", env=env)
    assert "DROP TABLE" not in plan.stdout and " drop " not in plan.stdout, plan.stdout
    # b stays, and it references a, which replace would empty: refused, as for any table kept
    proc = sk(*args, "--yes", env=env)
    assert proc.returncode == 8, proc.stderr
    assert "main.b: references main.a" in proc.stderr
    assert _state(dst) == restored


def test_a_snapshot_listing_created_tables_drops_nothing(
    sqlite_urls: tuple[str, str], tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    """Only an undo archive (one that records restore_target) drops: the same list in a snapshot is inert."""
    src, dst = sqlite_urls
    _setup(src, dst)
    err, env = _restore(src, dst, tmp_path, age_keys)
    crafted = _craft(Path(printed_command(err)[2]), tmp_path / "crafted.statekit", age_keys, ["b"])

    def plain_snapshot(snapshot: dict[str, Any]) -> None:
        del snapshot["restore_target"]
        snapshot["kind"] = "snapshot"

    plain = _rewrite(crafted, tmp_path / "plain.statekit", age_keys, plain_snapshot)
    args = ["restore", str(plain), "--tier", "db", "--target-url", dst, "-i", age_keys[0], "--undo-dir", str(tmp_path)]
    plan = sk(*args, "--dry-run", env=env)
    assert plan.returncode == 0, plan.stderr
    assert "DROP TABLE" not in plan.stdout and " drop " not in plan.stdout, plan.stdout
    # b stays (not dropped) and references a, which replace would empty: refused, with nothing changed
    restored = _state(dst)
    proc = sk(*args, "--yes", env=env)
    assert proc.returncode == 8 and "main.b: references main.a" in proc.stderr, proc.stderr
    assert _state(dst) == restored
