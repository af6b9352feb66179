"""Carry a DUMP payload to a server with an older RDB version.

A server refuses a DUMP payload whose RDB version is newer than its own, although the data types themselves
(string, list, set, zset, hash) have not changed. So statekit decodes the newer payload's compact encodings
(listpack, ziplist, intset, quicklist, LZF-compressed strings) into plain values and re-encodes them in the
plain object encodings every server since Redis 4.0 loads (RDB object types 0, 1, 2, 4 and 5), stamped with
the target's RDB version and a fresh CRC64. The key still goes in with one RESTORE: never half written.

A stream keeps its entries (listpacks, the same in every version) and is re-encoded in the newest stream
type the target loads, without the metadata newer types added (first and max-deleted ids, entries added and
read, consumers' active time), which the older server has no place for. Module types and hashes with field
expiry cannot be carried; `convert` raises Uncarriable with the reason.

A payload is archive data: one that contradicts itself (truncated, a length overrunning what holds it, an LZF
string that does not decompress to exactly its declared length) raises Malformed, a CorruptArchive (exit 3),
from every function here. Nothing it declares becomes an allocation beyond MAX_VALUE.
"""

from __future__ import annotations

import struct

from statekit.errors import CorruptArchive

TYPE_STRING, TYPE_LIST, TYPE_SET, TYPE_ZSET_2, TYPE_HASH = 0, 1, 2, 5, 4

# Redis' largest string (proto-max-bulk-len, 512 MiB; records.MAX_RECORD is this plus a record head): no LZF
# string in a DUMP payload decompresses to more. It also bounds a whole decoded value: re-encoded for the
# target, it must fit one RESTORE argument of that size.
MAX_VALUE = 512 << 20
# What one decoded element costs beyond its bytes (a bytes object and its list slot), charged against
# MAX_VALUE so that a payload of millions of tiny elements cannot become gigabytes of objects.
_ITEM_COST = 64


class Uncarriable(Exception):
    """This payload cannot be rebuilt for the target server; the message says why."""


class Malformed(CorruptArchive):
    """The payload contradicts itself: a damaged or crafted archive (exit 3). `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"a redis DUMP payload in the archive is malformed: {reason}")
        self.reason = reason


# -- CRC64 (Jones polynomial, reflected, as in Redis' crc64.c) ------------------------------------------

_POLY = 0x95AC9329AC4BC9B5  # 0xad93d23594c935a9 bit-reflected


def _table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _table()


def crc64(data: bytes, crc: int = 0) -> int:
    """Redis' CRC64 of `data` (crc64(b"123456789") == 0xe9c6d914c4b8d9ca)."""
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


# -- reading RDB encodings -------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        # What the decoded value may still take (see MAX_VALUE); `keep` charges each element.
        self.budget = MAX_VALUE

    def keep(self, size: int, items: int = 1) -> None:
        """Charge `items` decoded elements of `size` bytes in all against the budget."""
        self.budget -= size + items * _ITEM_COST
        if self.budget < 0:
            raise Uncarriable(
                f"its decoded value is larger than {MAX_VALUE >> 20} MiB, more than one RESTORE can carry"
            )

    def item(self) -> bytes:
        """One string that becomes an element of the decoded value."""
        s = self.string()
        self.keep(len(s))
        return s

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise Malformed("truncated")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise Malformed("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def length(self) -> tuple[int, bool]:
        """(length, is_encoded) as rdbLoadLenByRef reads it."""
        b = self.byte()
        kind = b >> 6
        if kind == 0:
            return b & 0x3F, False
        if kind == 1:
            return ((b & 0x3F) << 8) | self.byte(), False
        if kind == 3:
            return b & 0x3F, True
        if b == 0x80:
            return int.from_bytes(self.take(4), "big"), False
        if b == 0x81:
            return int.from_bytes(self.take(8), "big"), False
        raise Uncarriable(f"unknown RDB length encoding {b:#x}")

    def plain_length(self) -> int:
        n, encoded = self.length()
        if encoded:
            raise Uncarriable("unexpected encoded length")
        return n

    def string(self) -> bytes:
        n, encoded = self.length()
        if not encoded:
            return self.take(n)
        if n == 0:
            return b"%d" % struct.unpack("<b", self.take(1))[0]
        if n == 1:
            return b"%d" % struct.unpack("<h", self.take(2))[0]
        if n == 2:
            return b"%d" % struct.unpack("<i", self.take(4))[0]
        if n == 3:
            clen = self.plain_length()
            ulen = self.plain_length()
            data = self.take(clen)
            if ulen > MAX_VALUE:
                raise Malformed(f"an LZF string claims {ulen} bytes, more than any Redis string holds")
            if ulen > self.budget:
                self.keep(ulen)  # raises: more than the decoded value may take
            return lzf_decompress(data, ulen)
        raise Uncarriable(f"unknown RDB string encoding {n}")

    def skip_string(self) -> None:
        """Step over one RDB string without decoding it (LZF data stays compressed)."""
        n, encoded = self.length()
        if not encoded:
            self.take(n)
        elif n < 3:
            self.take(1 << n)
        elif n == 3:
            clen = self.plain_length()
            self.plain_length()
            self.take(clen)
        else:
            raise Uncarriable(f"unknown RDB string encoding {n}")


def lzf_decompress(data: bytes, size: int) -> bytes:
    """Decompress liblzf data (the compression RDB uses for strings longer than 20 bytes) into exactly `size`
    bytes, as Redis does: output beyond `size` is refused as soon as it would be written (so `size`, at most
    MAX_VALUE, bounds the work and memory), and so is output that ends short of it. Literal runs and
    back references are copied as slices (an overlapping reference repeats its last bytes)."""
    if size > MAX_VALUE:
        raise Malformed(f"an LZF string claims {size} bytes, more than any Redis string holds")
    out = bytearray()
    ip = 0
    n = len(data)
    while ip < n:
        ctrl = data[ip]
        ip += 1
        if ctrl < 32:
            run = ctrl + 1
            if ip + run > n:
                raise Malformed("corrupt LZF data (a literal run overruns it)")
            if len(out) + run > size:
                raise Malformed("corrupt LZF data (longer than its declared length)")
            out += data[ip : ip + run]
            ip += run
            continue
        length = ctrl >> 5
        if length == 7:
            if ip >= n:
                raise Malformed("corrupt LZF data (cut short)")
            length += data[ip]
            ip += 1
        if ip >= n:
            raise Malformed("corrupt LZF data (cut short)")
        dist = ((ctrl & 0x1F) << 8) + data[ip] + 1
        ip += 1
        length += 2
        olen = len(out)
        if dist > olen:
            raise Malformed("corrupt LZF data (a back reference before its start)")
        if olen + length > size:
            raise Malformed("corrupt LZF data (longer than its declared length)")
        ref = olen - dist
        if dist >= length:
            out += out[ref : ref + length]
        else:  # overlapping: the last `dist` bytes, repeated
            reps, rest = divmod(length, dist)
            pattern = out[ref:]
            out += pattern * reps + pattern[:rest]
    if len(out) != size:
        raise Malformed("corrupt LZF data (shorter than its declared length)")
    return bytes(out)


def _ziplist(blob: bytes, r: _Reader) -> list[bytes]:
    """Entries of a ziplist (integers as decimal text), each charged to `r`'s budget."""
    out = []
    pos = 10
    end = len(blob)
    while pos < end:
        if blob[pos] == 0xFF:
            break
        pos += 5 if blob[pos] == 0xFE else 1  # prevlen
        if pos >= end:
            break
        enc = blob[pos]
        kind = enc >> 6
        if kind == 0:
            n = enc & 0x3F
            start = pos + 1
        elif kind == 1:
            n = ((enc & 0x3F) << 8) | blob[pos + 1]
            start = pos + 2
        elif kind == 2:
            n = int.from_bytes(blob[pos + 1 : pos + 5], "big")
            start = pos + 5
        else:
            if enc == 0xC0:
                v, w = int.from_bytes(blob[pos + 1 : pos + 3], "little", signed=True), 2
            elif enc == 0xD0:
                v, w = int.from_bytes(blob[pos + 1 : pos + 5], "little", signed=True), 4
            elif enc == 0xE0:
                v, w = int.from_bytes(blob[pos + 1 : pos + 9], "little", signed=True), 8
            elif enc == 0xF0:
                v, w = int.from_bytes(blob[pos + 1 : pos + 4], "little", signed=True), 3
            elif enc == 0xFE:
                v, w = int.from_bytes(blob[pos + 1 : pos + 2], "little", signed=True), 1
            elif 0xF1 <= enc <= 0xFD:
                v, w = (enc & 0x0F) - 1, 0
            else:
                raise Uncarriable(f"unknown ziplist encoding {enc:#x}")
            n, start = 0, pos + 1 + w
            if start > end:
                raise Malformed("a ziplist entry overruns its ziplist")
            r.keep(20)
            out.append(b"%d" % v)
            pos = start
            continue
        pos = start + n
        if pos > end:
            raise Malformed("a ziplist entry overruns its ziplist")
        r.keep(n)
        out.append(blob[start:pos])
    return out


def _listpack(blob: bytes, r: _Reader) -> list[bytes]:
    """Entries of a listpack (integers as decimal text), each charged to `r`'s budget."""
    out = []
    pos = 6
    end = len(blob)
    while pos < end:
        enc = blob[pos]
        if enc == 0xFF:
            break
        if enc < 0x80:
            item = b"%d" % (enc & 0x7F)
            size = 1
        elif enc >> 6 == 2:
            n = enc & 0x3F
            item = blob[pos + 1 : pos + 1 + n]
            size = 1 + n
        elif enc >> 5 == 6:
            v = ((enc & 0x1F) << 8) | blob[pos + 1]
            item = b"%d" % (v - 8192 if v >= 4096 else v)
            size = 2
        elif enc >> 4 == 14:
            n = ((enc & 0x0F) << 8) | blob[pos + 1]
            item = blob[pos + 2 : pos + 2 + n]
            size = 2 + n
        elif enc == 0xF0:
            n = int.from_bytes(blob[pos + 1 : pos + 5], "little")
            item = blob[pos + 5 : pos + 5 + n]
            size = 5 + n
        elif 0xF1 <= enc <= 0xF4:
            w = {0xF1: 2, 0xF2: 3, 0xF3: 4, 0xF4: 8}[enc]
            item = b"%d" % int.from_bytes(blob[pos + 1 : pos + 1 + w], "little", signed=True)
            size = 1 + w
        else:
            raise Uncarriable(f"unknown listpack encoding {enc:#x}")
        # backlen: 1 byte per 7 bits of the entry's size
        back = 1 if size < 128 else 2 if size < 16384 else 3 if size < 2097152 else 4 if size < 268435456 else 5
        if pos + size + back > end:
            raise Malformed("a listpack entry overruns its listpack")
        r.keep(len(item))
        out.append(item)
        pos += size + back
    return out


def _intset(blob: bytes, r: _Reader) -> list[bytes]:
    if len(blob) < 8:
        raise Malformed("an intset is cut short")
    width, count = struct.unpack_from("<II", blob)
    fmt = {2: "h", 4: "i", 8: "q"}.get(width)
    if fmt is None:
        raise Malformed("an intset of an unknown width")
    if 8 + count * width > len(blob):
        raise Malformed(f"an intset claims {count} elements, more than it holds")
    r.keep(20 * count, count)
    return [b"%d" % v for v in struct.unpack_from(f"<{count}{fmt}", blob, 8)]


def _pairs(items: list[bytes]) -> list[tuple[bytes, bytes]]:
    return list(zip(items[0::2], items[1::2]))


def _old_double(r: _Reader) -> float:
    n = r.byte()
    if n == 253:
        return float("nan")
    if n == 254:
        return float("inf")
    if n == 255:
        return float("-inf")
    return float(r.take(n))


def decode(payload: bytes) -> tuple[int, object]:
    """Decode a DUMP payload of a core type into (plain RDB type, value).

    value: bytes (string), list[bytes] (list, set), list[(member, score)] (zset), list[(field, value)] (hash).
    Raises Uncarriable for a type that has no plain form, Malformed for a payload that contradicts itself.
    """
    if len(payload) < 11:
        raise Malformed("too short")
    r = _Reader(payload[:-10])
    try:
        return _decode(r)
    except (IndexError, ValueError, struct.error, OverflowError):
        raise Malformed("its contents do not decode (cut short or overrunning)") from None


def _decode(r: _Reader) -> tuple[int, object]:
    t = r.byte()
    if t == 0:
        return TYPE_STRING, r.item()
    if t == 1:
        return TYPE_LIST, [r.item() for _ in range(r.plain_length())]
    if t == 2:
        return TYPE_SET, [r.item() for _ in range(r.plain_length())]
    if t == 3:
        n = r.plain_length()
        return TYPE_ZSET_2, [(r.item(), _old_double(r)) for _ in range(n)]
    if t == 5:
        n = r.plain_length()
        return TYPE_ZSET_2, [(r.item(), struct.unpack("<d", r.take(8))[0]) for _ in range(n)]
    if t == 4:
        n = r.plain_length()
        return TYPE_HASH, [(r.item(), r.item()) for _ in range(n)]
    if t == 10:
        return TYPE_LIST, _ziplist(r.string(), r)
    if t == 11:
        return TYPE_SET, _intset(r.string(), r)
    if t == 20:
        return TYPE_SET, _listpack(r.string(), r)
    if t in (12, 17):
        items = _ziplist(r.string(), r) if t == 12 else _listpack(r.string(), r)
        return TYPE_ZSET_2, [(m, float(s)) for m, s in _pairs(items)]
    if t in (13, 16):
        items = _ziplist(r.string(), r) if t == 13 else _listpack(r.string(), r)
        return TYPE_HASH, _pairs(items)
    if t == 14:
        out: list[bytes] = []
        for _ in range(r.plain_length()):
            out += _ziplist(r.string(), r)
        return TYPE_LIST, out
    if t == 18:
        out = []
        for _ in range(r.plain_length()):
            container = r.plain_length()
            if container == 1:  # PLAIN node: one big element stored as is
                out.append(r.item())
            else:
                out += _listpack(r.string(), r)
        return TYPE_LIST, out
    if t in (15, 19, 21):
        raise Uncarriable("a stream has no plain form (convert() carries it whole)")
    if t in (22, 23, 24, 25):
        raise Uncarriable("a hash with field expirations (Redis 7.4+) cannot be loaded by an older server")
    if t in (6, 7):
        raise Uncarriable("a module type can only be restored into the same server version")
    if t == 9:
        raise Uncarriable("zipmap-encoded hash (Redis < 2.6) is not supported")
    raise Uncarriable(f"unknown RDB object type {t}")


# -- writing plain encodings ----------------------------------------------------------------------------


def _len(n: int) -> bytes:
    if n < 64:
        return bytes((n,))
    if n < 16384:
        return bytes((0x40 | (n >> 8), n & 0xFF))
    if n < 1 << 32:
        return b"\x80" + n.to_bytes(4, "big")
    return b"\x81" + n.to_bytes(8, "big")


def _str(s: bytes) -> bytes:
    return _len(len(s)) + s


def encode(rdb_type: int, value: object, rdb_version: int) -> bytes:
    """A DUMP payload in the plain encoding of `rdb_type`, stamped with `rdb_version`."""
    parts: list[bytes] = [bytes((rdb_type,))]
    if rdb_type == TYPE_STRING:
        assert isinstance(value, bytes)
        parts.append(_str(value))
    elif rdb_type in (TYPE_LIST, TYPE_SET):
        assert isinstance(value, list)
        parts.append(_len(len(value)))
        parts += [_str(v) for v in value]
    elif rdb_type == TYPE_ZSET_2:
        assert isinstance(value, list)
        parts.append(_len(len(value)))
        for member, score in value:
            parts += (_str(member), struct.pack("<d", score))
    elif rdb_type == TYPE_HASH:
        assert isinstance(value, list)
        parts.append(_len(len(value)))
        for f, v in value:
            parts += (_str(f), _str(v))
    else:
        raise Uncarriable(f"cannot encode RDB object type {rdb_type}")
    parts.append(struct.pack("<H", rdb_version))
    body = b"".join(parts)
    return body + struct.pack("<Q", crc64(body))


# -- streams --------------------------------------------------------------------------------------------

# RDB object type of a stream and the RDB version that introduced it: each adds metadata to the one before
# (type 19: first id, max deleted id, entries added, a group's entries read; type 21: a consumer's active
# time). The entries themselves are listpacks in every version.
STREAM_TYPES = {15: 9, 19: 10, 21: 11}


def _stream_down(payload: bytes, rdb_version: int) -> bytes:
    """A stream payload re-encoded in the newest stream type the target loads, dropping the metadata it
    has no place for (the target's XINFO does not show it either)."""
    src = payload[0]
    dst = max(t for t, v in STREAM_TYPES.items() if v <= rdb_version)
    r = _Reader(payload[:-10])
    r.pos = 1
    out = [bytes((dst,))]
    mark = r.pos

    def keep() -> None:  # copy what was read since the last mark
        nonlocal mark
        out.append(r.data[mark : r.pos])
        mark = r.pos

    def drop() -> None:
        nonlocal mark
        mark = r.pos

    for _ in range(r.plain_length()):  # listpacks: master id + listpack
        r.skip_string()
        r.skip_string()
    r.plain_length()  # length
    r.plain_length()  # last id ms
    r.plain_length()  # last id seq
    keep()
    if src >= 19:
        for _ in range(5):  # first id (ms, seq), max deleted id (ms, seq), entries added
            r.plain_length()
        if dst >= 19:
            keep()
        else:
            drop()
    for _ in range(r.plain_length()):  # consumer groups
        r.skip_string()  # name
        r.plain_length()  # last delivered id ms
        r.plain_length()  # last delivered id seq
        keep()
        if src >= 19:
            r.plain_length()  # entries read
            if dst >= 19:
                keep()
            else:
                drop()
        for _ in range(r.plain_length()):  # pending entries: id, delivery time, delivery count
            r.take(16 + 8)
            r.plain_length()
        for _ in range(r.plain_length()):  # consumers
            r.skip_string()  # name
            r.take(8)  # seen time
            keep()
            if src >= 21:
                r.take(8)  # active time
                if dst >= 21:
                    keep()
                else:
                    drop()
            r.take(16 * r.plain_length())  # the consumer's pending ids
    keep()
    if r.pos != len(r.data):
        raise Uncarriable("stream DUMP payload has trailing bytes (an unknown stream encoding)")
    out.append(struct.pack("<H", rdb_version))
    body = b"".join(out)
    return body + struct.pack("<Q", crc64(body))


def comparable(payload: bytes) -> bytes:
    """A DUMP payload in a form that does not depend on the server version that wrote it, for comparing two
    snapshots: a stream in the oldest stream encoding, anything else without its version and CRC footer. A
    stream payload that is cut short raises Malformed."""
    if payload[:1] and payload[0] in STREAM_TYPES:
        try:
            return _stream_down(payload, 9)[:-10]
        except IndexError:
            raise Malformed("stream payload is truncated") from None
        except Uncarriable:
            pass
    return payload[:-10]


def convert(payload: bytes, rdb_version: int) -> bytes:
    """Rebuild `payload` so a server writing RDB version `rdb_version` can RESTORE it (or raise Uncarriable)."""
    if payload and payload[0] in STREAM_TYPES:
        try:
            return _stream_down(payload, rdb_version)
        except IndexError:
            raise Malformed("stream payload is truncated") from None
    rdb_type, value = decode(payload)
    return encode(rdb_type, value, rdb_version)
