"""Reconcile, planning half: what it takes to rebuild one tier from another through the entity model.

A plan is a list of operations on the target tier (`+ create`, `~ update`, `- delete`), each carrying the
target's current bytes (`before`, for compare-and-set and the undo archive) and the new bytes (`after`).
Its JSON form carries only SHA-256 digests, never values, so a saved plan holds no secrets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from statekit.audit.codecs import CodecError, compare, convert
from statekit.audit.diff import Source, _root
from statekit.audit.entities import Entity, Locator, Model
from statekit.audit.readers import Record, RecordKey, TierData
from statekit.errors import Refused, UsageError

PLAN_SCHEMA = "statekit.reconcile-plan/v1"
RECONCILE_PAIRS = {("db", "redis"), ("db", "files"), ("files", "redis"), ("redis", "files")}
_MARKS = {"create": "+", "update": "~", "delete": "-"}


@dataclass
class Operation:
    """One change to the target tier. `loc` is ("redis", key[, field]) or ("files", relative path[/])."""

    op: str
    entity: str
    id: str
    key: str | None
    loc: tuple[str, ...]
    before: bytes | None
    after: bytes | None
    source: str | None = None

    @property
    def signature(self) -> tuple[Any, ...]:
        """What must not have changed between a saved plan and its apply."""
        return (self.op, self.entity, self.id, self.key, self.loc, _digest(self.before), _digest(self.after))

    def where(self) -> str:
        """The target location for a person."""
        if self.loc[0] == "redis":
            return self.loc[1] + (f" [{self.loc[2]}]" if len(self.loc) > 2 else "")
        return self.loc[1]

    def to_json(self) -> dict[str, Any]:
        """Digests only: a plan file never holds a value."""
        return {
            "op": self.op,
            "entity": self.entity,
            "id": self.id,
            "key": self.key,
            "loc": list(self.loc),
            "before_sha256": _digest(self.before),
            "after_sha256": _digest(self.after),
            "source": self.source,
        }


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


@dataclass
class ReconcileOptions:
    """What the user asked reconcile to do."""

    source: str
    target: str
    entities: list[str] = field(default_factory=list)
    prune_orphans: bool = False
    max_change_ratio: float = 0.5
    force: bool = False
    batch: int = 500


@dataclass
class ReconcilePlan:
    """The operations, what they were computed from, and the guard figures."""

    source: str
    target: str
    entities: list[str]
    prune_orphans: bool
    ops: list[Operation]
    target_records: int
    kept: int = 0  # target records absent from the source, kept because --prune-orphans was not given
    skipped: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """create / update / delete counts."""
        out = {"create": 0, "update": 0, "delete": 0}
        for op in self.ops:
            out[op.op] += 1
        return out

    @property
    def change_ratio(self) -> float:
        """Share of the target's existing records this plan overwrites or deletes."""
        c = self.counts
        return (c["update"] + c["delete"]) / max(1, self.target_records)

    def to_json(self) -> dict[str, Any]:
        """The plan file / --json form."""
        return {
            "plan_schema": PLAN_SCHEMA,
            "from": self.source,
            "to": self.target,
            "entities": self.entities,
            "prune_orphans": self.prune_orphans,
            "counts": self.counts,
            "target_records": self.target_records,
            "change_ratio": round(self.change_ratio, 6),
            "kept_without_prune": self.kept,
            "skipped": self.skipped,
            "ops": [op.to_json() for op in self.ops],
        }


def check_pair(source: str, target: str, model: Model) -> None:
    """Refuse pairs reconcile does not do, and writing the model's authority."""
    if (source, target) not in RECONCILE_PAIRS:
        pairs = ", ".join(f"{a}->{b}" for a, b in sorted(RECONCILE_PAIRS))
        raise UsageError(f"reconcile --from {source} --to {target} is not supported (supported: {pairs})")
    for ent in model.entities.values():
        if ent.parent is None and ent.authority == target:
            raise Refused(f"reconcile never writes the authority: {target} is the authority of entity {ent.name}")


def _render(ent: Entity, loc: Locator, scope: str, rest: RecordKey, src: Record) -> tuple[str, ...]:
    values = dict(zip(ent.vars, (scope, *rest)))
    raw = src.raw_vars or {}
    for var in list(values):
        if var in raw:
            values[var] = raw[var]
        elif var in ent.normalizers and not _has_transform(loc, var) and var in ent.inverses:
            values[var] = ent.inverses[var](values[var])
    assert loc.template is not None
    name = loc.template.render(values)
    if loc.tier == "redis":
        return ("redis", name, loc.hash_field.render(values)) if loc.hash_field else ("redis", name)
    return ("files", name)


def _has_transform(loc: Locator, var: str) -> bool:
    return any(t is not None and var in t.transforms for t in (loc.template, loc.hash_field))


class _Planner:
    def __init__(self, model: Model, opts: ReconcileOptions, data: dict[str, TierData]) -> None:
        self.model = model
        self.opts = opts
        self.data = data
        self.kept = 0
        self.target_records = 0

    def records(self, ent: Entity, tier: str, scope: str) -> dict[RecordKey, Record]:
        d = self.data.get(tier)
        return (d.scope_records(ent.name, scope) if d else None) or {}

    def scope(self, scope: str) -> Iterator[Operation]:
        t = self.opts.target
        for ent in self.model.entities.values():
            if t not in ent.locators:
                continue
            root = _root(self.model, ent)
            root_ok = any(not r.null for r in self.records(root, root.authority, scope).values())
            dst = self.records(ent, t, scope)
            self.target_records += len(dst)
            if not root_ok:
                # An orphan scope: the root entity deletes what the target holds there (children go with it).
                if ent is root and self.opts.prune_orphans:
                    for rest, rec in dst.items():
                        before = rec.stored if rec.stored is not None and not ent.presence else b""
                        yield Operation("delete", ent.name, scope, "/".join(rest) or None, rec.loc, before, None, None)
                elif ent is root:
                    self.kept += len(dst)
                continue
            if ent.presence or self.opts.source not in ent.locators:
                continue
            yield from self.entity(ent, scope, dst)

    def entity(self, ent: Entity, scope: str, dst: dict[RecordKey, Record]) -> Iterator[Operation]:
        s, t = self.opts.source, self.opts.target
        src_loc, dst_loc = ent.locators[s], ent.locators[t]
        src = {k: r for k, r in self.records(ent, s, scope).items() if not r.null and r.stored is not None}
        for rest in sorted(src):
            rec = src[rest]
            assert rec.stored is not None
            key = "/".join(rest) or None
            try:
                after = convert(rec.stored, src_loc.codec, dst_loc.codec)
            except CodecError:
                continue  # the audit reports it as unparseable; never copy a value that does not decode
            have = dst.get(rest)
            if have is None or have.stored is None:
                try:
                    loc = _render(ent, dst_loc, scope, rest, rec)
                except ValueError:
                    continue
                yield Operation("create", ent.name, scope, key, loc, None, after, rec.where)
                continue
            try:
                same = compare(rec.stored, src_loc.codec, have.stored, dst_loc.codec).equal
            except CodecError:
                same = False
            if not same:
                yield Operation("update", ent.name, scope, key, have.loc, have.stored, after, rec.where)
        for rest, have in sorted(dst.items()):
            if rest in src:
                continue
            if self.opts.prune_orphans and have.stored is not None:
                yield Operation("delete", ent.name, scope, "/".join(rest) or None, have.loc, have.stored, None, None)
            else:
                self.kept += 1


def build_plan(model: Model, sources: dict[str, Source], opts: ReconcileOptions) -> ReconcilePlan:
    """Plan the rebuild of `opts.target` from `opts.source` (reads only; the root authority is read too, to
    tell instances from orphans)."""
    model = model.select(opts.entities)
    check_pair(opts.source, opts.target, model)
    scopes: set[str] = set()
    for src in sources.values():
        scopes |= src.list_scopes()
    planner = _Planner(model, opts, {})
    ops: list[Operation] = []
    ordered = sorted(scopes)
    for i in range(0, len(ordered), max(1, opts.batch)):
        batch = ordered[i : i + opts.batch]
        planner.data = {t: s.load(batch) for t, s in sources.items()}
        for scope in batch:
            ops.extend(planner.scope(scope))
    plan = ReconcilePlan(opts.source, opts.target, list(model.entities), opts.prune_orphans, ops,
                         planner.target_records, planner.kept)  # fmt: skip
    return plan


def guard(plan: ReconcilePlan, max_change_ratio: float, force: bool) -> None:
    """Refuse a plan that overwrites or deletes more than the allowed share of the target."""
    if force or not plan.ops:
        return
    if plan.change_ratio > max_change_ratio:
        raise Refused(
            f"plan would overwrite or delete {plan.change_ratio:.0%} of the {plan.target} records "
            f"(limit --max-change-ratio {max_change_ratio:g}); check it, then pass --force"
        )


def plan_lines(plan: ReconcilePlan, examples: int = 5) -> list[str]:
    """The plan for a person: counts, then the first examples of each kind."""
    c = plan.counts
    lines = [
        f"reconcile {plan.source} -> {plan.target} ({', '.join(plan.entities)}): "
        f"+{c['create']} create  ~{c['update']} update  -{c['delete']} delete"
        f"  ({plan.change_ratio:.1%} of {plan.target_records} existing {plan.target} records changed)"
    ]
    for kind in ("create", "update", "delete"):
        shown = [op for op in plan.ops if op.op == kind][:examples]
        for op in shown:
            lines.append(f"  {_MARKS[kind]} {kind:<6} {op.entity:<10} {op.where()}")
        more = c[kind] - len(shown)
        if more > 0:
            lines.append(f"    … and {more} more {kind}s")
    if plan.kept:
        lines.append(f"  {plan.kept} {plan.target} records without a source record kept (--prune-orphans deletes them)")
    if not plan.ops:
        lines.append("  nothing to do: the target already matches")
    return lines


def same_plan(saved: dict[str, Any], fresh: ReconcilePlan) -> str | None:
    """None when a saved plan still describes the live tiers, else the first difference."""
    if saved.get("plan_schema") != PLAN_SCHEMA:
        raise UsageError(f"not a reconcile plan file (expected plan_schema {PLAN_SCHEMA})")
    old = {
        (o["op"], o["entity"], o["id"], o["key"], tuple(o["loc"]), o["before_sha256"], o["after_sha256"])
        for o in saved.get("ops", [])
    }
    new = {op.signature for op in fresh.ops}
    if old == new:
        return None
    diff = sorted(old ^ new, key=str)
    first = diff[0]
    return f"{first[0]} {first[1]} {first[2]}" + (f" {first[3]}" if first[3] else "")
