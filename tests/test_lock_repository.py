"""The repository lock, exercised as cron would: real `statekit snapshot` processes started together."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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


class Gate:
    """A pre-hook that keeps a run inside its lock until the test opens the gate (no sleeping on a guess)."""

    def __init__(self, where: Path) -> None:
        self.go = where / "gate-open"

    @property
    def hook(self) -> str:
        return f"while [ ! -e {self.go} ]; do sleep 0.02; done"

    def open(self) -> None:
        self.go.touch()


def wait_until(done: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for an event; the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.02)


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


def test_second_run_exits_7_while_the_first_holds_the_lock(setup: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, repo, _ = setup
    gate = Gate(tmp_path)
    first = start(*snap_args(setup, "--pre-hook", gate.hook))
    try:
        holder = wait_for_lock(repo)
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = sk(*snap_args(setup, "--json"))
        assert second.returncode == 7, second.stderr
        err = json.loads(second.stdout)
        assert err["ok"] is False and err["error"]["kind"] == "lock-held" and err["error"]["exit_code"] == 7
        assert f"pid {first.pid}" in second.stderr
    finally:
        gate.open()
        assert first.wait(60) == 0, first.stderr.read() if first.stderr else ""
    assert len(archives(repo)) == 1
    assert not (repo / "locks" / "statekit.lock").exists()


def test_lock_wait_gives_up_with_exit_7_after_waiting(setup: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, repo, _ = setup
    gate = Gate(tmp_path)
    first = start(*snap_args(setup, "--pre-hook", gate.hook))
    try:
        wait_for_lock(repo)
        second = sk(*snap_args(setup, "--lock-wait", "0.3"))
        assert second.returncode == 7, second.stderr
        assert "after waiting 0.3s" in second.stderr
    finally:
        gate.open()
        assert first.wait(60) == 0
    assert len(archives(repo)) == 1


def test_second_run_with_lock_wait_runs_once_the_first_is_done(setup: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, repo, _ = setup
    gate = Gate(tmp_path)
    first = start(*snap_args(setup, "--pre-hook", gate.hook))
    wait_for_lock(repo)
    second = start(*snap_args(setup, "--lock-wait", "120"))
    gate.open()
    assert first.wait(60) == 0
    assert second.wait(120) == 0, second.stderr.read() if second.stderr else ""
    assert len(archives(repo)) == 2 or archives(repo)[0] != archives(repo)[-1]


def test_lock_wait_retries_until_the_holder_releases(tmp_path: Path) -> None:
    """In-process, on the lock's own clock: a waiter that finds the lock held naps and retries, and takes
    the lock as soon as the holder lets go (here: during its third nap)."""
    from statekit.repo import LocalRepository
    from statekit.repo.lock import RepositoryLock

    repo = LocalRepository(tmp_path)
    holder = RepositoryLock(repo, "x")
    holder.acquire()
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            holder.release()

    waiter = RepositoryLock(repo, "x", sleep=nap)
    waiter.acquire(wait=600)
    try:
        assert len(naps) == 3 and all(0.2 <= n <= 0.6 for n in naps)
        assert waiter.held and not holder.held
    finally:
        waiter.release()


def test_lock_wait_gives_up_when_its_clock_passes_the_wait(tmp_path: Path) -> None:
    """A fake clock that the waiter's naps advance: after 30 s of (fake) waiting it raises LockHeld."""
    from statekit.errors import LockHeld
    from statekit.repo import LocalRepository
    from statekit.repo.lock import RepositoryLock

    repo = LocalRepository(tmp_path)
    holder = RepositoryLock(repo, "x")
    holder.acquire()
    now = [1000.0]

    def nap(seconds: float) -> None:
        now[0] += seconds

    try:
        waiter = RepositoryLock(repo, "x", monotonic=lambda: now[0], sleep=nap)
        with pytest.raises(LockHeld, match="after waiting 30s"):
            waiter.acquire(wait=30)
        assert now[0] == pytest.approx(1030.0)  # the last nap is cut to the deadline
        assert holder.held and not waiter.held
    finally:
        holder.release()


def test_two_runs_started_together_never_both_write(setup: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, repo, _ = setup
    gate = Gate(tmp_path)
    procs = [start(*snap_args(setup, "--pre-hook", gate.hook)) for _ in range(3)]
    try:
        # the one holding the lock waits at the gate: the other two must give up on their own
        wait_until(lambda: sum(p.poll() is not None for p in procs) == 2, "two runs exiting")
        assert sorted(p.returncode for p in procs if p.returncode is not None) == [7, 7]
    finally:
        gate.open()
    codes = sorted(p.wait(60) for p in procs)
    assert codes == [0, 7, 7]
    assert len(archives(repo)) == 1


def test_killed_run_leaves_a_stale_lock_that_the_next_run_takes_over(
    setup: tuple[Path, Path, str], tmp_path: Path
) -> None:
    _, repo, _ = setup
    gate = Gate(tmp_path)
    first = start(*snap_args(setup, "--pre-hook", gate.hook))
    wait_for_lock(repo)
    first.send_signal(signal.SIGKILL)
    first.wait()
    gate.open()  # lets the orphaned hook end
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
    from statekit.repo import LocalRepository
    from statekit.repo.lock import LockInfo, RepositoryLock

    repo = LocalRepository(tmp_path)
    lock = RepositoryLock(repo, "x", stale_after=2, heartbeat_interval=0.2)
    lock.acquire()
    try:
        path = tmp_path / "locks" / "x.lock"
        first = LockInfo.parse(path.read_bytes())
        assert first is not None
        wait_until(lambda: (LockInfo.parse(path.read_bytes()) or first).heartbeat_at > first.heartbeat_at,
                   "a heartbeat")  # fmt: skip
        later = LockInfo.parse(path.read_bytes())
        assert later and later.heartbeat_at > first.heartbeat_at
        assert later.stale_reason(2) is None and later.pid == os.getpid()
    finally:
        lock.release()
    assert not (tmp_path / "locks" / "x.lock").exists()
