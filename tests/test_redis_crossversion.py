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


def _fill_stream(url: str) -> None:
    """A stream spread over several listpacks, with deleted entries, LZF-sized values, two groups, pending
    entries owned by two consumers and a consumer with none."""
    with client(url) as r:
        for i in range(250):
            r.xadd(b"stream", {b"f": b"v%d" % i, b"blob\xff": b"ab" * (i % 40)}, id=b"%d-%d" % (1000 + i, i % 3))
        r.xdel(b"stream", b"1003-0", b"1100-1")
        r.xgroup_create(b"stream", b"g1", id=b"0")
        r.xreadgroup(b"g1", b"alice", {b"stream": b">"}, count=5)
        r.xreadgroup(b"g1", b"bob\xfe", {b"stream": b">"}, count=3)
        r.xack(b"stream", b"g1", b"1001-1")
        r.xgroup_createconsumer(b"stream", b"g1", b"carol")
        r.xgroup_create(b"stream", b"g2", id=b"$")


def _pending(url: str) -> object:
    with client(url) as r:
        detail = r.xpending_range(b"stream", b"g1", min=b"-", max=b"+", count=100)
        consumers = sorted((c["name"], c["pending"]) for c in r.xinfo_consumers(b"stream", b"g1"))
        return [(p["message_id"], p["consumer"], p["times_delivered"]) for p in detail], consumers


def test_newer_archive_restores_into_redis_62(redis_url: str, redis62_url: str, tmp_path: Path) -> None:
    _fill(redis_url)
    _fill_stream(redis_url)
    # 7.x into 6.2 when STATEKIT_TEST_REDIS_URL is a 7.x server (CI); 6.2 into 6.2 with embedded servers
    archive, _ = take(tmp_path / "a.statekit", RedisConfig(url=redis_url, dbs=[_db(redis_url)]))
    opts = RestoreOptions(tier="redis", target=redis62_url, db_map={_db(redis_url): _db(redis62_url)})
    plan = plan_redis_restore(archive, opts, RedisConfig())
    assert plan.counts["uncarriable"] == 0 and plan.counts["create"] == 14
    rep = put_back(archive, redis62_url, db_map={_db(redis_url): _db(redis62_url)})
    assert rep.counts["created"] == 14 and rep.counts["failed"] == 0, rep.problems
    same_state(state(redis_url), state(redis62_url))
    assert _pending(redis_url) == _pending(redis62_url)
    with client(redis62_url) as r:  # the restored stream works: new entries, reads, acks
        r.xadd(b"stream", {b"f": b"new"}, id=b"5000-0")
        assert r.xreadgroup(b"g2", b"dave", {b"stream": b">"})[0][1][0][0] == b"5000-0"
        assert r.xack(b"stream", b"g1", b"1000-0") == 1


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


def test_a_stream_compares_equal_after_a_trip_to_an_older_server(redis_url: str, redis62_url: str) -> None:
    """What rehearsal and diff rely on: a stream DUMPed by a newer server, converted, RESTOREd into 6.2 and
    DUMPed again has the same comparable form (entries, groups, consumers, pending entries and their times)."""
    from statekit.tiers.redis.portable import comparable, convert

    _fill_stream(redis_url)
    with client(redis_url) as r:
        payload = r.dump(b"stream")
    with client(redis62_url) as r:
        r.restore(b"stream", 0, convert(payload, 9))
        again = r.dump(b"stream")
    assert comparable(payload) == comparable(again)
    assert comparable(payload) != comparable(payload.replace(b"alice", b"alicf"))
