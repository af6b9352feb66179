"""The repository lock, exercised as cron would: real `statekit snapshot` processes started together."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

STATEKIT = str(Path(sys.executable).with_name("statekit"))


def sk(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=timeout, env=env)


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([STATEKIT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, str]:
    """(files root, repository, recipient)."""
    root = tmp_path / "src"
    (root / "inst").mkdir(parents=True)
    (root / "inst" / "creds.json").write_text('{"k": 1}')
    repo = tmp_path / "repo"
    repo.mkdir()
    out = sk("keygen", "-o", str(tmp_path / "id.txt"), "--json")
    assert out.returncode == 0, out.stderr
    recipient = next(w for w in (tmp_path / "id.txt").read_text().split() if w.startswith("age1"))
    return root, repo, recipient


def wait_for_lock(repo: Path, name: str = "statekit", timeout: float = 20) -> dict[str, object]:
    path = repo / "locks" / f"{name}.lock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return dict(json.loads(path.read_text()))
            except ValueError:
                pass
        time.sleep(0.05)
    raise AssertionError("the first run never took the lock")


def archives(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.glob("*.statekit"))


def snap_args(setup: tuple[Path, Path, str], *extra: str) -> list[str]:
    root, repo, recipient = setup
    return ["snapshot", "--files-root", str(root), "--to", str(repo), "-r", recipient, *extra]


def test_second_run_exits_7_while_the_first_holds_the_lock(setup: tuple[Path, Path, str]) -> None:
    _, repo, _ = setup
    first = start(*snap_args(setup, "--pre-hook", "sleep 2"))
    try:
        holder = wait_for_lock(repo)
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = sk(*snap_args(setup, "--json"))
        assert second.returncode == 7, second.stderr
        err = json.loads(second.stdout)
        assert err["ok"] is False and err["error"]["kind"] == "lock-held" and err["error"]["exit_code"] == 7
        assert f"pid {first.pid}" in second.stderr
    finally:
        assert first.wait(30) == 0, first.stderr.read() if first.stderr else ""
    assert len(archives(repo)) == 1
    assert not (repo / "locks" / "statekit.lock").exists()


def test_second_run_waits_with_lock_wait(setup: tuple[Path, Path, str]) -> None:
    _, repo, _ = setup
    first = start(*snap_args(setup, "--pre-hook", "sleep 1.5"))
    wait_for_lock(repo)
    t0 = time.monotonic()
    second = sk(*snap_args(setup, "--lock-wait", "30"))
    assert first.wait(30) == 0
    assert second.returncode == 0, second.stderr
    assert time.monotonic() - t0 > 0.5  # it really waited
    assert len(archives(repo)) == 2 or archives(repo)[0] != archives(repo)[-1]


def test_two_runs_started_together_never_both_write(setup: tuple[Path, Path, str]) -> None:
    _, repo, _ = setup
    procs = [start(*snap_args(setup, "--pre-hook", "sleep 1")) for _ in range(3)]
    codes = sorted(p.wait(60) for p in procs)
    assert codes == [0, 7, 7]
    assert len(archives(repo)) == 1


def test_killed_run_leaves_a_stale_lock_that_the_next_run_takes_over(setup: tuple[Path, Path, str]) -> None:
    _, repo, _ = setup
    first = start(*snap_args(setup, "--pre-hook", "sleep 3"))
    wait_for_lock(repo)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (repo / "locks" / "statekit.lock").exists()
    listed = json.loads(sk("list", str(repo), "--json").stdout)
    assert "is not running" in listed["locks"][0]["stale"]
    out = sk(*snap_args(setup, "--json"))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert len(doc["stale_locks_removed"]) == 1
    assert "is not running" in doc["stale_locks_removed"][0]["reason"]
    assert any("stale lock" in w for w in doc["warnings"])
    assert len(archives(repo)) == 1


def _foreign_lock(repo: Path, heartbeat_age: float) -> None:
    now = time.time()
    (repo / "locks").mkdir(exist_ok=True)
    lock = {"lock_id": "f" * 32, "name": "statekit", "host": "other-host.example", "pid": 4242,
            "started_at": now - 1000, "heartbeat_at": now - heartbeat_age, "command": "snapshot"}  # fmt: skip
    (repo / "locks" / "statekit.lock").write_text(json.dumps(lock))


def test_heartbeat_age_decides_for_a_lock_from_another_host(setup: tuple[Path, Path, str]) -> None:
    _, repo, _ = setup
    _foreign_lock(repo, heartbeat_age=5)
    held = sk(*snap_args(setup))
    assert held.returncode == 7
    assert "other-host.example pid 4242" in held.stderr
    refused = sk("unlock", str(repo), "--json")
    assert refused.returncode == 7 and json.loads(refused.stdout)["error"]["kind"] == "lock-held"
    assert (repo / "locks" / "statekit.lock").exists()
    # the same lock with an old heartbeat is stale: unlock removes it, and a run would take it over
    _foreign_lock(repo, heartbeat_age=1000)
    freed = sk("unlock", str(repo), "--json")
    assert freed.returncode == 0, freed.stderr
    assert "no heartbeat" in json.loads(freed.stdout)["removed"][0]["reason"]
    _foreign_lock(repo, heartbeat_age=60)
    took = sk(*snap_args(setup, "--lock-stale-after", "30"))
    assert took.returncode == 0, took.stderr
    assert "removed 1 stale lock" in took.stdout


def test_heartbeat_keeps_a_long_run_alive(tmp_path: Path) -> None:
    from statekit.repo.lock import LockInfo, RepositoryLock
    from statekit.repo.store import LocalRepository

    repo = LocalRepository(tmp_path)
    lock = RepositoryLock(repo, "x", stale_after=2, heartbeat_interval=0.2)
    lock.acquire()
    try:
        first = LockInfo.parse((tmp_path / "locks" / "x.lock").read_bytes())
        time.sleep(0.7)
        later = LockInfo.parse((tmp_path / "locks" / "x.lock").read_bytes())
        assert first and later and later.heartbeat_at > first.heartbeat_at
        assert later.stale_reason(2) is None and later.pid == os.getpid()
    finally:
        lock.release()
    assert not (tmp_path / "locks" / "x.lock").exists()
