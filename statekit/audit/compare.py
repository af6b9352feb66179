"""The comparison of one batch of scopes across the tiers, entity by entity: which records are missing,
orphaned or different, and per server (with modes) how ready its instances are."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from json.encoder import encode_basestring as _encode_basestring

from statekit.audit.codecs import CodecError, Comparison, canonical, compare
from statekit.audit.entities import TIERS, Entity, Model
from statekit.audit.findings import Finding, ServerTally, key_text, root_of
from statekit.audit.repairs import Given, repair_command
from statekit.audit.sources.records import Record, RecordKey, TierData


class _View:
    """The entities of one mode (or of a model without modes) with what the comparer needs of each."""

    def __init__(self, model: Model, tiers_present: Iterable[str]) -> None:
        present = set(tiers_present)
        self.model = model
        self.roots = {name: root_of(model, ent) for name, ent in model.entities.items()}
        self.tiers = {
            name: [t for t in TIERS if t in ent.locators and t in present] for name, ent in model.entities.items()
        }


class ScopeComparer:
    """Compares the records of one batch of scopes across the tiers present. With modes, each scope is
    compared as its server's mode sees it (which tier is live, which copies are stale)."""

    def __init__(self, model: Model, data: dict[str, TierData], keys_only: bool, given: Given) -> None:
        self.model = model
        self.given = given  # what the printed repair commands carry over from the command line
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
        # with modes: the tier of the root's row whose column names the scope's server
        self._modes_tier: str | None = None
        modes = model.modes
        root = model.entities.get(modes.entity) if modes is not None else None
        if modes is not None and root is not None:
            self._modes_tier = next((t for t, loc in root.locators.items() if modes.column in loc.columns), None)

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
        tier = self._modes_tier
        if root is None or tier is None:
            return None
        for rec in self.records(root, tier, scope).values():
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
                # only rows can be NULL: elsewhere every record counts
                n = sum(not r.null for r in recs.values()) if ent.locators[tier].nullable else len(recs)
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
                    hint = self._repairs[key] = repair_command(
                        f.cls, ent, f.tier, self.model, self.view.model, server, self.given
                    )
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
            recs = self.records(ent, t, scope)
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
            if ent.locators[t].nullable and any(r.null for r in per[t].values()):
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
                        yield Finding("orphan", ent.name, scope, key_text(rest), t, per[t][rest].where, [],
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
                yield Finding("missing", ent.name, scope, None, t, ent.locators[t].where_of(ent, scope), [],
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
                yield Finding("missing", ent.name, scope, key_text(rest), t,
                              rec.where if rec else ent.locators[t].where_of(ent, scope, rest), [], detail)  # fmt: skip
        if ent.require_any and not any(per[t] for t in ent.require_any if t in per):
            for rest in sorted(auth_recs):
                yield Finding("missing", ent.name, scope, key_text(rest), "+".join(ent.require_any), None, [],
                              f"in neither {' nor '.join(ent.require_any)}")  # fmt: skip
        if ent.presence:
            return
        if ent.locators[auth].torn_writes and ent.locators[auth].role == "live" and not self.keys_only:
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
                yield Finding("unparseable", ent.name, scope, key_text(rest), tier, rec.where, [],
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
            yield from self.compare(ent, scope, key_text(rest), ta, ra, tb, rb)

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
                    yield Finding("mismatch", ent.name, scope, key_text(rest), ent.authority, rec.where,
                                  [f"$.{check.column}"], check.message)  # fmt: skip


def _quoted(text: bytes) -> bytes:
    """JSON text as JSON.stringify writes it as a string literal (same escapes, lowercase \\u00xx)."""
    return _encode_basestring(text.decode("utf-8")).encode("utf-8")
