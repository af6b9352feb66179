"""What a Redis restore checks before its first write, so that a crafted or damaged record is refused (exit 3,
naming the member) instead of being found half-way through the writing pass.

- A DUMP payload that goes to the target as is is loaded by the target itself, as an already expired key:
  `RESTORE <unused name> 1 <payload> ABSTTL` makes the server check the RDB version and the CRC and decode
  the whole value with its own loader, then drop it, since it expired in 1970. Nothing is written (no key,
  no replication, no keyspace event). So "can the target load this" is answered by the target's own code
  for its own RDB version.
- A payload newer than the target is converted in full (portable.convert); any inconsistency in it (a list
  claiming more elements than it holds, an intset whose count overruns it) is a malformed payload.
- A big key's chunk records must come in order (begin, chunks, end, for one key at a time) and have the
  shape its type needs (pairs for hashes and sorted sets, scores that are numbers, stream chunks of a
  known kind).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

from statekit.errors import CorruptArchive, TierError
from statekit.tiers.redis import portable
from statekit.tiers.redis.bigkeys import show_key
from statekit.tiers.redis.cluster import Router
from statekit.tiers.redis.records import (
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
    except portable.Uncarriable as exc:
        raise _malformed(member, key, f"DUMP payload is malformed: {exc}") from None
    except (IndexError, ValueError, struct.error, OverflowError, MemoryError, RecursionError):
        raise _malformed(member, key, "DUMP payload is malformed (its contents overrun it)") from None


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
    _pending: list[str] = field(default_factory=list)

    def begin(self, member: str, key: bytes, type_: int) -> None:
        if self.key is not None:
            raise _malformed(member, key, f"big key starts before big key {show_key(self.key)} ended")
        if type_ not in _BIG_TYPES:
            raise _malformed(member, key, f"big key of type {type_}, which cannot be rebuilt in chunks")
        self.key, self.type, self.chunks, self.member = key, type_, 0, member

    def chunk(self, member: str, key: bytes, type_: int, count: int, items: list[bytes] | None) -> None:
        """One chunk of `count` items; `items` themselves are needed for sorted sets and streams only."""
        if self.key != key or self.type != type_:
            raise _malformed(member, key, "chunk record outside its big key")
        self.chunks += 1
        problem = chunk_problem(type_, count, items)
        if problem:
            raise _malformed(member, key, f"big key chunk {self.chunks} {problem}")

    def end(self, member: str, key: bytes, count: int) -> None:
        if self.key != key:
            raise _malformed(member, key, "end record outside its big key")
        if count != self.chunks:
            raise _malformed(member, key, f"big key ends after {self.chunks} chunks but says {count}")
        self.key = None

    def finish(self) -> None:
        """At the end of the archive: no big key may be left open."""
        if self.key is not None:
            raise _malformed(self.member, self.key, "big key never ends (its end record is missing)")


def chunk_problem(type_: int, count: int, items: list[bytes] | None) -> str | None:
    """Why a chunk's `count` items do not fit its key's type (None when they do); `items` are looked at
    for sorted sets and streams."""
    if type_ in (TYPE_HASH, TYPE_ZSET) and count % 2:
        return "holds an odd number of items for field/value or member/score pairs"
    if items is None:
        return None
    if type_ == TYPE_ZSET:
        for score in items[1::2]:
            try:
                value = float(score)
            except ValueError:
                return f"holds a score that is not a number ({score[:20]!r})"
            if value != value:
                return "holds a score that is not a number (nan)"
    if type_ == TYPE_STREAM:
        return _stream_chunk_problem(items)
    return None


def _stream_chunk_problem(items: list[bytes]) -> str | None:
    if not items:
        return "is empty"
    kind, rest = items[0], items[1:]
    if kind == b"E":
        i = 0
        while i < len(rest):
            if i + 1 >= len(rest) or not rest[i + 1].isdigit():
                return "holds a stream entry without its field count"
            n = int(rest[i + 1])
            if n % 2 or i + 2 + n > len(rest):
                return "holds a stream entry whose fields overrun the chunk"
            i += 2 + n
        return None
    if kind == b"M":
        return None if len(rest) == 3 else "holds stream metadata of the wrong shape"
    if kind == b"G":
        return None if len(rest) >= 3 else "holds a stream group of the wrong shape"
    if kind == b"P":
        return (
            None if len(rest) >= 1 and (len(rest) - 1) % 4 == 0 else "holds stream pending entries of the wrong shape"
        )
    return f"has an unknown stream chunk kind {kind[:8]!r}"


def is_big_record(tag: int) -> bool:
    """Whether a record tag belongs to a big key's begin/chunk/end sequence."""
    return tag in (TAG_BEGIN, TAG_CHUNK, TAG_END)
