"""Snapshot of Redis: SCAN page by page, one pipelined round trip of PTTL + DUMP per page.

Per database (or per cluster primary) two connections work together:

* the *side* connection lists keys (SCAN) and, in the same round trip, probes the encoding of the page it
  just got (OBJECT ENCODING): compact encodings (listpack, intset, embstr, ...) are small by construction,
  anything else gets its TYPE and length checked, so a big key is never DUMPed whole;
* the *main* connection carries the PTTL + DUMP pipeline. Page i is sent before the replies of page i-1
  are parsed, so the server works on one page while Python packs the records of the previous one.

Big keys are read in chunks (HSCAN/SSCAN/ZSCAN, LRANGE slices, GETRANGE) on the side connection; they are
not atomic and the summary says so. SCAN is not point in time: a key present for the whole scan is in the
archive, a key created or deleted meanwhile may or may not be.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from statekit.config import RedisConfig, redact_url
from statekit.errors import ConfigError, TierError
from statekit.model import MemberSink, Progress, TierSummary, Warn, no_progress, no_warn, now_ms
from statekit.tiers.redis import cluster
from statekit.tiers.redis.keyspace import compile_match
from statekit.tiers.redis.records import (
    NO_EXPIRY,
    RDB_TYPE_TO_TYPE,
    TAG_DUMP,
    TYPE_BY_NAME,
    TYPE_HASH,
    TYPE_LIST,
    TYPE_MODULE,
    TYPE_NAMES,
    TYPE_SET,
    TYPE_STRING,
    TYPE_ZSET,
    RecordWriter,
)
from statekit.tiers.redis.resp import (
    ReplyError,
    RespConnection,
    keyspace_counts,
    pack,
    parse_info,
    rdb_version_for,
)

_COMPACT = frozenset((b"embstr", b"int", b"listpack", b"ziplist", b"intset"))
_LEN_CMD = {
    b"string": b"STRLEN",
    b"list": b"LLEN",
    b"set": b"SCARD",
    b"zset": b"ZCARD",
    b"hash": b"HLEN",
    b"stream": b"XLEN",
}
_CHUNK = 1000  # elements per chunk of a big key
_STRING_CHUNK = 1 << 20  # bytes per GETRANGE of a big string
_HEAD = struct.Struct("<BBHqII")
_BIG_LIST_LIMIT = 20  # the summary names at most this many big keys


@dataclass
class ServerInfo:
    """What the summary says about the source server."""

    version: str
    mode: str  # standalone | cluster
    rdb_version: int


@dataclass
class ScanCounts:
    keys: int = 0
    vanished: int = 0
    expiring: int = 0
    big: list[str] = field(default_factory=list)
    big_count: int = 0
    filtered: int = 0
    bytes: int = 0
    members: int = 0


def server_info(conn: RespConnection) -> ServerInfo:
    """Version and mode of the server behind `conn`."""
    info = parse_info(conn.call(b"INFO", b"server"))
    version = info.get("redis_version", "0")
    mode = "cluster" if info.get("redis_mode") == "cluster" else "standalone"
    return ServerInfo(version, mode, rdb_version_for(version))


def snapshot_redis(
    cfg: RedisConfig,
    sink: MemberSink,
    *,
    progress: Progress = no_progress,
    warn: Warn = no_warn,
) -> TierSummary:
    """Write every selected key of the configured Redis (standalone or Cluster) into `sink`."""
    summary = TierSummary("redis", started_at=time.time())
    _check_cfg(cfg)
    assert cfg.url is not None
    seed = RespConnection(cfg.url)
    try:
        info = server_info(seed)
        shards: list[tuple[RespConnection, int]] = []
        if info.mode == "cluster":
            if cfg.dbs and cfg.dbs != [0]:
                raise ConfigError("redis: a Redis Cluster has only database 0 (fix [redis] dbs)")
            for host, port in cluster.primaries(seed):
                shards.append((seed.sibling(host, port), 0))
        else:
            dbs = sorted(set(cfg.dbs)) or sorted(
                db for db, n in keyspace_counts(parse_info(seed.call(b"INFO", b"keyspace"))).items() if n
            )
            shards = [(seed.other_db(db), db) for db in dbs]
    finally:
        seed.close()
    totals: dict[int, ScanCounts] = {}
    done = [0]

    def tick(n: int, nbytes: int) -> None:
        done[0] += n
        progress("redis", done[0], nbytes)

    seqs: dict[int, int] = {}
    try:
        for conn, db in shards:
            counts = totals.setdefault(db, ScanCounts())
            scanner = DbScanner(conn, db, cfg, info, sink, first_seq=seqs.get(db, 0), tick=tick, warn=warn)
            scanner.run(counts)
            seqs[db] = scanner.writer.seq
    finally:
        for conn, _ in shards:
            conn.close()
    summary.finished_at = time.time()
    keys = sum(c.keys for c in totals.values())
    summary.counts = {
        "keys": keys,
        "vanished": sum(c.vanished for c in totals.values()),
        "big_keys": sum(c.big_count for c in totals.values()),
    }
    big = [name for c in totals.values() for name in c.big][:_BIG_LIST_LIMIT]
    summary.details = {
        "source": redact_url(cfg.url),
        "server_version": info.version,
        "rdb_version": info.rdb_version,
        "mode": info.mode,
        "primaries": len(shards) if info.mode == "cluster" else 1,
        "dbs": {
            str(db): {"keys": c.keys, "with_expiry": c.expiring, "vanished": c.vanished, "big_keys": c.big_count}
            for db, c in sorted(totals.items())
        },
        "match": list(cfg.match),
        "types": list(cfg.types),
        "point_in_time": False,
        "consistency": "SCAN is not point-in-time: every key present for the whole scan is in the archive; "
        "keys created, deleted or changed during the scan may be missing or newer",
        "vanished": summary.counts["vanished"],
        "big_keys": big,
        "big_keys_atomic": False,
        "big_key_note": "big keys are read in chunks and are not atomic"
        if summary.counts["big_keys"]
        else "no big keys",
        "atomic_pages": cfg.atomic_pages,
    }
    return summary


def _check_cfg(cfg: RedisConfig) -> None:
    if not cfg.url:
        raise ConfigError("redis: no URL configured (set [redis] url or STATEKIT_REDIS_URL)")
    bad = [t for t in cfg.types if t not in TYPE_BY_NAME]
    if bad:
        raise ConfigError(f"redis: unknown type {bad[0]!r} in [redis] types (known: {', '.join(TYPE_NAMES)})")
    if cfg.scan_count <= 0:
        raise ConfigError("redis: scan_count must be positive")
    if any(db < 0 for db in cfg.dbs):
        raise ConfigError("redis: database numbers must not be negative")


class DbScanner:
    """Scans one database of one server into a RecordWriter."""

    def __init__(
        self,
        conn: RespConnection,
        db: int,
        cfg: RedisConfig,
        info: ServerInfo,
        sink: MemberSink,
        *,
        first_seq: int = 0,
        tick: Callable[[int, int], None] | None = None,
        warn: Warn = no_warn,
        match: Sequence[str] | None = None,
    ):
        self.main = conn
        self.side = conn.other_db(db)
        self.db = db
        self.cfg = cfg
        self.warn = warn
        self.tick = tick or (lambda n, b: None)
        self.writer = RecordWriter(sink, db, info.version, now_ms(), first_seq)
        self.big_elements = cfg.big_key_elements
        self.big_bytes = cfg.big_key_bytes
        self.probe = cfg.big_key_elements > 0 or cfg.big_key_bytes > 0
        patterns = list(cfg.match if match is None else match) or ["*"]
        self.types = {TYPE_BY_NAME[t] for t in cfg.types}
        scan_args = [b"SCAN", b"%s", b"COUNT", b"%d" % cfg.scan_count]
        if len(patterns) == 1 and patterns[0] != "*":
            scan_args[2:2] = [b"MATCH", patterns[0].encode("utf-8", "surrogateescape")]
            self.match = None
        else:
            self.match = compile_match(patterns)
        if len(cfg.types) == 1 and cfg.types[0] != "module":
            scan_args += [b"TYPE", cfg.types[0].encode()]
        self._scan_args = scan_args
        self._big_types: dict[bytes, int] = {}

    def _scan_cmd(self, cursor: bytes) -> bytes:
        return pack(*[cursor if a == b"%s" else a for a in self._scan_args])

    def run(self, counts: ScanCounts) -> None:
        """Scan to the end, writing records; update `counts`."""
        try:
            self._run(counts)
        finally:
            self.side.close()
        self.writer.flush()
        counts.members += self.writer.members
        counts.bytes += self.writer.bytes

    def _run(self, counts: ScanCounts) -> None:
        side = self.side
        side.send(self._scan_cmd(b"0"))
        cursor, keys = side.read_one()
        in_flight: tuple[list[bytes], list[bytes], int] | None = None
        while True:
            if self.match is not None:
                before = len(keys)
                keys = [k for k in keys if self.match(k)]
                counts.filtered += before - len(keys)
            more = cursor != b"0"
            # One side round trip: probe this page and fetch the next one.
            out = []
            if self.probe and keys:
                out.append(
                    b"".join([b"*3\r\n$6\r\nOBJECT\r\n$8\r\nENCODING\r\n$%d\r\n%s\r\n" % (len(k), k) for k in keys])
                )
            if more:
                out.append(self._scan_cmd(cursor))
            encodings: list[Any] = []
            if out:
                side.send(b"".join(out))
                if self.probe and keys:
                    encodings = side.read(len(keys))
                nxt = side.read_one() if more else None
            small, big = self._classify(keys, encodings, counts)
            t_send = now_ms()
            self._send_fetch(small, big)
            if in_flight is not None:
                self._receive(*in_flight, counts)
            in_flight = (small, big, t_send)
            if not more:
                break
            assert nxt is not None
            cursor, keys = nxt
        if in_flight is not None:
            self._receive(*in_flight, counts)

    def _classify(self, keys: list[bytes], encodings: list[Any], counts: ScanCounts) -> tuple[list[bytes], list[bytes]]:
        """Split a page into keys to DUMP and big keys to read in chunks."""
        if not encodings:
            return keys, []
        compact = _COMPACT
        check = [k for k, e in zip(keys, encodings) if e not in compact and e is not None]
        if not check and None not in encodings:
            return keys, []
        counts.vanished += sum(1 for e in encodings if e is None)
        present = [k for k, e in zip(keys, encodings) if e is not None]
        if not check:
            return present, []
        side = self.side
        side.send(b"".join(pack(b"TYPE", k) for k in check))
        types = side.read(len(check))
        sized = [(k, t, _LEN_CMD[t]) for k, t in zip(check, types) if t in _LEN_CMD]
        side.send(b"".join(pack(cmd, k) for k, _, cmd in sized))
        lengths = side.read(len(sized))
        big: set[bytes] = set()
        for (k, t, _), n in zip(sized, lengths):
            if not isinstance(n, int):
                continue
            limit = self.big_bytes if t == b"string" else self.big_elements
            if limit > 0 and n > limit:
                if t == b"stream":
                    # Consumer groups and pending entries only travel inside a DUMP payload.
                    self.warn(f"redis db{self.db}: stream {_show(k)} has {n} entries; read whole (DUMP)")
                    continue
                big.add(k)
                self._big_types[k] = TYPE_BY_NAME[t.decode()]
        return [k for k in present if k not in big], [k for k in present if k in big]

    def _send_fetch(self, small: list[bytes], big: list[bytes]) -> None:
        parts = []
        if self.cfg.atomic_pages:
            parts.append(b"*1\r\n$5\r\nMULTI\r\n")
        for k in small:
            n = len(k)
            parts.append(b"*2\r\n$4\r\nPTTL\r\n$%d\r\n%s\r\n*2\r\n$4\r\nDUMP\r\n$%d\r\n%s\r\n" % (n, k, n, k))
        for k in big:
            parts.append(b"*2\r\n$4\r\nPTTL\r\n$%d\r\n%s\r\n" % (len(k), k))
        if self.cfg.atomic_pages:
            parts.append(b"*1\r\n$4\r\nEXEC\r\n")
        if len(parts) > (2 if self.cfg.atomic_pages else 0):
            self.main.send(b"".join(parts))

    def _receive(self, small: list[bytes], big: list[bytes], t_send: int, counts: ScanCounts) -> None:
        n = 2 * len(small) + len(big)
        if not n:
            return
        if self.cfg.atomic_pages:
            replies = self.main.read(n + 2)
            result = replies[-1]
            if not isinstance(result, list):
                raise TierError(f"redis db{self.db}: MULTI/EXEC failed: {result}")
            replies = result
        else:
            replies = self.main.read(n)
        packed: list[bytes] = []
        nbytes = 0
        kept = 0
        head = _HEAD.pack
        types = self.types
        type_of = RDB_TYPE_TO_TYPE.get
        vanished = expiring = 0
        it = iter(replies)
        for key, ttl, payload in zip(small, it, it):
            if type(payload) is not bytes or ttl == -2:
                if isinstance(payload, ReplyError) or isinstance(ttl, ReplyError):
                    raise TierError(f"redis db{self.db}: reading key {_show(key)} failed: {payload or ttl}")
                vanished += 1
                continue
            t = type_of(payload[0], TYPE_MODULE)
            if types and t not in types:
                counts.filtered += 1
                continue
            if ttl >= 0:
                expire = t_send + ttl
                expiring += 1
            else:
                expire = NO_EXPIRY
            vlen = len(payload)
            # RDB version: the 2 little-endian bytes before the 8-byte CRC64 footer (see records.py)
            packed += (head(TAG_DUMP, t, payload[-10] | payload[-9] << 8, expire, len(key), vlen), key, payload)
            nbytes += 20 + len(key) + vlen
            kept += 1
        counts.vanished += vanished
        counts.expiring += expiring
        counts.keys += kept
        self.writer.add_raw(packed, nbytes, kept)
        self.tick(kept, nbytes)
        base = 2 * len(small)
        for j, key in enumerate(big):
            ttl = replies[base + j]
            if ttl == -2:
                counts.vanished += 1
                continue
            t = self._big_types.pop(key)
            if types and t not in types:
                counts.filtered += 1
                continue
            expire = t_send + ttl if ttl >= 0 else NO_EXPIRY
            if self._read_big(key, t, expire):
                counts.keys += 1
                counts.big_count += 1
                if ttl >= 0:
                    counts.expiring += 1
                if len(counts.big) < _BIG_LIST_LIMIT:
                    counts.big.append(f"db{self.db}:{_show(key)}")
                self.tick(1, 0)
            else:
                counts.vanished += 1

    def _read_big(self, key: bytes, type_: int, expire: int) -> bool:
        """Read a big key in chunks into records; False if it vanished before its first chunk."""
        chunks = read_chunks(self.side, key, type_)
        first = next(chunks, None)
        if first is None:
            return False
        w = self.writer
        w.begin_big(key, type_, expire)
        w.add_chunk(key, type_, first)
        n = 1
        for items in chunks:
            w.add_chunk(key, type_, items)
            n += 1
        w.end_big(key, type_, n)
        return True


def read_chunks(conn: RespConnection, key: bytes, type_: int) -> Iterator[list[bytes]]:
    """Yield the values of a big key chunk by chunk (flat item lists; see records.py)."""
    count = b"%d" % _CHUNK
    if type_ == TYPE_STRING:
        total = conn.call(b"STRLEN", key)
        if not conn.call(b"EXISTS", key):
            return
        off = 0
        while off < total:
            piece = conn.call(b"GETRANGE", key, b"%d" % off, b"%d" % (off + _STRING_CHUNK - 1))
            if not piece:
                break
            yield [piece]
            off += len(piece)
        if total == 0:
            yield [b""]
        return
    if type_ == TYPE_LIST:
        start = 0
        while True:
            items = conn.call(b"LRANGE", key, b"%d" % start, b"%d" % (start + _CHUNK - 1))
            if not items:
                return
            yield items
            start += len(items)
    scan = {TYPE_HASH: b"HSCAN", TYPE_SET: b"SSCAN", TYPE_ZSET: b"ZSCAN"}.get(type_)
    if scan is None:
        raise TierError(f"redis: cannot read a {TYPE_NAMES[type_]} in chunks")
    cursor = b"0"
    while True:
        cursor, items = conn.call(scan, key, cursor, b"COUNT", count)
        if items:
            yield items
        if cursor == b"0":
            return


def _show(key: bytes) -> str:
    """A key for messages: text when printable, else escaped."""
    text = key.decode("utf-8", "backslashreplace")
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["DbScanner", "ScanCounts", "ServerInfo", "read_chunks", "server_info", "snapshot_redis"]
