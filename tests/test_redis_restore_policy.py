"""Conflicts, undo, flush and dry run of a redis restore."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from statekit.archive.reader import Archive
from statekit.config import RedisConfig
from statekit.errors import Refused
from statekit.model import RestoreOptions
from statekit.tiers.redis import plan_redis_restore
from tests.redis_support import client, put_back, same_state, state, take


def _db(url: str) -> int:
    return int(url.rsplit("/", 1)[1])


@pytest.fixture
def archive(redis_url: str, tmp_path: Path) -> Archive:
    with client(redis_url) as r:
        r.set(b"a", b"archived-a")
        r.set(b"b", b"archived-b")
        r.hset(b"h", b"f", b"archived")
    a, _ = take(tmp_path / "src.statekit", RedisConfig(url=redis_url, dbs=[_db(redis_url)]))
    return a


def _target(url: str) -> None:
    with client(url) as r:
        r.set(b"a", b"live-a", px=500_000)
        r.set(b"z", b"live-only")


def test_dry_run_plans_and_writes_nothing(archive: Archive, redis_url: str, redis_url2: str) -> None:
    _target(redis_url2)
    before = state(redis_url2)
    opts = RestoreOptions(tier="redis", target=redis_url2, db_map={_db(redis_url): _db(redis_url2)})
    rep = plan_redis_restore(archive, opts, RedisConfig())
    assert rep.dry_run
    assert rep.counts == {"create": 2, "replace": 1, "skip": 0, "expired": 0, "uncarriable": 0, "delete": 0}
    assert {"action": "replace", "key": "a"} in rep.plan[0]["examples"]
    same_state(state(redis_url2), before)


def test_replace_saves_undo_that_puts_target_back(
    archive: Archive, redis_url: str, redis_url2: str, tmp_path: Path
) -> None:
    _target(redis_url2)
    before = state(redis_url2)
    rep = put_back(archive, redis_url2, undo_path=tmp_path / "undo.statekit", db_map={_db(redis_url): _db(redis_url2)})
    assert rep.counts == {"created": 2, "replaced": 1, "skipped": 0, "expired": 0, "failed": 0, "deleted": 0}
    assert rep.undo_archive == str(tmp_path / "undo.statekit")
    with client(redis_url2) as r:
        assert r.get(b"a") == b"archived-a" and r.pttl(b"a") == -1
        assert r.get(b"z") == b"live-only"
    undo = Archive(tmp_path / "undo.statekit")
    assert undo.manifest["totals"]["keys"] == 1  # the replaced key's old value
    absent = sum(m.get("meta", {}).get("absent", 0) for m in undo.manifest["members"])
    assert absent == 2  # the created keys, deleted again when the undo archive is restored
    plan = plan_redis_restore(undo, RestoreOptions(tier="redis", target=redis_url2), RedisConfig())
    assert plan.counts["replace"] == 1 and plan.counts["delete"] == 2
    rep = put_back(undo, redis_url2)
    assert rep.counts["replaced"] == 1 and rep.counts["deleted"] == 2
    with client(redis_url2) as r:
        assert r.get(b"a") == b"live-a" and 0 < r.pttl(b"a") <= 500_000
    same_state(state(redis_url2), before)


def test_skip_keeps_existing(archive: Archive, redis_url: str, redis_url2: str) -> None:
    _target(redis_url2)
    rep = put_back(archive, redis_url2, conflict="skip", db_map={_db(redis_url): _db(redis_url2)})
    assert rep.counts["skipped"] == 1 and rep.counts["created"] == 2
    with client(redis_url2) as r:
        assert r.get(b"a") == b"live-a"


def test_fail_refuses_before_writing(archive: Archive, redis_url: str, redis_url2: str) -> None:
    _target(redis_url2)
    before = state(redis_url2)
    with pytest.raises(Refused) as err:
        put_back(archive, redis_url2, conflict="fail", db_map={_db(redis_url): _db(redis_url2)})
    assert err.value.exit_code == 8
    same_state(state(redis_url2), before)


def test_flush_empties_target_after_saving_it(
    archive: Archive, redis_url: str, redis_url2: str, tmp_path: Path
) -> None:
    _target(redis_url2)
    before = state(redis_url2)
    rep = put_back(
        archive, redis_url2, flush=True, undo_path=tmp_path / "u.statekit", db_map={_db(redis_url): _db(redis_url2)}
    )
    assert rep.counts["created"] == 3
    with client(redis_url2) as r:
        assert sorted(r.keys()) == [b"a", b"b", b"h"]
        r.flushdb()
    put_back(Archive(tmp_path / "u.statekit"), redis_url2)
    after = state(redis_url2)
    assert after.keys() == before.keys()


def test_string_written_by_someone_else_during_restore_is_left_alone(redis_url: str, tmp_path: Path) -> None:
    """New strings go in as MSETNX batches; when a batch finds one of its keys already there (written since
    the plan, or listed twice by SCAN), nothing of that batch is overwritten: it is redone key by key with
    SET NX, and only the key that was there is skipped."""
    import redis as redis_py

    from statekit.archive.writer import ArchiveWriter
    from statekit.fsio import atomic_output
    from statekit.model import TierSummary, now_ms
    from statekit.tiers.redis.records import _HEAD, NO_EXPIRY, TAG_VALUE, TYPE_STRING, RecordWriter

    path = tmp_path / "dup.statekit"
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=None)
        rec = RecordWriter(w, 0, "7.0.0", now_ms())
        records = [(b"k%d" % i, b"v%d" % i) for i in range(1500)] + [(b"k5", b"second")]
        for key, value in records:
            rec.add_raw([_HEAD.pack(TAG_VALUE, TYPE_STRING, 0, NO_EXPIRY, len(key), len(value)), key, value],
                        20 + len(key) + len(value), 1)  # fmt: skip
        rec.flush()
        w.finish({"tiers": [TierSummary("redis", counts={"keys": len(records)}).to_json()]})
    rep = put_back(Archive(path), redis_url, db_map={0: int(redis_url.rsplit("/", 1)[1])})
    assert rep.counts["created"] == 1500 and rep.counts["skipped"] == 1
    with redis_py.Redis.from_url(redis_url) as r:
        assert r.dbsize() == 1500
        assert r.get(b"k5") == b"v5" and r.get(b"k1499") == b"v1499"


def test_keys_the_target_cannot_load_refuse_the_restore_unless_skipped(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module-type payload from another server version cannot be loaded: the restore refuses (exit 8)
    naming the key and the way out; with --skip-uncarriable the other keys go in and the key is listed."""
    import struct

    from statekit.archive.writer import ArchiveWriter
    from statekit.cli import run
    from statekit.fsio import atomic_output
    from statekit.model import TierSummary, now_ms
    from statekit.tiers.redis.records import (
        _HEAD,
        NO_EXPIRY,
        TAG_DUMP,
        TAG_VALUE,
        TYPE_MODULE,
        TYPE_STRING,
        RecordWriter,
    )

    path = tmp_path / "mod.statekit"
    module = b"\x07" + b"module-bytes" + struct.pack("<H", 9) + b"\x00" * 8
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=None)
        rec = RecordWriter(w, 0, "6.0.99", now_ms())
        for key, value in ((b"plain1", b"v1"), (b"plain2", b"v2")):
            rec.add_raw([_HEAD.pack(TAG_VALUE, TYPE_STRING, 0, NO_EXPIRY, len(key), len(value)), key, value],
                        20 + len(key) + len(value), 1)  # fmt: skip
        rec.add_raw([_HEAD.pack(TAG_DUMP, TYPE_MODULE, 9, NO_EXPIRY, 3, len(module)), b"mod", module],
                    23 + len(module), 1)  # fmt: skip
        rec.flush()
        w.finish({"tiers": [TierSummary("redis", counts={"keys": 3}).to_json()]})
    monkeypatch.chdir(tmp_path)
    db = _db(redis_url)
    args = ["restore", str(path), "--tier", "redis", "--target-url", redis_url, "--db-map", f"0:{db}", "--yes"]
    assert run(args) == 8
    err = capsys.readouterr().err
    assert "mod: cannot be restored: module type" in err and "--skip-uncarriable" in err
    with client(redis_url) as r:
        assert r.dbsize() == 0
    assert run([*args, "--skip-uncarriable", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["created"] == 2 and out["counts"]["skipped"] == 1 and out["counts"]["failed"] == 0
    assert any("mod: not restored: module type" in p for p in out["problems"])
    with client(redis_url) as r:
        assert sorted(r.keys()) == [b"plain1", b"plain2"]


@pytest.fixture
def redis_url3(redis_server: str) -> Iterator[str]:
    """A third empty Redis database on the main server."""
    from tests.conftest import _fresh_redis_db

    yield from _fresh_redis_db(redis_server)


def test_flush_plan_names_each_flushed_database_with_its_keys_and_counts_them_deleted(
    archive: Archive, redis_url: str, redis_url2: str, redis_url3: str, tmp_path: Path
) -> None:
    """--flush empties every target database, those the archive restores into and those an explicit --db-map
    names: the plan lists each with the keys it holds now (DBSIZE) and counts them under "delete", says whether
    the undo archive saves them, and the result reports the keys the flush removed under "deleted"."""
    _target(redis_url2)
    with client(redis_url3) as r:
        r.mset({b"x1": b"1", b"x2": b"2", b"x3": b"3"})
    before2, before3 = state(redis_url2), state(redis_url3)
    db_map = {_db(redis_url): _db(redis_url2), _db(redis_url3): _db(redis_url3)}  # the second: no archive db
    opts = RestoreOptions(tier="redis", target=redis_url2, flush=True, db_map=db_map)
    plan = plan_redis_restore(archive, opts, RedisConfig())
    flushes = [p for p in plan.plan if p.get("action") == "flush"]
    assert [(p["target_db"], p["keys"]) for p in flushes] == sorted([(_db(redis_url2), 2), (_db(redis_url3), 3)])
    assert plan.plan[: len(flushes)] == flushes  # listed first: a long plan never hides them
    assert all("every key it holds now is deleted; the undo archive saves them first" in p["note"] for p in flushes)
    assert plan.counts["delete"] == 5 and plan.counts["create"] == 3
    same_state(state(redis_url2), before2)
    same_state(state(redis_url3), before3)
    opts.undo = False
    no_undo = plan_redis_restore(archive, opts, RedisConfig())
    assert all("NOT saved (--no-undo)" in p["note"] for p in no_undo.plan if p.get("action") == "flush")

    rep = put_back(archive, redis_url2, flush=True, db_map=db_map, undo_path=tmp_path / "u.statekit")
    assert rep.counts["deleted"] == plan.counts["delete"] == 5 and rep.counts["created"] == 3
    done = [p for p in rep.plan if p.get("action") == "flush"]
    assert [(p["target_db"], p["keys"]) for p in done] == [(p["target_db"], p["keys"]) for p in flushes]
    assert all(p["note"] == "deleted by FLUSHDB before the restore; the undo archive holds them" for p in done)
    with client(redis_url3) as r:
        assert r.dbsize() == 0
    # the undo archive holds both databases whole, as the plan said: restoring it puts both back
    undo = Archive(tmp_path / "u.statekit")
    back = put_back(undo, redis_url2, flush=True, db_map={d: d for d in db_map.values()})
    assert back.counts["deleted"] == 3  # the keys the restore created
    same_state(state(redis_url2), before2)
    same_state(state(redis_url3), before3)


def test_flush_is_printed_in_the_plan_and_result_text_and_json(
    archive: Archive, redis_url: str, redis_url2: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `statekit restore --flush` prints before and after, as text and as JSON: the flush of the target
    database with its key count, and those keys under delete / deleted."""
    from statekit.cli import run

    _target(redis_url2)
    tdb = _db(redis_url2)
    args = ["restore", str(archive.path), "--tier", "redis", "--target-url", redis_url2, "--flush",
            "--db-map", f"{_db(redis_url)}:{tdb}"]  # fmt: skip
    assert run([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "uncarriable 0, delete 2\n" in out
    assert (
        f" flush     target_db: {tdb}  keys: 2  note: FLUSHDB before the restore: every key it holds now is "
        "deleted; the undo archive saves them first\n"
    ) in out
    assert run([*args, "--dry-run", "--no-undo"]) == 0
    assert "deleted; NOT saved (--no-undo): they cannot be put back\n" in capsys.readouterr().out
    assert run([*args, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["counts"]["delete"] == 2
    assert plan["plan"][0] == {
        "action": "flush",
        "target_db": tdb,
        "keys": 2,
        "note": "FLUSHDB before the restore: every key it holds now is deleted; the undo archive saves them first",
    }
    with client(redis_url2) as r:
        assert sorted(r.keys()) == [b"a", b"z"]

    assert run([*args, "--yes"]) == 0
    out = capsys.readouterr().out
    assert "failed 0, deleted 2\n" in out
    assert f" flush     target_db: {tdb}  keys: 2  note: deleted by FLUSHDB before the restore; the undo " in out
    with client(redis_url2) as r:
        r.set(b"new", b"1")  # 4 keys now: a, b, h and this one
    assert run([*args, "--yes", "--no-undo", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["counts"]["deleted"] == 4 and done["counts"]["created"] == 3
    assert done["plan"][0] == {
        "action": "flush",
        "target_db": tdb,
        "keys": 4,
        "note": "deleted by FLUSHDB before the restore",
    }
