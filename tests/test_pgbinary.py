"""Binary COPY segments (statekit.tiers.sql.pgbinary) against a real PostgreSQL: decoded to exactly the text
COPY of the same rows, loaded back both ways, and hostile segments refused without costing memory."""

from __future__ import annotations

import io
import math
import random
import struct
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from statekit.errors import CorruptArchive
from statekit.tiers.sql.pgbinary import (
    HEADER,
    MAX_FIELD,
    SIGNATURE,
    TOKENS,
    TRAILER,
    copy_text_line,
    count_tuples,
    iter_text_rows,
    iter_tuples,
    strip_header,
    wire_token,
)
from statekit.tiers.sql.postgres import prepare_session
from statekit.tiers.sql.values import split_copy_line

MEMBER = "db/public.t/0000.bin"


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a fresh database, with the snapshot's session settings."""
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
        prepare_session(c)
        yield c


def copy_out(conn: psycopg.Connection[Any], sql: str) -> bytes:
    with conn.cursor() as cur, cur.copy(sql) as cp:
        return b"".join(bytes(chunk) for chunk in cp)


def copy_in(conn: psycopg.Connection[Any], sql: str, data: bytes) -> None:
    with conn.cursor() as cur, cur.copy(sql) as cp:
        cp.write(data)


def segment_of(binary: bytes) -> bytes:
    """The tuples of a whole binary COPY TO output: header and trailer cut off."""
    assert binary.endswith(TRAILER)
    return binary[strip_header(binary) : -len(TRAILER)]


def table_tokens(conn: psycopg.Connection[Any], table: str) -> tuple[list[str], list[str | None]]:
    """(column names, wire tokens) of a table, from pg_type as a snapshot reads it."""
    rows = conn.execute(
        "SELECT a.attname, t.typname, n.nspname, t.typtype FROM pg_attribute a "
        "JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (table,),
    ).fetchall()
    return [r[0] for r in rows], [wire_token(r[1], r[2], r[3]) for r in rows]


def assert_decodes_to_text(conn: psycopg.Connection[Any], table: str) -> tuple[list[str], bytes, list[str]]:
    """COPY `table` out as text and as binary and check the binary decodes to the text, byte for byte.
    Returns (tokens, the binary segment, the column list)."""
    names, maybe = table_tokens(conn, table)
    assert None not in maybe, f"columns without a wire token: {names} {maybe}"
    tokens = [t for t in maybe if t is not None]
    cols = ", ".join(f'"{n}"' for n in names)
    text = copy_out(conn, f"COPY {table} ({cols}) TO STDOUT")
    seg = segment_of(copy_out(conn, f"COPY {table} ({cols}) TO STDOUT (FORMAT binary)"))
    rows = list(iter_text_rows(io.BytesIO(seg), tokens, MEMBER))
    lines = text.split(b"\n")[:-1]
    assert len(rows) == len(lines) == count_tuples(io.BytesIO(seg), len(tokens), MEMBER)
    for row, line in zip(rows, lines):  # the first difference, readable
        assert row == split_copy_line(line)
        assert copy_text_line(row) == line + b"\n"
    assert b"".join(copy_text_line(r) for r in rows) == text
    return tokens, seg, cols.split(", ")


# -- a table of every type, nasty values ----------------------------------------------------------------

NASTY_DDL = [
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'très content', E'tab\\there', E'back\\\\slash', '')",
    "CREATE TABLE nasty (id int4 PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, "
    "n numeric, n2 numeric(14,2), t text, vc varchar(20), c char(5), j json, jb jsonb, e mood, ba bytea, "
    "u uuid, d date, ts timestamp, tz timestamptz)",
]
NASTY_TOKENS = ["int4", "bool", "int2", "int4", "int8", "float4", "float8", "numeric", "numeric", "text", "text",
                "text", "text", "jsonb", "text", "bytea", "uuid", "date", "timestamp", "timestamptz"]  # fmt: skip

# fmt: off
FLOATS = [
    "0", "-0", "1", "-1", "0.1", "NaN", "Infinity", "-Infinity", "1e-4", "9.999999999999999e-05", "1e-5",
    "0.00012345", "1e14", "999999999999999", "1e15", "1234567890123456", "9007199254740993", "1e16", "1e17",
    "123456", "999999", "1e6", "1234567", "16777216", "16777217", "54422552", "3.3302118141506552e+16",
    "1e22", "1e23", "5e-324", "2.2250738585072014e-308", "1.7976931348623157e308", "1e-45", "1.17549435e-38",
    "3.4028235e38", "1.4e-45", "0.30000000000000004", "-2.5e-10", "4.35", "123.456", "3.14159",
]
# a float4 column rounds each value to float4 first: those beyond its range are left out there
FLOAT4S = [f for f in FLOATS if f in ("NaN", "Infinity", "-Infinity") or f in ("0", "-0")
           or 1e-45 < abs(float(f)) < 3.5e38]
NASTY_VALUES: dict[str, list[str | None]] = {
    "b": ["t", "f", None],
    "i2": ["0", "-32768", "32767", "-1", None],
    "i4": ["-2147483648", "2147483647", "0", "42"],
    "i8": ["-9223372036854775808", "9223372036854775807", "0", "-1", None],
    "f4": [*FLOAT4S, None],
    "f8": [*FLOATS, None],
    "n": ["NaN", "Infinity", "-Infinity", "0", "-0.00", "0.000000000000000000000001", "-1e-30", "1e100",
          "123456789012345678901234567890.123456789012345678901234567890", "10000", "9999.9999", "0.1000",
          "-12.3400", "12345678.87654321", "1e-1000", "-5e999", "1e5000", "-0.1e-5000", None],
    "n2": ["0", "-0.01", "999999999999.99", "-123.45", "1", "0.005", "NaN", None],
    "t": ["", "plain", "tab\there", "new\nline", "cr\rx", "back\\slash", "\\N", "\\.", "ünïcødé ✓ 😀",
          "\b\f\v", "x\x01y\x1f", " lead and trail ", "x" * 10000, None],
    "vc": ["", "a\tb", "ÄÖÜ", "\\", "twenty chars max....", None],
    "c": ["", "ab", "abcde", "ä", None],
    "j": ['{"a": [1, 2.50, "x\\ty"]}', "null", '"str"', "  [ ]  ", '{"k":"\\u00e9", "k": 2}', None],
    "jb": ['{"b":1,"a":[true,false,null],"n":1.50}', '"tab\\t"', "[]", "{}", "12e3", '"\\u00e9😀"', None],
    "e": ["sad", "très content", "tab\there", "back\\slash", "", None],
    "ba": ["\\x", "\\x00ff10", "\\x5c090a0d", None],
    "u": ["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
          "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", None],
    "d": ["infinity", "-infinity", "4714-11-24 BC", "0001-01-01 BC", "0001-01-01", "1999-12-31", "2000-01-01",
          "2000-02-29", "1900-03-01", "9999-12-31", "10000-01-01", "5874897-12-31", "0044-03-15 BC",
          "1582-10-10", "1970-01-01", "0001-02-29 BC", "0401-02-29 BC", None],
    "ts": ["infinity", "-infinity", "4714-11-24 00:00:00 BC", "0001-12-31 23:59:59.999999 BC",
           "2000-01-01 00:00:00", "1999-12-31 23:59:59.5", "2024-02-29 12:34:56.000001",
           "10000-01-01 00:00:00.1", "294276-12-31 23:59:59.999999", "1969-12-31 23:59:59.999999",
           "1970-01-01 00:00:00.12345", None],
    "tz": ["infinity", "-infinity", "4714-11-24 00:00:00+00 BC", "0001-01-01 00:00:00+05:30",
           "2000-01-01 00:00:00-08", "2024-02-29 12:34:56.000001+14", "12345-06-07 08:09:10.11+00",
           "294276-12-31 23:59:59.999999+00", "0044-03-15 12:00:00.000001 BC", None],
}
# fmt: on
COLUMNS = ["b", "i2", "i4", "i8", "f4", "f8", "n", "n2", "t", "vc", "c", "j", "jb", "e", "ba", "u", "d", "ts", "tz"]
CASTS = ["bool", "int2", "int4", "int8", "float4", "float8", "numeric", "numeric(14,2)", "text", "varchar(20)",
         "char(5)", "json", "jsonb", "mood", "bytea", "uuid", "date", "timestamp", "timestamptz"]  # fmt: skip

RANDOM_ROWS = """
INSERT INTO nasty SELECT 1000 + g,
  CASE WHEN g % 11 = 0 THEN NULL ELSE random() < 0.5 END,
  (random() * 65535 - 32768)::int2, (random() * 4294967295 - 2147483648)::int8::int4,
  ((random() - 0.5) * 1.8e19)::numeric::int8,
  ((random() - 0.5) * 10 ^ (random() * 72 - 36))::float4,
  CASE WHEN g % 13 = 0 THEN NULL ELSE (random() - 0.5) * 10 ^ floor(random() * 600 - 300) END,
  round(((random() - 0.5) * 10 ^ (g % 50 - 25))::numeric, g % 40),
  round((random() * 1e12)::numeric, 2) * (CASE WHEN random() < 0.5 THEN -1 ELSE 1 END),
  repeat(chr(1 + (random() * 1000)::int), g % 5) || md5(g::text) || chr(1 + (random() * 126)::int),
  left(md5(g::text) || chr(9) || chr(10) || chr(92), g % 21),
  left(md5(g::text), g % 6),
  json_build_object('g', g, 's', md5(g::text), 'f', random()),
  jsonb_build_object('g', g, 'a', jsonb_build_array(random(), 'é' || chr(10), g % 3 = 0)),
  (enum_range(NULL::mood))[1 + g % 6],
  CASE WHEN g % 7 = 0 THEN ''::bytea ELSE sha256(g::text::bytea) END,
  md5(g::text)::uuid,
  date '2000-01-01' + ((random() * 7451545)::int - 2451545),
  timestamp '2000-01-01' + (random() * 4e11 - 1.5e11) * interval '1 second',
  CASE WHEN g % 5 = 0 THEN NULL ELSE timestamptz '2000-01-01' + (random() * 4e11 - 1.5e11) * interval '1 second' END
FROM generate_series(1, 3000) g
"""


def make_nasty(conn: psycopg.Connection[Any]) -> None:
    for stmt in NASTY_DDL:
        conn.execute(stmt)
    width = max(len(v) for v in NASTY_VALUES.values())
    placeholders = ", ".join(f"%s::{c}" for c in CASTS)
    with conn.cursor() as cur:
        for i in range(width):
            row = [NASTY_VALUES[c][i % len(NASTY_VALUES[c])] for c in COLUMNS]
            cur.execute(f"INSERT INTO nasty VALUES (%s, {placeholders})", [i, *row])
        cur.execute(f"INSERT INTO nasty (id) VALUES ({width})")  # every column NULL
        cur.execute(RANDOM_ROWS)


def test_a_table_of_every_type_decodes_to_its_text_copy(conn: psycopg.Connection[Any]) -> None:
    make_nasty(conn)
    tokens, _, _ = assert_decodes_to_text(conn, "nasty")
    assert tokens == NASTY_TOKENS


def test_decoded_text_and_the_original_binary_load_back_equal(conn: psycopg.Connection[Any]) -> None:
    make_nasty(conn)
    tokens, seg, cols = assert_decodes_to_text(conn, "nasty")
    collist = ", ".join(cols)
    text = b"".join(copy_text_line(r) for r in iter_text_rows(io.BytesIO(seg), tokens, MEMBER))
    conn.execute("CREATE TABLE from_text (LIKE nasty)")
    conn.execute("CREATE TABLE from_binary (LIKE nasty)")
    copy_in(conn, f"COPY from_text ({collist}) FROM STDIN", text)
    copy_in(conn, f"COPY from_binary ({collist}) FROM STDIN (FORMAT binary)", HEADER + seg + TRAILER)
    source = copy_out(conn, "COPY (SELECT * FROM nasty ORDER BY id) TO STDOUT (FORMAT binary)")
    for table in ("from_text", "from_binary"):
        assert copy_out(conn, f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT (FORMAT binary)") == source


def _float_pairs(rnd: random.Random, count: int) -> Iterator[tuple[bytes, bytes]]:
    """(float4, float8) bit patterns: random ones, then powers of ten, their neighbours and values around
    the switch to exponential notation and the rounding bounds of large integers."""
    for _ in range(count):
        yield struct.pack(">I", rnd.getrandbits(32)), struct.pack(">Q", rnd.getrandbits(64))
    for _ in range(count // 4):
        big = float(rnd.choice([rnd.randrange(2**53, 2**62), rnd.randrange(1, 10**6) * 10 ** rnd.randrange(10, 25)]))
        small = float(rnd.choice([rnd.randrange(2**24, 2**34), rnd.randrange(1, 10**4) * 10 ** rnd.randrange(3, 12)]))
        yield struct.pack(">f", small), struct.pack(">d", big)
    for k in range(-1074, 1024):  # powers of two: the rounding interval is narrower below them
        f4 = struct.pack(">f", math.ldexp(1.0, k)) if -150 < k < 128 else struct.pack(">f", 1.0)
        yield f4, struct.pack(">d", math.ldexp(1.0, k))
    for k in range(-330, 310):
        for m in (1.0, 1.5, 2.5, 5.0, 9.5, 9.999999):
            v = m * 10.0**k if -300 < k < 300 else float(f"{m}e{k}")
            for w in (v, math.nextafter(v, 0), math.nextafter(v, math.inf)):
                if not math.isfinite(w):
                    continue
                f4 = struct.pack(">f", w) if abs(w) < 3.4e38 else struct.pack(">f", 0.0)
                (bits,) = struct.unpack(">I", f4)
                for near in (bits - 1, bits, bits + 1):
                    yield struct.pack(">I", near & 0xFFFFFFFF), struct.pack(">d", w)


def test_every_kind_of_float_date_and_timestamp_decodes_as_the_server_prints_it(
    conn: psycopg.Connection[Any],
) -> None:
    """Random bit patterns loaded through binary COPY: floats of every magnitude, dates and timestamps over
    PostgreSQL's whole range (years up to 5874897 and back to 4714 BC)."""
    rnd = random.Random(20240229)
    conn.execute("CREATE TABLE f (id int4, a float4, b float8, d date, ts timestamp, tz timestamptz)")
    data = bytearray(HEADER)
    for i, (f4, f8) in enumerate(_float_pairs(rnd, 20000)):
        days = rnd.randrange(-2451545, 2145031949)
        us = [rnd.randrange(-211813488000000000, 9223371331200000000) for _ in range(2)]
        data += struct.pack(">hii", 6, 4, i) + struct.pack(">i", 4) + f4 + struct.pack(">i", 8) + f8
        data += struct.pack(">iiiqiq", 4, days, 8, us[0], 8, us[1])
    data += TRAILER
    copy_in(conn, "COPY f FROM STDIN (FORMAT binary)", bytes(data))
    assert_decodes_to_text(conn, "f")


def test_wire_tokens_of_the_catalog(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE SCHEMA other")
    conn.execute("CREATE TYPE other.level AS ENUM ('low', 'high')")
    conn.execute("CREATE DOMAIN posint AS int4 CHECK (VALUE > 0)")
    conn.execute(
        'CREATE TABLE w (a other.level, b posint, c int4[], d interval, e time, f inet, g "char", h oid, '
        "i text, j bpchar, k timestamptz)"
    )
    _, tokens = table_tokens(conn, "w")
    assert tokens == ["text", None, None, None, None, None, None, None, "text", "text", "timestamptz"]


def test_wire_token_table() -> None:
    assert wire_token("varchar", "pg_catalog", "b") == "text"
    assert wire_token("json", "pg_catalog", "b") == "text"
    assert wire_token("jsonb", "pg_catalog", "b") == "jsonb"
    assert wire_token("anything", "app", "e") == "text"
    assert wire_token("int4", "public", "b") is None  # a type of the same name elsewhere is not the built-in
    assert wire_token("int4", "pg_catalog", "d") is None
    assert wire_token("_int4", "pg_catalog", "b") is None
    assert {wire_token(t, "pg_catalog", "b") for t in TOKENS} == TOKENS


# -- header ------------------------------------------------------------------------------------------------


def test_header_constants_and_strip_header() -> None:
    assert SIGNATURE == b"PGCOPY\n\xff\r\n\x00" and len(HEADER) == 19 and TRAILER == b"\xff\xff"
    assert strip_header(HEADER) == 19
    assert strip_header(HEADER + b"\x00\x01") == 19
    ext = SIGNATURE + struct.pack(">ii", 0, 3) + b"abc" + b"\x00\x00"
    assert strip_header(ext) == 22
    assert strip_header(SIGNATURE + struct.pack(">ii", 0x0000FFFF, 0)) == 19  # bits 0-15 may be ignored
    for bad in (
        b"",
        HEADER[:18],
        b"PGCOPY\n\xff\r\n\x01" + HEADER[11:],
        SIGNATURE + struct.pack(">ii", 1 << 16, 0),  # OIDs
        SIGNATURE + struct.pack(">Ii", 1 << 31, 0),
        SIGNATURE + struct.pack(">ii", 0, -1),
        SIGNATURE + struct.pack(">ii", 0, 4) + b"abc",
    ):
        with pytest.raises(ValueError):
            strip_header(bad)


# -- hostile segments -------------------------------------------------------------------------------------


def tup(*fields: bytes | None) -> bytes:
    out = struct.pack(">h", len(fields))
    for f in fields:
        out += struct.pack(">i", -1) if f is None else struct.pack(">i", len(f)) + f
    return out


class Trickle(io.BytesIO):
    """A stream that hands over at most `step` bytes per read, however many are asked for."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self._step = step

    def read(self, size: int | None = -1, /) -> bytes:
        return super().read(self._step if size is None or size < 0 else min(size, self._step))


def test_a_segment_cut_anywhere_but_between_tuples_is_refused() -> None:
    tuples = [tup(b"\x00\x00\x00\x01", None, b"abc"), tup(b"\x00\x00\x00\x02", b"", None), tup(None, b"x", b"yz")]
    seg = b"".join(tuples)
    bounds = {sum(len(t) for t in tuples[:i]): i for i in range(len(tuples) + 1)}
    for cut in range(len(seg) + 1):
        if cut in bounds:
            assert count_tuples(io.BytesIO(seg[:cut]), 3, MEMBER) == bounds[cut]
        else:
            with pytest.raises(CorruptArchive, match=f"^archive member {MEMBER}: .*cut short"):
                count_tuples(io.BytesIO(seg[:cut]), 3, MEMBER)


def test_reads_of_any_size_give_the_same_tuples() -> None:
    big = bytes(range(256)) * (3 * 4096 + 7)  # over 3 MiB: longer than one buffered block or piece
    seg = tup(b"a", None, big) + tup(b"", b"\x00" * 70000, b"z") + tup(None, None, None)
    expected = list(iter_tuples(io.BytesIO(seg), 3, MEMBER))
    assert expected == [[b"a", None, big], [b"", b"\x00" * 70000, b"z"], [None, None, None]]
    assert list(iter_tuples(Trickle(seg, 100_003), 3, MEMBER)) == expected
    small = tup(b"a", None, b"bc") * 50
    assert list(iter_tuples(Trickle(small, 3), 3, MEMBER)) == list(iter_tuples(io.BytesIO(small), 3, MEMBER))


class Failing(io.BytesIO):
    """A stream whose reads fail once `limit` bytes were read."""

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__(data)
        self._limit = limit

    def read(self, size: int | None = -1, /) -> bytes:
        if self.tell() >= self._limit:
            raise ValueError("the stream broke")
        return super().read(min(self._limit - self.tell(), 1 << 30 if size is None or size < 0 else size))


def test_an_error_of_the_stream_itself_is_not_taken_for_a_bad_value() -> None:
    seg = tup(b"\x01", b"x" * 100) * 3 + tup(b"\x00", b"y" * 5000)
    for limit in (10, 250, 4000):
        with pytest.raises(ValueError, match="the stream broke"):
            list(iter_text_rows(Failing(seg, limit), ["bool", "text"], MEMBER))


@pytest.mark.parametrize(
    ("seg", "message"),
    [
        (tup(b"a", b"b") + tup(b"a"), "tuple 2 has 1 fields, expected 2"),
        (tup(b"a", b"b", b"c"), "tuple 1 has 3 fields, expected 2"),
        (tup(b"a", b"b") + TRAILER + tup(b"a", b"b"), "trailer inside the segment after 1 tuples"),
        (TRAILER, "trailer inside the segment after 0 tuples"),
        (struct.pack(">hi", 2, -2), "negative length -2"),
        (struct.pack(">hi", 2, -(2**31)), "negative length"),
        (struct.pack(">hi", 2, MAX_FIELD + 1) + b"abc", "over the 1 GiB limit"),
    ],
)
def test_malformed_segments_are_refused(seg: bytes, message: str) -> None:
    with pytest.raises(CorruptArchive, match=f"^archive member {MEMBER}: .*{message}"):
        count_tuples(io.BytesIO(seg), 2, MEMBER)


@pytest.mark.parametrize("length", [2**31 - 1, MAX_FIELD, 1 << 29])
def test_a_huge_claimed_length_fails_fast_without_allocating_it(length: int) -> None:
    seg = tup(b"ok") + struct.pack(">hi", 1, length) + b"only a few bytes"
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(CorruptArchive, match=f"^archive member {MEMBER}: "):
            list(iter_tuples(io.BytesIO(seg), 1, MEMBER))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 1.0
    assert peak < 8 << 20, f"peak {peak} bytes"


def _i16(*xs: int) -> bytes:
    return struct.pack(f">{len(xs)}h", *xs)


@pytest.mark.parametrize(
    ("token", "raw", "message"),
    [
        ("text", b"ok\xff", "not valid UTF-8"),
        ("text", b"\xed\xa0\x80", "not valid UTF-8"),  # a UTF-16 surrogate
        ("text", b"a\x00b", "NUL"),
        ("jsonb", b"\x02{}", "jsonb version 02"),
        ("jsonb", b"", "jsonb version missing"),
        ("jsonb", b"\x01\xc3", "not valid UTF-8"),
        ("bool", b"\x02", "neither 00 nor 01"),
        ("bool", b"\x00\x01", "neither 00 nor 01"),
        ("int2", b"\x01", "1 bytes are not a int2 value"),
        ("int4", b"\x00\x01\x02", "3 bytes are not a int4 value"),
        ("int8", b"\x00" * 4, "4 bytes are not a int8 value"),
        ("float4", b"\x00" * 8, "not a float4 value"),
        ("float8", b"\x00" * 7, "not a float8 value"),
        ("numeric", b"\x00\x01", "shorter than its header"),
        ("numeric", _i16(1, 0, 0, 0, 10000), "digit over 9999"),
        ("numeric", _i16(1, 0, 0, 0, -1), "digit over 9999"),
        ("numeric", _i16(2, 0, 0, 0, 1), "does not hold the 2 digits"),
        ("numeric", _i16(-1, 0, 0, 0), "does not hold the -1 digits"),
        ("numeric", _i16(0, 0, 0x1000, 0), "invalid sign"),
        ("numeric", _i16(0, 0, 0, 0x4000), "invalid display scale"),
        ("uuid", b"\x00" * 15, "uuid of 15 bytes"),
        ("bytea", None, ""),
        ("date", struct.pack(">i", 2145031949), "out of range"),
        ("date", struct.pack(">i", -2451546), "out of range"),
        ("timestamp", struct.pack(">q", 9223371331200000000), "out of range"),
        ("timestamptz", struct.pack(">q", -211813488000000001), "out of range"),
        ("timestamp", b"\x00" * 4, "4 bytes are not a timestamp value"),
    ],
)
def test_invalid_values_are_refused_naming_the_member(token: str, raw: bytes | None, message: str) -> None:
    seg = tup(b"\x01", None) + tup(b"\x00", raw)
    rows = iter_text_rows(io.BytesIO(seg), ["bool", token], MEMBER)
    if raw is None:  # NULL is fine in any column
        assert list(rows) == [["t", None], ["f", None]]
        return
    with pytest.raises(CorruptArchive, match=f"^archive member {MEMBER}: tuple 2, column 2 \\({token}\\): "):
        list(rows)
    with pytest.raises(CorruptArchive) as info:
        list(iter_text_rows(io.BytesIO(seg), ["bool", token], MEMBER))
    assert message in str(info.value)


def test_an_unknown_token_is_refused() -> None:
    with pytest.raises(CorruptArchive, match=f"^archive member {MEMBER}: unknown column encoding 'interval'"):
        list(iter_text_rows(io.BytesIO(tup(b"x")), ["interval"], MEMBER))
    with pytest.raises(CorruptArchive, match="unknown column encoding"):
        list(iter_text_rows(io.BytesIO(b""), ["text", "money"], MEMBER))


def test_copy_text_line_escapes_as_copy_does() -> None:
    assert copy_text_line([]) == b"\n"
    assert copy_text_line([None, "", "\\N"]) == b"\\N\t\t\\\\N\n"
    assert copy_text_line(["a\tb\nc\rd\\e\bf\fg\vh\x01i", "ü"]) == (b"a\\tb\\nc\\rd\\\\e\\bf\\fg\\vh\x01i\t\xc3\xbc\n")
    line = copy_text_line(["a\tb\nc\rd\\e\bf\fg\vh\x01i", None, "ü"])
    assert split_copy_line(line[:-1]) == ["a\tb\nc\rd\\e\bf\fg\vh\x01i", None, "ü"]
