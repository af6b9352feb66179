"""Archives taken on one Redis version restore into another: newer -> older through the portable path, older
-> newer as is. The two servers always run different versions (conftest's redis_pair: the main test server and
one of another version started for the run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from statekit.config import RedisConfig
from statekit.model import RestoreOptions
from statekit.tiers.redis import plan_redis_restore
from statekit.tiers.redis.resp import rdb_version_for
from tests.redis_support import client, put_back, same_state, state, take
from tests.servers import RedisPair


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
        r.xreadgroup("g1", "alice", {b"stream": b">"}, count=5)
        r.xreadgroup(b"g1", b"bob\xfe", {b"stream": b">"}, count=3)  # type: ignore[arg-type]  # binary names
        r.xack(b"stream", b"g1", b"1001-1")
        r.xgroup_createconsumer(b"stream", b"g1", b"carol")
        r.xgroup_create(b"stream", b"g2", id=b"$")


def _pending(url: str) -> object:
    with client(url) as r:
        detail = r.xpending_range(b"stream", b"g1", min=b"-", max=b"+", count=100)
        consumers = sorted((c["name"], c["pending"]) for c in r.xinfo_consumers(b"stream", b"g1"))
        return [(p["message_id"], p["consumer"], p["times_delivered"]) for p in detail], consumers


def _versions(pair: RedisPair) -> tuple[int, int]:
    """The RDB versions of the two servers' DUMP payloads, which must differ for the test to cross."""
    old_rdb, new_rdb = rdb_version_for(pair.old_version), rdb_version_for(pair.new_version)
    assert old_rdb < new_rdb, f"Redis {pair.old_version} and {pair.new_version} share RDB version {old_rdb}"
    return old_rdb, new_rdb


def test_newer_archive_restores_into_older(redis_pair: RedisPair, tmp_path: Path) -> None:
    new, old = redis_pair.new_url, redis_pair.old_url
    _versions(redis_pair)
    _fill(new)
    _fill_stream(new)
    archive, summary = take(tmp_path / "a.statekit", RedisConfig(url=new, dbs=[_db(new)]))
    assert summary.details["server_version"] == redis_pair.new_version
    opts = RestoreOptions(tier="redis", target=old, db_map={_db(new): _db(old)})
    plan = plan_redis_restore(archive, opts, RedisConfig())
    assert plan.counts["uncarriable"] == 0 and plan.counts["create"] == 14
    rep = put_back(archive, old, db_map={_db(new): _db(old)})
    assert rep.counts["created"] == 14 and rep.counts["failed"] == 0, rep.problems
    same_state(state(new), state(old))
    assert _pending(new) == _pending(old)
    with client(old) as r:  # the restored stream works: new entries, reads, acks
        r.xadd(b"stream", {b"f": b"new"}, id=b"5000-0")
        read: Any = r.xreadgroup("g2", "dave", {b"stream": b">"})
        assert read[0][1][0][0] == b"5000-0"
        assert r.xack(b"stream", b"g1", b"1000-0") == 1


def test_older_archive_restores_into_newer(redis_pair: RedisPair, tmp_path: Path) -> None:
    old, new = redis_pair.old_url, redis_pair.new_url
    _versions(redis_pair)
    _fill(old)
    with client(old) as r:
        r.xadd(b"stream", {b"f": b"v"}, id=b"5-1")
        r.xgroup_create(b"stream", b"g", id=b"0")
        r.xreadgroup("g", "c", {b"stream": b">"})
    archive, summary = take(tmp_path / "b.statekit", RedisConfig(url=old, dbs=[_db(old)]))
    assert summary.details["server_version"] == redis_pair.old_version
    rep = put_back(archive, new, db_map={_db(old): _db(new)})
    assert rep.counts["created"] == 14 and rep.counts["failed"] == 0
    with client(new) as r:
        assert r.xpending(b"stream", b"g")["pending"] == 1
    same_state(state(old), state(new))


def test_a_stream_compares_equal_after_a_trip_to_an_older_server(redis_pair: RedisPair) -> None:
    """What rehearsal and diff rely on: a stream DUMPed by a newer server, converted, RESTOREd into the older
    one and DUMPed again has the same comparable form (entries, groups, consumers, pending entries and their
    times)."""
    from statekit.tiers.redis.portable import comparable, convert

    old_rdb, _ = _versions(redis_pair)
    _fill_stream(redis_pair.new_url)
    with client(redis_pair.new_url) as r:
        payload = r.dump(b"stream")
    assert payload is not None
    assert int.from_bytes(payload[-10:-8], "little") > old_rdb  # a payload the older server would refuse
    with client(redis_pair.old_url) as r:
        r.restore(b"stream", 0, convert(payload, old_rdb))
        again = r.dump(b"stream")
    assert again is not None
    assert comparable(payload) == comparable(again)
    assert comparable(payload) != comparable(payload.replace(b"alice", b"alicf"))
