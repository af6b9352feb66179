"""Conflicts, undo, flush and dry run of a redis restore."""

from __future__ import annotations

import json
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
