"""PostgreSQL binary COPY: segments of whole tuples, read safely and decoded to COPY text.

A PostgreSQL table may be archived as binary COPY (`COPY t (cols) TO STDOUT (FORMAT binary)`) without the
file header and trailer: each segment is a run of whole tuples, each an int16 field count and, per field, an
int32 length (-1 for NULL) and that many bytes, all big-endian. A restore puts HEADER before a segment and
TRAILER after it and hands it to `COPY … FROM STDIN (FORMAT binary)`.

Each column carries a wire token (`wire_token`) naming how its values are encoded. `iter_text_rows` turns a
segment back into the very strings PostgreSQL's COPY text output gives for the same rows under the session
settings of the snapshot (ISO dates, UTC, shortest exact floats, hex bytea, UTF-8), so an audit can compare
binary and text members, and `copy_text_line` writes them as a COPY text line.

Every length is checked before anything is allocated for it, and data that ends early is read in bounded
pieces, so a damaged or hostile segment costs neither unbounded memory nor time: it raises CorruptArchive.
"""

from __future__ import annotations

import functools
import math
import re
import struct
from collections.abc import Callable, Iterator
from typing import IO, TypeVar

from statekit.errors import CorruptArchive

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
MAX_FIELD = 1 << 30

TOKENS = frozenset(
    {
        "bool", "int2", "int4", "int8", "float4", "float8", "numeric", "text", "bytea", "uuid", "date",
        "timestamp", "timestamptz", "jsonb",
    }
)  # fmt: skip

# pg_catalog base types (typtype 'b') and their tokens; enums of any schema are "text" too.
_CATALOG_TOKENS = {
    "bool": "bool",
    "int2": "int2",
    "int4": "int4",
    "int8": "int8",
    "float4": "float4",
    "float8": "float8",
    "numeric": "numeric",
    "text": "text",
    "varchar": "text",
    "bpchar": "text",
    "json": "text",
    "bytea": "bytea",
    "uuid": "uuid",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "jsonb": "jsonb",
}


def wire_token(typname: str, typnamespace: str, typtype: str) -> str | None:
    """The token of a column type as pg_type describes it (name, its schema's name, typtype), None when it has
    none (only pg_catalog base types of the table above, and enums from any schema, have one)."""
    if typtype == "e":
        return "text"
    if typtype == "b" and typnamespace == "pg_catalog":
        return _CATALOG_TOKENS.get(typname)
    return None


_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_HEADER_WORDS = struct.Struct(">Ii")
_NUMERIC_HEAD = struct.Struct(">hhHH")

_T = TypeVar("_T")

_CHUNK = 1 << 18  # bytes asked of the stream per refill
_PIECE = 1 << 20  # most bytes asked at once while reading a field longer than what is buffered


def strip_header(first: bytes) -> int:
    """Offset of the first tuple in the first CopyData message of a binary COPY TO (validates signature, flags,
    skips the header extension); raises ValueError on anything else."""
    if len(first) < len(HEADER):
        raise ValueError("binary COPY data shorter than its header")
    if first[: len(SIGNATURE)] != SIGNATURE:
        raise ValueError("binary COPY data does not start with the PGCOPY signature")
    flags: int
    extension: int
    flags, extension = _HEADER_WORDS.unpack_from(first, len(SIGNATURE))
    if flags & 0xFFFF0000:  # bit 16 (OIDs) and the critical bits; bits 0-15 may be ignored
        raise ValueError(f"binary COPY header has flags {flags:#010x} this reader does not support")
    if extension < 0:
        raise ValueError("binary COPY header has a negative extension length")
    offset = len(HEADER) + extension
    if offset > len(first):
        raise ValueError("binary COPY header extension runs past the data")
    return offset


class _Bad(ValueError):
    """A value that is not a valid encoding of its token (the message says why)."""


def _corrupt(name: str, what: str) -> CorruptArchive:
    return CorruptArchive(f"archive member {name}: {what}")


def _refill(stream: IO[bytes], rest: bytes, need: int) -> bytes:
    """`rest` followed by what the stream gives until there are `need` bytes or the stream ends."""
    parts = [rest]
    have = len(rest)
    while have < need:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def _long_field(stream: IO[bytes], head: bytes, size: int, name: str) -> bytes:
    """A field of `size` bytes whose first bytes are `head`: the rest read in pieces of at most _PIECE bytes,
    so a length that claims more than the stream holds fails before its size is ever allocated."""
    parts = [head]
    have = len(head)
    while have < size:
        chunk = stream.read(min(size - have, _PIECE))
        if not chunk:
            raise _corrupt(name, f"segment cut short inside a field of {size} bytes")
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


_READERS = frozenset({_refill.__code__, _long_field.__code__})


def _scan(
    stream: IO[bytes], convs: list[Callable[[bytes], _T]], name: str, tokens: list[str] | None = None
) -> Iterator[list[_T | None]]:
    """Each tuple of a segment with conv(raw) of each non-NULL field, read with bounded reads; a conv that
    raises ValueError or struct.error means a value that is not valid for its token (tokens[column])."""
    width = len(convs)
    unpack_h = _I16.unpack_from
    unpack_i = _I32.unpack_from
    buf = b""
    pos = size = tuples = length = 0
    while True:
        if size - pos < 2:
            buf = _refill(stream, buf[pos:], 2)
            pos, size = 0, len(buf)
            if size == 0:
                return
            if size < 2:
                raise _corrupt(name, f"segment cut short after {tuples} tuples")
        (count,) = unpack_h(buf, pos)
        pos += 2
        if count != width:
            if count == -1:
                raise _corrupt(name, f"binary COPY trailer inside the segment after {tuples} tuples")
            raise _corrupt(name, f"tuple {tuples + 1} has {count} fields, expected {width}")
        tuples += 1
        fields: list[_T | None] = []
        append = fields.append
        try:
            for conv in convs:
                if size - pos < 4:
                    buf = _refill(stream, buf[pos:], 4)
                    pos, size = 0, len(buf)
                    if size < 4:
                        raise _corrupt(name, f"segment cut short inside tuple {tuples}")
                (length,) = unpack_i(buf, pos)
                pos += 4
                if length < 0:
                    if length != -1:
                        raise _corrupt(name, f"tuple {tuples} has a field of negative length {length}")
                    append(None)
                    continue
                if length > MAX_FIELD:
                    raise _corrupt(name, f"tuple {tuples} has a field of {length} bytes (over the 1 GiB limit)")
                end = pos + length
                if end <= size:
                    append(conv(buf[pos:end]))
                    pos = end
                else:
                    append(conv(_long_field(stream, buf[pos:], length, name)))
                    buf, pos, size = b"", 0, 0
        except (ValueError, struct.error) as exc:  # _Bad and UnicodeDecodeError are ValueErrors
            step = exc.__traceback__.tb_next if exc.__traceback__ else None
            if step is not None and step.tb_frame.f_code in _READERS:  # the stream's own error, not a value's
                raise
            column = len(fields) + 1
            token = tokens[column - 1] if tokens else "?"
            if isinstance(exc, _Bad):
                reason = str(exc)
            elif isinstance(exc, UnicodeDecodeError):
                reason = "text is not valid UTF-8"
            else:
                reason = f"{length} bytes are not a {token} value"
            raise _corrupt(name, f"tuple {tuples}, column {column} ({token}): {reason}") from None
        yield fields


def iter_tuples(stream: IO[bytes], width: int, name: str) -> Iterator[list[bytes | None]]:
    """Raw fields of each tuple of one segment, read with bounded reads (a length must be -1 or 0..MAX_FIELD,
    data that ends early is found without allocating the claimed length). A field count other than `width`, a
    trailer inside the segment, a negative length other than -1, a length over MAX_FIELD or a segment cut short
    raise CorruptArchive naming the member."""
    return _scan(stream, [bytes] * width, name)


def count_tuples(stream: IO[bytes], width: int, name: str) -> int:
    """The number of tuples of one segment, with the same checks as iter_tuples."""
    n = 0
    for _ in iter_tuples(stream, width, name):
        n += 1
    return n


# -- values as COPY text ----------------------------------------------------------------------------------


def _bool(raw: bytes) -> str:
    if raw == b"\x01":
        return "t"
    if raw == b"\x00":
        return "f"
    raise _Bad(f"bool byte {raw.hex() or 'missing'} is neither 00 nor 01")


def _int2(raw: bytes) -> str:
    return str(_I16.unpack(raw)[0])


def _int4(raw: bytes) -> str:
    return str(_I32.unpack(raw)[0])


def _int8(raw: bytes) -> str:
    return str(_I64.unpack(raw)[0])


_FLOAT_WORDS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_TWO53 = 2.0**53


def _shortest_text(negative: bool, digits: str, exponent: int, fixed_below: int) -> str:
    """PostgreSQL's float output for the value 0.`digits` × 10**(exponent+1) (digits without trailing zeros):
    plain notation when -4 <= exponent < fixed_below (15 for float8, 6 for float4), otherwise d.ddde±XX."""
    if -4 <= exponent < fixed_below:
        if exponent < 0:
            text = "0." + "0" * (-exponent - 1) + digits
        elif len(digits) <= exponent + 1:
            text = digits + "0" * (exponent + 1 - len(digits))
        else:
            text = digits[: exponent + 1] + "." + digits[exponent + 1 :]
    else:
        text = digits[0] + ("." + digits[1:] if len(digits) > 1 else "") + ("e-" if exponent < 0 else "e+")
        text += f"{abs(exponent):02d}"
    return "-" + text if negative else text


def _nearest_inside(m: int, t: int, lower: int, s: int) -> int | None:
    """Among the integers c with (4m - lower)·2**t < c·10**s < (4m + 2)·2**t, the one nearest to 4m·2**t (ties
    to even); None when there is none."""
    num = (1 << t if t > 0 else 1) * (10**-s if s < 0 else 1)
    den = (1 << -t if t < 0 else 1) * (10**s if s > 0 else 1)
    low = (4 * m - lower) * num // den + 1
    high = ((4 * m + 2) * num - 1) // den
    if low > high:
        return None
    c, r = divmod(4 * m * num, den)
    if 2 * r > den or (2 * r == den and c & 1):
        c += 1
    return min(max(c, low), high)


def _shortest_digits(a: float, bits: int, min_exp: int, hint: int | None = None) -> tuple[str, int]:
    """(digits, decimal exponent) of PostgreSQL's shortest output of the positive finite `a` as a float of
    `bits` significand bits whose smallest normal exponent (frexp's) is min_exp: the decimal with the fewest
    digits strictly inside the rounding interval (Ryu as PostgreSQL builds it never takes a bound), the
    nearest to `a` among those (ties to even). `hint`: the scale (power of ten of the last digit) of a decimal
    known to be the shortest in the closed interval, where the answer is or a digit further."""
    mant, e = math.frexp(a)
    q = max(e, min_exp) - bits
    m = int(math.ldexp(a, -q))
    lower = 1 if mant == 0.5 and e > min_exp else 2  # the gap below a power of two is half as wide
    t = q - 2  # bounds and value in units of 2**t: 4m - lower, 4m + 2, 4m
    # without a hint, start where the interval spans ten units of 10**s or more, then try shorter
    s = math.floor(math.log10(math.ldexp(2 + lower, t))) - 1 if hint is None else hint
    found = _nearest_inside(m, t, lower, s)
    while found is None:  # below a hint when it was a bound; else only if log10 rounded badly
        s -= 1
        found = _nearest_inside(m, t, lower, s)
    while hint is None and (shorter := _nearest_inside(m, t, lower, s + 1)) is not None:
        found, s = shorter, s + 1
    text = str(found)
    return text.rstrip("0"), s + len(text) - 1


def _float8_text(v: float) -> str:
    """PostgreSQL's float8 output with extra_float_digits > 0: the shortest decimal strictly inside the
    rounding interval, plain for decimal exponents -4..14, else exponential. Below 2**53 that is what repr
    gives (its decimals may be a bound only for larger values, where repr, unlike PostgreSQL, may take one)."""
    r = repr(v)
    if -_TWO53 < v < _TWO53:
        if "e" in r:  # repr is exponential below 1e-4 and from 1e16, spelled as PostgreSQL spells it
            return r
        if -1e15 < v < 1e15:
            return r[:-2] if r.endswith(".0") else r
        whole, _, frac = r.lstrip("-").partition(".")  # 1e15 <= |v| < 2**53: exponential in PostgreSQL
        return _shortest_text(v < 0, (whole + frac).rstrip("0"), len(whole) - 1, 15)
    if "n" in r:
        return _FLOAT_WORDS[r]
    mantissa, _, exp_text = r.lstrip("-").partition("e")  # repr's digits: shortest in the closed interval
    whole, _, frac = mantissa.partition(".")
    hint = int(exp_text or 0) + len(whole) - len((whole + frac).rstrip("0"))
    digits, exponent = _shortest_digits(abs(v), 53, -1021, hint)
    return _shortest_text(v < 0, digits, exponent, 15)


def _float8(raw: bytes) -> str:
    return _float8_text(_F64.unpack(raw)[0])


@functools.lru_cache(maxsize=1 << 14)
def _float4(raw: bytes) -> str:
    """PostgreSQL's float4 output: as float8's for the float4's own rounding interval, plain for decimal
    exponents -4..5."""
    (v,) = _F32.unpack(raw)
    if v != v:
        return "NaN"
    negative = raw[0] >= 0x80
    a = abs(v)
    if a == 0:
        return "-0" if negative else "0"
    if a == math.inf:
        return "-Infinity" if negative else "Infinity"
    digits, exponent = _shortest_digits(a, 24, -125)
    return _shortest_text(negative, digits, exponent, 6)


_NUMERIC_SPECIAL = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}
_NUMERIC_DIGITS: dict[int, struct.Struct] = {}


def _numeric(raw: bytes) -> str:
    """numeric_send's layout: ndigits, weight, sign, dscale, then ndigits base-10000 digits; printed with
    exactly dscale digits after the point (digits beyond dscale are dropped, as numeric_recv does)."""
    if len(raw) < 8:
        raise _Bad(f"numeric of {len(raw)} bytes is shorter than its header")
    ndigits, weight, sign, dscale = _NUMERIC_HEAD.unpack_from(raw)
    if ndigits < 0 or len(raw) != 8 + 2 * ndigits:
        raise _Bad(f"numeric of {len(raw)} bytes does not hold the {ndigits} digits its header claims")
    if sign not in (0, 0x4000):
        special = _NUMERIC_SPECIAL.get(sign)
        if special is None:
            raise _Bad(f"numeric has an invalid sign {sign:#06x}")
        return special
    if dscale > 0x3FFF:
        raise _Bad(f"numeric has an invalid display scale {dscale}")
    layout = _NUMERIC_DIGITS.get(ndigits)
    if layout is None:
        layout = _NUMERIC_DIGITS.setdefault(ndigits, struct.Struct(f">{ndigits}H"))
    digits = layout.unpack_from(raw, 8)
    if ndigits and max(digits) > 9999:
        raise _Bad("numeric has a base-10000 digit over 9999")
    text = ("%04d" * ndigits) % digits
    point = 4 * (weight + 1)  # characters of `text` before the decimal point
    if point <= 0:
        whole = "0"
        zeros = min(-point, dscale)
        frac = "0" * zeros + text[: dscale - zeros]
    else:
        if point > len(text):
            text += "0" * (point - len(text))
        whole = text[:point].lstrip("0") or "0"
        frac = text[point : point + dscale]
    if len(frac) < dscale:
        frac += "0" * (dscale - len(frac))
    out = whole + "." + frac if dscale else whole
    if sign and (whole != "0" or frac.strip("0")):  # a value truncated to zero prints without its sign
        return "-" + out
    return out


def _text(raw: bytes) -> str:
    if b"\x00" in raw:
        raise _Bad("text holds a NUL byte")
    return str(raw, "utf-8")


def _jsonb(raw: bytes) -> str:
    if raw[:1] != b"\x01":
        raise _Bad(f"jsonb version {raw[:1].hex() or 'missing'} is not 01")
    return _text(raw[1:])


def _bytea(raw: bytes) -> str:
    return "\\x" + raw.hex()


def _uuid(raw: bytes) -> str:
    if len(raw) != 16:
        raise _Bad(f"uuid of {len(raw)} bytes, not 16")
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# Days and microseconds count from 2000-01-01; the ranges are PostgreSQL's (4714-11-24 BC up to the year
# 5874897 for dates, 294276 for timestamps); the extreme int32/int64 values are -infinity and infinity.
_DATE_MIN, _DATE_END = -2451545, 2145031949
_TS_MIN, _TS_END = -211813488000000000, 9223371331200000000
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_DAY_US = 86_400_000_000


@functools.lru_cache(maxsize=1 << 16)
def _day(days: int) -> tuple[str, str]:
    """(YYYY-MM-DD, " BC" or "") of a day counted from 2000-01-01, proleptic Gregorian; year 0 is 1 BC."""
    z = days + 730425  # days since 0000-03-01
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    if year > 0:
        return f"{year:04d}-{month:02d}-{day:02d}", ""
    return f"{1 - year:04d}-{month:02d}-{day:02d}", " BC"


def _date(raw: bytes) -> str:
    (days,) = _I32.unpack(raw)
    if not _DATE_MIN <= days < _DATE_END:
        if days == _I32_MAX:
            return "infinity"
        if days == _I32_MIN:
            return "-infinity"
        raise _Bad(f"date {days} days from 2000-01-01 is out of range")
    date, era = _day(days)
    return date + era


def _clock(raw: bytes, zone: str) -> str:
    (us,) = _I64.unpack(raw)
    if not _TS_MIN <= us < _TS_END:
        if us == _I64_MAX:
            return "infinity"
        if us == _I64_MIN:
            return "-infinity"
        raise _Bad(f"timestamp {us} µs from 2000-01-01 is out of range")
    days, us = divmod(us, _DAY_US)
    secs, frac = divmod(us, 1_000_000)
    date, era = _day(days)
    minutes, sec = divmod(secs, 60)
    hour, minute = divmod(minutes, 60)
    if frac:
        return f"{date} {hour:02d}:{minute:02d}:{sec:02d}.{frac:06d}".rstrip("0") + zone + era
    return f"{date} {hour:02d}:{minute:02d}:{sec:02d}{zone}{era}"


def _timestamp(raw: bytes) -> str:
    return _clock(raw, "")


def _timestamptz(raw: bytes) -> str:
    return _clock(raw, "+00")


_DECODERS: dict[str, Callable[[bytes], str]] = {
    "bool": _bool,
    "int2": _int2,
    "int4": _int4,
    "int8": _int8,
    "float4": _float4,
    "float8": _float8,
    "numeric": _numeric,
    "text": _text,
    "bytea": _bytea,
    "uuid": _uuid,
    "date": _date,
    "timestamp": _timestamp,
    "timestamptz": _timestamptz,
    "jsonb": _jsonb,
}
assert set(_DECODERS) == TOKENS


def iter_text_rows(stream: IO[bytes], tokens: list[str], name: str) -> Iterator[list[str | None]]:
    """Each tuple decoded to exactly the strings PostgreSQL's COPY text output of the same row gives once
    unescaped (what values.split_copy_line returns for its line) under postgres.SESSION_SETTINGS; None for
    NULL. Invalid content and unknown tokens (raised at once, before any read) raise CorruptArchive naming
    the member."""
    unknown = [t for t in tokens if t not in _DECODERS]
    if unknown:
        raise _corrupt(name, f"unknown column encoding {unknown[0]!r}")
    return _scan(stream, [_DECODERS[t] for t in tokens], name, tokens)


# COPY TO text escapes these (CopyAttributeOutText); every other character, controls included, goes out as is.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\b": "\\b", "\f": "\\f", "\v": "\\v"})


_NEEDS_ESCAPE = re.compile("[\\\\\t\n\r\b\f\v]").search  # cheaper than translating a field that needs none


def copy_text_line(fields: list[str | None]) -> bytes:
    """One COPY text line ending with a newline, as COPY TO text prints these values: backslash, tab,
    newline, carriage return, backspace, form feed and vertical tab escaped, NULL as \\N."""
    return (
        "\t".join("\\N" if f is None else f.translate(_ESCAPES) if _NEEDS_ESCAPE(f) else f for f in fields) + "\n"
    ).encode("utf-8")
