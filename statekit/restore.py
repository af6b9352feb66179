"""The restore engine: verify the archive, plan, confirm, save an undo archive, then apply one tier."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statekit.archive.format import Archive, ArchiveWriter, atomic_output
from statekit.archive.onepass import snapshot_id
from statekit.config import Config, redact_url
from statekit.errors import Refused, UsageError
from statekit.model import (
    MemberSink,
    Progress,
    RestoreOptions,
    RestoreReport,
    TierSummary,
    Warn,
    no_progress,
    no_warn,
    utc_stamp,
)

if TYPE_CHECKING:
    from statekit.archive.keys import Recipient

RESTORE_TIERS = ("db", "redis", "files")


class UndoArchive:
    """An archive of what a restore is about to replace. The tier writes into `sink`, then `seal()`
    finishes, fsyncs and renames it — before the tier's first change."""

    def __init__(
        self,
        directory: Path,
        tier: str,
        recipients: Sequence[Recipient],
        *,
        source: dict[str, Any],
        allow_unencrypted: bool,
    ) -> None:
        if not recipients and not allow_unencrypted:
            raise Refused(
                "no key to encrypt the undo archive with (give --recipient, or --no-undo for a disposable target)"
            )
        if not directory.is_dir():
            raise UsageError(f"undo directory {directory} does not exist")
        self.tier = tier
        self.started = time.time()
        self.path = directory / f"undo-{tier}-{utc_stamp(self.started)}.statekit"
        n = 1
        while self.path.exists():
            n += 1
            self.path = directory / f"undo-{tier}-{utc_stamp(self.started)}-{n}.statekit"
        self._source = source
        self._stack = ExitStack()
        fh = self._stack.enter_context(atomic_output(self.path))
        self._writer = ArchiveWriter(fh, recipients=list(recipients), created_at=self.started)
        # A plain attribute (not a property) so UndoArchive satisfies the UndoSink protocol's settable `sink`.
        self.sink: MemberSink = self._writer
        self.sealed: str | None = None

    def seal(self, tier_summary: TierSummary) -> str:
        """Finish and durably store the undo archive; returns its path."""
        doc = {
            "kind": "undo",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "undo_of": self._source,
            "tiers": [tier_summary.to_json()],
        }
        self._writer.finish(doc)
        self._stack.close()
        self.sealed = str(self.path)
        return self.sealed

    def abort(self) -> None:
        """Drop an unsealed undo archive (its temporary file is removed)."""
        if self.sealed is None:
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _tier_functions(tier: str) -> tuple[Callable[..., RestoreReport], Callable[..., RestoreReport], Any]:
    if tier == "files":
        from statekit.tiers.files import plan_files_restore, restore_files

        return plan_files_restore, restore_files, "files"
    if tier == "db":
        from statekit.tiers.sql import plan_db_restore, restore_db

        return plan_db_restore, restore_db, "db"
    if tier == "redis":
        from statekit.tiers.redis import plan_redis_restore, restore_redis

        return plan_redis_restore, restore_redis, "redis"
    raise UsageError(f"unknown tier {tier!r} (choose from {', '.join(RESTORE_TIERS)})")


def archive_tiers(archive: Archive) -> list[str]:
    """The tiers an archive holds (from snapshot.json)."""
    return [t.get("tier", "") for t in archive.snapshot.get("tiers", [])]


def plan_restore(archive: Archive, opts: RestoreOptions, cfg: Config) -> RestoreReport:
    """Verify the archive and plan the restore of one tier (writes nothing). The db tier verifies the archive
    in the same pass that loads it, inside its transaction, so it skips the separate verifying pass."""
    if opts.tier != "db":
        archive.index()
    if opts.tier != "db" and opts.tier not in archive_tiers(archive):
        raise UsageError(
            f"archive holds no {opts.tier} tier (it holds: {', '.join(archive_tiers(archive)) or 'nothing'})"
        )
    plan_fn, _, section = _tier_functions(opts.tier)
    if opts.tier == "db":  # archive row counts need the manifest, at the end: only a dry run reads for them
        report = plan_fn(archive, opts, getattr(cfg, section), archive_counts=opts.dry_run)
    else:
        report = plan_fn(archive, opts, getattr(cfg, section))
    report.dry_run = True
    return report


def restore_tier(
    archive: Archive,
    opts: RestoreOptions,
    cfg: Config,
    *,
    undo_dir: Path,
    undo_recipients: Sequence[Recipient],
    confirm: Callable[[RestoreReport], bool],
    progress: Progress = no_progress,
    warn: Warn = no_warn,
) -> RestoreReport:
    """Plan, ask `confirm`, then restore one tier; an undo archive is sealed before the first change."""
    plan = plan_restore(archive, opts, cfg)
    if opts.dry_run:
        return plan
    if plan.problems:
        raise Refused(
            f"restore refused: {plan.problems[0]}"
            + (f" (+{len(plan.problems) - 1} more)" if len(plan.problems) > 1 else "")
        )
    if not confirm(plan):
        raise Refused("restore not confirmed (pass --yes to restore without a prompt)")
    _, apply_fn, section = _tier_functions(opts.tier)
    undo: UndoArchive | None = None
    if opts.undo:
        target = opts.target or _configured_target(cfg, opts.tier)
        undo = UndoArchive(
            undo_dir,
            opts.tier,
            undo_recipients,
            source={
                "snapshot_id": snapshot_id(archive) if opts.tier == "db" else archive.snapshot.get("snapshot_id"),
                "archive": archive.path.name,
                "target": redact_url(target) if opts.tier != "files" else target,
            },
            allow_unencrypted=not archive_is_encrypted(archive),
        )
    try:
        report = apply_fn(archive, opts, getattr(cfg, section), undo=undo, progress=progress, warn=warn)
    except BaseException:
        if undo is not None:
            undo.abort()
        raise
    if undo is not None:
        report.undo_archive = undo.sealed
    return report


def archive_is_encrypted(archive: Archive) -> bool:
    """True when the archive file is age-encrypted."""
    from statekit.archive.format import AGE_MAGIC

    with open(archive.path, "rb") as fh:
        return fh.read(len(AGE_MAGIC)) == AGE_MAGIC


def _configured_target(cfg: Config, tier: str) -> str | None:
    return {"db": cfg.db.url, "redis": cfg.redis.url, "files": cfg.files.root}.get(tier)
