"""The audit and reconcile entry points the CLI calls: one function per command, plain values in and out."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statekit.audit.apply import ApplyResult, FilesWriter, RedisWriter, Writer
from statekit.audit.db_apply import DbWriter
from statekit.audit.diff import run_audit
from statekit.audit.entities import TIERS, Model
from statekit.audit.findings import AuditOptions, AuditResult
from statekit.audit.plan import (
    ReconcileOptions,
    ReconcilePlan,
    build_plan,
    check_pair,
    guard,
    plan_file_problem,
    same_plan,
)
from statekit.audit.repairs import Given, same_place
from statekit.audit.sources import open_live
from statekit.config import Config, redact_url
from statekit.errors import Refused, UsageError
from statekit.model import Progress, Warn, no_progress, no_warn
from statekit.tiers import TIERS as REGISTRY
from statekit.tiers import get as get_tier

if TYPE_CHECKING:
    from statekit.archive.keys import Recipient

WRITERS: dict[str, Writer] = {w.tier: w for w in (DbWriter(), RedisWriter(), FilesWriter())}
"""How reconcile writes into each tier it can rebuild."""


class Locations(Mapping[str, str | None]):
    """Where the live tiers are: tier name -> its URL or root (None: not configured)."""

    def __init__(self, targets: Mapping[str, str | None] | None = None) -> None:
        self.targets: dict[str, str | None] = dict(targets or {})

    @classmethod
    def from_config(cls, cfg: Config) -> Locations:
        """Every tier the audit reads, at its configured target."""
        return cls({name: get_tier(name).target(cfg) for name in TIERS})

    def __getitem__(self, tier: str) -> str | None:
        return self.targets[tier]

    def __iter__(self) -> Iterator[str]:
        return iter(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def shown(self, tier: str) -> str | None:
        """The tier's location, safe to print (a URL without its password)."""
        target = self.targets.get(tier)
        url = any(t.name == tier and t.url_target for t in REGISTRY)
        return redact_url(target) if url else target


def audit_live(
    model: Model,
    where: Locations,
    opts: AuditOptions,
    *,
    progress: Progress = no_progress,
    warn: Warn = no_warn,
) -> AuditResult:
    """Audit the live tiers against each other (tiers the configuration does not name are skipped)."""
    live = open_live(model, where, keys_only=opts.keys_only)
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
    live = open_live(model, where, tiers=tiers)
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
    (a database target needs the model: which columns a new row gets)."""
    from statekit.restore import UndoArchive

    writer = WRITERS[plan.target]  # a plan's target is one of RECONCILE_PAIRS (check_pair)
    undo = None
    if plan.ops and undo_dir is not None:
        undo = UndoArchive(undo_dir, plan.target, undo_recipients,
                           source={"reconcile": f"{plan.source}->{plan.target}", "target": where.shown(plan.target)},
                           allow_unencrypted=allow_unencrypted_undo)  # fmt: skip
    try:
        return writer.apply(plan, where.get(plan.target), model=model, undo=undo, progress=progress)
    except BaseException:
        if undo is not None:
            undo.abort()
        raise


def load_plan_file(path: str) -> dict[str, Any]:
    """A plan saved with --plan-out (UsageError, naming the file and what is wrong, for anything else)."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read plan {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"plan file {path} is not a reconcile plan: not JSON ({exc})") from None
    problem = plan_file_problem(doc)
    if problem is not None:
        raise UsageError(f"plan file {path} is not a reconcile plan: {problem} (save one with "
                         "`statekit reconcile --plan-out FILE`)")  # fmt: skip
    return dict(doc)


def replan_saved(
    model: Model, where: Locations, saved: dict[str, Any], *, prune_orphans: bool, given: Given
) -> ReconcilePlan:
    """Plan again from the live tiers with the saved plan's direction and entities; Refused when anything
    changed. The guards (prune_orphans here, max_change_ratio and force at the caller) come from the
    command line and config of `statekit apply`, never from the plan file: a plan saved with
    --prune-orphans is refused unless apply is given --prune-orphans too."""
    opts = ReconcileOptions(
        source=str(saved.get("from")),
        target=str(saved.get("to")),
        entities=list(saved.get("entities", [])),
        prune_orphans=prune_orphans,
        given=given,
    )
    if bool(saved.get("prune_orphans")) != prune_orphans:
        flag = "with" if saved.get("prune_orphans") else "without"
        raise Refused(f"the plan was made {flag} --prune-orphans: give `statekit apply` the same option")
    # (a password given the printed way, from STATEKIT_DB_PASSWORD / STATEKIT_REDIS_PASSWORD, is the same place)
    if saved.get("target_location") is not None and not same_place(saved["target_location"], where.shown(opts.target)):
        raise Refused(f"plan was made for {saved.get('target_location')}, not {where.shown(opts.target)}")
    fresh = plan_reconcile(model, where, opts)
    diff = same_plan(saved, fresh)
    if diff is not None:
        raise Refused(f"the tiers changed since the plan was made (first difference: {diff}); plan again")
    return fresh


__all__ = ["AuditOptions", "Locations", "ReconcileOptions", "audit_live", "guard", "plan_reconcile", "reconcile"]
