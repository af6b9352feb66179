"""Repository jobs: a locked snapshot into a repository (with hooks and optional pruning) and pruning.

These put the pieces together the way a cron run needs them: take the lock, run the pre-hook, write the
archive (straight into a local repository, or to a private temporary directory and then a streaming
multipart upload for S3), prune, run the post-hook, release the lock.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statekit.config import Config
from statekit.errors import StatekitError, StorageError, UsageError
from statekit.model import Progress, Warn, no_progress, no_warn, utc_stamp
from statekit.ops.hooks import DEFAULT_TIMEOUT_S, run_hook
from statekit.repo import LocalRepository, is_archive_path, is_s3_url, open_repository
from statekit.repo.base import ARCHIVE_SUFFIX, SIDECAR_SUFFIX, Repository
from statekit.repo.lock import RepositoryLock
from statekit.repo.retention import RetentionPolicy, apply_policy
from statekit.snapshot import SnapshotOptions, SnapshotResult, take_snapshot

if TYPE_CHECKING:
    from statekit.archive.keys import Recipient


@dataclass
class LockOptions:
    """How long to wait for another run's lock, and when a lock counts as stale."""

    wait: float = 0.0
    stale_after: float = 300.0
    heartbeat_interval: float | None = None


@dataclass
class PruneGroup:
    """Retention decisions for the archives of one name."""

    name: str
    keep: list[dict[str, Any]] = field(default_factory=list)
    remove: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PruneReport:
    """What prune kept (and why) and removed (or, with dry_run, would remove)."""

    repository: str
    dry_run: bool
    policy: dict[str, Any]
    groups: list[PruneGroup] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "repository": self.repository,
            "dry_run": self.dry_run,
            "policy": self.policy,
            "groups": [{"name": g.name, "keep": g.keep, "remove": g.remove} for g in self.groups],
            "removed": self.removed,
        }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def prune_repository(
    repo: Repository,
    policy: RetentionPolicy,
    *,
    name: str | None = None,
    dry_run: bool = False,
    lock: LockOptions | None = None,
    lock_held_for: str | None = None,
    warn: Warn = no_warn,
) -> PruneReport:
    """Apply `policy` to each name group (or only `name`) under that group's lock; remove what it does not
    keep, together with sidecars and signatures. `lock_held_for` names a group whose lock the caller
    already holds (snapshot --prune)."""
    if policy.empty():
        apply_policy([], policy)  # raises the explanatory UsageError
    lock = lock or LockOptions()
    report = PruneReport(repo.url, dry_run, policy.to_json())
    names = sorted({a.name for a in repo.list_archives(name)})
    for group in names:
        held: RepositoryLock | None = None
        if not dry_run and group != lock_held_for:
            held = RepositoryLock(repo, group, command="prune", stale_after=lock.stale_after, warn=warn)
            held.acquire(lock.wait)
        try:
            archives = repo.list_archives(group)  # re-read under the lock
            decisions = apply_policy([(a.archive, a.created_ts) for a in archives], policy)
            sizes = {a.archive: a.size for a in archives}
            pg = PruneGroup(group)
            for d in decisions:
                entry: dict[str, Any] = {"archive": d.key, "created_at": _iso(d.ts), "size": sizes.get(d.key, 0)}
                if d.keep:
                    pg.keep.append({**entry, "reasons": d.reasons})
                else:
                    pg.remove.append(entry)
            if not dry_run:
                for entry in pg.remove:
                    report.removed.extend(repo.delete_archive(entry["archive"]))
            report.groups.append(pg)
        finally:
            if held is not None:
                held.release()
    return report


@dataclass
class SnapshotJobOptions:
    """A snapshot run into a repository."""

    to: str
    lock: LockOptions = field(default_factory=LockOptions)
    pre_hook: str | None = None
    post_hook: str | None = None
    hook_timeout: float = DEFAULT_TIMEOUT_S
    prune: RetentionPolicy | None = None
    # signs a finished local archive file, writing `<archive>.sig` next to it (uploaded along with it to S3)
    sign: Callable[[Path], object] | None = None


@dataclass
class SnapshotJobResult:
    """A finished snapshot run."""

    location: str
    snapshot: SnapshotResult
    stale_locks_removed: list[dict[str, Any]] = field(default_factory=list)
    prune: PruneReport | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (the archive path is its repository address)."""
        doc = self.snapshot.to_json()
        doc["path"] = self.location
        doc["stale_locks_removed"] = self.stale_locks_removed
        if self.prune is not None:
            doc["prune"] = self.prune.to_json()
        return doc


def _resolve_target(to: str) -> tuple[Repository, Path | None]:
    """(repository, explicit archive file or None). A local path ending in `.statekit` names the archive file
    itself (its directory must exist and is the repository, for locking); any other local path is a repository
    directory, created 0700 (parents too) on first use."""
    if is_s3_url(to):
        return open_repository(to), None
    path = Path(to)
    if is_archive_path(to):
        if not path.parent.is_dir():
            raise StorageError(f"{to}: cannot write the archive: no such directory {path.parent}")
        return LocalRepository(path.parent), path
    repo = LocalRepository(path)
    repo.ensure()
    return repo, None


def repository_for(to: str) -> Repository | None:
    """The repository a `--to` value writes into, without creating anything; None if it cannot be named."""
    try:
        if is_s3_url(to):
            return open_repository(to)
        path = Path(to)
        root = path.parent if is_archive_path(to) else path
        return LocalRepository(root) if root.is_dir() else None
    except StatekitError:
        return None


def snapshot_job(
    cfg: Config,
    recipients: Sequence[Recipient],
    snap: SnapshotOptions,
    job: SnapshotJobOptions,
    *,
    progress: Progress = no_progress,
    warn: Warn = no_warn,
) -> SnapshotJobResult:
    """Lock, pre-hook, snapshot, upload, prune, post-hook, unlock. The post-hook also runs after a failure
    once the lock was taken, with STATEKIT_RESULT=failure; a failing pre-hook means no archive."""
    repo, explicit = _resolve_target(job.to)
    if job.prune is not None and explicit is not None:
        raise UsageError("--prune needs a repository (a directory or s3://…), not an archive file name")
    lock = RepositoryLock(
        repo,
        snap.name,
        command="snapshot",
        stale_after=job.lock.stale_after,
        heartbeat_interval=job.lock.heartbeat_interval,
        warn=warn,
    )
    lock.acquire(job.lock.wait)
    location = ""
    try:
        try:
            if job.pre_hook:
                run_hook("pre", job.pre_hook, timeout=job.hook_timeout, env={"STATEKIT_REPOSITORY": repo.url})
            snapshot, location = _write_archive(cfg, repo, explicit, recipients, snap, job.sign, progress, warn)
            result = SnapshotJobResult(location, snapshot, list(lock.stale_removed))
            if job.prune is not None:
                result.prune = prune_repository(
                    repo, job.prune, name=snap.name, lock_held_for=snap.name, warn=warn, lock=job.lock
                )
        except BaseException as exc:
            if job.post_hook:
                code = (
                    exc.exit_code
                    if isinstance(exc, StatekitError)
                    else 130
                    if isinstance(exc, KeyboardInterrupt)
                    else 19
                )
                env = {"STATEKIT_RESULT": "failure", "STATEKIT_EXIT_CODE": str(code), "STATEKIT_ARCHIVE": location,
                       "STATEKIT_REPOSITORY": repo.url}  # fmt: skip
                try:
                    run_hook("post", job.post_hook, timeout=job.hook_timeout, env=env)
                except StatekitError as hook_exc:
                    warn(str(hook_exc))  # the original failure is what the run reports
            raise
        if job.post_hook:
            env = {"STATEKIT_RESULT": "success", "STATEKIT_EXIT_CODE": "0", "STATEKIT_ARCHIVE": location,
                   "STATEKIT_REPOSITORY": repo.url}  # fmt: skip
            run_hook("post", job.post_hook, timeout=job.hook_timeout, env=env)
        return result
    finally:
        lock.release()


def _write_archive(
    cfg: Config,
    repo: Repository,
    explicit: Path | None,
    recipients: Sequence[Recipient],
    snap: SnapshotOptions,
    sign: Callable[[Path], object] | None,
    progress: Progress,
    warn: Warn,
) -> tuple[SnapshotResult, str]:
    if isinstance(repo, LocalRepository):
        _remove_leftovers(repo.root, snap.name, warn)
        dest = explicit or repo.root / _fresh_name(repo, snap.name)
        result = take_snapshot(cfg, dest, recipients, snap, progress=progress, warn=warn)
        if sign is not None:
            sign(result.path)
        return result, str(result.path)
    # S3: the engine writes a finished, fsynced archive into a private directory (0700, file 0600); it is
    # then streamed up part by part, sidecar last, and the local copy removed.
    tmpdir = Path(tempfile.mkdtemp(prefix="statekit-upload-"))
    try:
        result = take_snapshot(
            cfg, tmpdir / _fresh_name(repo, snap.name), recipients, snap, progress=progress, warn=warn
        )
        if sign is not None:
            sign(result.path)
        key = result.path.name
        repo.upload_file(result.path, key)
        # companions (signature, then the sidecar last: `list` shows an archive once its sidecar is there)
        companions = sorted(tmpdir.glob(key + ".*"), key=lambda p: p.name.endswith(SIDECAR_SUFFIX))
        for extra in companions:
            repo.upload_file(extra, extra.name)
        return result, repo.describe(key)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _remove_leftovers(root: Path, name: str, warn: Warn) -> None:
    """Delete temporary files that killed runs of this archive name left behind. Safe only under the lock:
    no other run of the same name can be writing one now."""
    pattern = re.compile(rf"^\.{re.escape(name)}-.+\.statekit(\.meta\.json|\.sig)?\.[0-9a-f]{{12}}\.tmp$")
    for entry in root.iterdir():
        if pattern.match(entry.name) and entry.is_file():
            try:
                entry.unlink()
            except OSError:
                continue
            warn(f"removed {entry.name}, left behind by an interrupted run")


def _fresh_name(repo: Repository, name: str) -> str:
    """`<name>-<UTC stamp>.statekit`, with `-2`, `-3`… when a run in the same second already used it (we hold
    the lock, so nobody else picks a name meanwhile)."""
    taken = set(repo.list_keys())
    stamp = utc_stamp()
    candidate = f"{name}-{stamp}{ARCHIVE_SUFFIX}"
    n = 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{stamp}-{n}{ARCHIVE_SUFFIX}"
    return candidate
