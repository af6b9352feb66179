"""Text from an archive never acts on the terminal.

File paths, table names, Redis keys and snapshot.json fields are chosen by whoever wrote the archive (anyone
with the public key). Shown to a person — the restore plan, the confirmation prompt, `inspect`, `verify` —
every character a terminal would act on (C0 controls such as CR and ESC, DEL, C1 controls such as CSI, the
bidirectional overrides and isolates) is a visible escape, so an archive cannot erase, hide, move or reorder
lines of the plan (forged "unchanged" lines over a table it replaces). `--json` output is exact: JSON escapes
control characters itself.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from statekit.archive.reader import Archive
from statekit.archive.writer import ArchiveWriter
from statekit.fsio import atomic_output
from statekit.textfmt import printable
from statekit.tiers.redis import portable
from statekit.tiers.redis.records import RecordWriter
from statekit.tiers.sql.schema import member_prefix
from tests.test_restore_hostile import IDENTITY, STATEKIT

# Cursor up, erase the line, carriage return, a forged plan line, then hide everything after it; a C1 CSI;
# a right-to-left override.
FORGED = "zz\x1b[1A\x1b[2K\r  = unchanged table: public.victim\n\x1b[8m\x9b2J\u202egpj.exe"
RAW = ("\x1b", "\r", "\x9b", "\u202e")


def _clean(text: str) -> None:
    """No character of the forged name reached the output raw; its escapes did."""
    for ch in RAW:
        assert ch not in text, f"{ch!r} reached the terminal: {text!r}"
    assert "\\x1b[1A\\x1b[2K\\x0d" in text and "\\x9b2J" in text and "\\u202egpj.exe" in text, text


def sk(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([STATEKIT, *args], capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def test_printable_escapes_what_a_terminal_acts_on() -> None:
    assert printable("plain/path-é…名.json") == "plain/path-é…名.json"
    assert printable("a\x1b[2Kb\rc\nd\te\x7f") == "a\\x1b[2Kb\\x0dc\\x0ad\\x09e\\x7f"
    assert printable("\x85\x9b\x9d") == "\\x85\\x9b\\x9d"  # C1: NEL, CSI, OSC
    bidi = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"
    assert printable(bidi) == "".join(f"\\u{ord(c):04x}" for c in bidi)
    assert printable("x\u2028y\udc80") == "x\\u2028y\\udc80"  # line separator, a lone surrogate


# -- the restore plan and the prompt -----------------------------------------------------------------------------


def _files_archive(path: Path) -> Path:
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=[IDENTITY.recipient()])
        w.add(f"files/{FORGED}", b"payload", mode=0o600)
        w.add("files/real.json", b"{}", mode=0o600)
        w.finish({"tiers": [{"tier": "files", "counts": {"files": 2}, "details": {}}]})
    return path


def test_files_plan_escapes_a_forged_path(tmp_path: Path, identity_file: Path) -> None:
    archive = _files_archive(tmp_path / "f.statekit")
    target = tmp_path / "t"
    proc = sk("restore", str(archive), "-i", str(identity_file), "--tier", "files", "--target", str(target),
              "--dry-run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _clean(proc.stdout)
    assert len(proc.stdout.splitlines()) == 4, proc.stdout  # head, target, two paths: no line of the archive's
    doc = json.loads(sk("restore", str(archive), "-i", str(identity_file), "--tier", "files", "--target",
                        str(target), "--dry-run", "--json").stdout)  # fmt: skip
    assert FORGED in [p["path"] for p in doc["plan"]]  # --json: exact


def test_db_plan_escapes_a_forged_table_name(tmp_path: Path, identity_file: Path) -> None:
    src = tmp_path / "src.db"
    with sqlite3.connect(src) as conn:
        conn.execute("CREATE TABLE victim (id int PRIMARY KEY, v text)")
    good = tmp_path / "good.statekit"
    proc = sk("snapshot", "--db-url", f"sqlite:///{src}", "--to", str(good), "-r", IDENTITY.recipient().to_string())
    assert proc.returncode == 0, proc.stderr
    archive = Archive(good, [IDENTITY])
    metas = {m["name"]: m.get("meta") for m in archive.manifest["members"]}
    bad = tmp_path / "bad.statekit"
    with atomic_output(bad) as fh:
        w = ArchiveWriter(fh, recipients=[IDENTITY.recipient()])
        for m in archive.members():
            if m.name == "db/schema.json":
                schema = json.loads(m.read_all())
                table = schema["tables"][0]
                table["name"] = FORGED
                table["member"] = member_prefix(table.get("schema"), FORGED)
                w.add(m.name, json.dumps(schema).encode(), mode=m.mode, meta=metas.get(m.name))
            elif m.name.startswith("db/"):
                m.read_all()  # the table's segments are left out: the schema alone makes the plan
        w.finish({k: v for k, v in archive.snapshot.items() if k != "snapshot_id"})
    target = tmp_path / "target.db"
    with sqlite3.connect(target) as conn:
        conn.execute("CREATE TABLE victim (id int PRIMARY KEY, v text)")
    proc = sk("restore", str(bad), "-i", str(identity_file), "--tier", "db", "--target-url", f"sqlite:///{target}",
              "--dry-run")  # fmt: skip
    assert proc.returncode in (0, 3), proc.stderr
    _clean(proc.stdout + proc.stderr)


def _redis_archive(path: Path) -> Path:
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=[IDENTITY.recipient()])
        rw = RecordWriter(w, 0, "7.0.15", int(time.time() * 1000))
        rw.add_dump(FORGED.encode(), portable.encode(portable.TYPE_STRING, b"new", 9), -1)
        rw.flush()
        w.finish({"tiers": [{"tier": "redis", "counts": {"keys": 1}}]})
    return path


def test_redis_plan_escapes_a_forged_key(tmp_path: Path, identity_file: Path, redis_url: str) -> None:
    archive = _redis_archive(tmp_path / "r.statekit")
    redis.Redis.from_url(redis_url).set(FORGED.encode(), b"old")
    proc = sk("restore", str(archive), "-i", str(identity_file), "--tier", "redis", "--target-url", redis_url,
              "--dry-run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _clean(proc.stdout)


def test_the_prompt_escapes_a_forged_path(tmp_path: Path, identity_file: Path) -> None:
    if shutil.which("script") is None:
        pytest.fail("`script` (util-linux/bsdutils) is needed to give statekit a terminal")
    archive = _files_archive(tmp_path / "f.statekit")
    target = tmp_path / "t"
    args = [STATEKIT, "restore", str(archive), "-i", str(identity_file), "--tier", "files", "--target", str(target)]
    tty = subprocess.run(["script", "-qec", shlex.join(args), "/dev/null"], input="n\n", capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert "Restore the files tier" in tty.stdout, tty.stdout
    assert "\\x1b[1A\\x1b[2K\\x0d" in tty.stdout and "\x1b[1A" not in tty.stdout and "\u202e" not in tty.stdout
    assert not target.exists() or not any(target.iterdir())


# -- inspect and verify ------------------------------------------------------------------------------------------


def test_inspect_and_verify_escape_snapshot_fields(tmp_path: Path, identity_file: Path) -> None:
    snapshot: dict[str, Any] = {
        "created_at": f"2026-01-01T00:00:00Z {FORGED}",
        "statekit_version": FORGED,
        "tiers": [
            {"tier": "files", "counts": {"files": 1}, "details": {"root": FORGED}, "warnings": [FORGED]},
        ],
    }
    path = tmp_path / "i.statekit"
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=[IDENTITY.recipient()])
        w.add(f"files/{FORGED}", b"x", mode=0o600)
        w.finish(snapshot)
    proc = sk("inspect", str(path), "-i", str(identity_file), "--members")
    assert proc.returncode == 0, proc.stderr
    _clean(proc.stdout)
    doc = json.loads(sk("inspect", str(path), "-i", str(identity_file), "--json").stdout)
    assert doc["statekit_version"] == FORGED and doc["tiers"][0]["warnings"] == [FORGED]  # --json: exact
    proc = sk("verify", str(path), "-i", str(identity_file))
    assert proc.returncode == 0, proc.stderr
    assert not any(ch in proc.stdout for ch in RAW), proc.stdout
    assert os.path.exists(path)
