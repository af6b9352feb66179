"""PostgreSQL tables archived as binary COPY: chosen per table from the column types, loaded as they are when the
target's columns have the archive's wire types, decoded to COPY text when they do not (the target converting
them as it would a text archive), and refused without a change when the tuples are damaged or crafted."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from statekit.config import DbConfig
from statekit.model import RestoreOptions
from statekit.tiers.sql import pgbinary, plan_db_restore
from tests.db_support import execute, fetch, restore, rows_as_text, snap
from tests.test_restore_hostile import IDENTITY, STATEKIT, _restore, rewrite

EVERY_TYPE = """CREATE TYPE mood AS ENUM ('ok', 'sad', 'très bien');
CREATE TABLE every (
    id int PRIMARY KEY, s smallint, b bigint, r real, d double precision, n numeric, n2 numeric(14,2),
    flag boolean, t text, vc varchar(20), c char(4), j json, jb jsonb, m mood, raw bytea, u uuid, day date,
    ts timestamp(3), tz timestamptz)"""
EVERY_ROWS = [
    r"""INSERT INTO every VALUES
    (1, -32768, -9223372036854775808, 'NaN', '-Infinity', 'NaN', -0.5, true, E'tab\there\nnew\\line', 'é',
     'ab', '{"a": [1, 2]}', '{"z": 1, "a": "x"}', 'très bien', '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
     '0044-03-15 BC', '0001-01-01 00:00:00.001 BC', 'infinity'),
    (2, 32767, 9223372036854775807, 1e-45, 2.2250738585072014e-308, 'Infinity', 123456789012.34, false, '', '',
     '', 'null', '[]', 'ok', '', '00000000-0000-0000-0000-000000000000', 'infinity', '-infinity',
     '10000-01-01 12:00:00.5+00'),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)""",
    """INSERT INTO every SELECT g, mod(g, 30000), g * 7919::bigint, g / 3.0, g * 1e10 / 7, g / 7.0, g / 3.0,
    mod(g, 2) = 0, md5(g::text), left(md5(g::text), 20), left(md5(g::text), 4), json_build_object('g', g),
    jsonb_build_object('g', g),
    (ARRAY['ok', 'sad', 'très bien'])[mod(g, 3) + 1]::mood, decode(md5(g::text), 'hex'), md5(g::text)::uuid,
    date '2000-01-01' + g, timestamp '1999-12-31 23:59:59.999' + g * interval '1.001 second',
    timestamptz '2024-01-01 00:00:00+00' + g * interval '1 microsecond'
    FROM generate_series(4, 5000) g""",
]


def _members(archive: Any) -> dict[str, bytes]:
    return {m.name: m.read_all() for m in archive.members("db/")}


def test_binary_is_chosen_per_table_and_text_on_request(pg_url: str, tmp_path: Path) -> None:
    execute(pg_url, EVERY_TYPE, *EVERY_ROWS, "CREATE TABLE spans (id int PRIMARY KEY, length interval)",
            "INSERT INTO spans VALUES (1, '1 day')")  # fmt: skip
    archive, summary = snap(pg_url, tmp_path / "a.statekit")
    members = _members(archive)
    assert sorted(n for n in members if n != "db/schema.json") == [
        "db/public.every.000000.pgbinary",
        "db/public.spans.000000.copy",  # an interval has no wire token: the whole table is COPY text
    ]
    doc = json.loads(members["db/schema.json"])
    assert doc["format_version"] == 2
    every = next(t for t in doc["tables"] if t["name"] == "every")
    assert every["wire"] == ["int4", "int2", "int8", "float4", "float8", "numeric", "numeric", "bool", "text",
                             "text", "text", "text", "jsonb", "text", "bytea", "uuid", "date", "timestamp",
                             "timestamptz"]  # fmt: skip
    assert summary.details["encoding"] == "copy+pgbinary"
    meta = {m["name"]: m.get("meta") for m in archive.manifest["members"]}
    assert meta["db/public.every.000000.pgbinary"]["rows"] == 5000
    text, _ = snap(pg_url, tmp_path / "t.statekit", copy_format="text")
    doc = json.loads(_members(text)["db/schema.json"])
    assert doc["format_version"] == 1 and all("wire" not in t and t["encoding"] == "copy" for t in doc["tables"])


def test_binary_archive_reads_as_the_text_one(pg_url: str, tmp_path: Path) -> None:
    """Decoded, a binary segment is the COPY text of the same rows, byte for byte (what the audit, another
    dialect's restore and a changed column type read)."""
    from statekit.tiers.base import decode
    from statekit.tiers.sql.members import DbDecoder

    execute(pg_url, EVERY_TYPE, *EVERY_ROWS)
    binary, _ = snap(pg_url, tmp_path / "b.statekit")
    text, _ = snap(pg_url, tmp_path / "t.statekit", copy_format="text")
    decoded = [line for seg in decode(binary, DbDecoder()) for line in seg.lines()]
    assert [seg.encoding for seg in decode(binary, DbDecoder())] == ["pgbinary"]
    assert decoded == [line for seg in decode(text, DbDecoder()) for line in seg.lines()]
    assert len(decoded) == 5000


@pytest.mark.parametrize("existing", [True, False], ids=["into-existing", "created"])
def test_round_trip_loads_binary_as_is(
    pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    execute(pg_url, EVERY_TYPE, *EVERY_ROWS)
    if existing:
        execute(pg_url2, EVERY_TYPE, "INSERT INTO every (id, t) VALUES (99, 'old')")
    archive, _ = snap(pg_url, tmp_path / "a.statekit")
    decoded: list[str] = []
    real = pgbinary.iter_text_rows

    def counting(stream: Any, tokens: list[str], name: str) -> Any:
        decoded.append(name)
        return real(stream, tokens, name)

    monkeypatch.setattr(pgbinary, "iter_text_rows", counting)
    plan = plan_db_restore(archive, RestoreOptions(tier="db", target=pg_url2), DbConfig())
    assert "COPY (binary)" in plan.plan[0]["sql"]
    report = restore(archive, pg_url2)
    assert report.counts["rows"] == 5000
    assert decoded == [], "the same wire types load as they are, without decoding"
    assert rows_as_text(pg_url2, "every") == rows_as_text(pg_url, "every")


def test_changed_column_types_load_as_text_would(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    """A target whose columns changed type since the snapshot (int → bigint, timestamp → timestamptz,
    real → double precision, text → an enum, jsonb → json): the binary rows are decoded and the target converts them
    exactly as it converts the same archive made as COPY text."""
    src = "CREATE TABLE t (id int PRIMARY KEY, n int, at timestamp, r real, label text, doc jsonb)"
    dst = ("CREATE TYPE label AS ENUM ('a', 'b')", "CREATE TABLE t (id bigint PRIMARY KEY, n bigint, "
           "at timestamptz, r double precision, label label, doc json)")  # fmt: skip
    execute(pg_url, src, "INSERT INTO t SELECT g, -g, timestamp '2020-02-29 23:59:59.5' + g * interval '1 hour', "
            "g / 3.0, CASE WHEN mod(g, 2) = 0 THEN 'a' ELSE 'b' END, jsonb_build_object('g', g, 'k', 'v') "
            "FROM generate_series(1, 3000) g")  # fmt: skip
    execute(pg_url2, *dst)
    binary, _ = snap(pg_url, tmp_path / "b.statekit")
    text, _ = snap(pg_url, tmp_path / "t.statekit", copy_format="text")
    plan = plan_db_restore(binary, RestoreOptions(tier="db", target=pg_url2), DbConfig())
    assert "COPY (binary rows loaded as text: column types differ)" in plan.plan[0]["sql"]
    assert restore(binary, pg_url2).counts["rows"] == 3000
    from_binary = rows_as_text(pg_url2, "t")
    assert restore(text, pg_url2).counts["rows"] == 3000
    assert from_binary == rows_as_text(pg_url2, "t")
    assert from_binary[0] == ("1", "-1", "2020-03-01 00:59:59.5+00", "0.33333334", "b", '{"g": 1, "k": "v"}')


def _tuple_end(d: bytes) -> int:
    """Where the first tuple of an (int, text) segment ends."""
    return 2 + 4 + 4 + 4 + int.from_bytes(d[10:14], "big")


CRAFTED: dict[str, Any] = {
    "field-count": lambda d: b"\x00\x03" + d[2:],
    "cut-short": lambda d: d[:-3],
    "trailer-inside": lambda d: d[: _tuple_end(d)] + b"\xff\xff" + d[_tuple_end(d) :],
    "huge-length": lambda d: d[:2] + b"\x7f\xff\xff\xff" + d[6:],
    "negative-length": lambda d: d[:2] + b"\xff\xff\xff\xfe" + d[6:],
    "int-of-3-bytes": lambda d: d[:2] + b"\x00\x00\x00\x03" + d[7:],
    "more-rows-than-said": lambda d: d + d[: _tuple_end(d)],
    "fewer-rows-than-said": lambda d: d[_tuple_end(d) :],
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_binary_segment_changes_nothing(
    case: str, pg_url: str, pg_url2: str, tmp_path: Path, identity_file: Path
) -> None:
    """Binary tuples rewritten by someone who holds only the public key (the manifest made to match): a
    PostgreSQL target loading them as they are refuses them inside the restore's transaction, exit 3 naming
    the member, and keeps every row it had."""
    execute(pg_url, "CREATE TABLE t (id int, v text)", "INSERT INTO t SELECT g, 'new-' || g FROM "
            "generate_series(1, 2000) g")  # fmt: skip
    execute(pg_url2, "CREATE TABLE t (id int, v text)", "INSERT INTO t VALUES (1, 'old')")
    good = tmp_path / "good.statekit"
    env = {**os.environ, "STATEKIT_DB_COPY_FORMAT": "binary"}
    made = subprocess.run([STATEKIT, "snapshot", "--db-url", pg_url, "--to", str(good), "-r",
                           IDENTITY.recipient().to_string()], capture_output=True, text=True, env=env)  # fmt: skip
    assert made.returncode == 0, made.stderr
    damage = CRAFTED[case]
    bad = rewrite(good, tmp_path / "bad.statekit", lambda n, d: damage(d) if n.endswith(".pgbinary") else d)
    code, err = _restore(bad, identity_file, "--tier", "db", "--target-url", pg_url2, "--no-undo")
    last = err.strip().splitlines()[-1]
    if case == "huge-length":
        # The server refuses a field over 1 GiB as a limit of its own, before reading it (PostgreSQL 15 says
        # "out of memory", later releases "string buffer exceeds maximum allowed length"): exit 6
        assert code == 6 and last.startswith("Error: db ") and "restore failed" in last, f"{case}: {err}"
    else:
        assert code == 3, f"{case}: {err}"
        assert last.startswith("Error: archive member db/public.t.000000.pgbinary: "), err
    assert "Traceback" not in err
    assert fetch(pg_url2, "SELECT id, v FROM t") == [(1, "old")]
    code, err = _restore(bad, identity_file, "--tier", "db", "--target-url", pg_url2, "--dry-run")
    assert code == 3 and "archive member db/" in err, f"{case} (dry run): {err}"
    code, err = _restore(good, identity_file, "--tier", "db", "--target-url", pg_url2, "--no-undo")
    assert code == 0, err
    assert fetch(pg_url2, "SELECT count(*) FROM t") == [(2000,)]


def test_progress_counts_rows_while_a_binary_table_loads(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    """The server counts a binary COPY's rows when it ends; until then the progress estimates them from the
    bytes sent and the size of the first tuples, and it ends on the exact count."""
    execute(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text)",
            "INSERT INTO t SELECT g, repeat(md5(g::text), 2) FROM generate_series(1, 200000) g")  # fmt: skip
    execute(pg_url2, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    archive, _ = snap(pg_url, tmp_path / "a.statekit")
    assert len([m for m in archive.manifest["members"] if m["name"].endswith(".pgbinary")]) >= 2
    seen: list[int] = []
    restore(archive, pg_url2, progress=lambda tier, rows, nbytes: seen.append(rows))
    assert seen[-1] == 200_000
    during = [r for r in seen[:-1] if 0 < r < 200_000]
    assert len(during) >= 5 and during == sorted(during) and max(seen) <= 200_000 * 1.05, seen
    assert 0 not in seen[seen.index(during[0]) :], "the count fell back to nothing before the server's count"


@pytest.mark.parametrize("jobs", [1, 2])
def test_rows_are_estimated_from_bytes_only_for_a_progress_line(
    pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int
) -> None:
    """The mid-COPY estimate walks a segment's first tuples in Python: a restore that shows no progress (the
    default callback) skips it and still ends on the server's exact counts, its own connection's and (with
    --jobs) the staging workers' alike; one with a progress callback still estimates."""
    from statekit.tiers.sql import pgload, pgstage, restore_db

    monkeypatch.setattr(pgstage, "STAGE_FROM_BYTES", 0)  # with --jobs 2, t is staged: the workers load it
    execute(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text)",
            "INSERT INTO t SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 60000) g")  # fmt: skip
    execute(pg_url2, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    archive, _ = snap(pg_url, tmp_path / "a.statekit")
    walked = mock.Mock(wraps=pgload._tuple_bytes)  # a spy: the real estimate runs
    monkeypatch.setattr(pgload, "_tuple_bytes", walked)
    opts = RestoreOptions(tier="db", target=pg_url2, mode="replace", jobs=jobs, trust_archive_sql=True)
    oid = "SELECT 't'::regclass::oid"
    before = fetch(pg_url2, oid)
    report = restore_db(archive, opts, DbConfig(), undo=None)
    assert walked.call_count == 0
    assert report.counts["rows"] == 60_000
    assert (fetch(pg_url2, oid) != before) == (jobs == 2)  # a staged table takes the old one's place
    assert rows_as_text(pg_url2, "t") == rows_as_text(pg_url, "t")
    seen: list[int] = []
    restore_db(archive, opts, DbConfig(), undo=None, progress=lambda tier, rows, nbytes: seen.append(rows))
    assert walked.call_count and seen[-1] == 60_000
