"""Pure parts of the redis tier: glob matching, hash slots, the record format and the portable codec."""

from __future__ import annotations

import binascii
import fnmatch
import io
import struct
from collections.abc import Mapping
from typing import IO, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statekit.errors import CorruptArchive
from statekit.tiers.redis.keyspace import compile_match, key_slot, tag_for_slot
from statekit.tiers.redis.portable import Malformed, Uncarriable, convert, crc64, decode, encode, lzf_decompress
from statekit.tiers.redis.records import (
    TAG_BEGIN,
    TAG_CHUNK,
    TAG_DUMP,
    TAG_END,
    TAG_VALUE,
    TYPE_HASH,
    RecordWriter,
    iter_heads,
    iter_records,
    read_member,
    record_value,
)
from statekit.tiers.redis.target import uncarriable_reason


class _Sink:
    def __init__(self) -> None:
        self.members: dict[str, tuple[bytes, dict[str, object]]] = {}

    def add(
        self,
        name: str,
        data: bytes | bytearray | memoryview | IO[bytes],
        *,
        size: int | None = None,
        mode: int = 0o600,
        mtime: float | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        assert isinstance(data, bytes)
        self.members[name] = (data, dict(meta or {}))


def test_crc64_known_answer() -> None:
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA


def test_key_slot_known_answers() -> None:
    # values from the Redis Cluster specification / CLUSTER KEYSLOT
    assert key_slot(b"foo") == 12182
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers") == key_slot(b"user1000")
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")  # the tag ends at the first }
    assert key_slot(b"foo{bar}{zap}") == key_slot(b"bar")
    assert key_slot(b"foo{}{bar}") == binascii.crc_hqx(b"foo{}{bar}", 0) % 16384  # empty tag: whole key
    for slot in (0, 1, 5000, 16383):
        assert key_slot(b"{" + tag_for_slot(slot) + b"}tmp") == slot


@given(st.text(alphabet="ab*?[]^-\\c", max_size=8), st.text(alphabet="abc-[]*", max_size=8))
def test_glob_agrees_with_fnmatch_on_simple_patterns(pattern: str, name: str) -> None:
    if any(ch in pattern for ch in "[]\\^"):
        return  # bracket and escape syntax differ between fnmatch and Redis
    pred = compile_match([pattern])
    expected = pattern == "*" or fnmatch.fnmatchcase(name, pattern)
    assert (True if pred is None else pred(name.encode())) == expected


def test_glob_classes_and_escapes() -> None:
    pred = compile_match(["user:[^0-9]*", r"lit\*", "h?llo", "x[a-c]"])
    assert pred is not None
    assert pred(b"user:abc") and not pred(b"user:1bc")
    assert pred(b"lit*") and not pred(b"litx")
    assert pred(b"hallo") and pred(b"h\xffllo")
    assert pred(b"xb") and not pred(b"xd")
    assert pred(b"hallo\n") is False


@given(
    st.lists(
        st.tuples(st.binary(max_size=40), st.binary(min_size=11, max_size=200), st.integers(-1, 2**62)),
        max_size=50,
    )
)
def test_records_roundtrip(items: list[tuple[bytes, bytes, int]]) -> None:
    sink = _Sink()
    w = RecordWriter(sink, 3, "7.0.15", 123)
    for key, payload, exp in items:
        w.add_dump(key, payload, exp)
    w.begin_big(b"big", TYPE_HASH, -1)
    w.add_chunk(b"big", TYPE_HASH, [b"f", b"", b"\xff", b"v"])
    w.end_big(b"big", TYPE_HASH, 1)
    w.flush()
    ((name, (data, meta)),) = sink.members.items()
    assert name == "redis/db3.000000.rec" and meta == {"keys": len(items) + 1, "server_version": "7.0.15"}
    header, body = read_member(io.BytesIO(data), name)
    assert (header.db, header.taken_at_ms, header.server_version) == (3, 123, "7.0.15")
    recs = list(iter_records(body, name))
    assert [(r.key, r.value, r.expire_at) for r in recs if r.tag == TAG_DUMP] == items
    assert [r.tag for r in recs[len(items) :]] == [TAG_BEGIN, TAG_CHUNK, TAG_END]
    assert recs[len(items) + 1].items == [b"f", b"", b"\xff", b"v"]
    assert len(list(iter_heads(body, name))) == len(recs)


def test_record_value_reads_both_string_forms() -> None:
    sink = _Sink()
    w = RecordWriter(sink, 0, "7.0.15", 1)
    w.add_dump(b"d", encode(0, b"dumped", 10), -1)
    w.add_raw([struct.pack("<BBHqII", TAG_VALUE, 0, 0, -1, 1, 5), b"v", b"plain"], 25, 1)
    w.flush()
    data = next(iter(sink.members.values()))[0]
    _, body = read_member(io.BytesIO(data), "m")
    assert [record_value(r) for r in iter_records(body, "m", as_dump=False)] == [(0, b"dumped"), (0, b"plain")]
    recs = list(iter_records(body, "m"))
    assert [r.tag for r in recs] == [TAG_DUMP, TAG_DUMP]
    assert [record_value(r) for r in recs] == [(0, b"dumped"), (0, b"plain")]
    payload = recs[1].value  # a real DUMP payload: version 9 and a valid CRC64
    assert payload[-10:-8] == b"\x09\x00" and crc64(payload[:-8]) == struct.unpack("<Q", payload[-8:])[0]


def test_truncated_member_is_corrupt() -> None:
    sink = _Sink()
    w = RecordWriter(sink, 0, "7.0.15", 1)
    w.add_dump(b"k", b"\x00\x01v" + b"\x0a\x00" + b"\x00" * 8, -1)
    w.flush()
    data = next(iter(sink.members.values()))[0]
    _, body = read_member(io.BytesIO(data[:-3]), "m")
    with pytest.raises(CorruptArchive):
        list(iter_records(body, "m"))
    with pytest.raises(CorruptArchive):
        read_member(io.BytesIO(b"NOTREDIS" + data[8:]), "m")


def test_lzf_back_references() -> None:
    # literal "abc", then a back reference of length 7 at distance 3 -> "abcabcabca"
    data = bytes([2]) + b"abc" + bytes([(5 << 5) | 0, 2])
    assert lzf_decompress(data, 10) == b"abcabcabca"


@given(st.lists(st.binary(max_size=30), max_size=20))
def test_plain_encoding_decodes_back(values: list[bytes]) -> None:
    payload = encode(1, values, 9)
    assert decode(payload) == (1, values)
    assert payload[-10:-8] == struct.pack("<H", 9)
    assert convert(payload, 9) == payload


def test_uncarriable_payloads() -> None:
    stream = bytes([19]) + b"x" + struct.pack("<H", 10) + b"\x00" * 8
    module = bytes([7]) + b"x" + struct.pack("<H", 10) + b"\x00" * 8
    hash_ttl = bytes([24]) + b"x" + struct.pack("<H", 12) + b"\x00" * 8
    assert uncarriable_reason(stream, 10, 9, False) is None  # streams are converted at restore time
    assert "field expirations" in (uncarriable_reason(hash_ttl, 12, 10, False) or "")
    assert uncarriable_reason(module, 10, 10, True) is None
    assert "same Redis version" in (uncarriable_reason(module, 10, 10, False) or "")
    with pytest.raises(Malformed, match="truncated"):  # a damaged archive (exit 3), not an uncarriable type
        convert(stream, 9)


def _stream_payload(stream_type: int, rdb: int) -> bytes:
    """A stream DUMP payload laid out as rdbSaveObject writes it, fields named by their values."""

    def n(v: int) -> bytes:  # an RDB length
        return bytes((v,)) if v < 64 else bytes((0x40 | (v >> 8), v & 0xFF))

    def s(b: bytes) -> bytes:
        return n(len(b)) + b

    v2 = stream_type >= 19
    parts = [bytes((stream_type,)), n(1), s(b"\x00" * 15 + b"\x07"), s(b"LISTPACK-BLOB" * 5)]
    parts += [n(3), n(20), n(1)]  # length, last id 20-1
    if v2:
        parts += [n(7), n(0), n(9), n(2), n(4)]  # first id 7-0, max deleted 9-2, entries added 4
    parts += [n(1), s(b"grp"), n(20), n(1)]  # one group, last delivered 20-1
    if v2:
        parts.append(n(3))  # entries read
    parts += [n(1), b"I" * 16, b"T" * 8, n(2)]  # one pending entry: id, delivery time, count 2
    parts += [n(1), s(b"alice"), b"S" * 8]  # one consumer, seen time
    if stream_type >= 21:
        parts.append(b"A" * 8)  # active time
    parts += [n(1), b"I" * 16]
    body = b"".join(parts) + struct.pack("<H", rdb)
    return body + struct.pack("<Q", crc64(body))


@pytest.mark.parametrize(("src", "src_rdb", "target_rdb", "want"), [(19, 10, 9, 15), (21, 11, 10, 19), (21, 11, 9, 15)])
def test_streams_are_carried_to_older_servers(src: int, src_rdb: int, target_rdb: int, want: int) -> None:
    out = convert(_stream_payload(src, src_rdb), target_rdb)
    assert out == _stream_payload(want, target_rdb)


def test_a_stream_with_unknown_trailing_fields_is_uncarriable() -> None:
    payload = _stream_payload(19, 10)
    body = payload[:-10] + b"\x01" + struct.pack("<H", 10)
    with pytest.raises(Uncarriable, match="unknown stream encoding"):
        convert(body + struct.pack("<Q", crc64(body)), 9)
