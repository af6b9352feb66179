"""The redis members' record format (documented in docs/FORMAT.md ("redis members")).

A member `redis/db<N>.<NNNNNN>.rec` is one header followed by records, all little-endian:

    header  b"SKREDIS1"               8   magic and format version
            u16 db                    2   source database number
            u64 taken_at_ms           8   wall clock when this member's scan started (for --ttl relative)
            u8  n + server_version    1+n redis_version of the source server (ASCII)

    record  u8  tag                   1   b"D" DUMP, b"V" string value, b"B"/b"C"/b"E" a big key in chunks
    "D"     u8  type                  1   TYPE_* below
            u16 rdb_version           2   RDB version of the DUMP payload (0 if not a DUMP)
            i64 expire_at_ms          8   absolute expiry, -1 when the key has none
            u32 key_len, u32 val_len  8
            key, DUMP payload
    "V"     u8 0 (string), u16 0, i64 expire_at_ms, u32 key_len, u32 val_len, key, the string's bytes
    "B"     u8 type, u16 0, i64 expire_at_ms, u32 key_len, u32 0, key      (same 20-byte head as "D")
    "C"     u8 type, u16 0, i64 0, u32 key_len, u32 n_items, key, n_items x (u32 len + bytes)
    "E"     u8 type, u16 0, i64 0, u32 key_len, u32 n_chunks, key
    "X"     u8 0, u16 0, i64 0, u32 key_len, u32 0, key       (undo archives: the key was absent)

A big key's records "B", "C"... "E" are consecutive and may span members. Items of a chunk are the values
the chunked read returned, flat: list elements; set members; hash field, value; zset member, score (the
score as the server printed it, so no float is ever rounded); stream id, field count, fields and values.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from statekit.errors import CorruptArchive
from statekit.model import MemberSink
from statekit.tiers.redis import portable

MAGIC = b"SKREDIS1"
# A member holds about this many bytes of records. Small enough that a snapshot's or restore's memory stays
# flat whatever the key count (a few copies of one member are alive at once), big enough to compress well.
MEMBER_TARGET = 4 << 20

TYPE_STRING, TYPE_LIST, TYPE_SET, TYPE_ZSET, TYPE_HASH, TYPE_STREAM, TYPE_MODULE = range(7)
TYPE_NAMES = ("string", "list", "set", "zset", "hash", "stream", "module")
TYPE_BY_NAME = {name: i for i, name in enumerate(TYPE_NAMES)}

TAG_DUMP, TAG_BEGIN, TAG_CHUNK, TAG_END = 0x44, 0x42, 0x43, 0x45  # b"D", b"B", b"C", b"E"
TAG_VALUE = 0x56  # b"V": a string key stored as its plain value (read with MGET, restored with SET)
TAG_ABSENT = 0x58  # b"X": undo archives only: the key did not exist; restoring this record deletes it

NO_EXPIRY = -1

_HEAD = struct.Struct("<BBHqII")  # tag, type, rdb_version, expire_at_ms, key_len, val_len/count
_MEMBER_HEAD = struct.Struct("<8sHQB")
_U32 = struct.Struct("<I")

# The first byte of a DUMP payload is the RDB object type; map it to the user-visible type.
RDB_TYPE_TO_TYPE = {
    0: TYPE_STRING,
    1: TYPE_LIST,
    10: TYPE_LIST,
    14: TYPE_LIST,
    18: TYPE_LIST,
    2: TYPE_SET,
    11: TYPE_SET,
    20: TYPE_SET,
    3: TYPE_ZSET,
    5: TYPE_ZSET,
    12: TYPE_ZSET,
    17: TYPE_ZSET,
    4: TYPE_HASH,
    9: TYPE_HASH,
    13: TYPE_HASH,
    16: TYPE_HASH,
    22: TYPE_HASH,
    23: TYPE_HASH,
    24: TYPE_HASH,
    25: TYPE_HASH,
    15: TYPE_STREAM,
    19: TYPE_STREAM,
    21: TYPE_STREAM,
    6: TYPE_MODULE,
    7: TYPE_MODULE,
}


def payload_type(payload: bytes) -> int:
    """The key type of a DUMP payload (TYPE_MODULE for anything unknown: it can only go back as is)."""
    return RDB_TYPE_TO_TYPE.get(payload[0], TYPE_MODULE) if payload else TYPE_MODULE


def payload_rdb_version(payload: bytes) -> int:
    """The RDB version of a DUMP payload: the 2 little-endian bytes before the 8-byte CRC64 footer."""
    if len(payload) < 11:
        return 0
    return payload[-10] | (payload[-9] << 8)


def member_name(db: int, seq: int) -> str:
    """Archive member name of the seq-th segment of database `db`."""
    return f"redis/db{db}.{seq:06d}.rec"


def parse_member_db(name: str) -> int | None:
    """The db number in a member name made by member_name(), or None for another name."""
    if not name.startswith("redis/db") or not name.endswith(".rec"):
        return None
    head = name[len("redis/db") :].split(".", 1)[0]
    return int(head) if head.isdigit() else None


@dataclass
class Record:
    """One decoded record. `value`: the DUMP payload (TAG_DUMP) or the string (TAG_VALUE); `items`: the
    values of a TAG_CHUNK."""

    tag: int
    type: int
    key: bytes
    expire_at: int = NO_EXPIRY
    rdb_version: int = 0
    value: bytes = b""
    items: list[bytes] | None = None
    count: int = 0


class RecordWriter:
    """Collects records for one database and hands them to the sink in members of about 16 MiB."""

    def __init__(self, sink: MemberSink, db: int, server_version: str, taken_at_ms: int, first_seq: int = 0):
        self.sink = sink
        self.db = db
        self.server_version = server_version
        self._header = _MEMBER_HEAD.pack(MAGIC, db, taken_at_ms, len(server_version)) + server_version.encode()
        self._parts: list[bytes] = []
        self._size = 0
        self._keys = 0
        self._absent = 0
        self.seq = first_seq
        self.members = 0
        self.keys = 0
        self.absent = 0
        self.bytes = 0

    def add_dump(self, key: bytes, payload: bytes, expire_at: int) -> None:
        """A whole key as a DUMP payload."""
        self._parts += (
            _HEAD.pack(
                TAG_DUMP,
                payload_type(payload),
                payload_rdb_version(payload),
                expire_at,
                len(key),
                len(payload),
            ),
            key,
            payload,
        )
        self._size += 20 + len(key) + len(payload)
        self._keys += 1
        if self._size >= MEMBER_TARGET:
            self.flush()

    def add_raw(self, packed: list[bytes], nbytes: int, nkeys: int) -> None:
        """Records already packed by the caller (the snapshot's hot loop packs them inline)."""
        self._parts += packed
        self._size += nbytes
        self._keys += nkeys
        if self._size >= MEMBER_TARGET:
            self.flush()

    def begin_big(self, key: bytes, type_: int, expire_at: int) -> None:
        """Start a big key; its chunks follow."""
        self._parts += (_HEAD.pack(TAG_BEGIN, type_, 0, expire_at, len(key), 0), key)
        self._size += 20 + len(key)
        self._keys += 1

    def add_chunk(self, key: bytes, type_: int, items: list[bytes]) -> None:
        """One chunk of a big key's values."""
        packed = [_HEAD.pack(TAG_CHUNK, type_, 0, 0, len(key), len(items)), key]
        size = 20 + len(key)
        for it in items:
            packed += (_U32.pack(len(it)), it)
            size += 4 + len(it)
        self._parts += packed
        self._size += size
        if self._size >= MEMBER_TARGET:
            self.flush()

    def end_big(self, key: bytes, type_: int, chunks: int) -> None:
        """Close a big key."""
        self._parts += (_HEAD.pack(TAG_END, type_, 0, 0, len(key), chunks), key)
        self._size += 20 + len(key)

    def add_absent(self, key: bytes) -> None:
        """Undo archives: `key` did not exist before the restore, so putting the target back deletes it."""
        self._parts += (_HEAD.pack(TAG_ABSENT, 0, 0, 0, len(key), 0), key)
        self._size += 20 + len(key)
        self._absent += 1
        if self._size >= MEMBER_TARGET:
            self.flush()

    def flush(self) -> None:
        """Write the records collected so far as one member (nothing if there are none)."""
        if not self._parts:
            return
        body = b"".join([self._header, *self._parts])
        # MANIFEST.json totals sum "keys" over all members: records that start a key, tombstones apart.
        meta: dict[str, int | str] = {"keys": self._keys, "server_version": self.server_version}
        if self._absent:
            meta["absent"] = self._absent
        self.sink.add(member_name(self.db, self.seq), body, meta=meta)
        self.seq += 1
        self.members += 1
        self.keys += self._keys
        self.absent += self._absent
        self.bytes += len(body)
        self._parts = []
        self._size = 0
        self._keys = 0
        self._absent = 0


@dataclass
class MemberHeader:
    """The header of one redis member."""

    db: int
    taken_at_ms: int
    server_version: str


# The biggest record a member may hold: a DUMP payload or string as big as Redis' largest bulk argument
# (proto-max-bulk-len, 512 MiB), plus the record head. Bigger keys are archived in chunks (bigkeys.py).
MAX_RECORD = (512 << 20) + 64 * 1024
# A member is at most about MEMBER_TARGET of records plus the one that crossed it.
MAX_MEMBER = MEMBER_TARGET + MAX_RECORD
_READ_CHUNK = 1 << 20


def read_member_header(stream: IO[bytes], name: str) -> MemberHeader:
    """Read and check one member's header (the rest of the member stays in the stream)."""
    head = _read_exact(stream, _MEMBER_HEAD.size, name)
    magic, db, taken, n = _MEMBER_HEAD.unpack(head)
    if magic != MAGIC:
        raise CorruptArchive(f"archive member {name}: not a redis record member (bad magic)")
    named = parse_member_db(name)
    if named is not None and named != db:
        raise CorruptArchive(f"archive member {name}: its header says database {db}, its name database {named}")
    version = _read_exact(stream, n, name).decode("ascii", "replace")
    return MemberHeader(db, taken, version)


def read_member(stream: IO[bytes], name: str, size: int | None = None) -> tuple[MemberHeader, bytes]:
    """Read one member and return its header and records. The header and the first record's head are
    checked before anything else is read, so a foreign or damaged member costs nothing more; memory follows
    the bytes really present (read in 1 MiB blocks), never a size the archive declares, and a member bigger
    than any statekit writes is refused. `size` is the member's size from the archive, when known."""
    if size is not None and size > MAX_MEMBER:
        raise CorruptArchive(f"archive member {name}: {size} bytes, more than any redis member holds")
    header = read_member_header(stream, name)
    parts: list[bytes] = []
    total = 0
    while True:
        block = stream.read(_READ_CHUNK)
        if not block:
            break
        if not parts:
            _check_first_head(block, name)
        total += len(block)
        if total > MAX_MEMBER:
            raise CorruptArchive(f"archive member {name}: more than any redis member holds")
        parts.append(block)
    return header, b"".join(parts)


def _check_first_head(block: bytes, name: str) -> None:
    if len(block) < _HEAD.size:
        raise CorruptArchive(f"archive member {name}: record cut short")
    tag, _, _, _, klen, vlen = _HEAD.unpack_from(block)
    if tag not in (TAG_DUMP, TAG_VALUE, TAG_BEGIN, TAG_CHUNK, TAG_END, TAG_ABSENT):
        raise CorruptArchive(f"archive member {name}: unknown record tag {tag:#x} at 0")
    if klen + (vlen if tag in (TAG_DUMP, TAG_VALUE) else 0) > MAX_RECORD:
        raise CorruptArchive(f"archive member {name}: a record larger than any Redis value")


def _read_exact(stream: IO[bytes], n: int, name: str) -> bytes:
    data = stream.read(n)
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise CorruptArchive(f"archive member {name}: too short for a redis member")
        data += more
    return data


def iter_heads(body: bytes, name: str) -> Iterator[tuple[int, int, int, int, bytes, int, int]]:
    """Fast scan of a member body: (tag, type, rdb_version, expire_at, key, value offset, value length)
    per record; chunk items are skipped (value offset/length then span them)."""
    pos = 0
    end = len(body)
    unpack = _HEAD.unpack_from
    u32 = _U32.unpack_from
    try:
        while pos < end:
            tag, type_, rdbv, expire, klen, vlen = unpack(body, pos)
            kstart = pos + 20
            pos = kstart + klen
            if tag in (TAG_DUMP, TAG_VALUE):
                yield tag, type_, rdbv, expire, body[kstart:pos], pos, vlen
                pos += vlen
            elif tag == TAG_CHUNK:
                start = pos
                for _ in range(vlen):
                    pos += 4 + u32(body, pos)[0]
                yield tag, type_, rdbv, expire, body[kstart : kstart + klen], start, pos - start
            elif tag in (TAG_BEGIN, TAG_END, TAG_ABSENT):
                yield tag, type_, rdbv, expire, body[kstart:pos], pos, vlen
            else:
                raise CorruptArchive(f"archive member {name}: unknown record tag {tag:#x} at {kstart - 20}")
    except struct.error:
        raise CorruptArchive(f"archive member {name}: record cut short") from None
    if pos > end:
        raise CorruptArchive(f"archive member {name}: record cut short")


def record_value(rec: Record) -> tuple[int, object]:
    """(plain RDB type, value) of a whole-key record, whether stored as DUMP ("D") or as a string ("V"):
    the same shapes as portable.decode (bytes for a string). Raises portable.Uncarriable for a stream or a
    module type, whose payload is kept opaque."""
    if rec.tag == TAG_VALUE:
        return portable.TYPE_STRING, rec.value
    return portable.decode(rec.value)


def iter_records(body: bytes, name: str, *, as_dump: bool = True) -> Iterator[Record]:
    """Decode the records of one member body.

    With `as_dump` (the default) a string stored by value ("V") is handed out as a "D" record whose payload
    is built on the spot (RDB version 9, loadable by every server since 5.0, with its CRC64), so readers
    see one kind of whole-key record; `record_value` reads either kind. `iter_heads` gives raw tags.
    """
    pos = 0
    end = len(body)
    unpack = _HEAD.unpack_from
    try:
        while pos < end:
            tag, type_, rdbv, expire, klen, vlen = unpack(body, pos)
            pos += 20
            key = body[pos : pos + klen]
            pos += klen
            if tag in (TAG_DUMP, TAG_VALUE):
                value = body[pos : pos + vlen]
                pos += vlen
                if len(key) != klen or len(value) != vlen:
                    raise CorruptArchive(f"archive member {name}: record cut short")
                if tag == TAG_VALUE and as_dump:
                    yield Record(TAG_DUMP, TYPE_STRING, key, expire, 9, portable.encode(portable.TYPE_STRING, value, 9))
                else:
                    yield Record(tag, type_, key, expire, rdbv, value)
            elif tag == TAG_CHUNK:
                items = []
                for _ in range(vlen):
                    (n,) = _U32.unpack_from(body, pos)
                    items.append(body[pos + 4 : pos + 4 + n])
                    pos += 4 + n
                if pos > end:
                    raise CorruptArchive(f"archive member {name}: record cut short")
                yield Record(tag, type_, key, items=items)
            elif tag in (TAG_BEGIN, TAG_END, TAG_ABSENT):
                yield Record(tag, type_, key, expire, count=vlen)
            else:
                raise CorruptArchive(f"archive member {name}: unknown record tag {tag:#x} at {pos - 20}")
    except struct.error:
        raise CorruptArchive(f"archive member {name}: record cut short") from None
