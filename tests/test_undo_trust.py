"""An undo archive's recorded target is only its claim.

Anyone with the public key can write an archive that says `"kind": "undo"` and records a `restore_target` of
its choice (a directory such as ~/.ssh, another database on the configured server, another Redis database).
Without --target/--target-url a restore goes to the configured target; an undo archive that records another is
refused (exit 8, one line naming the flag that sends it there) before anything is read from or written to
either target, unless it is signed by a trusted key. The command a restore prints to put its target back names
that target with the flag when it is not the configured one, with the password as `***` (filled in again from
the configuration of the same server, never printed).
"""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from statekit.archive.reader import Archive
from statekit.archive.signing import generate_signing_key, sign_archive
from statekit.archive.writer import ArchiveWriter
from statekit.config import Config
from statekit.errors import Refused, UsageError
from statekit.fsio import atomic_output
from statekit.model import RestoreOptions
from statekit.restore import _undo_command
from statekit.undo import resolve_target
from tests.test_restore_hostile import IDENTITY, STATEKIT


def _env(**config: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_") or k.startswith("STATEKIT_TEST")}
    env.update(config)
    return env


def sk(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([STATEKIT, *args], capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def forge_undo(src: Path, dst: Path, tier: str, target: dict[str, Any]) -> Path:
    """Archive `src` re-written with only the public key as an undo archive of `tier` recording `target`
    (head and snapshot.json agree, as statekit writes them)."""
    archive = Archive(src, [IDENTITY])
    metas = {m["name"]: m.get("meta") for m in archive.manifest["members"]}
    snapshot = dict(archive.snapshot)
    snapshot.pop("snapshot_id", None)
    where = target.get("url") or target.get("root")
    snapshot.update(kind="undo", restore_target=target, undo_of={"archive": "x.statekit", "target": where})
    snapshot["tiers"] = [t for t in snapshot["tiers"] if t.get("tier") == tier]
    head: dict[str, Any] = {"kind": "undo", "tiers": [tier]}
    if tier != "redis":
        head["restore_target"] = target
    with atomic_output(dst) as fh:
        w = ArchiveWriter(fh, recipients=[IDENTITY.recipient()], head=head)
        for m in archive.members():
            if m.name.startswith(f"{tier}/"):
                w.add(m.name, m.read_all(), mode=m.mode, meta=metas.get(m.name))
        w.finish(snapshot)
    return dst


def _refused(proc: subprocess.CompletedProcess[str], flag: str, where: str) -> None:
    assert proc.returncode == 8, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "this undo archive was made for" in proc.stderr and f"pass {flag} {where} to restore it there" in proc.stderr


# -- files ------------------------------------------------------------------------------------------------------


@pytest.fixture
def files_world(tmp_path: Path) -> dict[str, Path]:
    """A snapshot holding files/authorized_keys, forged into an undo archive recording `chosen` (think ~/.ssh),
    and the configured root."""
    src, chosen, configured = tmp_path / "src", tmp_path / "dot-ssh", tmp_path / "configured"
    for d in (src, chosen, configured):
        d.mkdir()
    (src / "authorized_keys").write_text("ssh-ed25519 AAAAATTACKER attacker@evil\n")
    (chosen / "authorized_keys").write_text("ssh-ed25519 AAAAOWNER owner@host\n")
    snap = tmp_path / "snap.statekit"
    env = _env()
    proc = sk("snapshot", "--files-root", str(src), "--to", str(snap), "-r", IDENTITY.recipient().to_string(),
              env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    forged = forge_undo(snap, tmp_path / "forged.statekit", "files", {"tier": "files", "root": str(chosen)})
    return {"forged": forged, "chosen": chosen, "configured": configured, "undo": tmp_path}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("extra", [["--yes"], ["--dry-run"], ["--yes", "--no-undo"]])
def test_forged_files_undo_archive_does_not_choose_its_directory(
    extra: list[str],
    files_world: dict[str, Path],
    identity_file: Path,
) -> None:
    chosen, configured = files_world["chosen"], files_world["configured"]
    before, configured_before = _tree(chosen), _tree(configured)
    env = _env(STATEKIT_FILES_ROOT=str(configured))
    proc = sk("restore", str(files_world["forged"]), "--tier", "files", "-i", str(identity_file),
              "--undo-dir", str(files_world["undo"]), *extra, env=env)  # fmt: skip
    _refused(proc, "--target", str(chosen))
    assert "files root" in proc.stderr
    assert _tree(chosen) == before and _tree(configured) == configured_before
    assert not list(files_world["undo"].glob("undo-*.statekit"))


def test_a_files_undo_archive_goes_where_the_flag_or_the_configuration_says(
    files_world: dict[str, Path],
    identity_file: Path,
) -> None:
    chosen, configured = files_world["chosen"], files_world["configured"]
    args = ["restore", str(files_world["forged"]), "--tier", "files", "-i", str(identity_file), "--no-undo"]
    # the configured root is the recorded one: no flag needed
    proc = sk(*args, "--dry-run", env=_env(STATEKIT_FILES_ROOT=str(chosen)))
    assert proc.returncode == 0, proc.stderr
    assert f"target: {chosen} (the directory the undo archive was saved from)" in proc.stdout
    # named with the flag: that directory, recorded or not (the plan says when it is not the recorded one)
    proc = sk(*args, "--dry-run", "--target", str(chosen), env=_env(STATEKIT_FILES_ROOT=str(configured)))
    assert proc.returncode == 0 and "NOT the target" not in proc.stdout, proc.stdout + proc.stderr
    proc = sk(*args, "--yes", "--target", str(configured), env=_env(STATEKIT_FILES_ROOT=str(chosen)))
    assert proc.returncode == 0, proc.stderr
    assert f"NOT the target the undo archive was saved from ({chosen})" in proc.stdout
    assert b"ATTACKER" in (configured / "authorized_keys").read_bytes()
    assert b"OWNER" in (chosen / "authorized_keys").read_bytes()


def test_a_signed_undo_archive_goes_back_to_its_recorded_directory(
    files_world: dict[str, Path],
    identity_file: Path,
) -> None:
    key = generate_signing_key()
    sign_archive(files_world["forged"], key)
    chosen = files_world["chosen"]
    proc = sk("restore", str(files_world["forged"]), "--tier", "files", "-i", str(identity_file), "--yes",
              "--no-undo", "--signer", key.public_string(),
              env=_env(STATEKIT_FILES_ROOT=str(files_world["configured"])))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"target: {chosen} (the directory the undo archive was saved from)" in proc.stdout
    assert b"ATTACKER" in (chosen / "authorized_keys").read_bytes()
    assert not _tree(files_world["configured"])


# -- db (SQLite) and Redis ---------------------------------------------------------------------------------------


def _rows(path: Path) -> list[Any]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM t ORDER BY id").fetchall()


def test_forged_db_undo_archive_does_not_choose_its_database(tmp_path: Path, identity_file: Path) -> None:
    src, victim, configured = tmp_path / "src.db", tmp_path / "victim.db", tmp_path / "configured.db"
    for path, tag in ((src, "new"), (victim, "old"), (configured, "live")):
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"{tag}-{i}") for i in range(20)])
    snap = tmp_path / "snap.statekit"
    proc = sk("snapshot", "--db-url", f"sqlite:///{src}", "--to", str(snap), "-r", IDENTITY.recipient().to_string(),
              env=_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    recorded = f"sqlite:///{victim}"
    forged = forge_undo(snap, tmp_path / "forged.statekit", "db", {"tier": "db", "url": recorded})
    before, live = _rows(victim), _rows(configured)
    env = _env(STATEKIT_DB_URL=f"sqlite:///{configured}")
    for extra in (["--dry-run"], ["--yes"]):
        proc = sk("restore", str(forged), "--tier", "db", "-i", str(identity_file), "--undo-dir", str(tmp_path),
                  *extra, env=env)  # fmt: skip
        _refused(proc, "--target-url", recorded)
        assert _rows(victim) == before and _rows(configured) == live
    assert not list(tmp_path.glob("undo-*.statekit"))
    # Named with the flag, it goes there; the printed undo command names that database again.
    proc = sk("restore", str(forged), "--tier", "db", "--target-url", recorded, "-i", str(identity_file), "--yes",
              "--undo-dir", str(tmp_path), env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _rows(victim) != before and _rows(configured) == live
    line = next(ln for ln in proc.stderr.splitlines() if "to put the target back:" in ln)
    assert f"--target-url {recorded}" in line, line


def test_forged_redis_undo_archive_does_not_choose_its_database(
    tmp_path: Path,
    identity_file: Path,
    redis_url: str,
    redis_url2: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.mset({f"k{i}": f"new-{i}" for i in range(50)})
    snap = tmp_path / "snap.statekit"
    proc = sk("snapshot", "--redis-url", redis_url, "--to", str(snap), "-r", IDENTITY.recipient().to_string(),
              env=_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    client.mset({f"k{i}": f"old-{i}" for i in range(50)})
    db = int(redis_url.rsplit("/", 1)[1])
    target = {"tier": "redis", "url": redis_url, "dbs": [db], "flush": True}
    forged = forge_undo(snap, tmp_path / "forged.statekit", "redis", target)
    before = {k: client.get(k) for k in client.scan_iter()}
    env = _env(STATEKIT_REDIS_URL=redis_url2)
    for extra in (["--dry-run"], ["--yes"]):
        proc = sk("restore", str(forged), "--tier", "redis", "-i", str(identity_file), "--undo-dir", str(tmp_path),
                  *extra, env=env)  # fmt: skip
        _refused(proc, "--target-url", redis_url)
        assert {k: client.get(k) for k in client.scan_iter()} == before
        assert redis.Redis.from_url(redis_url2).dbsize() == 0
    assert not list(tmp_path.glob("undo-*.statekit"))


# -- passwords: never taken for another target, never printed ----------------------------------------------------


def _undo_snapshot(target: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "undo", "restore_target": target, "tiers": [{"tier": target["tier"]}]}


def test_a_db_undo_archive_naming_another_database_does_not_get_the_configured_password() -> None:
    cfg = Config()
    cfg.db.url = "postgresql+psycopg://app:s3cret@db.example:5432/appdb"
    other = _undo_snapshot({"tier": "db", "url": "postgresql+psycopg://app:***@db.example:5432/otherdb"})
    with pytest.raises(Refused) as refused:
        resolve_target(other, RestoreOptions(tier="db"), cfg)
    assert "--target-url 'postgresql+psycopg://app:***@db.example:5432/otherdb'" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    # named with the flag as a restore prints it (password as ***), the password is not lent to another database
    opts = RestoreOptions(tier="db", target="postgresql+psycopg://app:***@db.example:5432/otherdb")
    with pytest.raises(UsageError, match="needs its password"):
        resolve_target(other, opts, cfg)
    # the configured database itself gets it
    same = _undo_snapshot({"tier": "db", "url": "postgresql+psycopg://app:***@db.example:5432/appdb"})
    assert resolve_target(same, RestoreOptions(tier="db"), cfg).options.target == cfg.db.url


def test_the_printed_undo_command_names_a_target_that_is_not_the_configured_one_without_its_password() -> None:
    cfg = Config()
    cfg.redis.url = "redis://:s3cret@cache.example:6379/0"
    cfg.files.root = "/srv/keys"
    # the configured target: no flag
    opts = RestoreOptions(tier="redis", target=None)
    assert "--target-url" not in _undo_command("/u/undo.statekit", opts, cfg, [])
    opts = RestoreOptions(tier="redis", target="redis://:s3cret@cache.example:6379/0")
    assert "--target-url" not in _undo_command("/u/undo.statekit", opts, cfg, [])
    # another database of the configured server: named, password as ***
    opts = RestoreOptions(tier="redis", target="redis://:s3cret@cache.example:6379/5")
    command = _undo_command("/u/undo.statekit", opts, cfg, [])
    assert "--target-url 'redis://:***@cache.example:6379/5'" in command and "s3cret" not in command
    # ... which, given back as printed, gets the configured server's password and goes to database 5 only
    recorded = {"tier": "redis", "url": "redis://:***@cache.example:6379/5", "dbs": [5], "flush": False}
    words = shlex.split(command)
    printed = words[words.index("--target-url") + 1]
    back = resolve_target(_undo_snapshot(recorded), RestoreOptions(tier="redis", target=printed), cfg)
    assert back.options.target == "redis://:s3cret@cache.example:6379/5"
    assert back.options.db_map == {5: 5}
    assert back.note == "the target the undo archive was saved from"
    # without the flag that undo archive is refused: database 5 is not the configured target
    with pytest.raises(Refused, match=re.escape("pass --target-url 'redis://:***@cache.example:6379/5'")):
        resolve_target(_undo_snapshot(recorded), RestoreOptions(tier="redis"), cfg)
    # files: another directory is named, made absolute
    opts = RestoreOptions(tier="files", target="/elsewhere/keys")
    assert "--target /elsewhere/keys" in _undo_command("/u/undo.statekit", opts, cfg, [])
    opts = RestoreOptions(tier="files", target="/srv/keys")
    assert "--target" not in _undo_command("/u/undo.statekit", opts, cfg, [])
