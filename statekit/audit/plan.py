"""Reconcile, planning half: what it takes to rebuild one tier from another through the entity model.

A plan is a list of operations on the target tier (`+ create`, `~ update`, `- delete`), each carrying the
target's current bytes (`before`, for compare-and-set and the undo archive) and the new bytes (`after`).
Its JSON form carries only SHA-256 digests, never values, so a saved plan holds no secrets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from statekit.audit.codecs import CodecError, compare, convert
from statekit.audit.entities import LOCATOR_KINDS, TIERS, Entity, Locator, Model
from statekit.audit.findings import root_of
from statekit.audit.repairs import Given
from statekit.audit.sources.records import Record, RecordKey, Source, TierData
from statekit.errors import Refused, UsageError

PLAN_SCHEMA = "statekit.reconcile-plan/v1"
RECONCILE_PAIRS = {(src.kind, kind.kind) for kind in LOCATOR_KINDS.values() for src in kind.fills_from}
"""Every (source, target) pair of tiers reconcile can rebuild."""
_MARKS = {"create": "+", "update": "~", "delete": "-"}


@dataclass
class Operation:
    """One change to the target tier. `loc` is the tier's name and the place written, as in Record.loc (a
    relative path ending in "/" is a whole directory)."""

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
        return LOCATOR_KINDS[self.loc[0]].op_text(self.loc, self.id)

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
    # What the commands printed for skipped instances carry over from reconcile's command line.
    given: Given = field(default_factory=Given)


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
    skipped_items: list[Skipped] = field(default_factory=list)
    not_covered: dict[str, int] = field(default_factory=dict)  # server -> instances never written
    # entity -> its existing target records, what the guard measures that entity's changes against
    entity_records: dict[str, int] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """create / update / delete counts."""
        out = {"create": 0, "update": 0, "delete": 0}
        for op in self.ops:
            out[op.op] += 1
        return out

    @property
    def change_ratio(self) -> float:
        """The largest share of one entity's existing target records that this plan overwrites or deletes."""
        return self.largest_change()[0]

    def largest_change(self) -> tuple[float, str, int, int]:
        """(share, entity, records changed, records there) for the entity whose records change the most. Each
        entity is measured against its own records: pruning a few orphan hashes against every hash the target
        holds, one instance's stale creds against the creds, never diluted by another entity's records."""
        changed: dict[str, int] = {}
        for op in self.ops:
            if op.op != "create":
                changed[op.entity] = changed.get(op.entity, 0) + 1
        worst = (0.0, "", 0, self.target_records)
        for name, n in changed.items():
            there = self.entity_records.get(name, self.target_records)
            share = n / max(1, there)
            if share > worst[0]:
                worst = (share, name, n, there)
        return worst

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
            "records_by_entity": dict(self.entity_records),
            "kept_without_prune": self.kept,
            "skipped": [x.to_json() for x in self.skipped_items] or self.skipped,
            "not_covered": self.not_covered,
            "ops": [op.to_json() for op in self.ops],
        }


def writable(ent: Entity, target: str) -> bool:
    """Can reconcile write this entity into the target tier? Never a root entity's authority; in the db tier
    only a record that is one row's value column."""
    loc = ent.locators.get(target)
    if loc is None or (ent.parent is None and ent.authority == target):
        return False
    return loc.holds_one_value(ent)


def check_pair(source: str, target: str, model: Model, requested: list[str] | None = None) -> None:
    """Refuse pairs reconcile does not do, and writing the model's authority."""
    if (source, target) not in RECONCILE_PAIRS:
        pairs = ", ".join(f"{a}->{b}" for a, b in sorted(RECONCILE_PAIRS))
        raise UsageError(f"reconcile --from {source} --to {target} is not supported (supported: {pairs})")
    wanted = [model.entities[n] for n in requested] if requested else list(model.entities.values())
    if any(writable(ent, target) for ent in wanted):
        return
    roots = [e.name for e in model.entities.values() if e.parent is None and e.authority == target]
    if roots:
        raise Refused(f"reconcile never writes the authority: {target} is the authority of entity {roots[0]}")
    names = ", ".join(e.name for e in wanted)
    raise UsageError(f"reconcile --to {target}: no entity ({names}) maps a record to one {target} value")


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
    return (loc.tier, name, loc.hash_field.render(values)) if loc.hash_field else (loc.tier, name)


def _has_transform(loc: Locator, var: str) -> bool:
    return any(t is not None and var in t.transforms for t in (loc.template, loc.hash_field))


@dataclass
class Skipped:
    """An instance left out of a plan because the requested direction would write onto its live copy (or
    copy from a copy its mode does not read), with the command that repairs it the right way."""

    entity: str
    id: str
    server: str
    mode: str
    reason: str
    command: str

    def line(self) -> str:
        """For a person."""
        return (
            f"{self.entity} {self.id} (server {self.server}, {self.mode} mode): {self.reason}; instead: {self.command}"
        )

    def to_json(self) -> dict[str, str]:
        """A JSON-ready description."""
        return {"entity": self.entity, "id": self.id, "server": self.server, "mode": self.mode,
                "reason": self.reason, "command": self.command}  # fmt: skip


class _Planner:
    def __init__(self, model: Model, opts: ReconcileOptions, data: dict[str, TierData]) -> None:
        self.model = model
        self.opts = opts
        self.data = data
        self.kept = 0
        self.target_records = 0
        self.entity_records: dict[str, int] = {}
        self.skipped: list[Skipped] = []
        self.not_covered: dict[str, int] = {}

    def records(self, ent: Entity, tier: str, scope: str) -> dict[RecordKey, Record]:
        d = self.data.get(tier)
        return (d.scope_records(ent.name, scope) if d else None) or {}

    def _server(self, scope: str) -> tuple[Any, bool]:
        """(server, root present) of a scope; server None without modes or for an orphan scope."""
        modes = self.model.modes
        root = next(e for e in self.model.entities.values() if e.parent is None)
        if modes is not None:
            root = self.model.entities.get(modes.entity, root)
        rows = [r for r in self.records(root, root.authority, scope).values() if not r.null]
        if not rows or modes is None:
            return None, bool(rows)
        name = rows[0].extra.get(modes.column) if rows[0].extra else None
        server = modes.server_of(None if name is None else str(name))
        if server is None or server.mode not in modes.names:
            key = str(name) if server is None else f"{server.name} ({server.mode} mode)"
            self.not_covered[key] = self.not_covered.get(key, 0) + 1
            return False, True
        return server, True

    def scope(self, scope: str) -> Iterator[Operation]:
        t = self.opts.target
        server, root_ok = self._server(scope)
        if server is False:
            return  # a server not configured, or a mode statekit does not cover: never written
        for ent in self.model.entities.values():
            if t not in ent.locators:
                continue
            root = root_of(self.model, ent)
            dst = self.records(ent, t, scope)
            if not root_ok:
                self.count(ent, len(dst))
                yield from self.orphan(ent, root, scope, dst)
                continue
            if not writable(ent, t) or ent.presence:
                if ent is root and t != root.authority:
                    # an instance's live copy: what pruning this entity's orphans is measured against
                    self.count(ent, len(dst), changeable=False)
                continue
            self.count(ent, len(dst))
            if self.opts.source not in ent.locators:
                continue
            if server is not None and ent.modes:
                skip = self.live_guard(ent, scope, server)
                if skip is not None:
                    kept = self.kept
                    would = list(self.entity(ent, scope, dst))
                    self.kept = kept
                    if would:  # listed only where the requested direction would have written something
                        skip.reason += f" ({len(would)} change{'s' if len(would) != 1 else ''} not made)"
                        self.skipped.append(skip)
                    continue
            yield from self.entity(ent, scope, dst)

    def count(self, ent: Entity, n: int, *, changeable: bool = True) -> None:
        """Existing target records of `ent`: what the guard measures its changes against, and (changeable) what
        this plan may overwrite or delete."""
        if changeable:
            self.target_records += n
        self.entity_records[ent.name] = self.entity_records.get(ent.name, 0) + n

    def live_guard(self, ent: Entity, scope: str, server: Any) -> Skipped | None:
        """Refuse, for one instance, a direction that writes onto its live copy or copies from a copy its mode
        does not read."""
        s, t = self.opts.source, self.opts.target
        live, _roles = ent.modes.get(server.mode, (ent.authority, {}))
        if t != live and s == live:
            return None
        if t == live:
            others = [o for o in ent.locators if o != live and (live, o) in RECONCILE_PAIRS]
            command = (self.opts.given.reconcile("--from", live, "--to", others[0], "--entity", ent.name) if others
                       else "none needed: the live copy is the one the server reads")  # fmt: skip
            reason = f"{t} holds its live {ent.name}, which reconcile never overwrites"
        else:
            command = self.opts.given.reconcile("--from", live, "--to", t, "--entity", ent.name)
            reason = f"{s} is not its live copy ({server.mode} mode reads {live})"
        return Skipped(ent.name, scope, server.name, server.mode, reason, command)

    def orphan(self, ent: Entity, root: Entity, scope: str, dst: dict[RecordKey, Record]) -> Iterator[Operation]:
        """An orphan scope: with --prune-orphans, the root deletes what the target holds there (a whole hash or
        folder, children with it); a child deletes its own records where the root has nothing to delete (a
        "Session" row whose instance is gone)."""
        t = self.opts.target
        if ent is root:
            if t == root.authority:
                return
            if self.opts.prune_orphans:
                for rest, rec in dst.items():
                    before = rec.stored if rec.stored is not None and not ent.presence else b""
                    yield Operation("delete", ent.name, scope, "/".join(rest) or None, rec.loc, before, None, None)
            else:
                self.kept += len(dst)
            return
        if t in root.locators and t != root.authority:
            return  # deleted with the root's record
        if not writable(ent, t):
            return
        if self.opts.prune_orphans:
            for rest, rec in dst.items():
                yield Operation("delete", ent.name, scope, "/".join(rest) or None, self._loc(ent, t, scope, rest, rec),
                                rec.stored, None, None)  # fmt: skip
        else:
            self.kept += len(dst)

    def _loc(self, ent: Entity, tier: str, scope: str, rest: RecordKey, rec: Record | None) -> tuple[str, ...]:
        row = ent.locators[tier].row_loc()
        if row is not None:
            return row
        assert rec is not None
        return rec.loc

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
            if have is not None and have.null:
                yield Operation("update", ent.name, scope, key, self._loc(ent, t, scope, rest, have), None, after,
                                rec.where)  # fmt: skip
                continue
            if have is None or have.stored is None:
                try:
                    loc = dst_loc.row_loc() or _render(ent, dst_loc, scope, rest, rec)
                except ValueError:
                    continue
                yield Operation("create", ent.name, scope, key, loc, None, after, rec.where)
                continue
            try:
                same = compare(rec.stored, src_loc.codec, have.stored, dst_loc.codec).equal
            except CodecError:
                same = False
            if not same:
                yield Operation("update", ent.name, scope, key, self._loc(ent, t, scope, rest, have), have.stored,
                                after, rec.where)  # fmt: skip
        for rest, have in sorted(dst.items()):
            if rest in src:
                continue
            if self.opts.prune_orphans and have.stored is not None:
                yield Operation("delete", ent.name, scope, "/".join(rest) or None,
                                self._loc(ent, t, scope, rest, have), have.stored, None, None)  # fmt: skip
            else:
                self.kept += 1


def build_plan(model: Model, sources: Mapping[str, Source], opts: ReconcileOptions) -> ReconcilePlan:
    """Plan the rebuild of `opts.target` from `opts.source` (reads only; the root authority is read too, to
    tell instances from orphans)."""
    model = model.select(opts.entities)
    check_pair(opts.source, opts.target, model, opts.entities)
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
    plan.skipped = [x.line() for x in planner.skipped]
    plan.skipped_items = planner.skipped
    plan.not_covered = dict(planner.not_covered)
    plan.entity_records = dict(planner.entity_records)
    return plan


def guard(plan: ReconcilePlan, max_change_ratio: float, force: bool) -> None:
    """Refuse a plan that overwrites or deletes more than the allowed share of one entity's target records."""
    if force or not plan.ops:
        return
    share, entity, changed, there = plan.largest_change()
    if share > max_change_ratio:
        raise Refused(
            f"plan would overwrite or delete {share:.0%} of the {plan.target} {entity} records ({changed} of "
            f"{there}), over --max-change-ratio {max_change_ratio:g}: check the plan, then pass "
            f"--force to override the limit (or --max-change-ratio {needed_ratio(plan)})"
        )


def needed_ratio(plan: ReconcilePlan) -> str:
    """The smallest --max-change-ratio (as typed) that lets this plan through."""
    ratio = plan.change_ratio
    text = f"{ratio:.2f}".rstrip("0").rstrip(".")
    while float(text) < ratio:  # rounded down: the next hundredth up
        text = f"{float(text) + 0.01:.2f}".rstrip("0").rstrip(".")
    return text


def plan_file_problem(doc: Any) -> str | None:
    """What makes a document (a saved --plan-out file) unusable as a reconcile plan, else None."""
    if not isinstance(doc, dict):
        return "it is not a JSON object"
    if doc.get("plan_schema") != PLAN_SCHEMA:
        found = doc.get("plan_schema")
        return f"plan_schema is {found!r}, expected {PLAN_SCHEMA!r}" if found else f"no plan_schema {PLAN_SCHEMA!r}"
    for key in ("from", "to"):
        if doc.get(key) not in TIERS:
            return f'"{key}" is {doc.get(key)!r}, not a tier ({", ".join(TIERS)})'
    if (doc["from"], doc["to"]) not in RECONCILE_PAIRS:
        return f"{doc['from']} -> {doc['to']} is not a direction reconcile rebuilds"
    for key in ("entities", "modes"):
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f'"{key}" is not a list of names'
    if not isinstance(doc.get("prune_orphans", False), bool):
        return '"prune_orphans" is not true or false'
    if not isinstance(doc.get("target_location"), (str, type(None))):
        return '"target_location" is not a string'
    ops = doc.get("ops")
    if not isinstance(ops, list):
        return 'no "ops" list'
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            return f"ops[{i}] is not an object"
        if op.get("op") not in _MARKS:
            return f"ops[{i}].op is {op.get('op')!r}, not one of {', '.join(_MARKS)}"
        for key in ("entity", "id"):
            if not isinstance(op.get(key), str):
                return f'ops[{i}] has no "{key}"'
        loc = op.get("loc")
        if not isinstance(loc, list) or not loc or not all(isinstance(x, str) for x in loc):
            return f'ops[{i}] has no "loc" list'
        for key in ("key", "before_sha256", "after_sha256"):
            if not isinstance(op.get(key), (str, type(None))):
                return f"ops[{i}].{key} is not a string or null"
    return None


def plan_lines(plan: ReconcilePlan, examples: int = 5) -> list[str]:
    """The plan for a person: counts, then the first examples of each kind."""
    c = plan.counts
    share, entity, changed, there = plan.largest_change()
    if entity:
        shown_share = f"{share:.1%} of the existing {plan.target} {entity} records changed: {changed} of {there}"
    else:
        shown_share = f"none of {plan.target_records} existing {plan.target} records changed"
    lines = [
        f"reconcile {plan.source} -> {plan.target} ({', '.join(plan.entities)}): "
        f"+{c['create']} create  ~{c['update']} update  -{c['delete']} delete  ({shown_share})"
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
    if plan.skipped_items:
        lines.append(
            f"  skipped {len(plan.skipped_items)} (never written from a copy that is not live, or onto a live one):"
        )
        for item in plan.skipped_items[:examples]:
            lines.append(f"    {item.line()}")
        if len(plan.skipped_items) > examples:
            lines.append(f"    … and {len(plan.skipped_items) - examples} more skipped")
        commands = list(dict.fromkeys(item.command for item in plan.skipped_items))
        lines.extend(f"  to repair the skipped ones: {c}" for c in commands[:4])
    for server, n in plan.not_covered.items():
        lines.append(f"  {n} instances of server {server} not written (no configured server, or a mode not covered)")
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
