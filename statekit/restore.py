"""The restore engine: verify the archive, plan, confirm, save an undo archive, then apply one tier.

An undo archive (statekit.undo) is restored into the configured target or the one named with --target/
--target-url; one that records another target is refused unless it is signed by a trusted key (`signed`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from statekit.archive.reader import Archive
from statekit.config import Config, redact_url
from statekit.errors import CorruptArchive, Interrupted, Refused, StatekitError, UsageError
from statekit.model import Progress, RestoreOptions, RestoreReport, Warn, no_progress, no_warn
from statekit.textfmt import printable
from statekit.tiers import get as get_tier
from statekit.undo import (
    ResolvedTarget,
    UndoArchive,
    configured_target,
    is_configured,
    resolve_target,
    target_record,
    undo_command,
)

if TYPE_CHECKING:
    from statekit.archive.keys import Recipient


def archive_tiers(archive: Archive) -> list[str]:
    """The tiers an archive holds: from its head when it lists them, else from snapshot.json."""
    listed = archive.head().get("tiers")
    if isinstance(listed, list):
        return [str(t) for t in listed]
    return [t.get("tier", "") for t in archive.snapshot.get("tiers", [])]


def plan_restore(archive: Archive, opts: RestoreOptions, cfg: Config, *, signed: bool = False) -> RestoreReport:
    """Verify the archive and plan the restore of one tier (writes nothing). `signed`: the archive is signed by
    a trusted key, so an undo archive may go back to the target it records (statekit.undo.resolve_target)."""
    return _plan(archive, _resolve(archive, opts, cfg, signed), cfg)


def _resolve(archive: Archive, opts: RestoreOptions, cfg: Config, signed: bool) -> ResolvedTarget:
    if not (get_tier(opts.tier).verifies_while_loading and _head_suffices(archive)):
        archive.index()
    if opts.tier not in archive_tiers(archive):
        held = printable(", ".join(archive_tiers(archive)))  # names from the archive: escaped
        raise UsageError(f"archive holds no {opts.tier} tier (it holds: {held or 'nothing'})")
    return resolve_target(target_record(archive), opts, cfg, trusted=signed)


def _head_suffices(archive: Archive) -> bool:
    """Whether the head names the tiers and the target (a snapshot's, or an undo archive's recorded one)."""
    head = archive.head()
    return isinstance(head.get("tiers"), list) and target_record(archive) is head


def _plan(archive: Archive, resolved: ResolvedTarget, cfg: Config) -> RestoreReport:
    opts = resolved.options
    tier = get_tier(opts.tier)
    try:
        report = tier.plan_restore(archive, opts, cfg)
    except RecursionError:
        raise CorruptArchive("archive holds a document nested too deeply to be read") from None
    report.dry_run = True
    report.target = resolved.shown
    report.target_note = resolved.note
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
    undo_flags: Sequence[str] = (),
    on_undo_sealed: Callable[[str, str], None] | None = None,
    signed: bool = False,
) -> RestoreReport:
    """Plan, ask `confirm`, then restore one tier; an undo archive is sealed before the first change.

    `on_undo_sealed(path, command)` is called as soon as the undo archive is durable, before the first change:
    `command` (built with `undo_flags`, e.g. the identity options) puts the target back. Every failure or
    interruption after that point names the undo archive and the command in its message. `signed`: as for
    plan_restore."""
    resolved = _resolve(archive, opts, cfg, signed)
    plan = _plan(archive, resolved, cfg)
    opts = resolved.options
    if opts.dry_run:
        return plan
    if plan.problems:
        raise Refused(
            f"restore refused: {printable(str(plan.problems[0]))}"
            + (f" (+{len(plan.problems) - 1} more)" if len(plan.problems) > 1 else "")
        )
    if not confirm(plan):
        raise Refused("restore not confirmed (pass --yes to restore without a prompt)")
    tier = get_tier(opts.tier)
    undo: UndoArchive | None = None
    command: list[str] = []

    def sealed(path: str) -> None:
        command.append(_undo_command(path, opts, cfg, undo_flags))
        if on_undo_sealed is not None:
            on_undo_sealed(path, command[0])

    if opts.undo:
        target = opts.target or configured_target(cfg, opts.tier)
        undo = UndoArchive(
            undo_dir,
            opts.tier,
            undo_recipients,
            source={
                "snapshot_id": archive.head().get("snapshot_id"),
                "archive": archive.path.name,
                "target": redact_url(target) if tier.url_target else target,
            },
            allow_unencrypted=not archive_is_encrypted(archive),
            target=tier.describe_target(target),
            on_sealed=sealed,
        )
    try:
        report = tier.restore(archive, opts, cfg, undo=undo, progress=progress, warn=warn)
    except BaseException as exc:
        if undo is None or undo.sealed is None:
            if undo is not None:
                undo.abort()
            raise
        raise _after_first_change(exc, undo.sealed, command[0] if command else "", warn) from None
    report.target = resolved.shown
    report.target_note = resolved.note
    if undo is not None:
        report.undo_archive = undo.sealed
        report.undo_command = command[0] if command else None
    return report


def _undo_command(path: str, opts: RestoreOptions, cfg: Config, flags: Sequence[str]) -> str:
    """The command that restores the undo archive at `path` into the target this restore changes: a restore of
    an undo archive goes to the configured target unless a flag names another, so a target that is not the
    configured one is named with --target DIR / --target-url URL (its password as `***`: never printed, it
    comes back from the configuration of the same server; statekit.undo.resolve_target)."""
    extra = list(flags)
    tier = get_tier(opts.tier)
    recorded = tier.describe_target(opts.target).get("url" if tier.url_target else "root")
    if opts.target and isinstance(recorded, str) and not is_configured(cfg, opts.tier, recorded):
        extra += ["--target-url" if tier.url_target else "--target", recorded]
    return undo_command(path, opts.tier, extra)


def _after_first_change(exc: BaseException, path: str, command: str, warn: Warn) -> BaseException:
    """The error to raise for a failure after the restore's first change: it names the undo archive."""
    hint = f"the target may be partly restored; the undo archive {path} puts it back: {command}"
    if isinstance(exc, StatekitError) and exc.target_unchanged:
        exc.message = f"{exc.message}; nothing was changed (rolled back), the undo archive {path} is not needed"
        exc.args = (exc.message,)
        return exc
    if isinstance(exc, StatekitError):
        exc.message = f"{exc.message}; {hint}"
        exc.args = (exc.message,)
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(f"interrupted; {hint}")
    warn(hint)
    return exc


def archive_is_encrypted(archive: Archive) -> bool:
    """True when the archive file is age-encrypted."""
    from statekit.archive.format import AGE_MAGIC

    with open(archive.path, "rb") as fh:
        return fh.read(len(AGE_MAGIC)) == AGE_MAGIC


__all__ = ["UndoArchive", "archive_tiers", "plan_restore", "restore_tier"]
