"""Snapshot and restore of every Redis type, byte for byte, with TTLs."""

from __future__ import annotations

from pathlib import Path

from statekit.archive.reader import Archive
from statekit.config import RedisConfig
from statekit.model import now_ms
from tests.redis_support import client, put_back, same_state, state, take


def _fill(url: str) -> None:
    with client(url) as r:
        r.set(b"\xff\xfe\x00bin", b"\x00\x01\xff" * 10)
        r.set(b"empty", b"")
        r.set(b"int", b"12345")
        r.set(b"neg", b"-42")
        r.set(b"ttl", b"v", px=600_000)
        r.rpush(b"list\x80", b"a", b"", b"\xff", b"123")
        r.sadd(b"set", b"x", b"\x00", b"")
        r.sadd(b"intset", 1, 2, 3, -7)
        r.zadd(b"zset", {b"a": 1.5, b"\xff": -3, b"c": 1e-300})
        r.hset(b"hash", mapping={b"f\x00": b"", b"g": b"\xff\xfe"})
        r.expire(b"hash", 3600)
        r.xadd(b"stream", {b"f": b"v"}, id=b"1-1")
        r.xadd(b"stream", {b"f\xff": b""}, id=b"2-0")
        r.xgroup_create(b"stream", b"grp", id=b"0")
        r.xreadgroup("grp", "alice", {b"stream": b">"}, count=1)


def test_roundtrip_every_type_into_another_db(redis_url: str, redis_url2: str, tmp_path: Path) -> None:
    _fill(redis_url)
    db = int(redis_url.rsplit("/", 1)[1])
    archive, summary = take(tmp_path / "a.statekit", RedisConfig(url=redis_url, dbs=[db]))
    assert summary.counts["keys"] == 11
    assert summary.details["point_in_time"] is False
    rep = put_back(archive, redis_url2, db_map={db: int(redis_url2.rsplit("/", 1)[1])})
    assert rep.counts["created"] == 11 and rep.counts["failed"] == 0
    same_state(state(redis_url), state(redis_url2))


def test_big_keys_are_chunked_and_restored(redis_url: str, redis_url2: str, tmp_path: Path) -> None:
    with client(redis_url) as r:
        pipe = r.pipeline(transaction=False)
        for i in range(0, 200_000, 10_000):
            pipe.hset(b"bighash", mapping={b"f%d" % j: b"v%d" % j for j in range(i, i + 10_000)})
        pipe.execute()
        r.pexpire(b"bighash", 900_000)
        r.rpush(b"biglist", *[b"e%d" % i for i in range(25_000)])
        r.sadd(b"bigset", *[b"m%d" % i for i in range(25_000)])
        r.zadd(b"bigzset", {b"z%d" % i: i / 7 for i in range(25_000)})
        r.set(b"bigstring", bytes(range(256)) * (10 * 4096))  # 10 MiB
        r.set(b"small", b"1")
    db = int(redis_url.rsplit("/", 1)[1])
    cfg = RedisConfig(url=redis_url, dbs=[db], big_key_elements=20_000, big_key_bytes=4 << 20)
    archive, summary = take(tmp_path / "big.statekit", cfg)
    assert summary.counts["big_keys"] == 5
    assert summary.details["big_keys_atomic"] is False
    db2 = int(redis_url2.rsplit("/", 1)[1])
    rep = put_back(archive, redis_url2, db_map={db: db2})
    assert rep.counts == {"created": 6, "replaced": 0, "skipped": 0, "expired": 0, "failed": 0, "deleted": 0}
    same_state(state(redis_url), state(redis_url2))
    with client(redis_url2) as r:
        assert not [k for k in r.scan_iter() if b"statekit-restore" in k]


MINUTE = 60_000
HOUR = 60 * MINUTE


def test_expired_keys_skipped_and_relative_ttl(redis_url: str, redis_url2: str, tmp_path: Path) -> None:
    """An archive taken an hour ago (the snapshot's clock runs an hour behind): a key that had 30 minutes left
    has expired since and is skipped, the others keep their absolute expiry; with --ttl relative every key
    gets back the time it had left when the snapshot was taken."""
    with client(redis_url) as r:
        r.set(b"short", b"x", px=30 * MINUTE)
        r.set(b"long", b"y", px=2 * HOUR)
        r.set(b"forever", b"z")
    db = int(redis_url.rsplit("/", 1)[1])
    db2 = int(redis_url2.rsplit("/", 1)[1])
    archive, _ = take(tmp_path / "t.statekit", RedisConfig(url=redis_url, dbs=[db]), clock=lambda: now_ms() - HOUR)
    rep = put_back(archive, redis_url2, db_map={db: db2}, ttl="relative")
    assert rep.counts["created"] == 3
    with client(redis_url2) as r:
        assert 29 * MINUTE < r.pttl(b"short") <= 31 * MINUTE
        assert 119 * MINUTE < r.pttl(b"long") <= 121 * MINUTE
        assert r.pttl(b"forever") == -1
        r.flushdb()
    rep = put_back(archive, redis_url2, db_map={db: db2})
    assert rep.counts["expired"] == 1 and rep.counts["created"] == 2
    with client(redis_url2) as r:
        assert r.exists(b"short") == 0
        assert 59 * MINUTE < r.pttl(b"long") <= 61 * MINUTE
        assert r.pttl(b"forever") == -1


def test_match_and_type_filters(redis_url: str, redis_url2: str, tmp_path: Path) -> None:
    with client(redis_url) as r:
        r.set(b"app:1", b"a")
        r.set(b"app:2", b"b")
        r.hset(b"app:h", b"f", b"v")
        r.set(b"other", b"c")
    db = int(redis_url.rsplit("/", 1)[1])
    db2 = int(redis_url2.rsplit("/", 1)[1])
    archive, summary = take(
        tmp_path / "m.statekit", RedisConfig(url=redis_url, dbs=[db], match=["app:*"], types=["string"])
    )
    assert summary.counts["keys"] == 2
    rep = put_back(archive, redis_url2, db_map={db: db2}, match=["app:[1]"])
    assert rep.counts["created"] == 1
    with client(redis_url2) as r:
        assert r.keys() == [b"app:1"]
    _, summary2 = take(tmp_path / "m2.statekit", RedisConfig(url=redis_url, dbs=[db], match=["app:h", "oth*"]))
    assert summary2.counts["keys"] == 2


def test_type_filter_without_strings(redis_url: str, redis_url2: str, tmp_path: Path) -> None:
    """Without strings in the filter no MGET is sent: each page starts with the encoding probe."""
    with client(redis_url) as r:
        pipe = r.pipeline(transaction=False)
        for i in range(1_500):
            pipe.set(b"s%d" % i, b"v")
            pipe.hset(b"h%d" % i, b"f", b"%d" % i)
            pipe.zadd(b"z%d" % i, {b"m": i})
            pipe.rpush(b"l%d" % i, b"e")
        pipe.hset(b"bighash", mapping={b"f%d" % j: b"v" for j in range(3_000)})
        pipe.execute()
    db, db2 = int(redis_url.rsplit("/", 1)[1]), int(redis_url2.rsplit("/", 1)[1])
    cfg = RedisConfig(url=redis_url, dbs=[db], types=["hash", "zset"], big_key_elements=2_000, scan_count=400)
    archive, summary = take(tmp_path / "t.statekit", cfg)
    assert summary.counts["keys"] == 3_001 and summary.counts["big_keys"] == 1
    put_back(archive, redis_url2, db_map={db: db2})
    want = {k: v for k, v in state(redis_url).items() if v[0] in (b"hash", b"zset")}
    same_state(want, state(redis_url2))


def test_keys_vanishing_mid_scan_are_counted(redis_url: str, tmp_path: Path) -> None:
    with client(redis_url) as r:
        r.mset({b"k%05d" % i: b"v" for i in range(20_000)})
    db = int(redis_url.rsplit("/", 1)[1])
    deleted: list[int] = []

    def progress(tier: str, items: int, nbytes: int) -> None:
        if not deleted:  # after the first page: drop everything, including keys already listed by SCAN
            with client(redis_url) as r:
                r.flushdb()
            deleted.append(items)

    archive, summary = take(
        tmp_path / "v.statekit", RedisConfig(url=redis_url, dbs=[db], scan_count=500), progress=progress
    )
    assert summary.counts["vanished"] > 0
    assert summary.counts["keys"] + summary.counts["vanished"] < 20_000
    assert summary.details["vanished"] == summary.counts["vanished"]
    assert archive.manifest["totals"]["keys"] == summary.counts["keys"]


def test_non_strings_vanishing_between_listing_and_dump(redis_url: str, redis_url2: str, tmp_path: Path) -> None:
    """A page's strings come with the first request (MGET), its other keys in a follow-up round trip; keys
    deleted in between are counted as vanished, never written half, and the strings all arrive."""
    with client(redis_url) as r:
        pipe = r.pipeline(transaction=False)
        for i in range(2_000):
            pipe.set(b"s%05d" % i, b"v%d" % i)
            pipe.hset(b"h%05d" % i, b"f", b"%d" % i)
        pipe.execute()
    db = int(redis_url.rsplit("/", 1)[1])
    hashes_left = [2_000]

    def progress(tier: str, items: int, nbytes: int) -> None:
        # runs when a page's strings are written, before its hashes are read: delete every hash
        if hashes_left[0]:
            with client(redis_url) as r:
                hashes_left[0] = 0
                r.delete(*[b"h%05d" % i for i in range(2_000)])

    archive, summary = take(
        tmp_path / "h.statekit", RedisConfig(url=redis_url, dbs=[db], scan_count=200), progress=progress
    )
    assert summary.counts["vanished"] > 0
    db2 = int(redis_url2.rsplit("/", 1)[1])
    rep = put_back(archive, redis_url2, db_map={db: db2})
    assert rep.counts["failed"] == 0
    got = state(redis_url2)
    assert {k for k in got if k.startswith(b"s")} == {b"s%05d" % i for i in range(2_000)}
    hashes = [k for k in got if k.startswith(b"h")]
    assert len(hashes) + summary.counts["vanished"] <= 2_000
    assert all(got[k][1] == [(b"f", b"%d" % int(k[1:]))] for k in hashes)


def test_atomic_pages_and_progress(redis_url: str, redis_url2: str, tmp_path: Path) -> None:
    _fill(redis_url)
    with client(redis_url) as r:
        r.set(b"longish", bytes(range(256)) * 20)  # over big_key_bytes below: read with GETRANGE
    db = int(redis_url.rsplit("/", 1)[1])
    seen: list[int] = []
    archive, summary = take(
        tmp_path / "m.statekit",
        RedisConfig(url=redis_url, dbs=[db], atomic_pages=True, scan_count=3, big_key_bytes=1000),
        progress=lambda tier, n, b: seen.append(n),
    )
    assert summary.counts["keys"] == 12 and seen and seen[-1] == 12
    assert summary.counts["big_keys"] == 1
    put_back(archive, redis_url2, db_map={db: int(redis_url2.rsplit("/", 1)[1])})
    same_state(state(redis_url), state(redis_url2))


def test_all_nonempty_dbs_by_default(redis_url: str, redis_url2: str, tmp_path: Path) -> None:
    with client(redis_url) as r:
        r.set(b"one", b"1")
    with client(redis_url2) as r:
        r.set(b"two", b"2")
    base = redis_url.rsplit("/", 1)[0]  # no database in the URL: every non-empty one
    _, summary = take(tmp_path / "all.statekit", RedisConfig(url=base))
    dbs = summary.details["dbs"]
    assert dbs[redis_url.rsplit("/", 1)[1]]["keys"] == 1
    assert dbs[redis_url2.rsplit("/", 1)[1]]["keys"] == 1


def test_url_database_is_the_one_snapshotted_and_restored_into(redis_url: str, redis_url2: str, tmp_path: Path) -> None:
    with client(redis_url) as r:
        r.set(b"one", b"1")
    with client(redis_url2) as r:
        r.set(b"two", b"2")
    archive, summary = take(tmp_path / "one.statekit", RedisConfig(url=redis_url))
    assert list(summary.details["dbs"]) == [redis_url.rsplit("/", 1)[1]]
    with client(redis_url2) as r:
        r.flushdb()
    put_back(archive, redis_url2)  # no --db-map: the target URL's database receives the archive's only one
    with client(redis_url2) as r:
        assert r.get(b"one") == b"1"


def _stream_view(url: str) -> tuple[object, ...]:
    with client(url) as r:
        groups = [
            {f: g[f] for f in ("name", "consumers", "pending", "last-delivered-id")} for g in r.xinfo_groups(b"s")
        ]
        pending = r.xpending_range(b"s", b"g1", min="-", max="+", count=10_000)
        consumers = sorted(c["name"] for c in r.xinfo_consumers(b"s", b"g1"))
        info = r.xinfo_stream(b"s")
        return (
            r.xrange(b"s"),
            groups,
            [(p["message_id"], p["consumer"], p["times_delivered"]) for p in pending],
            consumers,
            info["last-generated-id"],
            r.pttl(b"s") > 0,
        )


def test_big_stream_in_chunks_with_groups_and_pending(
    redis_url: str, redis_url2: str, redis62_url: str, tmp_path: Path
) -> None:
    with client(redis_url) as r:
        pipe = r.pipeline(transaction=False)
        for i in range(1, 2501):
            pipe.xadd(b"s", {b"n": b"%d" % i, b"\xff": b""}, id=b"%d-0" % i)
        pipe.execute()
        r.xdel(b"s", b"2500-0")  # last-generated-id stays 2500-0
        r.xgroup_create(b"s", b"g1", id=b"0")
        r.xgroup_create(b"s", b"g2", id=b"$")
        r.xgroup_createconsumer(b"s", b"g1", b"idle-consumer")
        r.xreadgroup("g1", "alice", {b"s": b">"}, count=1500)
        r.xreadgroup("g1", "bob", {b"s": b">"}, count=10)
        r.xack(b"s", b"g1", b"1-0", b"2-0")
        r.expire(b"s", 3600)
    db = int(redis_url.rsplit("/", 1)[1])
    archive, summary = take(tmp_path / "s.statekit", RedisConfig(url=redis_url, dbs=[db], big_key_elements=1000))
    assert summary.counts["big_keys"] == 1
    expected = _stream_view(redis_url)
    for target in (redis_url2, redis62_url):
        rep = put_back(archive, target, db_map={db: int(target.rsplit("/", 1)[1])})
        assert rep.counts["created"] == 1, rep
        assert _stream_view(target) == expected


_RSS_CHILD = """
import json, resource, sys
from statekit.archive.writer import ArchiveWriter
from statekit.fsio import atomic_output
from statekit.archive.reader import Archive
from statekit.config import RedisConfig
from statekit.tiers.redis import snapshot_redis
from pathlib import Path
url, db, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with atomic_output(out) as fh:
    w = ArchiveWriter(fh, recipients=None)
    s = snapshot_redis(RedisConfig(url=url, dbs=[db], big_key_bytes=4 << 20), w)
    w.finish({"tiers": [s.to_json()]})
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": after - before, "counts": s.counts}))
"""


def test_large_string_values_are_read_in_bounded_replies(redis_url: str, redis_url2: str, tmp_path: Path) -> None:
    """300 MiB of 1 MiB strings: the snapshot's memory does not grow with a page's values (a page of them
    is read as sizes first, then values in replies of at most 16 MiB), and everything restores exactly."""
    import json
    import os
    import subprocess
    import sys

    blob = os.urandom(1 << 20)
    with client(redis_url) as r:
        for i in range(0, 300, 20):
            r.mset({b"big%03d" % j: blob[j:] + blob[:j] for j in range(i, i + 20)})
        r.set(b"huge", blob * 6, px=600_000)  # over big_key_bytes: read in chunks
        r.hset(b"h", b"f", b"v")
        r.set(b"small", b"s")
    db, db2 = int(redis_url.rsplit("/", 1)[1]), int(redis_url2.rsplit("/", 1)[1])
    out = tmp_path / "large.statekit"
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, redis_url, str(db), str(out)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    doc = json.loads(proc.stdout)
    assert doc["counts"]["keys"] == 303 and doc["counts"]["big_keys"] == 1
    assert doc["grew_kib"] < 160 * 1024, doc  # was about twice the 300 MiB before
    put_back(Archive(out), redis_url2, db_map={db: db2})
    with client(redis_url2) as r:
        assert r.get(b"big007") == blob[7:] + blob[:7] and r.get(b"huge") == blob * 6
        assert r.dbsize() == 303 and 0 < r.pttl(b"huge") <= 600_000
