"""Hostile archives whose metadata is built to exhaust memory or to crash the reader: a MANIFEST.json or
db/schema.json of millions of `{}` (a few KiB of archive, gigabytes of Python objects), a snapshot.json whose
fields have the wrong types, decimals with a 300-million-digit exponent and malformed typed jsonl values. Each is
refused with exit 3 and one line, before the first change to the target."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from statekit.archive.age import Encryptor
from statekit.archive.writer import ArchiveWriter
from statekit.fsio import atomic_output
from statekit.tiers.sql.values import decode_value
from tests.test_restore_hostile import IDENTITY, STATEKIT, _container, _restore, peak_rss_mib, rewrite


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o600
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def _bomb_archive(path: Path, manifest_head: bytes, unit: bytes, count: int, tail: bytes, *,
                  members: int = 0) -> Path:  # fmt: skip
    """An archive of format.json, `members` empty files, snapshot.json and a MANIFEST.json of `manifest_head`,
    `unit` * `count`, `tail`, streamed: the archive stays a few KiB however big the manifest is."""
    fmt = json.dumps({"format": "statekit-archive", "format_version": 1}).encode()
    snap = json.dumps({"kind": "snapshot", "tiers": []}).encode()
    size = len(manifest_head) + len(unit) * count + len(tail)

    def parts() -> Iterator[bytes]:
        yield _header("format.json", len(fmt)) + _padded(fmt)
        for i in range(members):
            yield _header(f"files/f{i}", 0)
        yield _header("snapshot.json", len(snap)) + _padded(snap)
        yield _header("MANIFEST.json", size) + manifest_head
        chunk = unit * (1 << 16)
        left = count
        while left:
            n = min(left, 1 << 16)
            yield chunk[: n * len(unit)]
            left -= n
        yield tail + b"\0" * (-size % 512) + b"\0" * 1024

    comp = zstandard.ZstdCompressor().compressobj()
    with open(path, "wb") as fh, Encryptor(fh, [IDENTITY.recipient()]) as enc:
        for p in parts():
            enc.write(comp.compress(p))
        enc.write(comp.flush())
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=300)


def _refused(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


# -- MANIFEST.json ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "members"),
    [(b"{},", 0), (b"[],", 0), (b"{},", 30000), (b'"ab",', 30000)],
    ids=["objects", "arrays", "objects-many-members", "strings-many-members"],
)
def test_manifest_of_millions_of_values_is_refused_before_it_is_parsed(
    unit: bytes, members: int, tmp_path: Path, identity_file: Path
) -> None:
    # 24 MiB of `{},` took 690 MB to parse (7 GB at the old 256 MiB cap) from an archive of 2.7 KiB
    archive = _bomb_archive(tmp_path / "bomb.statekit", b'{"members":[', unit, (24 << 20) // len(unit), b"{}]}",
                            members=members)  # fmt: skip
    assert archive.stat().st_size < 512 << 10
    for cmd in ("verify", "inspect"):
        code, rss, err = peak_rss_mib([cmd, str(archive), "-i", str(identity_file)])
        assert code == 3 and "Traceback" not in err and err.count("\n") == 1, err
        # few members: over the byte bound they allow; 30,000: within it, but not that many values
        assert ("implausibly large" if members < 30000 else "more JSON values") in err, err
        print(f"{cmd} of a {archive.stat().st_size >> 10} KiB archive, 24 MiB MANIFEST.json: peak RSS {rss:.0f} MiB")
        assert rss < 200, f"{cmd}: peak RSS {rss:.0f} MiB"


def _files_archive(
    path: Path, extra: dict[str, Any] | None = None, drop: str | None = None, snapshot: bytes | None = None
) -> Path:
    """A files-tier archive of `files/a.json` with a truthful manifest but for `extra` fields set in (or `drop`
    removed from) that member's entry, and `snapshot` as snapshot.json."""
    data = b"{}"
    snap = snapshot or json.dumps({"tiers": [{"tier": "files"}]}).encode()
    entry = {"name": "files/a.json", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": "0600"}
    entry.update({"mtime": 0, **(extra or {})})
    if drop:
        del entry[drop]
    # the manifest _container would write, with this entry in the middle
    fmt = json.dumps({"format": "statekit-archive", "format_version": 1}).encode()
    entries = [_entry("format.json", fmt), entry, _entry("snapshot.json", snap)]
    manifest = json.dumps({"format": "statekit-archive", "format_version": 1, "members": entries}).encode()
    return _container(path, [("files/a.json", data)], snapshot=snap, fmt=fmt, manifest=manifest)


def _entry(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": "0600", "mtime": 0}


def _manifest_entries(extra: dict[str, Any] | None = None, drop: str | None = None) -> Callable[[Path], Path]:
    return lambda path: _files_archive(path, extra, drop)


MANIFEST_CASES = {
    "no-mtime": _manifest_entries(drop="mtime"),
    "mtime-text": _manifest_entries({"mtime": "yesterday"}),
    "size-text": _manifest_entries({"size": "2"}),
    "size-bool": _manifest_entries({"size": True}),
    "sha256-not-hex": _manifest_entries({"sha256": "x" * 64}),
    "mode-not-octal": _manifest_entries({"mode": 420}),
    "meta-list": _manifest_entries({"meta": [1]}),
    "meta-nested": _manifest_entries({"meta": {"files": {"n": 1}}}),
    "name-number": _manifest_entries({"name": 7}),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_malformed_manifest_entries_are_refused(case: str, tmp_path: Path, identity_file: Path) -> None:
    archive = MANIFEST_CASES[case](tmp_path / "bad.statekit")
    target = tmp_path / "target"
    target.mkdir()
    (target / "a.json").write_text("old")
    for cmd in (["verify", str(archive)], ["inspect", str(archive), "--members"],
                ["restore", str(archive), "--tier", "files", "--target", str(target), "--yes"]):  # fmt: skip
        _refused(_run(*cmd, "-i", str(identity_file)), "MANIFEST.json is damaged")
    assert (target / "a.json").read_text() == "old"


def test_the_manifest_of_a_real_archive_of_many_members_is_read(tmp_path: Path, identity_file: Path) -> None:
    """The bound follows the members read: 20,000 files with long, escaped names and full meta still verify."""
    path = tmp_path / "many.statekit"
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=[IDENTITY.recipient()])
        for i in range(20000):
            name = f"files/{'dir-{[,]}/' * 3}\x01é{i}.json"
            w.add(name, b"", mode=0o600, meta={"files": 1, "mtime_ns": 1767225600123456789, "table": "x" * 200})
        w.finish({"kind": "snapshot", "tiers": [{"tier": "files", "counts": {"files": 20000}}]})
    proc = _run("verify", str(path), "-i", str(identity_file))
    assert proc.returncode == 0, proc.stderr
    assert "20,003 members" in proc.stdout


# -- snapshot.json ---------------------------------------------------------------------------------------------


def _snapshot(doc: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "snapshot", "tiers": [{"tier": "files", "started_at": "2026-01-01T00:00:00Z",
            "duration_s": 0.5, "counts": {"files": 1}, "details": {"root": "/r"}, "warnings": []}], **doc}  # fmt: skip


SNAPSHOT_CASES: dict[str, Callable[[dict[str, Any]], None]] = {
    "options-list": lambda s: s.update(options=[1, 2]),
    "encryption-text": lambda s: s.update(options={"encryption": "x"}),
    "tier-window-text": lambda s: s.update(tier_window_s="abc"),
    "tier-window-infinite": lambda s: s.update(tier_window_s=float("inf")),
    "created-at-object": lambda s: s.update(created_at={}),
    "host-number": lambda s: s.update(host=5),
    "counts-text": lambda s: s["tiers"][0].update(counts={"files": "x"}),
    "counts-list": lambda s: s["tiers"][0].update(counts={"files": [1]}),
    "duration-null": lambda s: s["tiers"][0].update(duration_s=None),
    "warnings-number": lambda s: s["tiers"][0].update(warnings=5),
    "warnings-objects": lambda s: s["tiers"][0].update(warnings=[{}]),
    "started-at-number": lambda s: s["tiers"][0].update(started_at=1),
}


@pytest.mark.parametrize("case", sorted(SNAPSHOT_CASES))
def test_snapshot_json_of_the_wrong_shape_is_refused_by_every_command(
    case: str, tmp_path: Path, identity_file: Path
) -> None:
    doc = _snapshot({})
    SNAPSHOT_CASES[case](doc)
    body = json.dumps(doc).encode()
    archive = _files_archive(tmp_path / "x.statekit", snapshot=json.dumps(_snapshot({})).encode())
    bad = _files_archive(tmp_path / "bad.statekit", snapshot=body)
    target = tmp_path / "target"
    target.mkdir()
    for cmd in (["inspect", str(bad), "--members"], ["verify", str(bad)], ["diff", str(archive), str(bad), "--raw"],
                ["restore", str(bad), "--tier", "files", "--target", str(target), "--yes"]):  # fmt: skip
        _refused(_run(*cmd, "-i", str(identity_file)), "snapshot.json is damaged")
    assert not list(target.iterdir())


@pytest.mark.parametrize("unit", [b"{},", b"[],", b'"ab",'], ids=["objects", "arrays", "strings"])
def test_snapshot_json_of_millions_of_values_is_refused(unit: bytes, tmp_path: Path, identity_file: Path) -> None:
    body = b'{"tiers": [], "x": [' + unit * ((15 << 20) // len(unit)) + b"0]}"  # under the 16 MiB cap
    archive = _files_archive(tmp_path / "bomb.statekit", snapshot=body)
    code, rss, err = peak_rss_mib(["verify", str(archive), "-i", str(identity_file)])
    assert code == 3 and "snapshot.json holds more JSON values" in err and err.count("\n") == 1, err
    assert rss < 200, f"peak RSS {rss:.0f} MiB"


def test_a_well_formed_snapshot_json_still_reads(tmp_path: Path, identity_file: Path) -> None:
    doc = _snapshot({"tier_window_s": 1, "options": {"compression": "zstd-3", "encryption": {"type": "none"}},
                     "undo_of": "statekit reconcile"})  # fmt: skip
    good = _files_archive(tmp_path / "good.statekit", snapshot=json.dumps(doc).encode())
    proc = _run("inspect", str(good), "--members", "-i", str(identity_file))
    assert proc.returncode == 0, proc.stderr
    assert "files=1" in proc.stdout and "window      1.000s" in proc.stdout


# -- db/schema.json --------------------------------------------------------------------------------------------


def _sqlite_archive(tmp_path: Path, rows: list[tuple[Any, ...]]) -> Path:
    import sqlite3

    src = tmp_path / "src.db"
    with sqlite3.connect(src) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", rows)
    good = tmp_path / "good.statekit"
    proc = _run("snapshot", "--db-url", f"sqlite:///{src}", "--to", str(good), "-r", IDENTITY.recipient().to_string())
    assert proc.returncode == 0, proc.stderr
    return good


def _sqlite_target(path: Path) -> list[Any]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT OR IGNORE INTO t VALUES (1, 'keep')")
        return conn.execute("SELECT * FROM t ORDER BY id").fetchall()


@pytest.mark.parametrize("unit", [b"{},", b"[],", b"1,"], ids=["objects", "arrays", "numbers"])
def test_schema_json_of_millions_of_values_is_refused(unit: bytes, tmp_path: Path, identity_file: Path) -> None:
    good = _sqlite_archive(tmp_path, [(1, "a")])

    def bloat(name: str, data: bytes) -> bytes:
        if name != "db/schema.json":
            return data
        doc = data.rstrip()
        return doc[:-1] + b', "x": [' + unit * ((8 << 20) // len(unit)) + b"0]}"

    bad = rewrite(good, tmp_path / "bad.statekit", bloat)
    target = tmp_path / "t.db"
    before = _sqlite_target(target)
    for extra in ("--dry-run", "--yes"):
        code, err = _restore(bad, identity_file, "--tier", "db", "--target-url", f"sqlite:///{target}", extra)
        assert code == 3 and "db/schema.json" in err, err
    assert _sqlite_target(target) == before


def test_schema_json_over_the_byte_cap_is_refused(tmp_path: Path, identity_file: Path) -> None:
    good = _sqlite_archive(tmp_path, [(1, "a")])

    def bloat(name: str, data: bytes) -> bytes:
        doc = data.rstrip()
        return doc[:-1] + b', "x": "' + b"a" * (65 << 20) + b'"}' if name == "db/schema.json" else data

    bad = rewrite(good, tmp_path / "bad.statekit", bloat)
    target = tmp_path / "t.db"
    before = _sqlite_target(target)
    code, err = _restore(bad, identity_file, "--tier", "db", "--target-url", f"sqlite:///{target}", "--dry-run")
    assert code == 3 and "db/schema.json is implausibly large" in err, err
    assert _sqlite_target(target) == before


# -- typed values ----------------------------------------------------------------------------------------------


BAD_VALUES = [
    '{"$n":"1e300000000"}', '{"$n":"-1E-300000000"}', '{"$n":"1e131072"}', '{"$n":"1e-16384"}', '{"$n":5}',
    '{"$td":[1e10,0,0]}', '{"$td":[10000000000,0,0]}', '{"$td":{}}', '{"$td":[1,2]}', '{"$td":[true,0,0]}',
    '{"$u":5}', '{"$b":[1]}', '{"$dt":1}', '{"$f":{}}',
]  # fmt: skip


@pytest.mark.parametrize("value", BAD_VALUES)
def test_malformed_typed_values_are_corrupt(value: str) -> None:
    from statekit.errors import CorruptArchive

    with pytest.raises(CorruptArchive, match=r"db row holds a bad \$"):
        decode_value(json.loads(value))


@pytest.mark.parametrize(
    "value", ['{"$n":"1e131071"}', '{"$n":"1e-16383"}', '{"$n":"NaN"}', '{"$n":"-Infinity"}', '{"$td":[1,2,3]}']
)
def test_typed_values_in_range_decode(value: str) -> None:
    assert decode_value(json.loads(value)) is not None


def _my_jsonl_archive(tmp_path: Path, mysql_url: str, value: str) -> Path:
    import sqlalchemy as sa

    eng = sa.create_engine(mysql_url)
    with eng.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE src_t (id int PRIMARY KEY, n decimal(20,2), d time(6))")
        conn.exec_driver_sql("INSERT INTO src_t VALUES (1, 1.5, '01:00:00'), (2, 2.5, '02:00:00')")
    eng.dispose()
    good = tmp_path / "good.statekit"
    proc = _run("snapshot", "--db-url", mysql_url, "--to", str(good), "-r", IDENTITY.recipient().to_string())
    assert proc.returncode == 0, proc.stderr
    column = b'{"$n":"2.50"}' if '"$n"' in value else b'{"$td":[0,7200,0]}'

    def forge(name: str, data: bytes) -> bytes:
        if not name.endswith(".jsonl"):
            return data
        assert column in data, data
        return data.replace(column, value.encode())

    return rewrite(good, tmp_path / "bad.statekit", forge)


@pytest.mark.parametrize("value", ['{"$n":"1e300000000"}', '{"$td":[1e10,0,0]}', '{"$td":{}}'])
def test_hostile_jsonl_value_into_mysql_is_refused_and_changes_nothing(
    value: str, tmp_path: Path, identity_file: Path, mysql_url: str
) -> None:
    import sqlalchemy as sa

    bad = _my_jsonl_archive(tmp_path, mysql_url, value)  # row 2's decimal or time replaced by `value`
    eng = sa.create_engine(mysql_url)
    with eng.begin() as conn:
        conn.exec_driver_sql("DROP TABLE src_t")
        conn.exec_driver_sql("CREATE TABLE victim (id int PRIMARY KEY, v text)")
        conn.exec_driver_sql("INSERT INTO victim VALUES (1, 'keep')")

    def state() -> Any:
        with eng.connect() as conn:
            tables = sorted(r[0] for r in conn.exec_driver_sql("SHOW TABLES"))
            return tables, conn.exec_driver_sql("SELECT * FROM victim").fetchall()

    before = state()
    code, rss, err = peak_rss_mib(["restore", str(bad), "-i", str(identity_file), "--tier", "db",
                                   "--target-url", mysql_url, "--yes"])  # fmt: skip
    eng.dispose()
    assert code == 3, err
    assert "Traceback" not in err and "db row holds a bad $" in err and "nothing was changed" in err, err
    assert rss < 300, f"peak RSS {rss:.0f} MiB"
    assert state() == before
