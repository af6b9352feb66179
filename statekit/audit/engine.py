"""The audit and reconcile entry points the CLI calls: one function per command, plain values in and out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statekit.audit.apply import ApplyResult, apply_plan
from statekit.audit.diff import run_audit
from statekit.audit.entities import Model
from statekit.audit.findings import AuditOptions, AuditResult
from statekit.audit.plan import ReconcileOptions, ReconcilePlan, build_plan, check_pair, guard, same_plan
from statekit.audit.sources import open_live
from statekit.config import redact_url
from statekit.errors import Refused, UsageError
from statekit.model import Progress, Warn, no_progress, no_warn

if TYPE_CHECKING:
    from statekit.archive.keys import Recipient


@dataclass
class Locations:
    """Where the live tiers are."""

    db_url: str | None = None
    redis_url: str | None = None
    files_root: str | None = None

    def shown(self, tier: str) -> str | None:
        """The tier's location, safe to print."""
        if tier == "db":
            return redact_url(self.db_url)
        if tier == "redis":
            return redact_url(self.redis_url)
        return self.files_root


def audit_live(
    model: Model,
    where: Locations,
    opts: AuditOptions,
    *,
    progress: Progress = no_progress,
    warn: Warn = no_warn,
) -> AuditResult:
    """Audit the live tiers against each other (tiers the configuration does not name are skipped)."""
    live = open_live(model, db_url=where.db_url, redis_url=where.redis_url, files_root=where.files_root,
                     keys_only=opts.keys_only)  # fmt: skip
    try:
        for tier in live.skipped:
            warn(f"{tier} tier not configured: not audited (set [{tier}] in the config or pass its flag)")
        if len(live.sources) < 2 and not model.checks:
            warn("fewer than two tiers to compare: only names and values within one tier are checked")
        result = run_audit(model, live.sources, opts, refresh=live.refresh, progress=progress)
        if model.modes is not None:
            for src in live.sources.values():
                result.notes.extend(src.notes(model, result.entity_counts))
        return result
    finally:
        live.close()


def plan_reconcile(model: Model, where: Locations, opts: ReconcileOptions) -> ReconcilePlan:
    """Read the source, the target and the root authority, and plan the rebuild of the target."""
    model = model.select(opts.entities)
    check_pair(opts.source, opts.target, model, opts.entities)
    roots = {e.authority for e in model.entities.values() if e.parent is None}
    tiers = {opts.source, opts.target} | roots
    live = open_live(model, db_url=where.db_url, redis_url=where.redis_url, files_root=where.files_root, tiers=tiers)
    try:
        for tier in (opts.source, opts.target):
            if tier not in live.sources:
                raise UsageError(f"reconcile: the {tier} tier is not configured (set [{tier}] or pass its flag)")
        return build_plan(model, live.sources, opts)
    finally:
        live.close()


def reconcile(
    plan: ReconcilePlan,
    where: Locations,
    *,
    undo_dir: Path | None,
    undo_recipients: Sequence[Recipient],
    allow_unencrypted_undo: bool = False,
    progress: Progress = no_progress,
    model: Model | None = None,
) -> ApplyResult:
    """Apply a plan: seal the undo archive (unless undo_dir is None), then compare-and-set each operation
    (the db tier needs the model: which columns a new row gets)."""
    from statekit.audit.sources.redis import open_redis
    from statekit.restore import UndoArchive

    undo = None
    if plan.ops and undo_dir is not None:
        undo = UndoArchive(undo_dir, plan.target, undo_recipients,
                           source={"reconcile": f"{plan.source}->{plan.target}", "target": where.shown(plan.target)},
                           allow_unencrypted=allow_unencrypted_undo)  # fmt: skip
    if plan.target == "db":
        return _reconcile_db(plan, where, model, undo, progress)
    client = open_redis(where.redis_url) if plan.target == "redis" and where.redis_url else None
    if client is not None:
        client.statekit_url = where.redis_url
    try:
        return apply_plan(plan, redis_client=client, files_root=where.files_root, undo=undo, progress=progress)
    except BaseException:
        if undo is not None:
            undo.abort()
        raise
    finally:
        if client is not None:
            client.close()


def _reconcile_db(
    plan: ReconcilePlan, where: Locations, model: Model | None, undo: Any, progress: Progress
) -> ApplyResult:
    from statekit.audit.db_apply import apply_db, save_db_undo

    if model is None or not where.db_url:
        raise UsageError("reconcile --to db needs the entity model and a database URL")
    result = ApplyResult()
    if not plan.ops:
        return result
    try:
        if undo is not None:
            result.undo_archive = save_db_undo(where.db_url, model, plan, undo)
    except BaseException:
        undo.abort()
        raise
    apply_db(plan, model, where.db_url, result.conflicts, result.counts, progress)
    return result


def load_plan_file(path: str) -> dict[str, Any]:
    """A plan saved with --plan-out."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read plan {path}: {exc.strerror}") from None
    except ValueError:
        raise UsageError(f"{path} is not a reconcile plan (not JSON)") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path} is not a reconcile plan")
    return doc


def replan_saved(model: Model, where: Locations, saved: dict[str, Any], *, prune_orphans: bool) -> ReconcilePlan:
    """Plan again from the live tiers with the saved plan's direction and entities; Refused when anything
    changed. The guards (prune_orphans here, max_change_ratio and force at the caller) come from the
    command line and config of `statekit apply`, never from the plan file: a plan saved with
    --prune-orphans is refused unless apply is given --prune-orphans too."""
    opts = ReconcileOptions(
        source=str(saved.get("from")),
        target=str(saved.get("to")),
        entities=list(saved.get("entities", [])),
        prune_orphans=prune_orphans,
    )
    if bool(saved.get("prune_orphans")) != prune_orphans:
        flag = "with" if saved.get("prune_orphans") else "without"
        raise Refused(f"the plan was made {flag} --prune-orphans: give `statekit apply` the same option")
    if saved.get("target_location") not in (None, where.shown(opts.target)):
        raise Refused(f"plan was made for {saved.get('target_location')}, not {where.shown(opts.target)}")
    fresh = plan_reconcile(model, where, opts)
    diff = same_plan(saved, fresh)
    if diff is not None:
        raise Refused(f"the tiers changed since the plan was made (first difference: {diff}); plan again")
    return fresh


__all__ = ["AuditOptions", "Locations", "ReconcileOptions", "audit_live", "guard", "plan_reconcile", "reconcile"]
