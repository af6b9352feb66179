"""The scan of one Redis database (or cluster primary) into archive records, page by page; see snapshot.py
for how the work is spread over the side, main and aux connections and when a page is read carefully."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from statekit.config import RedisConfig
from statekit.errors import TierError
from statekit.model import MemberSink, now_ms
from statekit.tiers.redis.bigkeys import STRING_CHUNK, read_chunks, show_key
from statekit.tiers.redis.keyspace import compile_match
from statekit.tiers.redis.records import (
    NO_EXPIRY,
    RDB_TYPE_TO_TYPE,
    TAG_DUMP,
    TAG_VALUE,
    TYPE_BY_NAME,
    TYPE_MODULE,
    TYPE_STRING,
    RecordWriter,
)
from statekit.tiers.redis.resp import ReplyError, RespConnection, pack, parse_info, rdb_version_for

_COMPACT = frozenset((b"embstr", b"int", b"listpack", b"ziplist", b"intset"))
_STRING_ENCODINGS = frozenset((b"embstr", b"int", b"raw"))
_LEN_CMD = {
    b"string": b"STRLEN",
    b"list": b"LLEN",
    b"set": b"SCARD",
    b"zset": b"ZCARD",
    b"hash": b"HLEN",
    b"stream": b"XLEN",
}
_HEAD = struct.Struct("<BBHqII")
_ENCODING = b"*3\r\n$6\r\nOBJECT\r\n$8\r\nENCODING\r\n$%d\r\n%s\r\n"
_PTTL = b"*2\r\n$4\r\nPTTL\r\n"  # followed by the key as a bulk string
_STRLEN = b"*2\r\n$6\r\nSTRLEN\r\n"
# String values one reply may carry. A page whose strings would exceed it (by the sizes seen so far) is read
# carefully: sizes first, then values in chunks of at most this many bytes, so that neither statekit nor the
# server's output buffer holds a whole page of large values.
_REPLY_BUDGET = 16 << 20
BIG_LIST_LIMIT = 20  # the summary names at most this many big keys


@dataclass
class ServerInfo:
    """What the summary says about the source server."""

    version: str
    mode: str  # standalone | cluster
    rdb_version: int


@dataclass
class _Page:
    """One SCAN page whose first request is on its way, and when it was sent (PTTL is relative to it).
    A careful page has sent nothing yet: its strings are sized first (see `_receive_careful`)."""

    keys: list[bytes]
    t_send: int
    careful: bool = False


@dataclass
class ScanCounts:
    """What the scan of one database found (summed over cluster primaries)."""

    keys: int = 0
    vanished: int = 0
    expiring: int = 0
    big: list[str] = field(default_factory=list)
    big_count: int = 0
    filtered: int = 0
    modules: int = 0
    bytes: int = 0
    members: int = 0


def server_info(conn: RespConnection) -> ServerInfo:
    """Version and mode of the server behind `conn`."""
    info = parse_info(conn.call(b"INFO", b"server"))
    version = info.get("redis_version", "0")
    mode = "cluster" if info.get("redis_mode") == "cluster" else "standalone"
    return ServerInfo(version, mode, rdb_version_for(version))


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
        clock: Callable[[], int] = now_ms,
    ):
        self.main = conn
        self.clock = clock
        self.side = conn.other_db(db)
        self._aux: RespConnection | None = None
        self.db = db
        self.cfg = cfg
        self.tick = tick or (lambda n, b: None)
        self.writer = RecordWriter(sink, db, info.version, clock(), first_seq)
        self.big_elements = cfg.big_key_elements
        self.big_bytes = cfg.big_key_bytes
        self.probe = cfg.big_key_elements > 0 or cfg.big_key_bytes > 0
        patterns = list(cfg.match) or ["*"]
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
        # MGET needs all its keys in one hash slot on a cluster, so there strings are DUMPed like the rest;
        # and a type filter without strings has no use for it.
        self.by_mget = not cfg.atomic_pages and info.mode != "cluster" and (not self.types or TYPE_STRING in self.types)
        # average size of the string values seen so far; None until the first page has been read
        self._avg_string: float | None = None

    @property
    def aux(self) -> RespConnection:
        """A third connection for a page's follow-up round trips (non-strings, big keys), opened when needed."""
        if self._aux is None:
            self._aux = self.main.other_db(self.db)
        return self._aux

    def _scan_cmd(self, cursor: bytes) -> bytes:
        return pack(*[cursor if a == b"%s" else a for a in self._scan_args])

    def run(self, counts: ScanCounts) -> None:
        """Scan to the end, writing records; update `counts`."""
        try:
            self._run(counts)
        finally:
            self.side.close()
            if self._aux is not None:
                self._aux.close()
        self.writer.flush()
        counts.members += self.writer.members
        counts.bytes += self.writer.bytes

    def _run(self, counts: ScanCounts) -> None:
        # Three pipelines overlap: the next SCAN page (side connection), the current page's first request
        # (main connection) and Python packing the previous page's replies into records.
        side = self.side
        side.send(self._scan_cmd(b"0"))
        in_flight: _Page | None = None
        more = True
        while more:
            reply = side.read_one()
            if isinstance(reply, ReplyError):
                raise TierError(f"redis db{self.db}: SCAN failed: {reply}")
            cursor, keys = reply
            more = cursor != b"0"
            if more:
                side.send(self._scan_cmd(cursor))
            # SCAN may list a key twice (when the table shrinks during the scan); drop repeats within a
            # page here. Repeats across pages are rare and harmless: restore reports the second as present.
            keys = list(dict.fromkeys(keys))
            if self.match is not None:
                before = len(keys)
                keys = [k for k in keys if self.match(k)]
                counts.filtered += before - len(keys)
            page = self._request(keys) if keys else None
            if in_flight is not None:
                self._receive(in_flight, counts)
            in_flight = page
        if in_flight is not None:
            self._receive(in_flight, counts)

    def _request(self, keys: list[bytes]) -> _Page:
        """Send a page's first request on the main connection: MGET + PTTL of every key (standalone; but
        nothing for a page of large values, read by `_receive_careful`), else OBJECT ENCODING of every key
        (so that big keys are never DUMPed), else PTTL + DUMP."""
        page = _Page(keys=keys, t_send=self.clock())
        if self.by_mget:
            avg = self._avg_string
            if avg is None or avg * len(keys) > _REPLY_BUDGET:
                page.careful = True  # nothing on the main connection: `_receive_careful` does it all
                return page
            bulks = [b"$%d\r\n%s\r\n" % (len(k), k) for k in keys]
            self.main.send(b"".join([b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1), *bulks, _PTTL, _PTTL.join(bulks)]))
        elif self.probe:
            self.main.send(b"".join([_ENCODING % (len(k), k) for k in keys]))
        else:
            self.main.send(self._dump_request(keys, []))
        return page

    def _receive(self, page: _Page, counts: ScanCounts) -> None:
        """Read a page's replies, make the follow-up round trips it needs, and write its records."""
        keys = page.keys
        main = self.main
        if page.careful:
            self._receive_careful(keys, counts)
        elif self.by_mget:
            values = main.read_one()
            ttls = main.read(len(keys))
            if isinstance(values, ReplyError):
                raise TierError(f"redis db{self.db}: MGET failed: {values}")
            others: list[bytes] = []
            strings, svalues, sttls = _split_mget(keys, values, ttls, others)
            if strings:
                self._avg_string = sum(map(len, svalues)) / len(svalues)
            self._pack_strings(strings, svalues, sttls, page.t_send, counts)
            self._fetch_others(others, counts)
        elif self.probe:
            small, big = self._classify(keys, counts, main.read(len(keys)))
            self._fetch_dumps(small, big, counts)
        else:
            self._pack_dumps(keys, self._dump_replies(main, keys, []), page.t_send, counts)

    def _receive_careful(self, keys: list[bytes], counts: ScanCounts) -> None:
        """A page whose strings may be large: STRLEN + PTTL of every key first, then the strings' values in
        MGETs of at most _REPLY_BUDGET bytes, one at a time; strings over big_key_bytes are read in chunks."""
        aux = self.aux
        t_send = self.clock()
        aux.send(b"".join([_STRLEN + b + _PTTL + b for b in [b"$%d\r\n%s\r\n" % (len(k), k) for k in keys]]))
        replies = aux.read(2 * len(keys))
        strings: list[tuple[bytes, int, int]] = []
        big: list[tuple[bytes, int]] = []
        others: list[bytes] = []
        for key, size, ttl in zip(keys, replies[0::2], replies[1::2]):
            if type(size) is not int:  # WRONGTYPE: not a string
                others.append(key)
            elif ttl == -2:
                counts.vanished += 1
            elif 0 < self.big_bytes < size:
                big.append((key, ttl))
            else:
                strings.append((key, size, ttl))
        if strings:
            self._avg_string = sum(size for _, size, _ in strings) / len(strings)
        elif self._avg_string is None:
            self._avg_string = 0.0  # no strings yet: a quick page next
        chunk: list[tuple[bytes, int, int]] = []
        total = 0
        for item in strings:
            if chunk and total + item[1] > _REPLY_BUDGET:
                self._get_strings(chunk, t_send, counts, others)
                chunk, total = [], 0
            chunk.append(item)
            total += item[1]
        if chunk:
            self._get_strings(chunk, t_send, counts, others)
        for key, ttl in big:
            if self.types and TYPE_STRING not in self.types:
                counts.filtered += 1
            elif self._read_big(key, TYPE_STRING, t_send + ttl if ttl >= 0 else NO_EXPIRY):
                self._count_big(key, ttl >= 0, counts)
            else:
                counts.vanished += 1
        self._fetch_others(others, counts)

    def _get_strings(
        self, items: list[tuple[bytes, int, int]], t_send: int, counts: ScanCounts, others: list[bytes]
    ) -> None:
        """One MGET of these (key, size, ttl) strings; a key that is no longer a string joins `others`."""
        keys = [k for k, _, _ in items]
        self.aux.send(pack(b"MGET", *keys))
        values = self.aux.read_one()
        if isinstance(values, ReplyError):
            raise TierError(f"redis db{self.db}: MGET failed: {values}")
        self._pack_strings(*_split_mget(keys, values, [t for _, _, t in items], others), t_send, counts)

    def _fetch_others(self, others: list[bytes], counts: ScanCounts) -> None:
        """The keys of a page that are not strings: probed (unless big keys are off), then DUMPed."""
        if others:
            small, big = self._classify(others, counts) if self.probe else (others, [])
            self._fetch_dumps(small, big, counts)

    def _classify(
        self, keys: list[bytes], counts: ScanCounts, encodings: list[Any] | None = None
    ) -> tuple[list[bytes], list[bytes]]:
        """Split keys into those to DUMP and big ones to read in chunks, by their OBJECT ENCODING (read on
        the aux connection unless given): compact encodings are small by construction, the others get
        their TYPE and length checked. Keys gone meanwhile are counted as vanished and dropped."""
        aux = self.aux
        if encodings is None:
            aux.send(b"".join([_ENCODING % (len(k), k) for k in keys]))
            encodings = aux.read(len(keys))
        if self.types and TYPE_STRING not in self.types:  # a filter without strings: drop them unread
            kept = [(k, e) for k, e in zip(keys, encodings) if e not in _STRING_ENCODINGS]
            counts.filtered += len(keys) - len(kept)
            keys, encodings = [k for k, _ in kept], [e for _, e in kept]
        compact = _COMPACT
        check = [k for k, e in zip(keys, encodings) if e not in compact and e is not None]
        if not check and None not in encodings:
            return keys, []
        counts.vanished += sum(1 for e in encodings if e is None)
        present = [k for k, e in zip(keys, encodings) if e is not None]
        if not check:
            return present, []
        aux.send(b"".join(pack(b"TYPE", k) for k in check))
        types = aux.read(len(check))
        sized = [(k, t, _LEN_CMD[t]) for k, t in zip(check, types) if t in _LEN_CMD]
        aux.send(b"".join(pack(cmd, k) for k, _, cmd in sized))
        lengths = aux.read(len(sized))
        big: set[bytes] = set()
        for (k, t, _), n in zip(sized, lengths):
            if not isinstance(n, int):
                continue
            limit = self.big_bytes if t == b"string" else self.big_elements
            if limit > 0 and n > limit:
                big.add(k)
                self._big_types[k] = TYPE_BY_NAME[t.decode()]
        return [k for k in present if k not in big], [k for k in present if k in big]

    def _dump_request(self, small: list[bytes], big: list[bytes]) -> bytes:
        """PTTL + DUMP of each small key and PTTL of each big one (in MULTI/EXEC with atomic pages)."""
        parts = []
        for k in small:
            n = len(k)
            parts.append(b"*2\r\n$4\r\nPTTL\r\n$%d\r\n%s\r\n*2\r\n$4\r\nDUMP\r\n$%d\r\n%s\r\n" % (n, k, n, k))
        parts += [b"*2\r\n$4\r\nPTTL\r\n$%d\r\n%s\r\n" % (len(k), k) for k in big]
        if self.cfg.atomic_pages:
            return b"*1\r\n$5\r\nMULTI\r\n" + b"".join(parts) + b"*1\r\n$4\r\nEXEC\r\n"
        return b"".join(parts)

    def _dump_replies(self, conn: RespConnection, small: list[bytes], big: list[bytes]) -> list[Any]:
        """The replies to `_dump_request(small, big)` sent on `conn`."""
        n = 2 * len(small) + len(big)
        if not self.cfg.atomic_pages:
            return conn.read(n)
        result = conn.read(n + 2)[-1]
        if not isinstance(result, list):
            raise TierError(f"redis db{self.db}: MULTI/EXEC failed: {result}")
        return result

    def _fetch_dumps(self, small: list[bytes], big: list[bytes], counts: ScanCounts) -> None:
        """One aux round trip for the PTTL + DUMP of the small keys and the PTTL of the big ones; then
        write their records and read the big keys in chunks."""
        if not small and not big:
            return
        aux = self.aux
        t_send = self.clock()
        aux.send(self._dump_request(small, big))
        replies = self._dump_replies(aux, small, big)
        self._pack_dumps(small, replies, t_send, counts)
        for key, ttl in zip(big, replies[2 * len(small) :]):
            t = self._big_types.pop(key)
            if ttl == -2:
                counts.vanished += 1
                continue
            if self.types and t not in self.types:
                counts.filtered += 1
                continue
            expire = t_send + ttl if ttl >= 0 else NO_EXPIRY
            if self._read_big(key, t, expire):
                self._count_big(key, ttl >= 0, counts)
            else:
                counts.vanished += 1

    def _pack_strings(
        self, keys: list[bytes], values: list[bytes], ttls: list[Any], t_send: int, counts: ScanCounts
    ) -> None:
        """Write string records from MGET values and PTTL replies."""
        if not keys:
            return
        if self.types and TYPE_STRING not in self.types:
            counts.filtered += len(keys)
            return
        packed: list[bytes] = []
        head = _HEAD.pack
        big_bytes = self.big_bytes
        nbytes = kept = vanished = expiring = 0
        for key, value, ttl in zip(keys, values, ttls):
            if ttl == -2 or type(ttl) is not int:
                if isinstance(ttl, ReplyError):
                    raise TierError(f"redis db{self.db}: reading key {show_key(key)} failed: {ttl}")
                vanished += 1
                continue
            if ttl >= 0:
                expire = t_send + ttl
                expiring += 1
            else:
                expire = NO_EXPIRY
            vlen = len(value)
            if 0 < big_bytes < vlen:  # already read, but stored in chunks so restore stays bounded
                self._big_string(key, value, expire, counts)
                continue
            packed += (head(TAG_VALUE, TYPE_STRING, 0, expire, len(key), vlen), key, value)
            nbytes += 20 + len(key) + vlen
            kept += 1
        self._add(packed, nbytes, kept, vanished, expiring, counts)

    def _pack_dumps(self, keys: list[bytes], replies: list[Any], t_send: int, counts: ScanCounts) -> None:
        """Write DUMP records from (PTTL, DUMP) reply pairs."""
        packed: list[bytes] = []
        head = _HEAD.pack
        types = self.types
        type_of = RDB_TYPE_TO_TYPE.get
        nbytes = kept = vanished = expiring = 0
        it = iter(replies)
        for key, ttl, payload in zip(keys, it, it):
            if type(payload) is not bytes or ttl == -2:
                if isinstance(payload, ReplyError) or isinstance(ttl, ReplyError):
                    raise TierError(f"redis db{self.db}: reading key {show_key(key)} failed: {payload or ttl}")
                vanished += 1
                continue
            t = type_of(payload[0], TYPE_MODULE)
            if types and t not in types:
                counts.filtered += 1
                continue
            if t == TYPE_MODULE:
                counts.modules += 1
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
        self._add(packed, nbytes, kept, vanished, expiring, counts)

    def _add(
        self, packed: list[bytes], nbytes: int, kept: int, vanished: int, expiring: int, counts: ScanCounts
    ) -> None:
        counts.vanished += vanished
        counts.expiring += expiring
        counts.keys += kept
        if kept:
            self.writer.add_raw(packed, nbytes, kept)
            self.tick(kept, nbytes)

    def _count_big(self, key: bytes, expiring: bool, counts: ScanCounts) -> None:
        counts.keys += 1
        counts.big_count += 1
        counts.expiring += expiring
        if len(counts.big) < BIG_LIST_LIMIT:
            counts.big.append(f"db{self.db}:{show_key(key)}")
        self.tick(1, 0)

    def _big_string(self, key: bytes, value: bytes, expire: int, counts: ScanCounts) -> None:
        w = self.writer
        w.begin_big(key, TYPE_STRING, expire)
        n = 0
        for off in range(0, len(value), STRING_CHUNK):
            w.add_chunk(key, TYPE_STRING, [value[off : off + STRING_CHUNK]])
            n += 1
        w.end_big(key, TYPE_STRING, n)
        self._count_big(key, expire != NO_EXPIRY, counts)

    def _read_big(self, key: bytes, type_: int, expire: int) -> bool:
        """Read a big key in chunks into records; False if it vanished before its first chunk."""
        chunks = read_chunks(self.aux, key, type_)
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


def _split_mget(
    keys: list[bytes], values: list[Any], ttls: list[Any], others: list[bytes]
) -> tuple[list[bytes], list[bytes], list[Any]]:
    """The strings among `keys` with their MGET values and PTTLs. MGET answers nil for a key that is not a
    string (or is gone): those are appended to `others`, to go the DUMP way."""
    if None not in values:
        return keys, values, ttls
    strings, kept, kept_ttls = [], [], []
    for key, value, ttl in zip(keys, values, ttls):
        if value is None:
            others.append(key)
        else:
            strings.append(key)
            kept.append(value)
            kept_ttls.append(ttl)
    return strings, kept, kept_ttls


__all__ = ["DbScanner", "ScanCounts", "ServerInfo", "server_info"]
