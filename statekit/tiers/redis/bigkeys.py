"""Big keys, both ways: read in chunks at snapshot time, rebuilt chunk by chunk at restore time.

A key with more elements than `big_key_elements` (or a string longer than `big_key_bytes`) is never DUMPed
whole: DUMP of a million-field hash blocks the server for about half a second and needs the whole payload in
memory on both sides. Instead it is read with HSCAN/SSCAN/ZSCAN, LRANGE slices, GETRANGE or XRANGE, a
thousand elements per command, and written as chunk records (records.py). Such a read is not atomic.

At restore the chunks are replayed (HSET, RPUSH, SADD, ZADD, APPEND, XADD ...) into a temporary key in the
same hash slot, which is renamed onto the real name only when complete: a reader never sees half a key.

Stream chunks start with a one-byte kind, because a stream is more than its entries:
  b"E" entries: id, field count, fields and values, repeated
  b"M" meta:    last generated id, entries added, max deleted id (the last two empty before Redis 7.0)
  b"G" group:   name, last delivered id, entries read (may be empty), then its consumers' names
  b"P" pending: group, then (id, consumer, idle ms, delivery count) repeated
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from statekit.errors import TierError
from statekit.textfmt import printable
from statekit.tiers.redis.cluster import Router
from statekit.tiers.redis.keyspace import key_slot, tag_for_slot
from statekit.tiers.redis.records import (
    NO_EXPIRY,
    TYPE_HASH,
    TYPE_LIST,
    TYPE_NAMES,
    TYPE_SET,
    TYPE_STREAM,
    TYPE_STRING,
    TYPE_ZSET,
)
from statekit.tiers.redis.resp import ReplyError, RespConnection, pack

CHUNK = 1000  # elements per command and per chunk record
STRING_CHUNK = 1 << 20  # bytes per GETRANGE of a big string

_SCAN_CMDS = {TYPE_HASH: b"HSCAN", TYPE_SET: b"SSCAN", TYPE_ZSET: b"ZSCAN"}
_ADD_CMDS = {TYPE_HASH: b"HSET", TYPE_LIST: b"RPUSH", TYPE_SET: b"SADD", TYPE_ZSET: b"ZADD"}


def show_key(key: bytes) -> str:
    """A key for messages: text where it is UTF-8, escapes elsewhere (bytes that are not UTF-8, and what a
    terminal would act on: textfmt.printable), cut at 80 characters."""
    text = key.decode("utf-8", "backslashreplace")
    return printable(text) if len(text) <= 80 else printable(text[:77]) + "..."


# -- reading -------------------------------------------------------------------------------------------


def read_chunks(conn: RespConnection, key: bytes, type_: int) -> Iterator[list[bytes]]:
    """Yield the values of a big key chunk by chunk (flat item lists; see records.py). Nothing is yielded
    when the key vanished before its first chunk."""
    if type_ == TYPE_STRING:
        yield from _string_chunks(conn, key)
    elif type_ == TYPE_LIST:
        start = 0
        while True:
            items = conn.call(b"LRANGE", key, b"%d" % start, b"%d" % (start + CHUNK - 1))
            if not items:
                return
            yield items
            start += len(items)
    elif type_ == TYPE_STREAM:
        yield from _stream_chunks(conn, key)
    elif type_ in _SCAN_CMDS:
        cursor = b"0"
        while True:
            cursor, items = conn.call(_SCAN_CMDS[type_], key, cursor, b"COUNT", b"%d" % CHUNK)
            if items:
                yield items
            if cursor == b"0":
                return
    else:
        raise TierError(f"redis: cannot read a {TYPE_NAMES[type_]} in chunks")


def _string_chunks(conn: RespConnection, key: bytes) -> Iterator[list[bytes]]:
    if not conn.call(b"EXISTS", key):
        return
    off = 0
    while True:
        piece = conn.call(b"GETRANGE", key, b"%d" % off, b"%d" % (off + STRING_CHUNK - 1))
        if not piece:
            if off == 0:
                yield [b""]
            return
        yield [piece]
        off += len(piece)


def _stream_chunks(conn: RespConnection, key: bytes) -> Iterator[list[bytes]]:
    info = conn.call_raw(b"XINFO", b"STREAM", key)
    if isinstance(info, ReplyError):  # vanished (or no longer a stream)
        return
    fields = dict(zip(info[0::2], info[1::2]))
    start = b"-"
    while True:
        entries = conn.call(b"XRANGE", key, start, b"+", b"COUNT", b"%d" % CHUNK)
        if entries:
            items = [b"E"]
            for entry_id, values in entries:
                items += (entry_id, b"%d" % len(values), *values)
            yield items
        if len(entries) < CHUNK:
            break
        start = b"(" + entries[-1][0]
    yield [
        b"M",
        fields[b"last-generated-id"],
        b"%d" % fields[b"entries-added"] if b"entries-added" in fields else b"",
        fields.get(b"max-deleted-entry-id", b""),
    ]
    for group in conn.call(b"XINFO", b"GROUPS", key):
        g = dict(zip(group[0::2], group[1::2]))
        name = g[b"name"]
        read = g.get(b"entries-read")
        consumers = [dict(zip(c[0::2], c[1::2]))[b"name"] for c in conn.call(b"XINFO", b"CONSUMERS", key, name)]
        yield [b"G", name, g[b"last-delivered-id"], b"" if read is None else b"%d" % read, *consumers]
        start = b"-"
        while True:
            pending = conn.call(b"XPENDING", key, name, start, b"+", b"%d" % CHUNK)
            if pending:
                items = [b"P", name]
                for entry_id, consumer, idle, count in pending:
                    items += (entry_id, consumer, b"%d" % idle, b"%d" % count)
                yield items
            if len(pending) < CHUNK:
                break
            start = b"(" + pending[-1][0]


# -- rebuilding ----------------------------------------------------------------------------------------


class BigKeyBuilder:
    """Rebuilds one big key under a temporary name in the same hash slot; `finish` renames it into place."""

    def __init__(self, router: Router, key: bytes, type_: int, expire: int, *, modern_streams: bool):
        self.router = router
        self.key = key
        self.type = type_
        self.expire = expire
        self.active = True
        self.replace = False
        self.modern_streams = modern_streams  # Redis >= 7.0: XSETID ENTRIESADDED, XGROUP ... ENTRIESREAD
        tag = tag_for_slot(key_slot(key)) if router.cluster else b"statekit"
        self.tmp = b"{" + tag + b"}:statekit-restore:" + uuid.uuid4().hex.encode()

    def _run_all(self, commands: list[list[bytes]]) -> list[Any]:
        replies = self.router.call([self.tmp] * len(commands), [pack(*c) for c in commands])
        for r in replies:
            if isinstance(r, ReplyError):
                raise TierError(f"redis: rebuilding big key {show_key(self.key)} failed: {r}")
        return replies

    def _run(self, *cmd: bytes) -> Any:
        return self._run_all([list(cmd)])[0]

    def start(self) -> None:
        """Clear a leftover temporary key (the name is random, so this is only belt and braces)."""
        self._run(b"DEL", self.tmp)

    def add(self, items: list[bytes]) -> None:
        """Replay one chunk into the temporary key."""
        if self.type == TYPE_STRING:
            self._run_all([[b"APPEND", self.tmp, piece] for piece in items])
        elif self.type == TYPE_STREAM:
            self._run_all(self._stream_commands(items))
        elif self.type == TYPE_ZSET:  # stored member, score; ZADD wants score, member
            args: list[bytes] = []
            for member, score in zip(items[0::2], items[1::2]):
                args += (score, member)
            if args:
                self._run(b"ZADD", self.tmp, *args)
        elif self.type in _ADD_CMDS:
            if items:
                self._run(_ADD_CMDS[self.type], self.tmp, *items)
        else:
            raise TierError(f"redis: big key {show_key(self.key)} has a type that cannot be rebuilt in chunks")

    def _stream_commands(self, items: list[bytes]) -> list[list[bytes]]:
        kind, rest = items[0], items[1:]
        tmp = self.tmp
        if kind == b"E":
            cmds = []
            i = 0
            while i < len(rest):
                entry_id, n = rest[i], int(rest[i + 1])
                cmds.append([b"XADD", tmp, entry_id, *rest[i + 2 : i + 2 + n]])
                i += 2 + n
            return cmds
        if kind == b"M":
            last_id, added, max_deleted = rest
            cmds = []
            if not self.router.call([tmp], [pack(b"EXISTS", tmp)])[0]:
                # every entry was deleted: create the empty stream so its ids and groups survive
                cmds += [[b"XADD", tmp, b"0-1", b"x", b""], [b"XDEL", tmp, b"0-1"]]
            if self.modern_streams and added:
                cmds.append([b"XSETID", tmp, last_id, b"ENTRIESADDED", added, b"MAXDELETEDID", max_deleted or b"0-0"])
            else:
                cmds.append([b"XSETID", tmp, last_id])
            return cmds
        if kind == b"G":
            name, last_delivered, entries_read, *consumers = rest
            create = [b"XGROUP", b"CREATE", tmp, name, last_delivered]
            if self.modern_streams and entries_read:
                create += [b"ENTRIESREAD", entries_read]
            return [create] + [[b"XGROUP", b"CREATECONSUMER", tmp, name, c] for c in consumers]
        if kind == b"P":
            group, quads = rest[0], rest[1:]
            # XCLAIM ... FORCE puts the entry back into the pending list with its consumer, idle time
            # and delivery count; JUSTID keeps the count as given.
            return [
                [
                    b"XCLAIM",
                    tmp,
                    group,
                    consumer,
                    b"0",
                    entry_id,
                    b"IDLE",
                    idle,
                    b"RETRYCOUNT",
                    count,
                    b"FORCE",
                    b"JUSTID",
                ]
                for entry_id, consumer, idle, count in zip(quads[0::4], quads[1::4], quads[2::4], quads[3::4])
            ]
        raise TierError(f"redis: big stream {show_key(self.key)}: unknown chunk kind {kind!r}")

    def finish(self) -> str:
        """Give the key its expiry and rename it into place: "created", "replaced" or "skipped" (the real
        key appeared meanwhile and we were not to replace it)."""
        if self.type == TYPE_STRING:
            self._run(b"APPEND", self.tmp, b"")  # an empty string never got an APPEND
        if self.expire != NO_EXPIRY:
            self._run(b"PEXPIREAT", self.tmp, b"%d" % self.expire)
        if self.replace:
            self._run(b"RENAME", self.tmp, self.key)
            return "replaced"
        if self._run(b"RENAMENX", self.tmp, self.key):
            return "created"
        self._run(b"DEL", self.tmp)
        return "skipped"
