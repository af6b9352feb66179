"""Value encodings of the db tier.

`jsonl` (portable rows): one JSON array per row, one element per archived column. JSON null, booleans,
integers, strings and finite floats stand for themselves; everything else is a one-key object whose key names
the type, so a value keeps its exact type even in a column without one (SQLite):

    {"$b": base64}  bytes          {"$n": "12.50"} decimal       {"$f": "NaN"|"Infinity"|"-Infinity"}
    {"$dt": ISO 8601 (offset if aware)}   {"$d": "2024-02-29"}   {"$t": "12:00:00.5"}
    {"$td": [days, seconds, microseconds]} {"$u": uuid}          {"$j": JSON text}

PostgreSQL `copy` members hold COPY text; `parse_copy_row` turns one line into typed values (for restores
into another dialect); each dialect's `row_adapter` fits typed values to what its driver stores exactly.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from statekit.errors import CorruptArchive

# -- jsonl ------------------------------------------------------------------------------------------------


def encode_value(v: Any) -> Any:
    """A JSON-ready form of one database value (see the module docstring)."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return {"$f": "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")}
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, decimal.Decimal):
        return {"$n": str(v)}
    if isinstance(v, dt.datetime):
        return {"$dt": v.isoformat()}
    if isinstance(v, dt.date):
        return {"$d": v.isoformat()}
    if isinstance(v, dt.time):
        return {"$t": v.isoformat()}
    if isinstance(v, dt.timedelta):
        return {"$td": [v.days, v.seconds, v.microseconds]}
    if isinstance(v, uuid.UUID):
        return {"$u": str(v)}
    if isinstance(v, (dict, list)):
        return {"$j": json.dumps(v, ensure_ascii=False, separators=(",", ":"))}
    if isinstance(v, (set, frozenset)):  # MySQL SET through some drivers
        return ",".join(sorted(str(x) for x in v))
    raise TypeError(f"cannot archive a value of type {type(v).__name__}")


# The widest number any SQL target holds: PostgreSQL numeric, 131072 digits before the point and 16383 after
# (MySQL's DECIMAL holds 65). A decimal from an archive beyond it is refused: `1e300000000` is a few bytes that
# a driver writes out as 300 million digits.
MAX_DECIMAL_INT_DIGITS = 131072
MAX_DECIMAL_FRAC_DIGITS = 16383


def parse_decimal(text: Any) -> decimal.Decimal:
    """A decimal from an archive's text (jsonl `$n`, COPY numeric): ValueError unless it is a number that some
    SQL numeric type can hold (NaN and ±Infinity pass: PostgreSQL's numeric has them)."""
    if not isinstance(text, str):
        raise ValueError("a decimal must be given as text")
    if len(text) > MAX_DECIMAL_INT_DIGITS + MAX_DECIMAL_FRAC_DIGITS + 64:
        raise ValueError("decimal has more digits than any SQL numeric type holds")
    value = decimal.Decimal(text)
    if value.is_finite():
        parts = value.as_tuple()
        digits, exponent = len(parts.digits), int(parts.exponent)  # an int exponent: the value is finite
        if digits + exponent > MAX_DECIMAL_INT_DIGITS or -exponent > MAX_DECIMAL_FRAC_DIGITS:
            raise ValueError(f"decimal {text[:24]!r} is out of the range of any SQL numeric type")
    return value


def _timedelta(parts: Any) -> dt.timedelta:
    if (
        not isinstance(parts, list)
        or len(parts) != 3
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in parts)
    ):
        raise ValueError("an interval must be [days, seconds, microseconds] as integers")
    return dt.timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])


def _text(fn: Callable[[str], Any]) -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        if not isinstance(raw, str):
            raise ValueError("the value must be given as text")
        return fn(raw)

    return parse


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "$b": _text(lambda s: base64.b64decode(s, validate=True)),
    "$n": parse_decimal,
    "$f": _text(float),
    "$dt": _text(dt.datetime.fromisoformat),
    "$d": _text(dt.date.fromisoformat),
    "$t": _text(dt.time.fromisoformat),
    "$td": _timedelta,
    "$u": _text(uuid.UUID),
    "$j": str,
}


def decode_value(j: Any) -> Any:
    """Inverse of encode_value; raises CorruptArchive on anything it does not know."""
    if isinstance(j, dict):
        if len(j) != 1:
            raise CorruptArchive("db row holds a malformed tagged value")
        ((tag, raw),) = j.items()
        fn = _DECODERS.get(tag)
        if fn is None:
            raise CorruptArchive(f"db row holds an unknown value tag {tag!r}")
        try:
            return fn(raw)
        except (ValueError, TypeError, IndexError, OverflowError, decimal.InvalidOperation) as exc:
            raise CorruptArchive(f"db row holds a bad {tag} value: {exc}") from None
    return j


def encode_row(row: Any) -> bytes:
    """One jsonl line (with its newline)."""
    return (
        json.dumps([encode_value(v) for v in row], ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
    ).encode("utf-8")


def iter_jsonl(stream: IO[bytes], ncols: int) -> Iterator[list[Any]]:
    """Decoded rows of one jsonl segment, each checked to have `ncols` values."""
    for line in stream:
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError:
            raise CorruptArchive("db segment holds a line that is not JSON") from None
        if not isinstance(raw, list) or len(raw) != ncols:
            raise CorruptArchive(f"db segment holds a row of the wrong width (expected {ncols} values)")
        yield [decode_value(v) for v in raw]


# -- COPY text --------------------------------------------------------------------------------------------

_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.S)
_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unescape_match(m: re.Match[str]) -> str:
    if m.group(1):
        return chr(int(m.group(1), 8))
    if m.group(2):
        return chr(int(m.group(2), 16))
    ch = m.group(3)
    return _SIMPLE.get(ch, ch)


def split_copy_line(line: bytes) -> list[str | None]:
    """The fields of one COPY text line (without its newline): `\\N` is NULL, backslash escapes decoded."""
    out: list[str | None] = []
    for field in line.decode("utf-8").split("\t"):
        if field == "\\N":
            out.append(None)
        elif "\\" in field:
            out.append(_ESCAPE.sub(_unescape_match, field))
        else:
            out.append(field)
    return out


def _tzfix(s: str) -> str:
    # PostgreSQL prints offsets as +00 or +05:30; Python wants +00:00.
    m = re.search(r"([+-]\d\d)$", s)
    return s + ":00" if m else s


def _pg_bool(s: str) -> bool:
    return s == "t"


def _pg_bytes(s: str) -> bytes:
    if not s.startswith("\\x"):
        raise CorruptArchive("db COPY segment holds bytea not in hex format")
    return bytes.fromhex(s[2:])


def _pg_float(s: str) -> float:
    return float(s)


_PG_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "bool": _pg_bool,
    "numeric": parse_decimal,
    "float": _pg_float,
    "bytes": _pg_bytes,
    "date": dt.date.fromisoformat,
    "timestamp": dt.datetime.fromisoformat,
    "timestamptz": lambda s: dt.datetime.fromisoformat(_tzfix(s)),
    "uuid": uuid.UUID,
}


def pg_text_parser(ptype: dict[str, Any]) -> Callable[[str], Any]:
    """A function turning one COPY text field of this portable type into a Python value."""
    from statekit.tiers.sql.schema import base_kind

    kind = base_kind(ptype)["kind"]
    if kind == "time":
        return lambda s: dt.time.fromisoformat(_tzfix(s))
    return _PG_PARSERS.get(kind, str)


def iter_copy_rows(stream: IO[bytes], parsers: list[Callable[[str], Any]]) -> Iterator[list[Any]]:
    """Typed rows of one COPY text segment."""
    return typed_rows((split_copy_line(line[:-1] if line.endswith(b"\n") else line) for line in stream), parsers)


def typed_rows(rows: Iterable[list[str | None]], parsers: list[Callable[[str], Any]]) -> Iterator[list[Any]]:
    """Typed rows from rows of COPY text values (None for NULL), one parser per column."""
    width = len(parsers)
    for fields in rows:
        if len(fields) != width:
            raise CorruptArchive(f"db COPY segment holds a row of {len(fields)} fields, expected {width}")
        try:
            yield [None if f is None else p(f) for p, f in zip(parsers, fields)]
        except (ValueError, OverflowError, decimal.InvalidOperation) as exc:
            raise CorruptArchive(f"db COPY segment holds a value that does not parse: {exc}") from None
