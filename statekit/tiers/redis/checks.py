"""What a Redis restore checks before its first write, so that a crafted or damaged record is refused (exit 3,
naming the member) instead of being found half-way through the writing pass.

- A DUMP payload that goes to the target as is is loaded by the target itself, as an already expired key:
  `RESTORE <unused name> 1 <payload> ABSTTL` makes the server check the RDB version and the CRC and decode
  the whole value with its own loader, then drop it, since it expired in 1970. Nothing is written (no key,
  no replication, no keyspace event). So "can the target load this" is answered by the target's own code
  for its own RDB version.
- A payload newer than the target is converted in full (portable.convert); any inconsistency in it (a list
  claiming more elements than it holds, an intset whose count overruns it) is a malformed payload.
- A big key's chunk records must come in order (begin, chunks, end, for one key at a time) and hold what the
  commands that rebuild it accept (bigkeys.BigKeyBuilder): pairs for hashes and sorted sets, scores in the
  grammar of Redis' own float parser, at least one element; stream entries with valid, increasing ids and
  at least one field/value pair, then once the metadata, then groups (each defined once, before its pending
  entries), ids and counters in range.
- An expiry, shifted by --ttl relative, must stay within what PXAT / RESTORE ABSTTL / PEXPIREAT accept.
- "X" (absent) records belong to undo archives only: in any other archive they are refused.
"""

from __future__ import annotations

import re
import struct
import uuid
from dataclasses import dataclass, field

from statekit.errors import CorruptArchive, TierError
from statekit.tiers.redis import portable
from statekit.tiers.redis.bigkeys import show_key
from statekit.tiers.redis.cluster import Router
from statekit.tiers.redis.records import (
    NO_EXPIRY,
    TAG_BEGIN,
    TAG_CHUNK,
    TAG_END,
    TYPE_HASH,
    TYPE_LIST,
    TYPE_SET,
    TYPE_STREAM,
    TYPE_STRING,
    TYPE_ZSET,
    payload_rdb_version,
)
from statekit.tiers.redis.resp import ReplyError

_BATCH = 1000
# The newest RDB version any Redis writes (7.4 and 8.x: 12), with room for a few more.
MAX_RDB_VERSION = 20
_BIG_TYPES = (TYPE_STRING, TYPE_LIST, TYPE_SET, TYPE_ZSET, TYPE_HASH, TYPE_STREAM)
_LLONG_MAX = (1 << 63) - 1
_ULLONG_MAX = (1 << 64) - 1
# --ttl relative shifts an expiry again in the writing pass, a little later than the planning pass: keep a
# day's room below the largest time Redis takes.
_RELATIVE_ROOM = 86_400_000
# A score as Redis' float parser (strtod, then: no leading space, nothing left over, no overflow or underflow
# to zero, not NaN) takes it, and as ZSCAN prints it: decimal, or inf. Not Python's float(), which also
# takes "1_0", spaces and "nan".
_SCORE = re.compile(rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity))")
# A stream id: <ms>-<seq>, both unsigned 64-bit (Redis reads an id into a 128-byte buffer).
_STREAM_ID = re.compile(rb"([0-9]{1,127})-([0-9]{1,127})")


def _malformed(member: str, key: bytes, reason: str) -> CorruptArchive:
    return CorruptArchive(f"archive member {member}: key {show_key(key)}: {reason}; nothing was restored")


def check_envelope(member: str, key: bytes, payload: bytes, rdb_version: int) -> None:
    """The parts of a DUMP payload statekit itself relies on: its length, and an RDB version that agrees with
    the record's and is one Redis could have written."""
    if len(payload) < 11:
        raise _malformed(member, key, "DUMP payload is too short")
    footer = payload_rdb_version(payload)
    if footer != rdb_version:
        raise _malformed(member, key, f"DUMP payload says RDB version {footer}, its record says {rdb_version}")
    if not 1 <= footer <= MAX_RDB_VERSION:
        raise _malformed(member, key, f"DUMP payload claims RDB version {footer}, which no Redis writes")


def check_conversion(member: str, key: bytes, payload: bytes, target_rdb: int) -> None:
    """A payload newer than the target must convert cleanly (or be a known uncarriable type, checked before)."""
    try:
        portable.convert(payload, target_rdb)
    except portable.Malformed as exc:
        raise _malformed(member, key, f"DUMP payload is malformed: {exc.reason}") from None
    except portable.Uncarriable as exc:
        raise _malformed(member, key, f"DUMP payload cannot be converted for the target: {exc}") from None
    except (IndexError, ValueError, struct.error, OverflowError, MemoryError, RecursionError):
        raise _malformed(member, key, "DUMP payload is malformed (its contents overrun it)") from None


def check_expiry(member: str, key: bytes, expire_at: int, shift: int, *, relative: bool) -> None:
    """An expiry the restore would send (`expire_at` moved by `shift` under --ttl relative) must be one Redis
    takes: a signed 64-bit millisecond time (with room for the later shift of the writing pass)."""
    if expire_at == NO_EXPIRY:
        return
    limit = _LLONG_MAX - (_RELATIVE_ROOM if relative else 0)
    if expire_at + shift > limit:
        raise _malformed(member, key, f"its expiry time {expire_at} is beyond any time Redis can set")


def check_absent(member: str, key: bytes, *, undo: bool) -> None:
    """An "X" record (the key was absent: restoring deletes it) is only valid in an undo archive."""
    if not undo:
        raise _malformed(member, key, "a record that deletes the key, which only an undo archive may hold")


class TargetLoadCheck:
    """Has the target load DUMP payloads without keeping them (see the module docstring), in pipelined
    batches; `add` queues one, `flush` checks the queue and raises CorruptArchive on the first refusal."""

    def __init__(self, router: Router) -> None:
        self.router = router
        # A name nothing uses: RESTORE without REPLACE would refuse an existing key before loading anything.
        self.name = b"statekit:restore-check:" + uuid.uuid4().hex.encode()
        self._queue: list[tuple[str, bytes, bytes]] = []
        self.checked = 0

    def add(self, member: str, key: bytes, payload: bytes) -> None:
        """Queue one payload (checked at the latest by `flush`)."""
        self._queue.append((member, key, payload))
        if len(self._queue) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        """Check every queued payload."""
        if not self._queue:
            return
        queue, self._queue = self._queue, []
        name = self.name
        head = b"*5\r\n$7\r\nRESTORE\r\n$%d\r\n%s\r\n$1\r\n1\r\n" % (len(name), name)
        cmds = [head + b"$%d\r\n%s\r\n$6\r\nABSTTL\r\n" % (len(p), p) for _, _, p in queue]
        replies = self.router.call([name] * len(cmds), cmds)
        for (member, key, _), reply in zip(queue, replies):
            if isinstance(reply, ReplyError):
                text = str(reply)
                if text.startswith(("BUSYKEY", "NOPERM", "READONLY", "OOM", "MOVED", "ASK", "LOADING")):
                    raise TierError(f"redis: cannot check payloads on the target: {text}")
                raise _malformed(member, key, f"the target cannot load its DUMP payload: {text}")
        self.checked += len(queue)


@dataclass
class BigKeyCheck:
    """Follows the begin/chunk/end records of big keys across members (one big key is open at a time)."""

    key: bytes | None = None
    type: int = 0
    chunks: int = 0
    member: str = ""
    elements: int = 0  # items of a list, set, hash or zset so far (the key exists once there is one)
    stream: _StreamCheck | None = None
    _pending: list[str] = field(default_factory=list)

    def begin(self, member: str, key: bytes, type_: int) -> None:
        if self.key is not None:
            raise _malformed(member, key, f"big key starts before big key {show_key(self.key)} ended")
        if type_ not in _BIG_TYPES:
            raise _malformed(member, key, f"big key of type {type_}, which cannot be rebuilt in chunks")
        self.key, self.type, self.chunks, self.member = key, type_, 0, member
        self.elements = 0
        self.stream = _StreamCheck() if type_ == TYPE_STREAM else None

    def chunk(self, member: str, key: bytes, type_: int, count: int, items: list[bytes] | None) -> None:
        """One chunk of `count` items; `items` themselves are needed for sorted sets and streams only."""
        if self.key != key or self.type != type_:
            raise _malformed(member, key, "chunk record outside its big key")
        self.chunks += 1
        if self.stream is not None and items is not None:
            problem = self.stream.chunk(items)
        else:
            problem = chunk_problem(type_, count, items)
        if problem:
            raise _malformed(member, key, f"big key chunk {self.chunks} {problem}")
        self.elements += count

    def end(self, member: str, key: bytes, count: int) -> None:
        if self.key != key:
            raise _malformed(member, key, "end record outside its big key")
        if count != self.chunks:
            raise _malformed(member, key, f"big key ends after {self.chunks} chunks but says {count}")
        # A string is made by its APPENDs even when empty; any other key exists only once it holds something.
        if self.stream is not None:
            if not self.stream.exists:
                raise _malformed(member, key, "big stream ends without any entry or its metadata")
        elif self.type != TYPE_STRING and not self.elements:
            raise _malformed(member, key, "big key ends without any element")
        self.key = None

    def finish(self) -> None:
        """At the end of the archive: no big key may be left open."""
        if self.key is not None:
            raise _malformed(self.member, self.key, "big key never ends (its end record is missing)")


def chunk_problem(type_: int, count: int, items: list[bytes] | None) -> str | None:
    """Why a chunk's `count` items do not fit its key's type (None when they do); `items` are looked at
    for sorted sets. A stream's chunks are checked in their order by BigKeyCheck (_StreamCheck)."""
    if type_ in (TYPE_HASH, TYPE_ZSET) and count % 2:
        return "holds an odd number of items for field/value or member/score pairs"
    if items is None:
        return None
    if type_ == TYPE_ZSET:
        for score in items[1::2]:
            if not is_score(score):
                return f"holds a score that is not a number ({score[:20]!r})"
    return None


def is_score(text: bytes) -> bool:
    """Whether ZADD takes `text` as a score (see _SCORE): not NaN, no overflow to infinity, no underflow to 0."""
    if _SCORE.fullmatch(text) is None:
        return False
    value = float(text)
    if value in (float("inf"), float("-inf")):
        return text.lstrip(b"+-")[:1] in (b"i", b"I")
    if value == 0.0:
        mantissa = text.lstrip(b"+-").split(b"e")[0].split(b"E")[0]
        return mantissa.strip(b"0.") == b""
    return True


def _stream_id(text: bytes) -> tuple[int, int] | None:
    """(ms, seq) of a full stream id, or None when Redis would not take it."""
    m = _STREAM_ID.fullmatch(text)
    if m is None:
        return None
    ms, seq = int(m.group(1)), int(m.group(2))
    return (ms, seq) if ms <= _ULLONG_MAX and seq <= _ULLONG_MAX else None


def _counter(text: bytes, *, empty: bool = False) -> bool:
    """A non-negative integer Redis reads as a long long (or, with `empty`, nothing)."""
    if not text:
        return empty
    return text.isdigit() and len(text) <= 19 and int(text) <= _LLONG_MAX


@dataclass
class _StreamCheck:
    """The chunks of one big stream, in the order BigKeyBuilder replays them: entries (XADD, ids increasing
    from above 0-0), the metadata once (XSETID), then groups (XGROUP CREATE, each name once) and their
    pending entries (XCLAIM, into a group defined before)."""

    last: tuple[int, int] = (0, 0)
    entries: int = 0
    meta: bool = False
    groups: set[bytes] = field(default_factory=set)

    @property
    def exists(self) -> bool:
        return self.entries > 0 or self.meta

    def chunk(self, items: list[bytes]) -> str | None:
        """Why this chunk cannot be replayed after the ones seen so far (None when it can)."""
        if not items:
            return "is empty"
        kind, rest = items[0], items[1:]
        if kind == b"E":
            if self.meta:
                return "holds stream entries after the stream's metadata"
            i = 0
            while i < len(rest):
                if i + 1 >= len(rest) or not _counter(rest[i + 1]):
                    return "holds a stream entry without its field count"
                entry = _stream_id(rest[i])
                if entry is None:
                    return f"holds a stream entry with an invalid id ({rest[i][:40]!r})"
                if entry <= self.last:
                    return "holds stream entries whose ids do not increase (or are 0-0)"
                n = int(rest[i + 1])
                if n == 0 or n % 2 or i + 2 + n > len(rest):
                    return "holds a stream entry without field/value pairs, or whose fields overrun the chunk"
                self.last = entry
                self.entries += 1
                i += 2 + n
            return None
        if kind == b"M":
            if len(rest) != 3:
                return "holds stream metadata of the wrong shape"
            if self.meta:
                return "holds the stream's metadata twice"
            last, added, deleted = _stream_id(rest[0]), rest[1], rest[2]
            if last is None or not _counter(added, empty=True) or (deleted and _stream_id(deleted) is None):
                return "holds stream metadata with an invalid id or counter"
            if self.entries and last < self.last:
                return "holds stream metadata whose last id is below its last entry"
            if added and int(added) < self.entries:
                return "holds stream metadata counting fewer entries added than it has"
            if deleted and (_stream_id(deleted) or (0, 0)) > last:
                return "holds stream metadata whose max deleted id is above its last id"
            self.meta = True
            return None
        if kind == b"G":
            if len(rest) < 3:
                return "holds a stream group of the wrong shape"
            if not self.meta:
                return "holds a stream group before the stream's metadata"
            if _stream_id(rest[1]) is None or not _counter(rest[2], empty=True):
                return "holds a stream group with an invalid id or counter"
            if rest[0] in self.groups:
                return "defines a stream group twice"
            self.groups.add(rest[0])
            return None
        if kind == b"P":
            if not rest or (len(rest) - 1) % 4:
                return "holds stream pending entries of the wrong shape"
            if rest[0] not in self.groups:
                return "holds pending entries of a stream group not defined before"
            quads = rest[1:]
            for pid, idle, count in zip(quads[0::4], quads[2::4], quads[3::4]):
                if _stream_id(pid) is None or not _counter(idle) or not _counter(count):
                    return "holds a stream pending entry with an invalid id or counter"
            return None
        return f"has an unknown stream chunk kind {kind[:8]!r}"


def is_big_record(tag: int) -> bool:
    """Whether a record tag belongs to a big key's begin/chunk/end sequence."""
    return tag in (TAG_BEGIN, TAG_CHUNK, TAG_END)
