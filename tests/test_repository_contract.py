"""One contract for every repository backend — a local directory and S3 (a real SeaweedFS): small objects,
streamed archives, archive listing with companions, the lock, snapshot/list/verify/restore/prune as a user
runs them, and what a write killed half way leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from statekit.errors import LockHeld, UsageError
from statekit.repo import Repository, open_repository
from statekit.repo.lock import LockInfo, RepositoryLock, list_locks
from tests.servers import S3_BUCKET, S3_SECRET_KEY, SeaweedS3

STATEKIT = str(Path(sys.executable).with_name("statekit"))


@dataclass
class Backend:
    """A repository under test: its address (what the CLI takes), a probe for a write in progress, and a way to
    leave what a writer killed half way leaves (a temporary file, an unfinished multipart upload)."""

    name: str
    url: str
    write_in_progress: Callable[[str], bool]
    leave_half_written: Callable[[str, bytes], None]

    def open(self) -> Repository:
        return open_repository(self.url)

    def address(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"


def _local(root: Path) -> Backend:
    def in_progress(key: str) -> bool:
        # atomic_output's temporary name, holding data already
        return any(p.stat().st_size > 0 for p in root.glob(f".{key}.*.tmp"))

    def half_written(key: str, data: bytes) -> None:
        # the temporary name atomic_output and create_exclusive write to before the rename or link
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp").write_bytes(data)

    return Backend("local", str(root), in_progress, half_written)


def _s3(server: SeaweedS3, bucket_prefix: str) -> Backend:
    client = server.client()
    prefix = bucket_prefix.split("/", 1)[1] + "/repo"

    def in_progress(key: str) -> bool:
        # a multipart upload of the key with at least one part sent
        uploads = client.list_multipart_uploads(Bucket=S3_BUCKET, Prefix=f"{prefix}/{key}").get("Uploads", [])
        return any(
            client.list_parts(Bucket=S3_BUCKET, Key=u["Key"], UploadId=u["UploadId"]).get("Parts") for u in uploads
        )

    def half_written(key: str, data: bytes) -> None:
        # a multipart upload with a part sent and never completed
        upload = client.create_multipart_upload(Bucket=S3_BUCKET, Key=f"{prefix}/{key}")
        client.upload_part(Bucket=S3_BUCKET, Key=f"{prefix}/{key}", UploadId=upload["UploadId"], PartNumber=1,
                           Body=data)  # fmt: skip

    return Backend("s3", f"s3://{bucket_prefix}/repo", in_progress, half_written)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        root = tmp_path / "repo"
        root.mkdir()
        return _local(root)
    return _s3(request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket"))


def sk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def wait_until(done: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for an event; the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g}s"
        time.sleep(0.02)


# -- objects -----------------------------------------------------------------------------------------------


def test_small_objects(backend: Backend) -> None:
    repo = backend.open()
    assert repo.read_bytes("a.json") is None
    repo.write_bytes("a.json", b"one")
    repo.write_bytes("a.json", b"two!")  # replaced whole
    assert repo.read_bytes("a.json") == b"two!"
    repo.write_bytes("locks/x.lock", b"L")
    assert repo.list_keys() == {"a.json": 4}  # only what is directly inside
    assert repo.list_keys("locks") == {"x.lock": 1}
    assert repo.list_keys("nothing-here") == {}
    assert repo.create_exclusive("locks/y.lock", b"first") is True
    assert repo.create_exclusive("locks/y.lock", b"second") is False
    assert repo.read_bytes("locks/y.lock") == b"first"
    repo.delete("a.json")
    repo.delete("a.json")  # already gone: no error
    assert repo.read_bytes("a.json") is None
    assert repo.list_keys() == {}


def test_streamed_objects(backend: Backend, tmp_path: Path) -> None:
    repo = backend.open()
    local = tmp_path / "big.bin"
    data = os.urandom(17 << 20)  # more than one 16 MiB S3 part
    local.write_bytes(data)
    repo.upload_file(local, "big.bin")
    assert repo.list_keys() == {"big.bin": len(data)}
    with repo.open_read("big.bin") as fh:
        chunks = iter(lambda: fh.read(1 << 20), b"")
        assert b"".join(chunks) == data
    with repo.fetched("big.bin") as path:
        assert path.read_bytes() == data
    with pytest.raises(UsageError, match="no such archive"):  # a missing ARCHIVE is a usage error (exit 2)
        repo.open_read("missing.bin")


def test_archives_and_their_companions(backend: Backend) -> None:
    repo = backend.open()
    sidecar = {"created_ts": 1_767_225_600.5, "snapshot_id": "s-1", "tiers": {"files": {"files": 2}}}
    repo.write_bytes("app-20260101T000000Z.statekit", b"A1")
    repo.write_bytes("app-20260101T000000Z.statekit.meta.json", json.dumps(sidecar).encode())
    repo.write_bytes("app-20260101T000000Z.statekit.sig", b"signature")
    repo.write_bytes("app-20260101T000000Z-2.statekit", b"A2")  # a second run in the same second
    repo.write_bytes("app-20260101T000000Z-2.statekit.meta.json", json.dumps({"created_ts": 1_767_225_600.9}).encode())
    repo.write_bytes("app-20251231T230000Z.statekit", b"A0")  # no sidecar: a run that died before writing it
    repo.write_bytes("db-20260102T000000Z.statekit", b"B")
    repo.write_bytes("notes.txt", b"not an archive")
    repo.write_bytes("app-2026.statekit", b"not an archive name")
    listed = repo.list_archives()
    assert [a.archive for a in listed] == [
        "app-20251231T230000Z.statekit",
        "app-20260101T000000Z.statekit",
        "app-20260101T000000Z-2.statekit",
        "db-20260102T000000Z.statekit",
    ]
    first = listed[1]
    assert (first.name, first.size, first.created_ts, first.sidecar) == ("app", 2, 1_767_225_600.5, sidecar)
    assert listed[0].sidecar is None and listed[0].created_ts == 1_767_222_000.0
    assert [a.archive for a in repo.list_archives("db")] == ["db-20260102T000000Z.statekit"]
    removed = repo.delete_archive("app-20260101T000000Z.statekit")
    assert removed == [
        "app-20260101T000000Z.statekit",
        "app-20260101T000000Z.statekit.meta.json",
        "app-20260101T000000Z.statekit.sig",
    ]
    assert sorted(repo.list_keys()) == [
        "app-20251231T230000Z.statekit",
        "app-2026.statekit",
        "app-20260101T000000Z-2.statekit",
        "app-20260101T000000Z-2.statekit.meta.json",
        "db-20260102T000000Z.statekit",
        "notes.txt",
    ]


# -- the lock ----------------------------------------------------------------------------------------------


def test_lock(backend: Backend) -> None:
    repo = backend.open()
    holder = RepositoryLock(repo, "app", command="snapshot")
    holder.acquire()
    try:
        [info] = list_locks(repo)
        assert info.lock_id == holder.info.lock_id and info.pid == os.getpid()
        with pytest.raises(LockHeld, match="use --lock-wait"):
            RepositoryLock(repo, "app").acquire()
        RepositoryLock(repo, "other").acquire()  # one lock per name: another name is free
        # a waiter on the lock's own (fake) clock gives up after its wait, never having taken the lock
        now = [0.0]
        waiter = RepositoryLock(repo, "app", monotonic=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
        with pytest.raises(LockHeld, match="after waiting 30s"):
            waiter.acquire(wait=30)
    finally:
        holder.release()
    assert "app.lock" not in repo.list_keys("locks")


def test_a_stale_lock_is_taken_over(backend: Backend) -> None:
    repo = backend.open()
    old = time.time() - 3600
    stale = LockInfo(lock_id="f" * 32, name="app", host="gone.example", pid=4242, started_at=old, heartbeat_at=old,
                     command="snapshot")  # fmt: skip
    repo.write_bytes("locks/app.lock", stale.to_bytes())
    warnings: list[str] = []
    lock = RepositoryLock(repo, "app", stale_after=300, warn=warnings.append)
    lock.acquire()
    try:
        assert [r["lock"]["host"] for r in lock.stale_removed] == ["gone.example"]
        assert any("removed stale lock" in w for w in warnings)
        [info] = list_locks(repo)
        assert info.lock_id == lock.info.lock_id
    finally:
        lock.release()


def _files_root(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "i1").mkdir(parents=True)
    (root / "i1" / "creds.json").write_text('{"me": 1}')
    (root / "i1" / "pre-key-1.json").write_bytes(os.urandom(3000))
    return root


def test_a_lock_held_elsewhere_refuses_the_commands_until_it_is_stale(
    backend: Backend, tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    _, recipient = age_keys
    root = _files_root(tmp_path)
    for _ in range(3):
        made = sk("snapshot", "--files-root", str(root), "--to", backend.url, "-r", recipient)
        assert made.returncode == 0, made.stderr
    repo = backend.open()
    now = time.time()
    lock = LockInfo(lock_id="a" * 32, name="statekit", host="elsewhere", pid=1, started_at=now, heartbeat_at=now,
                    command="snapshot")  # fmt: skip
    repo.write_bytes("locks/statekit.lock", lock.to_bytes())
    # live: snapshot and prune exit 7 naming the holder, unlock refuses, nothing is written or removed
    held = sk("snapshot", "--files-root", str(root), "--to", backend.url, "-r", recipient)
    assert held.returncode == 7 and "elsewhere pid 1" in held.stderr, held.stderr
    assert sk("prune", backend.url, "--keep-last", "1").returncode == 7
    assert sk("unlock", backend.url).returncode == 7
    assert len(repo.list_archives()) == 3
    assert repo.read_bytes("locks/statekit.lock") == lock.to_bytes()
    # stale: prune takes it over, removes what the policy does not keep, and releases the lock
    lock.heartbeat_at = now - 3600
    repo.write_bytes("locks/statekit.lock", lock.to_bytes())
    pruned = sk("prune", backend.url, "--keep-last", "1", "--json")
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert len(report["groups"][0]["remove"]) == 2 and len(report["removed"]) == 4  # archives + sidecars
    [left] = repo.list_archives()
    assert sorted(repo.list_keys()) == [left.archive, left.archive + ".meta.json"]
    assert "statekit.lock" not in repo.list_keys("locks") and list_locks(repo) == []


# -- prune (retention) ---------------------------------------------------------------------------------------


def test_prune_removes_what_the_policy_does_not_keep_with_its_companions(backend: Backend) -> None:
    from statekit.ops.jobs import prune_repository
    from statekit.repo.retention import RetentionPolicy

    repo = backend.open()
    stamps = ["20260101T010000Z", "20260101T230000Z", "20260102T120000Z", "20260103T080000Z", "20260103T200000Z"]
    for key in [f"app-{stamp}.statekit" for stamp in stamps] + ["db-20260101T000000Z.statekit"]:
        repo.write_bytes(key, b"archive")
        repo.write_bytes(key + ".meta.json", b"{}")
    repo.write_bytes("app-20260101T230000Z.statekit.sig", b"signature")
    repo.write_bytes("notes.txt", b"not an archive")
    before = sorted(repo.list_keys())
    policy = RetentionPolicy(daily=2)  # the newest of each of the last two days: Jan 3 20:00 and Jan 2
    dry = prune_repository(repo, policy, name="app", dry_run=True)
    assert dry.removed == [] and sorted(repo.list_keys()) == before
    [group] = dry.groups
    assert [e["archive"] for e in group.keep] == ["app-20260103T200000Z.statekit", "app-20260102T120000Z.statekit"]
    assert [e["archive"] for e in group.remove] == [
        "app-20260103T080000Z.statekit",
        "app-20260101T230000Z.statekit",
        "app-20260101T010000Z.statekit",
    ]
    done = prune_repository(repo, policy, name="app")
    gone = [k for k in before if k.startswith(("app-20260103T08", "app-20260101"))]
    assert sorted(done.removed) == gone and len(gone) == 7  # three archives, three sidecars, one signature
    assert sorted(repo.list_keys()) == sorted(set(before) - set(gone))  # db's group and other files untouched
    assert repo.list_keys("locks") == {}  # each group's lock was taken and released
    everything = prune_repository(repo, RetentionPolicy(last=1))  # every group: db keeps its only archive
    assert sorted(everything.removed) == ["app-20260102T120000Z.statekit", "app-20260102T120000Z.statekit.meta.json"]
    with pytest.raises(UsageError, match="no retention rule"):
        prune_repository(repo, RetentionPolicy())


# -- as a user runs it --------------------------------------------------------------------------------------


def test_snapshot_list_verify_inspect_restore_prune(
    backend: Backend, tmp_path: Path, age_keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    identity, recipient = age_keys
    root = _files_root(tmp_path)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # where the commands keep their temporary copies
    made = []
    for _ in range(3):
        out = sk("snapshot", "--files-root", str(root), "--to", backend.url, "-r", recipient, "--json")
        assert out.returncode == 0, out.stderr
        assert S3_SECRET_KEY not in out.stdout + out.stderr
        made.append(json.loads(out.stdout))
    assert all(m["path"].startswith(backend.url.rstrip("/") + "/statekit-") for m in made), made
    listed = sk("list", backend.url, "--json")
    assert listed.returncode == 0, listed.stderr
    archives = json.loads(listed.stdout)["archives"]
    assert [a["snapshot_id"] for a in archives] == [m["snapshot_id"] for m in made]
    assert all(a["sidecar"] and a["tiers"]["files"]["files"] == 2 for a in archives)
    newest = backend.address(archives[-1]["archive"])
    assert archives[-1]["size"] == made[-1]["size"]
    verified = sk("verify", "-i", identity, newest, "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["verified"] is True, verified.stderr
    inspected = sk("inspect", "-i", identity, newest, "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["snapshot_id"] == made[-1]["snapshot_id"]
    target = tmp_path / "restored"
    target.mkdir()
    restored = sk("restore", newest, "--tier", "files", "--target", str(target), "--yes", "--no-undo", "-i", identity)
    assert restored.returncode == 0, restored.stderr
    assert (target / "i1" / "pre-key-1.json").read_bytes() == (root / "i1" / "pre-key-1.json").read_bytes()
    assert not list(tmp.glob("statekit-fetch-*"))  # an S3 archive's temporary copy is removed
    dry = sk("prune", backend.url, "--keep-last", "1", "--dry-run", "--json")
    assert dry.returncode == 0 and json.loads(dry.stdout)["removed"] == [], dry.stderr
    pruned = sk("prune", backend.url, "--keep-last", "1", "--json")
    assert pruned.returncode == 0, pruned.stderr
    gone = json.loads(pruned.stdout)["removed"]
    assert sorted(gone) == sorted(k for a in archives[:2] for k in (a["archive"], a["archive"] + ".meta.json"))
    left = backend.open().list_keys()
    assert sorted(left) == sorted([archives[-1]["archive"], archives[-1]["archive"] + ".meta.json"])


# -- crash leftovers ---------------------------------------------------------------------------------------

_UPLOAD = """
import sys
from pathlib import Path
from statekit.repo import open_repository
repo = open_repository(sys.argv[1])
if hasattr(repo, "part_size"):
    repo.part_size = 5 << 20  # S3's smallest part: the first one goes out after 5 MiB
repo.upload_file(Path(sys.argv[2]), sys.argv[3])
"""


@pytest.fixture
def killed_mid_write(backend: Backend, tmp_path: Path) -> Iterator[str]:
    """Start writing an archive object from a process fed through a pipe, wait until the write has really
    begun (data in the temporary file, or a part in the multipart upload), SIGKILL the process while it
    waits for more input; the archive's key."""
    key = "statekit-20260101T000000Z.statekit"
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-c", _UPLOAD, backend.url, str(fifo), key], env=os.environ.copy())
    fd = os.open(fifo, os.O_RDWR)  # never blocks, and keeps the pipe open: the reader never sees its end
    feeder = threading.Thread(target=lambda: os.write(fd, os.urandom(6 << 20)), daemon=True)
    feeder.start()
    try:
        wait_until(lambda: proc.poll() is not None or backend.write_in_progress(key), "the write beginning")
        assert proc.poll() is None, "the writer died on its own"
        proc.kill()
        proc.wait()
        yield key
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # empty the pipe so that the feeding thread finishes its write and ends: a thread left blocked would
        # outlive the test (and a process with a second thread never forks audit workers)
        os.set_blocking(fd, False)
        while feeder.is_alive():
            try:
                os.read(fd, 1 << 20)
            except BlockingIOError:
                feeder.join(0.01)
        os.close(fd)


def test_a_write_killed_half_way_leaves_nothing_that_reads_as_an_archive(
    backend: Backend, killed_mid_write: str, tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    key = killed_mid_write
    repo = backend.open()
    assert key not in repo.list_keys()
    assert repo.list_archives() == []
    assert repo.read_bytes(key) is None
    with pytest.raises(UsageError, match="no such archive"):
        repo.open_read(key)
    listed = sk("list", backend.url, "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["archives"] == [], listed.stderr
    # the next write of the same key is a normal one
    whole = tmp_path / "whole.bin"
    whole.write_bytes(b"complete")
    repo.upload_file(whole, key)
    assert repo.read_bytes(key) == b"complete"


def test_the_next_snapshot_runs_after_a_killed_write(
    backend: Backend, killed_mid_write: str, tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    _, recipient = age_keys
    root = tmp_path / "src"
    root.mkdir()
    (root / "k.json").write_text("{}")
    out = sk("snapshot", "--files-root", str(root), "--to", backend.url, "-r", recipient, "--json")
    assert out.returncode == 0, out.stderr
    archives = backend.open().list_archives()
    assert len(archives) == 1 and archives[0].sidecar is not None
    if backend.name == "local":  # a local run cleans what killed runs of its name left (safe under the lock)
        doc: dict[str, Any] = json.loads(out.stdout)
        assert any("left behind by an interrupted run" in w for w in doc["warnings"]), doc["warnings"]
        assert not list(Path(backend.url).glob(".*.tmp"))


def test_half_written_objects_are_not_archives_sidecars_or_locks(backend: Backend) -> None:
    repo = backend.open()
    repo.write_bytes("app-20260101T000000Z.statekit", b"whole")
    backend.leave_half_written("app-20260102T000000Z.statekit", b"half an archive")
    backend.leave_half_written("app-20260101T000000Z.statekit.meta.json", b'{"created_ts": 1')
    backend.leave_half_written("locks/app.lock", b'{"lock_id": "')
    assert repo.list_keys() == {"app-20260101T000000Z.statekit": 5}
    assert repo.list_keys("locks") == {}
    [only] = repo.list_archives()
    assert (only.archive, only.sidecar) == ("app-20260101T000000Z.statekit", None)
    assert repo.read_bytes("app-20260102T000000Z.statekit") is None
    assert list_locks(repo) == []
    lock = RepositoryLock(repo, "app", command="snapshot")
    lock.acquire()  # a half-written lock holds nothing
    try:
        assert [i.lock_id for i in list_locks(repo)] == [lock.info.lock_id]
    finally:
        lock.release()
    listed = sk("list", backend.url, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [a["archive"] for a in json.loads(listed.stdout)["archives"]] == ["app-20260101T000000Z.statekit"]
