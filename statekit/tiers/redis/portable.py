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
"""

from __future__ import annotations

import struct

TYPE_STRING, TYPE_LIST, TYPE_SET, TYPE_ZSET_2, TYPE_HASH = 0, 1, 2, 5, 4


class Uncarriable(Exception):
    """This payload cannot be rebuilt for the target server; the message says why."""


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

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise Uncarriable("DUMP payload is truncated")
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
            return lzf_decompress(self.take(clen), ulen)
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
    """Decompress liblzf data (the compression RDB uses for strings longer than 20 bytes)."""
    out = bytearray()
    ip = 0
    n = len(data)
    while ip < n:
        ctrl = data[ip]
        ip += 1
        if ctrl < 32:
            out += data[ip : ip + ctrl + 1]
            ip += ctrl + 1
            continue
        length = ctrl >> 5
        if length == 7:
            length += data[ip]
            ip += 1
        ref = len(out) - ((ctrl & 0x1F) << 8) - data[ip] - 1
        ip += 1
        length += 2
        if ref < 0:
            raise Uncarriable("corrupt LZF data in DUMP payload")
        if ref + length <= len(out):
            out += out[ref : ref + length]
        else:  # overlapping copy: repeats the last bytes
            for i in range(length):
                out.append(out[ref + i])
    if len(out) != size:
        raise Uncarriable("corrupt LZF data in DUMP payload (length mismatch)")
    return bytes(out)


def _ziplist(blob: bytes) -> list[bytes]:
    """Entries of a ziplist (integers as decimal text)."""
    out = []
    pos = 10
    end = len(blob)
    while pos < end:
        if blob[pos] == 0xFF:
            break
        pos += 5 if blob[pos] == 0xFE else 1  # prevlen
        enc = blob[pos]
        kind = enc >> 6
        if kind == 0:
            n = enc & 0x3F
            out.append(blob[pos + 1 : pos + 1 + n])
            pos += 1 + n
        elif kind == 1:
            n = ((enc & 0x3F) << 8) | blob[pos + 1]
            out.append(blob[pos + 2 : pos + 2 + n])
            pos += 2 + n
        elif kind == 2:
            n = int.from_bytes(blob[pos + 1 : pos + 5], "big")
            out.append(blob[pos + 5 : pos + 5 + n])
            pos += 5 + n
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
            out.append(b"%d" % v)
            pos += 1 + w
    return out


def _listpack(blob: bytes) -> list[bytes]:
    """Entries of a listpack (integers as decimal text)."""
    out = []
    pos = 6
    end = len(blob)
    while pos < end:
        enc = blob[pos]
        if enc == 0xFF:
            break
        if enc < 0x80:
            out.append(b"%d" % (enc & 0x7F))
            size = 1
        elif enc >> 6 == 2:
            n = enc & 0x3F
            out.append(blob[pos + 1 : pos + 1 + n])
            size = 1 + n
        elif enc >> 5 == 6:
            v = ((enc & 0x1F) << 8) | blob[pos + 1]
            out.append(b"%d" % (v - 8192 if v >= 4096 else v))
            size = 2
        elif enc >> 4 == 14:
            n = ((enc & 0x0F) << 8) | blob[pos + 1]
            out.append(blob[pos + 2 : pos + 2 + n])
            size = 2 + n
        elif enc == 0xF0:
            n = int.from_bytes(blob[pos + 1 : pos + 5], "little")
            out.append(blob[pos + 5 : pos + 5 + n])
            size = 5 + n
        elif 0xF1 <= enc <= 0xF4:
            w = {0xF1: 2, 0xF2: 3, 0xF3: 4, 0xF4: 8}[enc]
            out.append(b"%d" % int.from_bytes(blob[pos + 1 : pos + 1 + w], "little", signed=True))
            size = 1 + w
        else:
            raise Uncarriable(f"unknown listpack encoding {enc:#x}")
        # backlen: 1 byte per 7 bits of the entry's size
        back = 1 if size < 128 else 2 if size < 16384 else 3 if size < 2097152 else 4 if size < 268435456 else 5
        pos += size + back
    return out


def _intset(blob: bytes) -> list[bytes]:
    width, count = struct.unpack_from("<II", blob)
    fmt = {2: "h", 4: "i", 8: "q"}.get(width)
    if fmt is None:
        raise Uncarriable("corrupt intset in DUMP payload")
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
    """
    if len(payload) < 11:
        raise Uncarriable("DUMP payload too short")
    r = _Reader(payload[:-10])
    t = r.byte()
    if t == 0:
        return TYPE_STRING, r.string()
    if t == 1:
        return TYPE_LIST, [r.string() for _ in range(r.plain_length())]
    if t == 2:
        return TYPE_SET, [r.string() for _ in range(r.plain_length())]
    if t == 3:
        n = r.plain_length()
        return TYPE_ZSET_2, [(r.string(), _old_double(r)) for _ in range(n)]
    if t == 5:
        n = r.plain_length()
        return TYPE_ZSET_2, [(r.string(), struct.unpack("<d", r.take(8))[0]) for _ in range(n)]
    if t == 4:
        n = r.plain_length()
        return TYPE_HASH, [(r.string(), r.string()) for _ in range(n)]
    if t == 10:
        return TYPE_LIST, _ziplist(r.string())
    if t == 11:
        return TYPE_SET, _intset(r.string())
    if t == 20:
        return TYPE_SET, _listpack(r.string())
    if t in (12, 17):
        items = _ziplist(r.string()) if t == 12 else _listpack(r.string())
        return TYPE_ZSET_2, [(m, float(s)) for m, s in _pairs(items)]
    if t in (13, 16):
        items = _ziplist(r.string()) if t == 13 else _listpack(r.string())
        return TYPE_HASH, _pairs(items)
    if t == 14:
        out: list[bytes] = []
        for _ in range(r.plain_length()):
            out += _ziplist(r.string())
        return TYPE_LIST, out
    if t == 18:
        out = []
        for _ in range(r.plain_length()):
            container = r.plain_length()
            blob = r.string()
            if container == 1:  # PLAIN node: one big element stored as is
                out.append(blob)
            else:
                out += _listpack(blob)
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
    snapshots: a stream in the oldest stream encoding, anything else without its version and CRC footer."""
    if payload[:1] and payload[0] in STREAM_TYPES:
        try:
            return _stream_down(payload, 9)[:-10]
        except (Uncarriable, IndexError):
            pass
    return payload[:-10]


def convert(payload: bytes, rdb_version: int) -> bytes:
    """Rebuild `payload` so a server writing RDB version `rdb_version` can RESTORE it (or raise Uncarriable)."""
    if payload and payload[0] in STREAM_TYPES:
        try:
            return _stream_down(payload, rdb_version)
        except IndexError:
            raise Uncarriable("stream DUMP payload is truncated") from None
    rdb_type, value = decode(payload)
    return encode(rdb_type, value, rdb_version)
