"""One lock per repository and source (the archive name), so two overlapping runs never both write.

The lock is the object `locks/<name>.lock` in the repository, created only if absent (a hard link on a
local file system, `If-None-Match: *` on S3). It records host, pid, start time and a heartbeat that a
thread refreshes while the run lasts. A lock is stale when its process is gone (same host, pid not
running or reused) or its heartbeat is older than `stale_after` seconds; a stale lock is reported and
taken over. Taking over is itself exclusive: the first run to create `<lock>.broken-<lock id>` removes the
stale lock, so two runs that find the same stale lock cannot both take it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from statekit.errors import LockHeld, StorageError
from statekit.model import Warn, no_warn
from statekit.repo.base import LOCK_DIR, Repository

LOCK_SUFFIX = ".lock"
_BROKEN = ".broken-"
# A run that won the right to break a stale lock but died before doing so: after this long, others may.
_BREAK_GRACE_S = 60.0


def _pid_start(pid: int) -> str | None:
    """The kernel's start time of a process (Linux /proc), used to notice a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class LockInfo:
    """What a lock object records."""

    lock_id: str
    name: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    command: str = ""
    pid_start: str | None = None

    @classmethod
    def parse(cls, raw: bytes) -> LockInfo | None:
        """Read a lock object; None when it is not a lock statekit wrote."""
        try:
            doc = json.loads(raw)
            return cls(
                lock_id=str(doc["lock_id"]),
                name=str(doc["name"]),
                host=str(doc["host"]),
                pid=int(doc["pid"]),
                started_at=float(doc["started_at"]),
                heartbeat_at=float(doc["heartbeat_at"]),
                command=str(doc.get("command", "")),
                pid_start=doc.get("pid_start"),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def to_bytes(self) -> bytes:
        """The lock object's content."""
        return (json.dumps(asdict(self), indent=2) + "\n").encode()

    def stale_reason(self, stale_after: float, now: float | None = None) -> str | None:
        """Why this lock is stale, or None while its holder looks alive."""
        now = time.time() if now is None else now
        if self.host == socket.gethostname():
            if not _pid_alive(self.pid):
                return f"process {self.pid} on {self.host} is not running"
            start = _pid_start(self.pid)
            if self.pid_start and start and start != self.pid_start:
                return f"process {self.pid} on {self.host} has ended (its pid now belongs to another process)"
        age = now - self.heartbeat_at
        if age > stale_after:
            return f"no heartbeat for {age:.0f}s (limit {stale_after:.0f}s)"
        return None

    def describe(self, now: float | None = None) -> str:
        """`host pid N (command) since …, heartbeat Ns ago` for messages."""
        now = time.time() if now is None else now
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at))
        what = f" ({self.command})" if self.command else ""
        return f"{self.host} pid {self.pid}{what} since {since}, heartbeat {max(now - self.heartbeat_at, 0):.0f}s ago"

    def to_json(self, stale_after: float) -> dict[str, Any]:
        """For --json output."""
        return {**asdict(self), "stale": self.stale_reason(stale_after)}


def lock_key(name: str) -> str:
    """The repository key of the lock for archives named `name`."""
    return f"{LOCK_DIR}/{name}{LOCK_SUFFIX}"


class RepositoryLock:
    """Exclusive lock on (repository, name), held with a heartbeat thread; use as a context manager."""

    def __init__(
        self,
        repo: Repository,
        name: str,
        *,
        command: str = "",
        stale_after: float = 300.0,
        heartbeat_interval: float | None = None,
        warn: Warn = no_warn,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`monotonic` and `sleep` measure and pass the time `acquire` waits for a holder."""
        self.repo = repo
        self.name = name
        self.key = lock_key(name)
        self.stale_after = stale_after
        self.interval = heartbeat_interval or max(min(stale_after / 4, 30.0), 0.2)
        self.warn = warn
        self._monotonic = monotonic
        self._sleep = sleep
        now = time.time()
        self.info = LockInfo(
            lock_id=uuid.uuid4().hex,
            name=name,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=now,
            heartbeat_at=now,
            command=command,
            pid_start=_pid_start(os.getpid()),
        )
        self.held = False
        self.lost = False
        self.stale_removed: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire / release --------------------------------------------------------------------------------
    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to `wait` seconds for a live holder; raises LockHeld."""
        deadline = self._monotonic() + max(wait, 0.0)
        while True:
            self.info.heartbeat_at = time.time()
            if self.repo.create_exclusive(self.key, self.info.to_bytes()):
                self.held = True
                self._start_heartbeat()
                self._clean_markers()
                return
            raw = self.repo.read_bytes(self.key)
            if raw is None:
                continue  # released between our attempt and the read: try again at once
            holder = LockInfo.parse(raw)
            reason = "damaged lock object" if holder is None else holder.stale_reason(self.stale_after)
            if reason:
                self._break(raw, holder, reason)
                continue
            assert holder is not None
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                hint = " (use --lock-wait SECONDS to wait for it)" if wait <= 0 else f" after waiting {wait:g}s"
                raise LockHeld(f"repository {self.repo.url} is locked for '{self.name}' by {holder.describe()}{hint}")
            self._sleep(min(remaining, random.uniform(0.2, 0.6)))

    def _break(self, raw: bytes, holder: LockInfo | None, reason: str) -> None:
        stale_id = holder.lock_id if holder else hashlib.sha256(raw).hexdigest()[:32]
        marker = f"{self.key}{_BROKEN}{stale_id}"
        stamp = json.dumps({"by": self.info.lock_id, "ts": time.time()}).encode()
        won = self.repo.create_exclusive(marker, stamp)
        if not won:
            # Someone else is taking this stale lock over; if they died doing so, take over after a grace time.
            try:
                ts = float(json.loads(self.repo.read_bytes(marker) or b"{}").get("ts", 0))
            except (ValueError, TypeError, AttributeError):
                ts = 0.0
            if time.time() - ts < _BREAK_GRACE_S:
                time.sleep(random.uniform(0.05, 0.2))
                return
        current = self.repo.read_bytes(self.key)
        if current != raw:
            return  # already replaced: re-evaluate from scratch
        self.repo.delete(self.key)
        what = holder.describe() if holder else "unreadable lock"
        self.warn(f"removed stale lock on {self.repo.url} for '{self.name}': {what} ({reason})")
        self.stale_removed.append({"lock": holder.to_json(self.stale_after) if holder else None, "reason": reason})

    def _clean_markers(self) -> None:
        prefix = f"{self.name}{LOCK_SUFFIX}{_BROKEN}"
        try:
            for key in self.repo.list_keys(LOCK_DIR):
                if key.startswith(prefix):
                    raw = self.repo.read_bytes(f"{LOCK_DIR}/{key}") or b"{}"
                    try:
                        ts = float(json.loads(raw).get("ts", 0))
                    except (ValueError, TypeError, AttributeError):
                        ts = 0.0
                    if time.time() - ts > 3600:
                        self.repo.delete(f"{LOCK_DIR}/{key}")
        except StorageError:
            pass  # housekeeping only

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self.held:
            return
        self.held = False
        current = LockInfo.parse(self.repo.read_bytes(self.key) or b"")
        if current is not None and current.lock_id == self.info.lock_id:
            self.repo.delete(self.key)

    def __enter__(self) -> RepositoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- heartbeat ----------------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="statekit-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                current = LockInfo.parse(self.repo.read_bytes(self.key) or b"")
                if current is None or current.lock_id != self.info.lock_id:
                    if not self.lost:
                        self.lost = True
                        self.warn(f"lost the lock on {self.repo.url} for '{self.name}' (taken over as stale)")
                    continue
                self.info.heartbeat_at = time.time()
                self.repo.write_bytes(self.key, self.info.to_bytes())
            except StorageError as exc:
                # A missed beat is not fatal: the lock only goes stale after several.
                self.warn(f"lock heartbeat failed: {exc}")


def list_locks(repo: Repository) -> list[LockInfo]:
    """Every lock currently in the repository (damaged objects are skipped)."""
    out = []
    for key in sorted(repo.list_keys(LOCK_DIR)):
        if not key.endswith(LOCK_SUFFIX):
            continue
        info = LockInfo.parse(repo.read_bytes(f"{LOCK_DIR}/{key}") or b"")
        if info is not None:
            out.append(info)
    return out


def remove_stale_locks(repo: Repository, name: str | None, stale_after: float) -> list[dict[str, Any]]:
    """`statekit unlock`: remove stale locks (of `name`, or all); a live lock is never removed (LockHeld)."""
    removed: list[dict[str, Any]] = []
    live: list[LockInfo] = []
    for key in sorted(repo.list_keys(LOCK_DIR)):
        full = f"{LOCK_DIR}/{key}"
        if _BROKEN in key:
            continue
        if not key.endswith(LOCK_SUFFIX) or (name is not None and key != f"{name}{LOCK_SUFFIX}"):
            continue
        raw = repo.read_bytes(full)
        if raw is None:
            continue
        info = LockInfo.parse(raw)
        reason = "damaged lock object" if info is None else info.stale_reason(stale_after)
        if reason is None:
            assert info is not None
            live.append(info)
            continue
        repo.delete(full)
        removed.append({"key": full, "lock": info.to_json(stale_after) if info else None, "reason": reason})
    if live:
        first = live[0]
        raise LockHeld(
            f"lock for '{first.name}' on {repo.url} is live ({first.describe()}); not removed"
            + (f" ({len(removed)} stale lock(s) removed)" if removed else "")
        )
    return removed
