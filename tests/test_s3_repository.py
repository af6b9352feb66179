"""s3:// repositories against a real SeaweedFS (`weed server -s3`) on loopback (conftest's s3_bucket)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.servers import S3_BUCKET, S3_SECRET_KEY

STATEKIT = str(Path(sys.executable).with_name("statekit"))


def sk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=timeout)


def _files(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "i1").mkdir(parents=True)
    (root / "i1" / "creds.json").write_text('{"me": 1}')
    (root / "i1" / "pre-key-1.json").write_bytes(os.urandom(3000))
    return root


def test_snapshot_to_s3_lists_verifies_inspects_and_restores(
    tmp_path: Path, s3_bucket: str, age_keys: tuple[str, str]
) -> None:
    identity, recipient = age_keys
    root = _files(tmp_path)
    repo = f"s3://{s3_bucket}/prod/statekit"
    snap = sk("snapshot", "--files-root", str(root), "--to", repo, "-r", recipient, "--json")
    assert snap.returncode == 0, snap.stderr
    doc = json.loads(snap.stdout)
    assert doc["path"].startswith(repo + "/statekit-") and doc["path"].endswith(".statekit")
    assert S3_SECRET_KEY not in snap.stdout + snap.stderr

    listed = sk("list", repo, "--json")  # no identity needed
    assert listed.returncode == 0, listed.stderr
    archives = json.loads(listed.stdout)["archives"]
    assert len(archives) == 1 and archives[0]["tiers"]["files"]["files"] == 2
    assert archives[0]["size"] == doc["size"] and archives[0]["snapshot_id"] == doc["snapshot_id"]
    address = f"{repo}/{archives[0]['archive']}"

    ver = sk("verify", "-i", identity, address, "--json")
    assert ver.returncode == 0, ver.stderr
    assert json.loads(ver.stdout)["verified"] is True
    ins = sk("inspect", "-i", identity, address, "--json")
    assert ins.returncode == 0 and json.loads(ins.stdout)["snapshot_id"] == doc["snapshot_id"]

    target = tmp_path / "restored"
    target.mkdir()
    rest = sk("restore", address, "--tier", "files", "--target", str(target), "--yes", "--no-undo", "-i", identity)
    assert rest.returncode == 0, rest.stderr
    assert (target / "i1" / "pre-key-1.json").read_bytes() == (root / "i1" / "pre-key-1.json").read_bytes()
    assert not list(Path(tempfile.gettempdir()).glob("statekit-fetch-*/*.statekit"))  # temp copy removed


def test_prune_and_lock_on_s3(tmp_path: Path, s3_bucket: str, age_keys: tuple[str, str]) -> None:
    _, recipient = age_keys
    root = _files(tmp_path)
    repo = f"s3://{s3_bucket}/p"
    prefix = s3_bucket.split("/", 1)[1]
    for _ in range(3):
        assert sk("snapshot", "--files-root", str(root), "--to", repo, "-r", recipient).returncode == 0
    assert len(json.loads(sk("list", repo, "--json").stdout)["archives"]) == 3

    # a live lock held by another host: snapshot and prune exit 7, unlock refuses
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    now = time.time()
    lock = {"lock_id": "a" * 32, "name": "statekit", "host": "elsewhere", "pid": 1, "started_at": now,
            "heartbeat_at": now, "command": "snapshot"}  # fmt: skip
    s3.put_object(Bucket=S3_BUCKET, Key=f"{prefix}/p/locks/statekit.lock", Body=json.dumps(lock).encode())
    held = sk("snapshot", "--files-root", str(root), "--to", repo, "-r", recipient)
    assert held.returncode == 7 and "elsewhere pid 1" in held.stderr
    assert sk("prune", repo, "--keep-last", "1").returncode == 7
    assert sk("unlock", repo).returncode == 7
    # stale: taken over by prune
    lock["heartbeat_at"] = now - 3600
    s3.put_object(Bucket=S3_BUCKET, Key=f"{prefix}/p/locks/statekit.lock", Body=json.dumps(lock).encode())
    pruned = sk("prune", repo, "--keep-last", "1", "--json")
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert len(report["groups"][0]["remove"]) == 2 and len(report["removed"]) == 4  # archives + sidecars
    listing = s3.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{prefix}/p/").get("Contents", [])
    keys_left = sorted(o["Key"][len(prefix) + 1 :] for o in listing)
    archives_left = [k for k in keys_left if k.endswith(".statekit")]
    assert len(archives_left) == 1 and f"{archives_left[0]}.meta.json" in keys_left
    assert "p/locks/statekit.lock" not in keys_left


def test_multipart_upload_memory_is_one_part(s3_bucket: str, tmp_path: Path) -> None:
    from statekit.repo.s3 import S3Repository

    repo = S3Repository.from_url(f"s3://{s3_bucket}/mp")
    repo.part_size = 5 << 20
    data = os.urandom(1 << 20)
    with repo.open_write("big.bin") as up:
        for _ in range(13):  # 13 MiB in 1 MiB writes: three parts
            up.write(data)
    assert up.peak_buffer <= 5 << 20
    assert repo.list_keys()["big.bin"] == 13 << 20
    with repo.open_read("big.bin") as fh:
        head = fh.read(1 << 20)
    assert head == data
    # a failed upload leaves nothing behind
    with pytest.raises(RuntimeError), repo.open_write("broken.bin") as up:
        up.write(os.urandom(6 << 20))
        raise RuntimeError("disk on fire")
    assert "broken.bin" not in repo.list_keys()


def test_bad_s3_credentials_exit_9_without_the_secret(
    tmp_path: Path, s3_bucket: str, age_keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + S3_SECRET_KEY)
    out = sk("list", f"s3://{s3_bucket}/x", "--json")
    assert out.returncode == 9
    assert json.loads(out.stdout)["error"]["kind"] == "storage"
    assert S3_SECRET_KEY not in out.stdout + out.stderr
