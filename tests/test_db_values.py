"""Property tests of the db value codecs: jsonl round trip, COPY text parsing, member names."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import math
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statekit.archive.format import check_member_name
from statekit.errors import CorruptArchive
from statekit.tiers.sql.schema import DbSchema, member_prefix
from statekit.tiers.sql.values import decode_value, encode_row, iter_copy_rows, iter_jsonl, split_copy_line

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.datetimes(),
    st.datetimes(timezones=st.just(dt.timezone(dt.timedelta(hours=5, minutes=30)))),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.uuids(),
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, float):
        return type(b) is float and math.copysign(1, a) == math.copysign(1, b) and a == b
    return type(a) is type(b) and a == b and str(a) == str(b)


@given(st.lists(values, max_size=8))
def test_jsonl_round_trip_keeps_value_and_type(row: list[Any]) -> None:
    line = encode_row(row)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    (back,) = list(iter_jsonl(io.BytesIO(line), len(row)))
    assert all(_same(a, b) for a, b in zip(row, back)), (row, back)


def _copy_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@given(st.lists(st.one_of(st.none(), st.text()), min_size=1, max_size=6))
def test_copy_text_fields_split_back(fields: list[str | None]) -> None:
    line = "\t".join("\\N" if f is None else _copy_escape(f) for f in fields).encode()
    assert split_copy_line(line) == fields


def test_copy_rows_typed_by_column() -> None:
    from statekit.tiers.sql.values import pg_text_parser

    kinds = [{"kind": k} for k in ("int", "bool", "numeric", "float", "bytes", "timestamptz", "uuid", "date")]
    parsers = [pg_text_parser(k) for k in kinds]
    data = (
        b"-9223372036854775808\tt\t-1.50\tNaN\t\\\\x00ff\t2024-02-29 12:00:00.5+05:30\t"
        b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\t2024-02-29\n"
        b"\\N\tf\t\\N\t-Infinity\t\\\\x\t1970-01-01 00:00:00+00\t\\N\t0001-01-01\n"
    )
    rows = list(iter_copy_rows(io.BytesIO(data), parsers))
    assert rows[0][:3] == [-(2**63), True, decimal.Decimal("-1.50")]
    assert math.isnan(rows[0][3]) and rows[0][4] == b"\x00\xff"
    assert rows[0][5] == dt.datetime(2024, 2, 29, 6, 30, 0, 500000, tzinfo=dt.UTC)
    assert rows[0][6] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert rows[1] == [None, False, None, -math.inf, b"", dt.datetime(1970, 1, 1, tzinfo=dt.UTC), None,
                       dt.date(1, 1, 1)]  # fmt: skip
    with pytest.raises(CorruptArchive):
        list(iter_copy_rows(io.BytesIO(b"1\t2\n"), parsers))


@pytest.mark.parametrize("bad", [b'{"$x": 1}', b'{"$b": "***"}', b'{"$n": 1, "$b": ""}'])
def test_unknown_or_damaged_tags_are_corrupt(bad: bytes) -> None:
    import json

    with pytest.raises(CorruptArchive):
        decode_value(json.loads(bad))


@given(st.one_of(st.none(), st.text(min_size=1)), st.text(min_size=1))
def test_member_prefix_is_always_a_safe_unambiguous_name(schema: str | None, table: str) -> None:
    prefix = member_prefix(schema, table)
    check_member_name(prefix + ".000000.copy")
    assert prefix.count(".") == (1 if schema else 0)
    assert member_prefix(schema, table) != member_prefix(schema, table + ".")


def test_damaged_schema_json_is_corrupt() -> None:
    for bad in (b"{", b'{"format": "other"}', b'{"format": "statekit-db-schema", "tables": [{"x": 1}]}'):
        with pytest.raises(CorruptArchive):
            DbSchema.from_json_bytes(bad)
