"""The findings engine: compare what the tiers hold, entity by entity and scope by scope.

Classes of finding: `missing` (absent from a tier that should hold it), `orphan` (present without its
authority), `mismatch` (values differ; `fields` are JSON paths), `unparseable` (a name or value that fits the
model nowhere), and `transient` (gone when re-checked after a short delay: caught mid-write, not drift).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _encode_basestring
from typing import Any, NoReturn, Protocol

from statekit.audit.codecs import CodecError, Comparison, canonical, compare
from statekit.audit.entities import TIERS, Entity, Model
from statekit.audit.readers import Record, RecordKey, TierData, Unparseable
from statekit.audit.repairs import repair_command
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
    repair: str = ""  # the command (or step) that repairs it

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
            "repair": self.repair,
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
    pause: Callable[[float], None] = field(default=lambda seconds: time.sleep(seconds))


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
    # (entity, tier) -> records there (a key set counts each key)
    record_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    # ids whose root exists in the authority, and of those the ones complete in every entity's authority
    roots: int = 0
    complete: int = 0
    # with modes: per server, its mode and readiness counts (see ServerTally)
    servers: dict[str, ServerTally] = field(default_factory=dict)
    # tier -> how many ids it holds anything for (from the listing pass)
    tier_ids: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the header should say besides the counts

    def merge_servers(self, servers: dict[str, ServerTally]) -> None:
        """Add per-server counts (from one batch or one worker)."""
        for name, tally in servers.items():
            have = self.servers.get(name)
            if have is None:
                self.servers[name] = ServerTally(tally.name, tally.mode, tally.origin, tally.prefix, tally.covered)
                have = self.servers[name]
            have.merge(tally)

    @property
    def readiness(self) -> tuple[int, int]:
        """(ready, sessions) over the covered servers: instances that would boot without a new pairing, of
        the instances that should boot paired."""
        covered = [t for t in self.servers.values() if t.covered]
        return sum(t.ready for t in covered), sum(t.sessions for t in covered)

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


def concrete_where(ent: Entity, tier: str, scope: str, rest: RecordKey = ()) -> str:
    """The location of one record (or, without `rest`, of the scope) in a tier: the key, path or row, not
    the template."""
    loc = ent.locators[tier]
    values = dict(zip(ent.vars, (scope, *rest)))
    if tier == "db":
        return f'"{loc.table}" {loc.key_columns[0]}={scope}' + (f".{loc.value_column}" if loc.value_column else "")
    assert loc.template is not None
    try:
        if tier == "redis":
            name = loc.template.render({v: values.get(v, "*") for v in loc.template.vars})
            if loc.hash_field is not None:
                if all(v in values for v in loc.hash_field.vars):
                    return f"{name} [{loc.hash_field.render(values)}]"
                return name
            return name
        if not all(v in values for v in loc.template.vars):
            # the scope's directory: the path components that need nothing but the scope
            head = []
            for part in loc.template.text.split("/"):
                if "{" in part.replace("{" + ent.scope_var + "}", ""):
                    break
                head.append(part.replace("{" + ent.scope_var + "}", scope))
            return "/".join(head) + "/"
        return loc.template.render(values)
    except (ValueError, KeyError):
        return loc.describe()


@dataclass
class ServerTally:
    """Per server: its mode, how many scopes (instances) it owns, how many have a session (should boot
    paired) and how many of those would boot without a new pairing (ready)."""

    name: str
    mode: str
    origin: str
    prefix: str | None
    covered: bool = True
    instances: int = 0
    sessions: int = 0
    ready: int = 0

    def merge(self, other: ServerTally) -> None:
        """Add another worker's counts."""
        self.instances += other.instances
        self.sessions += other.sessions
        self.ready += other.ready

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return {"server": self.name, "mode": self.mode, "origin": self.origin, "prefix": self.prefix,
                "covered": self.covered, "instances": self.instances, "sessions": self.sessions,
                "ready": self.ready}  # fmt: skip


class _View:
    """The entities of one mode (or of a model without modes) with what the comparer needs of each."""

    def __init__(self, model: Model, tiers_present: Iterable[str]) -> None:
        present = set(tiers_present)
        self.model = model
        self.roots = {name: _root(model, ent) for name, ent in model.entities.items()}
        self.tiers = {
            name: [t for t in TIERS if t in ent.locators and t in present] for name, ent in model.entities.items()
        }


class _ScopeComparer:
    """Compares the records of one batch of scopes across the tiers present. With modes, each scope is
    compared as its server's mode sees it (which tier is live, which copies are stale)."""

    def __init__(self, model: Model, data: dict[str, TierData], keys_only: bool) -> None:
        self.model = model
        self.data = data
        self.keys_only = keys_only
        self.values = 0
        self._by = {(name, t): per for t, d in data.items() for name, per in d.records.items()}
        self._base = _View(model, data)
        self._views: dict[str, _View] = {}
        self.view = self._base
        self.servers: dict[str, ServerTally] = {}
        self._server: ServerTally | None = None
        self._repair_cache: dict[tuple[str | None, str | None], dict[tuple[str, str, str], str]] = {}
        self._repairs: dict[tuple[str, str, str], str] = {}

    def has_scope(self, tier: str, scope: str) -> bool:
        d = self.data.get(tier)
        return d is not None and d.has_scope(scope)

    def records(self, ent: Entity, tier: str, scope: str) -> dict[RecordKey, Record]:
        per = self._by.get((ent.name, tier))
        return (per.get(scope) if per else None) or {}

    def root_present(self, root: Entity, scope: str) -> bool:
        return any(not r.null for r in self.records(root, root.authority, scope).values())

    def _root_row(self, scope: str) -> Record | None:
        modes = self.model.modes
        assert modes is not None
        root = self.model.entities.get(modes.entity)
        if root is None:
            return None
        for rec in self.records(root, "db", scope).values():
            if not rec.null:
                return rec
        return None

    def _select_view(self, scope: str) -> bool:
        """Point self.view at the scope's mode; False when the scope's server is not covered (no configured
        server, or a mode such as provider that keeps auth state elsewhere)."""
        modes = self.model.modes
        self._server = None
        if modes is None:
            self.view = self._base
            return True
        row = self._root_row(scope)
        if row is None:  # no root row: an orphan scope, the same in every mode
            self.view = self._base
            return True
        name = row.extra.get(modes.column) if row.extra else None
        server = modes.server_of(None if name is None else str(name))
        key = str(name) if server is None else server.name
        tally = self.servers.get(key)
        if tally is None:
            if server is None:
                tally = ServerTally(key, "not configured", "-", None, covered=False)
            else:
                tally = ServerTally(server.name, server.mode, server.origin, server.prefix,
                                    covered=server.mode in modes.names)  # fmt: skip
            self.servers[key] = tally
        tally.instances += 1
        if not tally.covered:
            return False
        self._server = tally
        view = self._views.get(tally.mode)
        if view is None:
            view = self._views[tally.mode] = _View(self.model.in_mode(tally.mode), self.data)
        self.view = view
        return True

    def tally(
        self, scope: str, counts: dict[tuple[str, str], int], records: dict[tuple[str, str], int] | None = None
    ) -> tuple[bool, bool]:
        """Count where this id has records (and how many), and whether its state is complete in each
        entity's authority."""
        rooted = complete = False
        for ent in self.model.entities.values():
            present_in_authority = False
            for tier in ent.locators:
                recs = self.records(ent, tier, scope)
                # only db rows can be NULL: elsewhere every record counts
                n = len(recs) if tier != "db" else sum(not r.null for r in recs.values())
                if n:
                    key = (ent.name, tier)
                    counts[key] = counts.get(key, 0) + 1
                    if records is not None:
                        records[key] = records.get(key, 0) + n
                    present_in_authority = present_in_authority or tier == ent.authority
            if ent.parent is None and present_in_authority:
                rooted = complete = True
        if rooted:
            complete = all(
                any(not r.null for r in self.records(ent, ent.authority, scope).values())
                for ent in self.view.model.entities.values()
                if ent.authority in ent.locators
            )
        return rooted, complete

    def scope(self, scope: str) -> Iterator[Finding]:
        """Every finding of one scope, each with the command that repairs it."""
        for f in self._scope(scope):
            ent = self.view.model.entities.get(f.entity)
            if ent is not None:
                key = (f.cls, f.entity, f.tier)
                hint = self._repairs.get(key)
                if hint is None:
                    server = self._server.name if self._server is not None else None
                    hint = self._repairs[key] = repair_command(f.cls, ent, f.tier, self.model, self.view.model, server)
                f.repair = hint
            yield f

    def _scope(self, scope: str) -> Iterator[Finding]:
        if not self._select_view(scope):
            return
        self._repairs = self._repair_cache.setdefault(
            (self.view.model.mode, self._server.name if self._server else None), {}
        )
        model = self.view.model
        roots_ok: dict[str, bool] = {}
        for ent in model.entities.values():
            root = self.view.roots[ent.name]
            if root.name not in roots_ok:
                roots_ok[root.name] = root.authority in self.data and self.root_present(root, scope)
            if ent.parent is not None and not roots_ok[root.name]:
                yield from self.orphan_child(ent, root, scope)
                continue
            yield from self.entity(ent, scope, roots_ok[root.name])
        yield from self.checks(scope)
        if self._server is not None:
            self.readiness(scope)

    def orphan_child(self, ent: Entity, root: Entity, scope: str) -> Iterator[Finding]:
        """A child's records in an orphan scope, in a tier where the root entity has nothing (the root reports
        its own tiers once, e.g. the whole orphan hash): e.g. a "Session" row whose instance is gone."""
        if root.authority not in self.data:
            return
        for t in self.view.tiers[ent.name]:
            if t == root.authority and t in root.locators and ent.locators[t].table == root.locators[t].table:
                continue
            if t in root.locators and self.records(root, t, scope):
                continue
            recs = {k: r for k, r in self.records(ent, t, scope).items() if not r.null or t == "db"}
            if recs:
                first = recs[min(recs)]
                yield Finding("orphan", ent.name, scope, None, t, first.where, [],
                              f"in {t} but the authority ({root.authority}) has no {root.name} {scope}")  # fmt: skip

    def expected(self, ent: Entity, tier: str, scope: str) -> bool:
        role = ent.locators[tier].role
        if role == "live":
            return self.live_expected(ent, scope)
        return role == "required" or (role == "optional" and self.has_scope(tier, scope))

    def live_expected(self, ent: Entity, scope: str) -> bool:
        """Must the live place hold this entity now (e.g. creds once the instance is open, keys once it is open
        or has creds)? Without conditions: always."""
        if ent.expect_when is None and not ent.expect_with:
            return True
        if ent.expect_when is not None:
            row = self._root_row(scope) if self.model.modes is not None else None
            column, value = ent.expect_when
            if row is not None and row.extra is not None and str(row.extra.get(column)) == value:
                return True
        for name in ent.expect_with:
            other = self.view.model.entities.get(name)
            if other is not None and any(not r.null for r in self.records(other, other.authority, scope).values()):
                return True
        return False

    def readiness(self, scope: str) -> None:
        """Would this instance boot without a new pairing under its server's mode: every `ready_needs` entity
        present (single records: decodable too) in its live place."""
        modes = self.model.modes
        server = self._server
        if modes is None or server is None or not modes.ready_needs:
            return
        ents = [self.view.model.entities[n] for n in modes.ready_needs if n in self.view.model.entities]
        if not any(self.live_expected(e, scope) for e in ents):
            return
        server.sessions += 1
        for ent in ents:
            recs = [r for r in self.records(ent, ent.authority, scope).values() if not r.null]
            if not recs:
                return
            if len(ent.vars) == 1 and recs[0].stored is not None:
                try:
                    canonical(ent.locators[ent.authority].codec, recs[0].stored)
                except CodecError:
                    return
        server.ready += 1

    def entity(self, ent: Entity, scope: str, root_ok: bool) -> Iterator[Finding]:
        tiers = self.view.tiers[ent.name]
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
        mode = self.view.model.mode
        for t in tiers:
            if ent.presence and ent.require_any and t != auth:
                continue
            absent = keys - per[t].keys()
            loc = ent.locators[t]
            whole = loc.role == "live" and len(ent.vars) > 1 and not per[t] and root_ok
            if not (absent or whole) or not self.expected(ent, t, scope):
                continue
            if whole:
                # The live place holds nothing for the scope: one finding, not one per record found elsewhere.
                elsewhere = ", ".join(f"{len(per[o])} in {o}" for o in tiers if o != t and per[o])
                yield Finding("missing", ent.name, scope, None, t, concrete_where(ent, t, scope), [],
                              f"none in the live place ({mode} mode reads {t})"
                              + (f"; {elsewhere}, not read in {mode} mode" if elsewhere else ""))  # fmt: skip
                continue
            for rest in sorted(absent):
                rec = nulls.get(t, {}).get(rest)
                if rec:
                    detail = "value is NULL"
                elif loc.role == "live":
                    stale = [o for o in tiers if o != t and rest in per[o]]
                    detail = f"absent from the live place ({mode} mode reads {t})" + (
                        f"; a copy {mode} mode does not read is in {', '.join(stale)}" if stale else ""
                    )
                else:
                    detail = f"absent from {t}"
                yield Finding("missing", ent.name, scope, _key_text(rest), t,
                              rec.where if rec else concrete_where(ent, t, scope, rest), [], detail)  # fmt: skip
        if ent.require_any and not any(per[t] for t in ent.require_any if t in per):
            for rest in sorted(auth_recs):
                yield Finding("missing", ent.name, scope, _key_text(rest), "+".join(ent.require_any), None, [],
                              f"in neither {' nor '.join(ent.require_any)}")  # fmt: skip
        if ent.presence:
            return
        if auth == "files" and ent.locators[auth].role == "live" and not self.keys_only:
            yield from self.check_decodes(ent, scope, auth, per[auth], tiers, per)
        if self.keys_only:
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

    def check_decodes(
        self,
        ent: Entity,
        scope: str,
        tier: str,
        recs: dict[RecordKey, Record],
        tiers: list[str],
        per: dict[str, dict[RecordKey, Record]],
    ) -> Iterator[Finding]:
        """Live files that no other tier is compared with must still decode: a plain write cut short by a
        crash leaves a truncated file, which the application then reads as absent."""
        others = set().union(*(per[t].keys() for t in tiers if t != tier)) if len(tiers) > 1 else set()
        codec = ent.locators[tier].codec
        for rest, rec in recs.items():
            if rest in others or rec.stored is None:
                continue
            try:
                json.loads(codec.peel(rec.stored) if codec.name != "json" else rec.stored)
            except (ValueError, CodecError) as exc:
                yield Finding("unparseable", ent.name, scope, _key_text(rest), tier, rec.where, [],
                              f"value does not decode as {codec.name}: {str(exc)[:120]}")  # fmt: skip

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
        # JSON text against the same text stored as a JSON string literal (a key file and its hash field):
        # quoting the plain side (one C call) is much cheaper than parsing the literal; any other
        # difference falls through to the careful path.
        quote_b = ca.name == "json-string" and cb.name == "json"
        quote_a = cb.name == "json-string" and ca.name == "json"
        for rest in keys:
            ra, rb = recs_a[rest], recs_b[rest]
            a, b = ra.stored, rb.stored
            if a is None or b is None or (same and a == b):
                continue
            try:
                if (quote_b and _quoted(b) == a) or (quote_a and _quoted(a) == b):
                    continue
            except UnicodeDecodeError:
                pass
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
            if ent.locators[tb].role == "stale":
                mode = self.view.model.mode
                detail = f"stale copy, not read in {mode} mode; the live copy is in {ta} ({ra.where})"
            else:
                detail = f"differs from {ta} ({ra.where})"
            yield Finding("mismatch", ent.name, scope, key, tb, rb.where, list(result.paths), detail)

    def checks(self, scope: str) -> Iterator[Finding]:
        for check in self.model.checks:
            ent = self.view.model.entities[check.entity]
            for rest, rec in self.records(ent, ent.authority, scope).items():
                if rec.extra is None or str(rec.extra.get(check.column)) != check.equals:
                    continue
                usable = False
                for name in check.requires_any:
                    req = self.view.model.entities[name]
                    for t in req.locators:
                        if any(not r.null for r in self.records(req, t, scope).values()):
                            usable = True
                if not usable:
                    yield Finding("mismatch", ent.name, scope, _key_text(rest), ent.authority, rec.where,
                                  [f"$.{check.column}"], check.message)  # fmt: skip


def _quoted(text: bytes) -> bytes:
    """JSON text as JSON.stringify writes it as a string literal (same escapes, lowercase \\u00xx)."""
    return _encode_basestring(text.decode("utf-8")).encode("utf-8")


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _unparseable_findings(items: Iterable[Unparseable]) -> list[Finding]:
    return [
        Finding("unparseable", u.entity, u.scope, None, u.tier, u.where, [], u.detail,
                f"remove {u.where} (a name the application never reads) or extend the entity model")
        for u in items
    ]  # fmt: skip


def compare_scopes(
    model: Model,
    sources: dict[str, Source],
    scopes: list[str],
    opts: AuditOptions,
    tally: AuditResult | None = None,
) -> tuple[list[Finding], int]:
    """Findings for these scopes (values are loaded batch by batch) and the number of values compared; with
    `tally`, also count per entity and tier where the ids have records, and how many are complete."""
    # Scopes can be small (20 keys) or large (a real Baileys key set: 800+ keys); a few large scopes still make
    # enough batches to share among the workers.
    workers = opts.jobs or min(os.cpu_count() or 1, 4)
    size = min(opts.batch, max(20, -(-len(scopes) // (4 * max(1, workers)))))
    batches = list(_chunks(scopes, max(1, size)))
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
                    rooted, complete = comparer.tally(scope, tally.entity_counts, tally.record_counts)
                    tally.roots += rooted
                    tally.complete += complete
            values += comparer.values
            if tally is not None:
                tally.merge_servers(comparer.servers)
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
    tier_ids: dict[str, int] = {}
    for tier, src in sources.items():
        listed = src.list_scopes()
        tier_ids[tier] = len(listed)
        all_scopes |= listed
        progress(tier, len(all_scopes), 0)
    findings = _unparseable_findings(u for s in sources.values() for u in s.unparseable)
    scopes = sorted(all_scopes)
    tally = AuditResult([], [], [])
    found, values = compare_scopes(model, sources, scopes, opts, tally)
    findings.extend(found)
    if refresh is not None and opts.recheck_rounds > 0:
        findings = _recheck(model, sources, opts, findings, refresh)
    findings = _collapse_empty_tiers(model, findings, tier_ids, tally)
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
    model: Model, findings: list[Finding], tier_ids: dict[str, int], tally: AuditResult
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
        repair = f"statekit restore ARCHIVE --tier {tier} (from the last good snapshot)"
        out.insert(0, Finding("missing", root_name, None, None, tier, _tier_location(tier), [], detail, repair))
    return out


def _tier_location(tier: str) -> str:
    return {"db": "the database", "redis": "the Redis database", "files": "the files root"}.get(tier, tier)


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
