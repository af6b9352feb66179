"""`--to` and `[repository] to`: a path ending in `.statekit` is one archive file; anything else is a repository
directory, created (0700, parents too) on first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STATEKIT = str(Path(sys.executable).parent / "statekit")


def sk(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_")} | (env or {})
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=120, env=full)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "keys"
    (root / "instances" / "a").mkdir(parents=True)
    (root / "instances" / "a" / "creds.json").write_text("{}")
    return root


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_a_new_path_becomes_a_repository_with_private_parents(src: Path, tmp_path: Path) -> None:
    repo = tmp_path / "var" / "backups" / "statekit"
    old = os.umask(0o022)
    try:
        for _ in range(2):
            proc = sk("snapshot", "--files-root", str(src), "--to", str(repo), "--no-encryption", "-q")
            assert proc.returncode == 0, proc.stderr
    finally:
        os.umask(old)
    assert [_mode(p) for p in (tmp_path / "var", tmp_path / "var" / "backups", repo)] == [0o700] * 3
    assert len(list(repo.glob("statekit-*.statekit"))) == 2
    assert len(json.loads(sk("list", str(repo), "--json").stdout)["archives"]) == 2


def test_repository_from_the_config_file_too(src: Path, tmp_path: Path) -> None:
    repo = tmp_path / "from-config"
    cfg = tmp_path / "statekit.toml"
    cfg.write_text(f'[files]\nroot = "{src}"\n[repository]\nto = "{repo}"\n')
    for _ in range(2):
        assert sk("snapshot", "--config", str(cfg), "--no-encryption").returncode == 0
    assert len(json.loads(sk("list", str(repo), "--json").stdout)["archives"]) == 2


def test_a_statekit_path_is_one_archive_file(src: Path, tmp_path: Path) -> None:
    one = tmp_path / "once.statekit"
    assert sk("snapshot", "--files-root", str(src), "--to", str(one), "--no-encryption").returncode == 0
    assert one.is_file()
    missing = tmp_path / "no" / "such" / "x.statekit"
    proc = sk("snapshot", "--files-root", str(src), "--to", str(missing), "--no-encryption")
    assert proc.returncode == 9 and proc.stderr.startswith(f"Error: {missing}: ") and "no such directory" in proc.stderr
    assert not (tmp_path / "no").exists(), "an archive file's directory is not created"


def test_errors_name_the_path_given(src: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "plainfile"
    a_file.write_text("x")
    proc = sk("snapshot", "--files-root", str(src), "--to", str(a_file), "--no-encryption")
    assert proc.returncode == 9 and f"{a_file}: exists and is not a directory" in proc.stderr
    below_file = a_file / "repo"
    proc = sk("snapshot", "--files-root", str(src), "--to", str(below_file), "--no-encryption")
    assert proc.returncode == 9 and proc.stderr.startswith(f"Error: {below_file}: "), proc.stderr
