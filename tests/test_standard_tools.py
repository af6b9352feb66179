"""An archive stays readable without statekit: age | zstd | tar, checked against MANIFEST.json."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.tools import require_tool

STATEKIT = str(Path(sys.executable).parent / "statekit")


def sh(cmd: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=120)


def make_key_folder(root: Path) -> None:
    rng = random.Random(3)
    for i in range(3):
        inst = root / "instances" / f"9f1c2d3e-0000-4000-8000-00000000000{i}"
        inst.mkdir(parents=True)
        (inst / "creds.json").write_text(json.dumps({"noiseKey": rng.randbytes(32).hex()}))
        (inst / "pre-key-1.json").write_text("{}")
        (inst / "app-state-sync-key-AAAAAB__x.json").write_text("{}")
        for f in inst.iterdir():
            f.chmod(0o600)
    (root / "instances" / "big.bin").write_bytes(rng.randbytes(3 << 20))  # frames of its own


def check_extracted(out: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((out / "MANIFEST.json").read_text())
    names = [m["name"] for m in manifest["members"]]
    assert names[:2] == ["format.json", "README.txt"] and names[-1] == "snapshot.json"
    for m in manifest["members"]:
        data = (out / m["name"]).read_bytes()
        assert len(data) == m["size"] and hashlib.sha256(data).hexdigest() == m["sha256"], m["name"]
        assert f"{(out / m['name']).stat().st_mode & 0o7777:04o}" == m["mode"]
    extracted = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert extracted == {*names, "MANIFEST.json"}
    return manifest


def test_age_zstd_tar_extract_every_member(tmp_path: Path) -> None:
    require_tool("age", "age-keygen", "zstd", "tar")
    make_key_folder(tmp_path / "keys")
    assert sh(f"{STATEKIT} keygen -o id.txt", tmp_path).returncode == 0
    recipient = sh("age-keygen -y id.txt", tmp_path).stdout.strip()
    proc = sh(f"{STATEKIT} snapshot --files-root keys --to a.statekit -r {recipient}", tmp_path)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "out").mkdir()
    proc = sh("age -d -i id.txt a.statekit | zstd -d | tar -x -C out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = check_extracted(tmp_path / "out")
    assert manifest["totals"]["files"] == 10
    for p in (tmp_path / "keys").rglob("*"):
        if p.is_file():
            assert (tmp_path / "out" / "files" / p.relative_to(tmp_path / "keys")).read_bytes() == p.read_bytes()
    # zstd sees several frames; the sidecar describes the archive without any secret.
    assert "Frames" in sh("age -d -i id.txt a.statekit > plain.zst && zstd -lv plain.zst", tmp_path).stdout
    sidecar = json.loads((tmp_path / "a.statekit.meta.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256((tmp_path / "a.statekit").read_bytes()).hexdigest()

    assert sh(f"{STATEKIT} verify a.statekit -i id.txt", tmp_path).returncode == 0
    data = bytearray((tmp_path / "a.statekit").read_bytes())
    data[len(data) // 2] ^= 0x40
    (tmp_path / "b.statekit").write_bytes(bytes(data))
    proc = sh(f"{STATEKIT} verify b.statekit -i id.txt", tmp_path)
    assert proc.returncode == 3 and proc.stderr.startswith("Error: ")
    before = sorted(os.listdir(tmp_path))
    proc = sh(f"{STATEKIT} restore b.statekit -i id.txt --tier files --target restored --yes", tmp_path)
    assert proc.returncode == 3
    assert sorted(os.listdir(tmp_path)) == before


def test_unencrypted_archive_reads_with_zstd_and_tar(tmp_path: Path) -> None:
    require_tool("zstd", "tar")
    make_key_folder(tmp_path / "keys")
    proc = sh(f"{STATEKIT} snapshot --files-root keys --to p.statekit --no-encryption", tmp_path)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "out").mkdir()
    proc = sh("zstd -d < p.statekit | tar -x -C out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    check_extracted(tmp_path / "out")
    assert "statekit archive" in (tmp_path / "out" / "README.txt").read_text()
