"""The findings engine: compare what the tiers hold, entity by entity and scope by scope.

Classes of finding: `missing` (absent from a tier that should hold it), `orphan` (present without its
authority), `mismatch` (values differ; `fields` are JSON paths), `unparseable` (a name or value that fits the
model nowhere), and `transient` (gone when re-checked after a short delay: caught mid-write, not drift).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from statekit.audit.codecs import CodecError, Comparison, canonical, compare
from statekit.audit.entities import TIERS, Entity, Model
from statekit.audit.readers import Record, RecordKey, TierData, Unparseable
from statekit.model import Progress, no_progress

FINDING_CLASSES = ("missing", "orphan", "mismatch", "unparseable", "transient")
DRIFT_CLASSES = ("missing", "orphan", "mismatch", "unparseable")


@dataclass
class Finding:
    """One disagreement between tiers. Never carries a value, only where it is and which fields differ."""

    cls: str
    entity: str
    id: str | None
    key: str | None
    tier: str
    where: str | None = None
    fields: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def identity(self) -> tuple[str, str, str | None, str | None, str]:
        """What makes two findings the same finding across re-checks."""
        return (self.cls, self.entity, self.id, self.key, self.tier)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return {
            "class": self.cls,
            "entity": self.entity,
            "id": self.id,
            "key": self.key,
            "tier": self.tier,
            "where": self.where,
            "fields": list(self.fields),
            "detail": self.detail,
        }


class Source(Protocol):
    """A tier as the audit sees it: live (readers.py) or from an archive (archive_reader.py)."""

    tier: str
    unparseable: list[Unparseable]

    def list_scopes(self) -> set[str]: ...

    def load(self, scopes: Iterable[str]) -> TierData: ...


@dataclass
class AuditOptions:
    """What the user asked an audit to do."""

    keys_only: bool = False
    recheck_rounds: int = 1
    recheck_delay: float = 0.5
    batch: int = 500


@dataclass
class AuditResult:
    """Findings plus what was compared."""

    findings: list[Finding]
    tiers: list[str]
    entities: list[str]
    scopes: int = 0
    values: int = 0
    duration_s: float = 0.0
    keys_only: bool = False

    @property
    def drift(self) -> bool:
        """True when any finding is real drift (transient findings are not)."""
        return any(f.cls in DRIFT_CLASSES for f in self.findings)


def _root(model: Model, ent: Entity) -> Entity:
    while ent.parent is not None:
        ent = model.entities[ent.parent]
    return ent


def _key_text(rest: RecordKey) -> str | None:
    return "/".join(rest) if rest else None


class _ScopeComparer:
    """Compares the records of one batch of scopes across the tiers present."""

    def __init__(self, model: Model, data: dict[str, TierData], keys_only: bool) -> None:
        self.model = model
        self.data = data
        self.keys_only = keys_only
        self.values = 0

    def has_scope(self, tier: str, scope: str) -> bool:
        d = self.data.get(tier)
        return d is not None and d.has_scope(scope)

    def records(self, ent: Entity, tier: str, scope: str) -> dict[RecordKey, Record]:
        d = self.data.get(tier)
        return (d.scope_records(ent.name, scope) if d else None) or {}

    def root_present(self, root: Entity, scope: str) -> bool:
        return any(not r.null for r in self.records(root, root.authority, scope).values())

    def scope(self, scope: str) -> Iterator[Finding]:
        roots_ok: dict[str, bool] = {}
        for ent in self.model.entities.values():
            root = _root(self.model, ent)
            if root.name not in roots_ok:
                roots_ok[root.name] = root.authority in self.data and self.root_present(root, scope)
            if ent.parent is not None and not roots_ok[root.name]:
                continue  # orphans are reported once, by the root entity
            yield from self.entity(ent, scope, roots_ok[root.name])
        yield from self.checks(scope)

    def expected(self, ent: Entity, tier: str, scope: str) -> bool:
        role = ent.locators[tier].role
        return role == "required" or (role == "optional" and self.has_scope(tier, scope))

    def entity(self, ent: Entity, scope: str, root_ok: bool) -> Iterator[Finding]:
        tiers = [t for t in TIERS if t in ent.locators and t in self.data]
        per = {t: self.records(ent, t, scope) for t in tiers}
        keys: set[RecordKey] = set()
        for recs in per.values():
            keys.update(recs)
        if len(ent.vars) == 1 and ent.parent is not None and root_ok:
            keys.add(())  # one record per scope: its absence everywhere is still a finding
        auth = ent.authority
        for rest in sorted(keys):
            present = {t: per[t][rest] for t in tiers if rest in per[t] and not per[t][rest].null}
            nulls = {t: per[t][rest] for t in tiers if rest in per[t] and per[t][rest].null}
            self.values += len(present)
            key = _key_text(rest)
            if auth not in present and (ent.parent is None and not (ent.presence and root_ok)):
                if auth in self.data:
                    for t, rec in present.items():
                        yield Finding("orphan", ent.name, scope, key, t, rec.where, [],
                                      f"in {t} but not in the authority ({auth})")  # fmt: skip
                continue
            ref_tier = auth if auth in present else next(iter(present), None)
            for t in tiers:
                if t in present:
                    if ref_tier is not None and t != ref_tier:
                        yield from self.compare(ent, scope, key, ref_tier, present[ref_tier], t, present[t])
                elif self.expected(ent, t, scope) and not (ent.presence and ent.require_any and t != auth):
                    rec = nulls.get(t)
                    detail = "value is NULL" if rec else f"absent from {t}"
                    loc = ent.locators[t]
                    yield Finding("missing", ent.name, scope, key, t, rec.where if rec else loc.describe(), [], detail)
            if ent.require_any and auth in present and not any(t in present for t in ent.require_any):
                yield Finding("missing", ent.name, scope, key, "+".join(ent.require_any), None, [],
                              f"in neither {' nor '.join(ent.require_any)}")  # fmt: skip

    def compare(
        self, ent: Entity, scope: str, key: str | None, ta: str, ra: Record, tb: str, rb: Record
    ) -> Iterator[Finding]:
        if ent.presence or self.keys_only or ra.stored is None or rb.stored is None:
            return
        ca, cb = ent.locators[ta].codec, ent.locators[tb].codec
        try:
            result: Comparison = compare(ra.stored, ca, rb.stored, cb)
        except CodecError:
            for t, rec, codec in ((ta, ra, ca), (tb, rb, cb)):
                try:
                    canonical(codec, rec.stored or b"")
                except CodecError as exc:
                    yield Finding("unparseable", ent.name, scope, key, t, rec.where, [],
                                  f"value does not decode as {codec.name}: {str(exc)[:120]}")  # fmt: skip
            return
        if not result.equal:
            yield Finding("mismatch", ent.name, scope, key, tb, rb.where, list(result.paths),
                          f"differs from {ta} ({ra.where})")  # fmt: skip

    def checks(self, scope: str) -> Iterator[Finding]:
        for check in self.model.checks:
            ent = self.model.entities[check.entity]
            for rest, rec in self.records(ent, ent.authority, scope).items():
                if rec.extra is None or str(rec.extra.get(check.column)) != check.equals:
                    continue
                usable = False
                for name in check.requires_any:
                    req = self.model.entities[name]
                    for t in req.locators:
                        if any(not r.null for r in self.records(req, t, scope).values()):
                            usable = True
                if not usable:
                    yield Finding("mismatch", ent.name, scope, _key_text(rest), ent.authority, rec.where,
                                  [f"$.{check.column}"], check.message)  # fmt: skip


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _unparseable_findings(items: Iterable[Unparseable]) -> list[Finding]:
    return [Finding("unparseable", u.entity, u.scope, None, u.tier, u.where, [], u.detail) for u in items]


def compare_scopes(
    model: Model, sources: dict[str, Source], scopes: list[str], opts: AuditOptions
) -> tuple[list[Finding], int]:
    """Findings for these scopes (values are loaded batch by batch) and the number of values compared."""
    findings: list[Finding] = []
    values = 0
    for batch in _chunks(scopes, max(1, opts.batch)):
        data = {t: s.load(batch) for t, s in sources.items()}
        comparer = _ScopeComparer(model, data, opts.keys_only)
        for d in data.values():
            findings.extend(_unparseable_findings(d.unparseable))
        for scope in batch:
            findings.extend(comparer.scope(scope))
        values += comparer.values
    return findings, values


def run_audit(
    model: Model,
    sources: dict[str, Source],
    opts: AuditOptions,
    *,
    refresh: Any = None,
    progress: Progress = no_progress,
) -> AuditResult:
    """Audit the sources against each other. `refresh(scopes)` (live tiers only) re-lists the given scopes
    before a re-check round; without it re-checks are skipped."""
    started = time.monotonic()
    all_scopes: set[str] = set()
    for tier, src in sources.items():
        all_scopes |= src.list_scopes()
        progress(tier, len(all_scopes), 0)
    findings = _unparseable_findings(u for s in sources.values() for u in s.unparseable)
    scopes = sorted(all_scopes)
    found, values = compare_scopes(model, sources, scopes, opts)
    findings.extend(found)
    if refresh is not None and opts.recheck_rounds > 0:
        findings = _recheck(model, sources, opts, findings, refresh)
    order = {name: i for i, name in enumerate(model.entities)}
    findings.sort(key=lambda f: (order.get(f.entity, 99), FINDING_CLASSES.index(f.cls), f.id or "", f.key or ""))
    return AuditResult(
        findings,
        list(sources),
        list(model.entities),
        scopes=len(scopes),
        values=values,
        duration_s=time.monotonic() - started,
        keys_only=opts.keys_only,
    )


def _recheck(
    model: Model, sources: dict[str, Source], opts: AuditOptions, findings: list[Finding], refresh: Any
) -> list[Finding]:
    """Re-read the scopes of suspect findings after a delay; a finding that is gone becomes `transient`."""
    suspects = {f.identity: f for f in findings if f.cls in DRIFT_CLASSES and f.id is not None}
    for _ in range(opts.recheck_rounds):
        if not suspects:
            break
        time.sleep(max(0.0, opts.recheck_delay))
        scopes = sorted({f.id for f in suspects.values() if f.id is not None})
        refresh(scopes)
        again, _ = compare_scopes(model, sources, scopes, opts)
        wanted = set(scopes)
        again.extend(_unparseable_findings(u for s in sources.values() for u in s.unparseable if u.scope in wanted))
        still = {f.identity for f in again}
        for ident in list(suspects):
            if ident not in still:
                f = suspects.pop(ident)
                f.detail = f"was {f.cls}, gone on re-check: {f.detail}"
                f.cls = "transient"
    return findings
