"""Archives taken on one Redis version restore into another: 7.0 -> 6.2 through the portable path."""

from __future__ import annotations

from pathlib import Path

from statekit.config import RedisConfig
from statekit.model import RestoreOptions
from statekit.tiers.redis import plan_redis_restore
from tests.test_redis_helpers import client, put_back, same_state, state, take


def _db(url: str) -> int:
    return int(url.rsplit("/", 1)[1])


def _fill(url: str) -> None:
    with client(url) as r:
        r.set(b"s\xff", b"\x00" * 5)
        r.set(b"compressible", b"abc" * 1000)
        r.set(b"num", b"-123456789")
        r.set(b"e", b"", px=3_600_000)
        r.rpush(b"l", b"a", b"1", b"-5", b"\xff" * 3, b"9" * 30)
        r.rpush(b"quick", *[b"item-%d" % i for i in range(2000)])
        r.sadd(b"ints", 1, 2, 70000, -1)
        r.sadd(b"strs", b"x", b"\x00y")
        r.sadd(b"bigset", *[b"m%d" % i for i in range(600)])
        r.zadd(b"z", {b"a": 0.1, b"b": -1e10, b"c": 42})
        r.zadd(b"zbig", {b"k%d" % i: i * 0.25 for i in range(300)})
        r.hset(b"h", mapping={b"f": b"1", b"g\xff": b""})
        r.hset(b"hbig", mapping={b"f%d" % i: b"v" * (i % 70) for i in range(700)})


def test_newer_archive_restores_into_redis_62(redis_url: str, redis62_url: str, tmp_path: Path) -> None:
    _fill(redis_url)
    with client(redis_url) as r:
        r.xadd(b"stream", {b"f": b"v"})
    archive, summary = take(tmp_path / "a.statekit", RedisConfig(url=redis_url, dbs=[_db(redis_url)]))
    newer = summary.details["rdb_version"] > 9
    opts = RestoreOptions(tier="redis", target=redis62_url, db_map={_db(redis_url): _db(redis62_url)})
    plan = plan_redis_restore(archive, opts, RedisConfig())
    assert plan.counts["uncarriable"] == (1 if newer else 0)
    rep = put_back(archive, redis62_url, db_map={_db(redis_url): _db(redis62_url)})
    assert rep.counts["created"] == (13 if newer else 14)
    assert rep.counts["failed"] == (1 if newer else 0)
    src = state(redis_url)
    if newer:
        assert any("stream" in p and "RDB" in p for p in rep.problems)
        del src[b"stream"]
    same_state(src, state(redis62_url))


def test_older_archive_restores_into_newer(redis62_url: str, redis_url: str, tmp_path: Path) -> None:
    _fill(redis62_url)
    with client(redis62_url) as r:
        r.xadd(b"stream", {b"f": b"v"}, id=b"5-1")
        r.xgroup_create(b"stream", b"g", id=b"0")
        r.xreadgroup(b"g", b"c", {b"stream": b">"})
    archive, _ = take(tmp_path / "b.statekit", RedisConfig(url=redis62_url, dbs=[_db(redis62_url)]))
    rep = put_back(archive, redis_url, db_map={_db(redis62_url): _db(redis_url)})
    assert rep.counts["created"] == 14 and rep.counts["failed"] == 0
    with client(redis_url) as r:
        assert r.xpending(b"stream", b"g")["pending"] == 1
    same_state(state(redis62_url), state(redis_url))
