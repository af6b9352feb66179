"""Golden archives: an archive written by format v1 keeps reading, with the same members, modes and mtimes, and
the db and redis archives restore to exactly the content pinned when they were written."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import redis

from fixtures.golden.make_golden import pg_rows, redis_heads, redis_state, sqlite_rows
from statekit.archive.keys import read_identity_file
from statekit.archive.reader import Archive
from statekit.cli import run
from statekit.model import now_ms
from tests.tools import require_tool

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "fixtures" / "golden"
KEYS = REPO / "fixtures" / "keys"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


@pytest.fixture
def identity_file(tmp_path: Path) -> Path:
    # git checks the committed test identity out 0644; a private copy avoids the permissions warning.
    path = tmp_path / "identity.txt"
    shutil.copyfile(GOLDEN / "identity.txt", path)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("name", ["v1-files.statekit", "v1-files-plain.statekit"])
def test_golden_archive_reads_with_expected_manifest(name: str, identity_file: Path) -> None:
    archive = Archive(GOLDEN / name, read_identity_file(identity_file))
    index = archive.index()
    assert index.format["format_version"] == 1
    assert index.snapshot["snapshot_id"] == EXPECTED["snapshot_id"]
    got = {m["name"]: m for m in index.manifest["members"] if m["name"].startswith("files/")}
    want = {m["name"]: m for m in EXPECTED["members"] if m["name"].startswith("files/")}
    assert got == want
    contents = {m.name: m.read_all() for m in archive.members("files/")}
    for member, data in contents.items():
        assert data == (KEYS / member.removeprefix("files/")).read_bytes()
    assert index.manifest["totals"]["files"] == 4


def test_golden_archive_restores_modes_and_mtimes(identity_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["restore", str(GOLDEN / "v1-files.statekit"), "-i", str(identity_file), "--tier", "files",
                "--target", "out", "--yes"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    for m in EXPECTED["members"]:
        if not m["name"].startswith("files/"):
            continue
        path = Path("out") / m["name"].removeprefix("files/")
        assert path.read_bytes() == (KEYS / m["name"].removeprefix("files/")).read_bytes()
        assert f"{path.stat().st_mode & 0o7777:04o}" == m["mode"] == "0600"
        assert path.stat().st_mtime_ns == m["meta"]["mtime_ns"]


def test_golden_archive_reads_with_standard_tools(identity_file: Path, tmp_path: Path) -> None:
    require_tool("age", "zstd", "tar")
    listing = subprocess.run(
        f"age -d -i {identity_file} {GOLDEN / 'v1-files.statekit'} | zstd -d | tar -t",
        shell=True, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert listing == [m["name"] for m in EXPECTED["members"]] + ["MANIFEST.json"]


# -- db and redis: what a reader must get back from the v1 archives of those tiers -----------------------

DB_EXPECTED = json.loads((GOLDEN / "v1-db.expected.json").read_text())
REDIS_EXPECTED = json.loads((GOLDEN / "v1-redis.expected.json").read_text())


def _tier_members(path: Path) -> list[dict[str, object]]:
    archive = Archive(path)
    index = archive.index()
    assert index.format["format_version"] == 1
    assert index.snapshot["snapshot_id"] == EXPECTED["snapshot_id"]
    for m in archive.members():
        m.read_all()  # every member reads back with the size and hash the manifest gives
    return [
        {"name": m["name"], "size": m["size"], "sha256": m["sha256"]}
        for m in index.manifest["members"]
        if m["name"].startswith(("db/", "redis/"))
    ]


@pytest.mark.parametrize(("name", "dialect"), [("v1-db-postgresql", "postgresql"), ("v1-db-sqlite", "sqlite")])
def test_golden_db_archive_members(name: str, dialect: str) -> None:
    assert _tier_members(GOLDEN / f"{name}.statekit") == DB_EXPECTED[dialect]["members"]


def test_golden_postgresql_archive_restores_the_pinned_rows(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["restore", str(GOLDEN / "v1-db-postgresql.statekit"), "--tier", "db", "--target-url", pg_url,
                "--yes", "--no-undo"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    want = DB_EXPECTED["postgresql"]
    for table, order in want["order"].items():
        assert pg_rows(pg_url, table, order) == want["tables"][table], table


def test_golden_sqlite_archive_restores_the_pinned_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "restored.sqlite"
    sqlite3.connect(target).close()
    code = run(["restore", str(GOLDEN / "v1-db-sqlite.statekit"), "--tier", "db", "--target-url",
                f"sqlite:///{target}", "--yes", "--no-undo"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    want = DB_EXPECTED["sqlite"]
    for table, order in want["order"].items():
        assert sqlite_rows(target, table, order) == want["tables"][table], table


def test_golden_redis_archive_members_and_record_heads() -> None:
    assert _tier_members(GOLDEN / "v1-redis.statekit") == REDIS_EXPECTED["members"]
    assert redis_heads(Archive(GOLDEN / "v1-redis.statekit")) == REDIS_EXPECTED["heads"]


def test_golden_redis_archive_restores_the_pinned_keys(
    redis_url: str, redis_url2: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Into whichever Redis the tests run on: a 7.0 archive into 6.2 goes through the portable path."""
    dbs = {"0": redis_url, "3": redis_url2}
    db_map = [f"--db-map={src}:{url.rsplit('/', 1)[1]}" for src, url in dbs.items()]
    code = run(["restore", str(GOLDEN / "v1-redis.statekit"), "--tier", "redis", "--target-url", redis_url,
                *db_map, "--yes", "--no-undo"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    for src, url in dbs.items():
        assert redis_state(url) == REDIS_EXPECTED["state"][src], f"db{src}"
    expiries = {r[4]: r[3] for m in REDIS_EXPECTED["heads"].values() for r in m["records"] if r[3] > 0}
    assert set(expiries) == {"s:ttl", "h:small"}
    with redis.Redis.from_url(redis_url) as r:
        for key, expire_at in expiries.items():
            # the archived absolute expiry, give or take the time the restore took
            assert abs(now_ms() + r.pttl(key.encode("latin-1")) - expire_at) < 60_000, key
