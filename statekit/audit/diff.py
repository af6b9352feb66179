"""The findings engine: compare what the tiers hold, entity by entity and scope by scope, batch by batch
(in forked workers where that pays), re-check suspects, and sum it all up in one AuditResult.

The finding model is in findings.py, the comparison of one batch of scopes in compare.py.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

from statekit.audit.compare import ScopeComparer
from statekit.audit.entities import Model
from statekit.audit.findings import (
    DRIFT_CLASSES,
    FINDING_CLASSES,
    AuditOptions,
    AuditResult,
    Finding,
    chunks,
    unparseable_findings,
)
from statekit.audit.sources.records import Source, TierData
from statekit.errors import StatekitError, TierError
from statekit.model import Progress, no_progress, usable_cores


def compare_scopes(
    model: Model,
    sources: Mapping[str, Source],
    scopes: list[str],
    opts: AuditOptions,
    tally: AuditResult | None = None,
) -> tuple[list[Finding], int]:
    """Findings for these scopes (values are loaded batch by batch) and the number of values compared; with
    `tally`, also count per entity and tier where the ids have records, and how many are complete."""
    # Scopes can be small (20 keys) or large (a real Baileys key set: 800+ keys); a few large scopes still make
    # enough batches to share among the workers.
    workers = opts.jobs or usable_cores()
    size = min(opts.batch, max(20, -(-len(scopes) // (4 * max(1, workers)))))
    batches = list(chunks(scopes, max(1, size)))
    jobs = _worker_count(opts, len(batches))
    if jobs > 1:
        return _compare_in_workers(model, sources, batches, opts, tally, jobs)
    return _compare_batches(model, sources, batches, opts, tally)


def _worker_count(opts: AuditOptions, batches: int) -> int:
    """How many worker processes to fork: only on Linux (macOS system libraries are not fork-safe), and
    never while other threads run (a fork copies only the calling thread, so a lock another thread holds
    would stay locked in the child)."""
    jobs = opts.jobs or usable_cores()
    if jobs < 2 or not sys.platform.startswith("linux") or threading.active_count() > 1:
        return 1
    return min(jobs, batches // 2)


def _compare_in_workers(
    model: Model,
    sources: Mapping[str, Source],
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
        _, found, count, counts, roots, complete, servers, records = result
        findings.extend(found)
        values += count
        if tally is not None:
            tally.merge_servers(servers)
            for key, n in counts.items():
                tally.entity_counts[key] = tally.entity_counts.get(key, 0) + n
            for key, n in records.items():
                tally.record_counts[key] = tally.record_counts.get(key, 0) + n
            tally.roots += roots
            tally.complete += complete
    return findings, values


def _worker(
    model: Model, sources: Mapping[str, Source], batches: list[list[str]], opts: AuditOptions, tally: bool, fd: int
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
        result = ("ok", found, count, sub.entity_counts, sub.roots, sub.complete, sub.servers, sub.record_counts)
    except BaseException as exc:
        result = ("error", exc if isinstance(exc, StatekitError) else TierError(f"audit worker: {exc!r}"))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pickle.dumps(result))
    finally:
        os._exit(0)  # no cleanup of the parent's objects: its connections and files stay its own


def _compare_batches(
    model: Model,
    sources: Mapping[str, Source],
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
            comparer = ScopeComparer(model, data, opts.keys_only, opts.given)
            for d in data.values():
                findings.extend(unparseable_findings(d.unparseable))
            for scope in batch:
                findings.extend(comparer.scope(scope))
                if tally is not None:
                    rooted, complete = comparer.tally(scope, tally.entity_counts, tally.record_counts)
                    tally.roots += rooted
                    tally.complete += complete
            values += comparer.values
            if tally is not None:
                tally.merge_servers(comparer.servers)
    return findings, values


def run_audit(
    model: Model,
    sources: Mapping[str, Source],
    opts: AuditOptions,
    *,
    refresh: Any = None,
    progress: Progress = no_progress,
) -> AuditResult:
    """Audit the sources against each other. `refresh(scopes)` (live tiers only) re-lists the given scopes
    before a re-check round; without it re-checks are skipped."""
    started = time.monotonic()
    all_scopes: set[str] = set()
    tier_ids: dict[str, int] = {}
    for tier, src in sources.items():
        listed = src.list_scopes()
        tier_ids[tier] = len(listed)
        all_scopes |= listed
        progress(tier, len(all_scopes), 0)
    findings = unparseable_findings(u for s in sources.values() for u in s.unparseable)
    scopes = sorted(all_scopes)
    tally = AuditResult([], [], [])
    found, values = compare_scopes(model, sources, scopes, opts, tally)
    findings.extend(found)
    if refresh is not None and opts.recheck_rounds > 0:
        findings = _recheck(model, sources, opts, findings, refresh)
    findings = _collapse_empty_tiers(model, findings, tier_ids, tally, opts)
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
        record_counts=tally.record_counts,
        roots=tally.roots,
        complete=tally.complete,
        servers=tally.servers,
        tier_ids=tier_ids,
    )


def _collapse_empty_tiers(
    model: Model, findings: list[Finding], tier_ids: dict[str, int], tally: AuditResult, opts: AuditOptions
) -> list[Finding]:
    """A tier that holds nothing at all while the model expects records there (Redis flushed, an empty files
    root) is one finding that names the tier, not one per id."""
    out = list(findings)
    roots = [e for e in model.entities.values() if e.parent is None]
    root_name = roots[0].name if roots else "tier"
    nouns = model.modes.tier_nouns if model.modes else {}
    root_noun = model.modes.root_noun if model.modes else "ids"
    for tier, n in tier_ids.items():
        if n:
            continue
        gone = [f for f in out if f.cls == "missing" and f.tier == tier and f.id is not None]
        if not gone:
            continue
        affected = len({f.id for f in gone})
        noun = nouns.get(tier, "record")
        detail = (f"{tier} holds no {noun} at all; the authority has {tally.roots:,} {root_noun}, "
                  f"{affected:,} of them expect records in {tier} ({len(gone):,} missing records)")  # fmt: skip
        out = [f for f in out if not (f.cls == "missing" and f.tier == tier and f.id is not None)]
        repair = f"{opts.given.restore(tier)} (from the last good snapshot)"
        out.insert(0, Finding("missing", root_name, None, None, tier, _tier_location(model, tier), [], detail, repair))
    return out


def _tier_location(model: Model, tier: str) -> str:
    """The whole tier for a person, e.g. "the database"."""
    loc = next((e.locators[tier] for e in model.entities.values() if tier in e.locators), None)
    return loc.place if loc is not None and loc.place else tier


def _recheck(
    model: Model, sources: Mapping[str, Source], opts: AuditOptions, findings: list[Finding], refresh: Any
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
        again.extend(unparseable_findings(u for s in sources.values() for u in s.unparseable if u.scope in wanted))
        still = {f.identity for f in again}
        for ident in list(suspects):
            if ident not in still:
                f = suspects.pop(ident)
                f.detail = f"was {f.cls}, gone on re-check: {f.detail}"
                f.cls = "transient"
    return findings
