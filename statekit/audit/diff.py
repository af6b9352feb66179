"""The findings engine: compare what the tiers hold, entity by entity and scope by scope.

Classes of finding: `missing` (absent from a tier that should hold it), `orphan` (present without its
authority), `mismatch` (values differ; `fields` are JSON paths), `unparseable` (a name or value that fits the
model nowhere), and `transient` (gone when re-checked after a short delay: caught mid-write, not drift).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from statekit.audit.codecs import CodecError, Comparison, canonical, compare
from statekit.audit.entities import TIERS, Entity, Model
from statekit.audit.readers import Record, RecordKey, TierData, Unparseable
from statekit.errors import StatekitError, TierError
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
    tally: bool = False  # also count ids per entity and tier, and complete ones (for --metrics-file)
    # Worker processes for the batches (0: one per CPU, at most 4; 1: none). Used on Linux
    # with at least two batches per worker.
    jobs: int = 0
    # How a re-check round waits its recheck_delay: the moment between a pass and its re-check (a test
    # passes its own to finish a write exactly then).
    pause: Callable[[float], None] = time.sleep


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
    # (entity, tier) -> ids with at least one non-null record there
    entity_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    # ids whose root exists in the authority, and of those the ones complete in every entity's authority
    roots: int = 0
    complete: int = 0

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
        # Per entity: its root and the tiers to compare; per (entity, tier): scope -> records.
        self._roots = {name: _root(model, ent) for name, ent in model.entities.items()}
        self._tiers = {
            name: [t for t in TIERS if t in ent.locators and t in data] for name, ent in model.entities.items()
        }
        self._by = {(name, t): per for t, d in data.items() for name, per in d.records.items()}

    def has_scope(self, tier: str, scope: str) -> bool:
        d = self.data.get(tier)
        return d is not None and d.has_scope(scope)

    def records(self, ent: Entity, tier: str, scope: str) -> dict[RecordKey, Record]:
        per = self._by.get((ent.name, tier))
        return (per.get(scope) if per else None) or {}

    def root_present(self, root: Entity, scope: str) -> bool:
        return any(not r.null for r in self.records(root, root.authority, scope).values())

    def tally(self, scope: str, counts: dict[tuple[str, str], int]) -> tuple[bool, bool]:
        """Count where this id has records, and whether its state is complete in each entity's authority."""
        rooted = complete = False
        for ent in self.model.entities.values():
            present_in_authority = False
            for tier in ent.locators:
                if any(not r.null for r in self.records(ent, tier, scope).values()):
                    counts[(ent.name, tier)] = counts.get((ent.name, tier), 0) + 1
                    present_in_authority = present_in_authority or tier == ent.authority
            if ent.parent is None and present_in_authority:
                rooted = complete = True
        if rooted:
            complete = all(
                any(not r.null for r in self.records(ent, ent.authority, scope).values())
                for ent in self.model.entities.values()
                if ent.authority in ent.locators
            )
        return rooted, complete

    def scope(self, scope: str) -> Iterator[Finding]:
        roots_ok: dict[str, bool] = {}
        for ent in self.model.entities.values():
            root = self._roots[ent.name]
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
        tiers = self._tiers[ent.name]
        per = {t: self.records(ent, t, scope) for t in tiers}
        # db rows with a NULL value count as absent (they are reported as such).
        nulls: dict[str, dict[RecordKey, Record]] = {}
        for t in tiers:
            if t == "db" and any(r.null for r in per[t].values()):
                nulls[t] = {k: r for k, r in per[t].items() if r.null}
                per[t] = {k: r for k, r in per[t].items() if not r.null}
        keys: set[RecordKey] = set()
        for t in tiers:
            keys.update(per[t])
            self.values += len(per[t])
        if len(ent.vars) == 1 and ent.parent is not None and root_ok:
            keys.add(())  # one record per scope: its absence everywhere is still a finding
        auth = ent.authority
        auth_recs = per.get(auth, {})
        if ent.parent is None and not (ent.presence and root_ok):
            # Without a parent, what the authority lacks is an orphan wherever it is.
            if auth in self.data:
                for t in tiers:
                    if t == auth:
                        continue
                    for rest in per[t].keys() - auth_recs.keys():
                        yield Finding("orphan", ent.name, scope, _key_text(rest), t, per[t][rest].where, [],
                                      f"in {t} but not in the authority ({auth})")  # fmt: skip
            keys &= auth_recs.keys()
        for t in tiers:
            if ent.presence and ent.require_any and t != auth:
                continue
            absent = keys - per[t].keys()
            if absent and self.expected(ent, t, scope):
                loc = ent.locators[t]
                for rest in sorted(absent):
                    rec = nulls.get(t, {}).get(rest)
                    detail = "value is NULL" if rec else f"absent from {t}"
                    yield Finding("missing", ent.name, scope, _key_text(rest), t,
                                  rec.where if rec else loc.describe(), [], detail)  # fmt: skip
        if ent.require_any and not any(per[t] for t in ent.require_any if t in per):
            for rest in sorted(auth_recs):
                yield Finding("missing", ent.name, scope, _key_text(rest), "+".join(ent.require_any), None, [],
                              f"in neither {' nor '.join(ent.require_any)}")  # fmt: skip
        if ent.presence or self.keys_only:
            return
        for i, ta in enumerate(tiers):
            recs_a = per[ta]
            if not recs_a:
                continue
            # Compare each tier with the authority; records the authority lacks with the first tier having them.
            for tb in tiers[i + 1 :]:
                recs_b = per[tb]
                common = recs_a.keys() & recs_b.keys()
                if ta != auth and tb != auth:
                    common -= auth_recs.keys()
                first, second = (tb, ta) if tb == auth else (ta, tb)
                yield from self.compare_many(ent, scope, common, first, per[first], second, per[second])

    def compare_many(
        self,
        ent: Entity,
        scope: str,
        keys: set[RecordKey],
        ta: str,
        recs_a: dict[RecordKey, Record],
        tb: str,
        recs_b: dict[RecordKey, Record],
    ) -> Iterator[Finding]:
        """Compare many records cheaply: equal bytes, then equal peeled bytes; the rest go to `compare`."""
        ca, cb = ent.locators[ta].codec, ent.locators[tb].codec
        same = ca.name == cb.name
        peel_a = None if ca.name in ("raw", "json") else ca.peel
        peel_b = None if cb.name in ("raw", "json") else cb.peel
        for rest in keys:
            ra, rb = recs_a[rest], recs_b[rest]
            a, b = ra.stored, rb.stored
            if a is None or b is None or (same and a == b):
                continue
            try:
                if (peel_a(a) if peel_a else a) == (peel_b(b) if peel_b else b):
                    continue
            except CodecError:
                pass
            yield from self.compare(ent, scope, _key_text(rest), ta, ra, tb, rb)

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
    model: Model,
    sources: dict[str, Source],
    scopes: list[str],
    opts: AuditOptions,
    tally: AuditResult | None = None,
) -> tuple[list[Finding], int]:
    """Findings for these scopes (values are loaded batch by batch) and the number of values compared; with
    `tally`, also count per entity and tier where the ids have records, and how many are complete."""
    batches = list(_chunks(scopes, max(1, opts.batch)))
    jobs = _worker_count(opts, len(batches))
    if jobs > 1:
        return _compare_in_workers(model, sources, batches, opts, tally, jobs)
    return _compare_batches(model, sources, batches, opts, tally)


def _worker_count(opts: AuditOptions, batches: int) -> int:
    """How many worker processes to fork: only on Linux (macOS system libraries are not fork-safe), and
    never while other threads run (a fork copies only the calling thread, so a lock another thread holds
    would stay locked in the child)."""
    jobs = opts.jobs or min(os.cpu_count() or 1, 4)
    if jobs < 2 or not sys.platform.startswith("linux") or threading.active_count() > 1:
        return 1
    return min(jobs, batches // 2)


def _compare_in_workers(
    model: Model,
    sources: dict[str, Source],
    batches: list[list[str]],
    opts: AuditOptions,
    tally: AuditResult | None,
    jobs: int,
) -> tuple[list[Finding], int]:
    """compare_scopes over forked workers, each taking every jobs-th batch: the comparison is Python work, so
    one process only ever uses one core. Each worker opens its own connections and sends back its findings,
    value count and tally; an error in a worker is raised here."""
    children: list[tuple[int, int]] = []
    try:
        for k in range(jobs):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker
                os.close(read_fd)
                _worker(model, sources, batches[k::jobs], opts, tally is not None, write_fd)
            os.close(write_fd)
            children.append((pid, read_fd))
        results: list[tuple[Any, ...]] = []
        for pid, read_fd in children:
            with os.fdopen(read_fd, "rb") as fh:
                payload = fh.read()
            os.waitpid(pid, 0)
            results.append(pickle.loads(payload) if payload else ("error", TierError("an audit worker died")))
        children = []
    finally:
        for pid, read_fd in children:  # interrupted: stop the workers that are left
            with contextlib.suppress(OSError):
                os.close(read_fd)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
    findings: list[Finding] = []
    values = 0
    for result in results:
        if result[0] == "error":
            raise result[1]
        _, found, count, counts, roots, complete = result
        findings.extend(found)
        values += count
        if tally is not None:
            for key, n in counts.items():
                tally.entity_counts[key] = tally.entity_counts.get(key, 0) + n
            tally.roots += roots
            tally.complete += complete
    return findings, values


def _worker(
    model: Model, sources: dict[str, Source], batches: list[list[str]], opts: AuditOptions, tally: bool, fd: int
) -> NoReturn:
    """The body of a forked worker: compare its batches, write the pickled result to fd, exit."""
    result: tuple[Any, ...]
    try:
        for src in sources.values():
            after_fork = getattr(src, "after_fork", None)
            if after_fork is not None:
                after_fork()
        sub = AuditResult([], [], [])
        found, count = _compare_batches(model, sources, batches, opts, sub if tally else None)
        result = ("ok", found, count, sub.entity_counts, sub.roots, sub.complete)
    except BaseException as exc:
        result = ("error", exc if isinstance(exc, StatekitError) else TierError(f"audit worker: {exc!r}"))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pickle.dumps(result))
    finally:
        os._exit(0)  # no cleanup of the parent's objects: its connections and files stay its own


def _compare_batches(
    model: Model,
    sources: dict[str, Source],
    batches: list[list[str]],
    opts: AuditOptions,
    tally: AuditResult | None = None,
) -> tuple[list[Finding], int]:
    findings: list[Finding] = []
    values = 0
    if not batches:
        return findings, values

    def load(batch: list[str]) -> dict[str, TierData]:
        return {t: s.load(batch) for t, s in sources.items()}

    # With values, the next batch loads on a helper thread (socket and file reads release the GIL) while this
    # one compares. Keys only, loading is Python work: a second thread would only contend for the GIL.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="statekit-load") as ex:
        pending = ex.submit(load, batches[0]) if not opts.keys_only else None
        for i, batch in enumerate(batches):
            if pending is None:
                data = load(batch)
            else:
                data = pending.result()
                if i + 1 < len(batches):
                    pending = ex.submit(load, batches[i + 1])
            comparer = _ScopeComparer(model, data, opts.keys_only)
            for d in data.values():
                findings.extend(_unparseable_findings(d.unparseable))
            for scope in batch:
                findings.extend(comparer.scope(scope))
                if tally is not None:
                    rooted, complete = comparer.tally(scope, tally.entity_counts)
                    tally.roots += rooted
                    tally.complete += complete
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
    tally = AuditResult([], [], [])
    found, values = compare_scopes(model, sources, scopes, opts, tally if opts.tally else None)
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
        entity_counts=tally.entity_counts,
        roots=tally.roots,
        complete=tally.complete,
    )


def _recheck(
    model: Model, sources: dict[str, Source], opts: AuditOptions, findings: list[Finding], refresh: Any
) -> list[Finding]:
    """Re-read the scopes of suspect findings after a delay; a finding that is gone becomes `transient`."""
    suspects = {f.identity: f for f in findings if f.cls in DRIFT_CLASSES and f.id is not None}
    for _ in range(opts.recheck_rounds):
        if not suspects:
            break
        opts.pause(max(0.0, opts.recheck_delay))
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
