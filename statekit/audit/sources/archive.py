"""Entity records from an archive (for `audit --against` and `diff`), and the two-sided comparison of one
tier in two states: a snapshot against the live tier, or one snapshot against another.

One pass over the archive collects what the model names: `files/<path>` members, the redis tier's records
(DUMP payloads decoded by the redis tier's portable decoder, big keys from their chunks) and the db tier's
rows (`.copy` or `.jsonl` segments described by db/schema.json). Memory grows with the model's share of the
archive, which is what an audit compares anyway.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from statekit.audit.codecs import CodecError, canonical
from statekit.audit.entities import TIERS, Entity, Model
from statekit.audit.findings import AuditOptions, AuditResult, Finding, chunks, unparseable_findings
from statekit.audit.sources import open_live
from statekit.audit.sources.db import DbReader, db_text
from statekit.audit.sources.files import FilesReader
from statekit.audit.sources.records import Record, RecordKey, Source, TierData, Unparseable, normalise
from statekit.audit.sources.redis import RedisReader, url_db
from statekit.errors import CorruptArchive
from statekit.model import Warn, no_warn

if TYPE_CHECKING:
    from statekit.audit.repairs import SnapshotRepairs
    from statekit.tiers.base import MemberDecoder
    from statekit.tiers.sql.members import TableSegment


class ArchiveFiles(FilesReader):
    """The files tier of an archive: member names parsed like paths under the root."""

    def __init__(self, model: Model, contents: dict[str, bytes], *, keys_only: bool = False) -> None:
        super().__init__("/", model, keys_only=keys_only, check_root=False)
        self.contents = contents

    def list_scopes(self) -> set[str]:
        """Name every archived file (and its parent directories for presence templates)."""
        self.found = {}
        self.unparseable = []
        files = [(ent, ent.name, loc.template.regex.fullmatch) for ent, loc in self.files if loc.template]
        dirs: set[str] = set()
        for rel in sorted(self.contents):
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
            self._generic(rel, False, files)
        for d in sorted(dirs):
            self._generic(d, True, files)
        return set(self.found)

    def _read_scope(self, scope: str, presence: set[str]) -> list[bytes | None]:
        return [None if name in presence else self.contents.get(rel) for name, _, rel, _ in self.found[scope]]


class ArchiveRedis(RedisReader):
    """The redis tier of an archive: keys decoded from their DUMP payloads (or chunks)."""

    def __init__(self, model: Model, values: dict[bytes, Any], *, keys_only: bool = False) -> None:
        super().__init__(None, model, keys_only=keys_only)
        self.values = values

    def _scan(self, pattern: str) -> Any:
        match = _redis_glob(pattern)
        return (k for k in self.values if match(k.decode("utf-8", "surrogateescape")))

    def load(self, scopes: Iterable[str]) -> TierData:
        """Map the archived keys of these scopes to records."""
        out = TierData(self.tier)
        for scope in scopes:
            for group, values, raw in self.keys.get(scope, []):
                reply = self.values[raw]
                if group.hashed and not isinstance(reply, dict):
                    continue
                if group.hashed and self.keys_only:
                    reply = list(reply)
                self._records(out, group, values, scope, raw.decode("utf-8", "surrogateescape"), reply)
        return out

    def close(self) -> None:
        """Nothing to close."""


class ArchiveDb:
    """The db tier of an archive: rows of the model's tables."""

    tier = DbReader.tier

    def __init__(self, data: TierData) -> None:
        self.data = data
        self.unparseable: list[Unparseable] = []

    def list_scopes(self) -> set[str]:
        """Scopes with rows."""
        return {scope for per in self.data.records.values() for scope in per}

    def load(self, scopes: Iterable[str]) -> TierData:
        """The rows of these scopes."""
        return self.data.select(scopes)


@dataclass
class _DbTable:
    entity: Entity
    columns: list[str]
    kinds: list[str]


class _Collector:
    """What one pass over an archive keeps of one tier's records, and the audit source made of them."""

    tier: str

    def __init__(self, archive: Any, model: Model, location: str | None, *, keys_only: bool) -> None:
        self.model = model
        self.keys_only = keys_only

    def decoder(self) -> MemberDecoder[object]:
        """A decoder of the tier's members."""
        from statekit.tiers import get as get_tier

        return get_tier(self.tier).decoder()

    def add(self, rec: object) -> bool:
        """Keep what the model needs of a decoded record; False when the record is another tier's."""
        raise NotImplementedError

    def source(self) -> Source:
        """The tier as the audit reads it."""
        raise NotImplementedError


class _DbRows(_Collector):
    """Rows of the model's tables, from `.copy` or `.jsonl` segments described by db/schema.json."""

    tier = DbReader.tier

    def __init__(self, archive: Any, model: Model, location: str | None, *, keys_only: bool) -> None:
        from statekit.tiers.sql.members import TableSegment

        super().__init__(archive, model, location, keys_only=keys_only)
        self.kind = TableSegment
        self.data = TierData(self.tier)
        self.tables: dict[str, list[_DbTable]] = {}
        self.schema: object = None

    def add(self, rec: object) -> bool:
        """Map a table segment's rows of the model's tables to records."""
        if not isinstance(rec, self.kind):
            return False
        if rec.schema is not self.schema:
            self.schema = rec.schema
            self.tables = _db_tables(dict(rec.schema), self.model)
        for table in self.tables.get(str(rec.table["member"]), []):
            _db_rows(rec, table, self.data, self.keys_only)
        return True

    def source(self) -> Source:
        """The rows, by scope."""
        return ArchiveDb(self.data)


class _RedisValues(_Collector):
    """Hash and string keys of one database (DUMP payloads decoded by the redis tier's portable decoder, big
    keys from their chunks): the database the live URL selects when the archive holds it, else its first
    one."""

    tier = RedisReader.tier

    def __init__(self, archive: Any, model: Model, location: str | None, *, keys_only: bool) -> None:
        from statekit.tiers.redis.members import RedisKey
        from statekit.tiers.redis.records import parse_member_db

        super().__init__(archive, model, location, keys_only=keys_only)
        self.kind = RedisKey
        dbs = sorted({d for m in archive.manifest.get("members", []) if (d := parse_member_db(m["name"])) is not None})
        wanted = url_db(location)
        self.want = wanted if wanted in dbs else (dbs[0] if dbs else None)
        self.values: dict[bytes, Any] = {}

    def decoder(self) -> MemberDecoder[object]:
        """The redis tier's decoder, limited to the one database."""
        from statekit.tiers.redis.members import RedisDecoder

        return RedisDecoder({self.want} if self.want is not None else set())

    def add(self, rec: object) -> bool:
        """Keep a hash or string key's value."""
        from statekit.tiers.redis import portable
        from statekit.tiers.redis.records import TYPE_HASH, TYPE_STRING

        if not isinstance(rec, self.kind):
            return False
        if rec.items is None:
            try:
                rtype, value = portable.decode(rec.payload or b"")
            except portable.Uncarriable:
                return True
            if rtype == TYPE_HASH:
                self.values[rec.key] = dict(value)  # type: ignore[call-overload]
            elif rtype == TYPE_STRING:
                self.values[rec.key] = value
        elif rec.type == TYPE_HASH:
            self.values[rec.key] = dict(zip(rec.items[::2], rec.items[1::2]))
        elif rec.type == TYPE_STRING:
            self.values[rec.key] = b"".join(rec.items)
        return True

    def source(self) -> Source:
        """The keys, read like the live database."""
        return ArchiveRedis(self.model, self.values, keys_only=self.keys_only)


class _FileContents(_Collector):
    """Every archived file's content by its relative path."""

    tier = FilesReader.tier

    def __init__(self, archive: Any, model: Model, location: str | None, *, keys_only: bool) -> None:
        from statekit.tiers.files.members import FileRecord

        super().__init__(archive, model, location, keys_only=keys_only)
        self.kind = FileRecord
        self.contents: dict[str, bytes] = {}

    def add(self, rec: object) -> bool:
        """Keep the file's content."""
        if not isinstance(rec, self.kind):
            return False
        self.contents[rec.rel] = rec.data
        return True

    def source(self) -> Source:
        """The files, read like the live root."""
        return ArchiveFiles(self.model, self.contents, keys_only=self.keys_only)


# What an archive's pass keeps of each tier the audit reads.
_COLLECTORS: dict[str, type[_Collector]] = {c.tier: c for c in (_DbRows, _RedisValues, _FileContents)}


def read_archive(
    archive: Any, model: Model, where: Mapping[str, str | None], *, keys_only: bool = False
) -> dict[str, Source]:
    """One pass over an archive, returning a source per tier it holds that the model uses (`where`: the live
    tiers' locations, which say what part of a tier to read, e.g. which Redis database)."""
    from statekit.tiers.base import decode_tiers

    held = [t.get("tier") for t in archive.snapshot.get("tiers", []) if isinstance(t, dict)]
    used = {t for ent in model.entities.values() for t in ent.locators}
    collectors = [_COLLECTORS[t](archive, model, where.get(t), keys_only=keys_only) for t in TIERS if t in used]
    for rec in decode_tiers(archive, [c.decoder() for c in collectors]):
        for c in collectors:
            if c.add(rec):
                break
    return {c.tier: c.source() for c in collectors if c.tier in held}


def _db_tables(schema: dict[str, Any], model: Model) -> dict[str, list[_DbTable]]:
    out: dict[str, list[_DbTable]] = {}
    for ent in model.entities.values():
        loc = ent.locators.get(DbReader.tier)
        if loc is None:
            continue
        for t in schema.get("tables", []):
            if t.get("name") != loc.table or (loc.schema and t.get("schema") != loc.schema):
                continue
            cols = [c["name"] for c in t.get("columns", []) if not c.get("generated")]
            kinds = [c.get("type", {}).get("kind", "") for c in t.get("columns", []) if not c.get("generated")]
            out.setdefault(t["member"], []).append(_DbTable(ent, cols, kinds))
            break
    return out


def _db_rows(segment: TableSegment, table: _DbTable, data: TierData, keys_only: bool) -> None:
    ent = table.entity
    loc = ent.locators[DbReader.tier]
    try:
        idx_keys = [table.columns.index(c) for c in loc.key_columns]
        idx_val = table.columns.index(loc.value_column) if loc.value_column else None
        idx_extra = {c: table.columns.index(c) for c in loc.columns if c in table.columns}
    except ValueError:
        raise CorruptArchive(f'archive table "{loc.table}" lacks a column the entity model names') from None
    for row in segment.rows():
        values = {ent.vars[i]: str(row[j]) for i, j in enumerate(idx_keys)}
        scope, rest = normalise(ent, values)
        raw = row[idx_val] if idx_val is not None else None
        where = f'"{loc.table}" ' + ", ".join(f"{c}={row[j]}" for c, j in zip(loc.key_columns, idx_keys))
        extra = {c: row[j] for c, j in idx_extra.items()} or None
        stored = None if raw is None or (keys_only and not ent.presence) else db_text(raw)
        data.add(ent.name, scope, rest, Record(stored, (DbReader.tier, str(loc.table), where), extra,
                                               null=idx_val is not None and raw is None))  # fmt: skip


# -- two states of the same tiers ---------------------------------------------------------------------------


def compare_states(
    model: Model,
    a: Mapping[str, Source],
    b: Mapping[str, Source],
    opts: AuditOptions,
    names: tuple[str, str],
    repairs: SnapshotRepairs | None = None,
) -> AuditResult:
    """Each tier of `b` against the same tier of `a`: `missing` (in A only), `orphan` (in B only), `mismatch`
    (values differ after canonicalisation); with `repairs`, each with the command that puts A's copy back."""
    started = time.monotonic()
    tiers = [t for t in TIERS if t in a and t in b]
    findings: list[Finding] = []
    values = 0
    scopes: set[str] = set()
    for t in tiers:
        scopes |= a[t].list_scopes() | b[t].list_scopes()
        findings += unparseable_findings(list(a[t].unparseable) + list(b[t].unparseable))
    ordered = sorted(scopes)
    for batch in chunks(ordered, max(1, opts.batch)):
        for t in tiers:
            da, db = a[t].load(batch), b[t].load(batch)
            findings += unparseable_findings(list(da.unparseable) + list(db.unparseable))
            for ent in model.entities.values():
                if t not in ent.locators or ent.locators[t].is_directory:
                    continue  # (a folder's presence is not archived: the tar holds regular files only)
                codec = ent.locators[t].codec
                for scope in batch:
                    ra = {k: r for k, r in (da.scope_records(ent.name, scope) or {}).items() if not r.null}
                    rb = {k: r for k, r in (db.scope_records(ent.name, scope) or {}).items() if not r.null}
                    values += len(ra) + len(rb)
                    found = _two_sided(ent, scope, t, ra, rb, codec, opts.keys_only, names)
                    if repairs is not None:
                        for f, rec in found:
                            f.repair = repairs.hint(f.cls, rec.loc)
                    findings += [f for f, _ in found]
    order = {name: i for i, name in enumerate(model.entities)}
    findings.sort(key=lambda f: (order.get(f.entity, 99), f.cls, f.id or "", f.key or "", f.tier))
    return AuditResult(findings, tiers, list(model.entities), scopes=len(ordered), values=values,
                       duration_s=time.monotonic() - started, keys_only=opts.keys_only)  # fmt: skip


def _two_sided(
    ent: Entity,
    scope: str,
    tier: str,
    ra: dict[RecordKey, Record],
    rb: dict[RecordKey, Record],
    codec: Any,
    keys_only: bool,
    names: tuple[str, str],
) -> list[tuple[Finding, Record]]:
    """The findings of one entity in one scope, each with the record it is about (A's when A has it)."""
    out: list[tuple[Finding, Record]] = []
    for rest in sorted(ra.keys() - rb.keys()):
        out.append((Finding("missing", ent.name, scope, "/".join(rest) or None, tier, ra[rest].where, [],
                            f"in {names[0]}, not in {names[1]}"), ra[rest]))  # fmt: skip
    for rest in sorted(rb.keys() - ra.keys()):
        out.append((Finding("orphan", ent.name, scope, "/".join(rest) or None, tier, rb[rest].where, [],
                            f"in {names[1]}, not in {names[0]}"), rb[rest]))  # fmt: skip
    if keys_only or ent.presence:
        return out
    from statekit.audit.codecs import compare

    for rest in ra.keys() & rb.keys():
        x, y = ra[rest].stored, rb[rest].stored
        if x is None or y is None or x == y:
            continue
        try:
            result = compare(x, codec, y, codec)
        except CodecError:
            try:
                canonical(codec, y)
            except CodecError:
                out.append((Finding("unparseable", ent.name, scope, "/".join(rest) or None, tier, rb[rest].where,
                                    [], f"value does not decode as {codec.name}"), ra[rest]))  # fmt: skip
            continue
        if not result.equal:
            found = Finding("mismatch", ent.name, scope, "/".join(rest) or None, tier, rb[rest].where,
                            list(result.paths), f"differs between {names[0]} and {names[1]}")  # fmt: skip
            out.append((found, ra[rest]))
    return out


def audit_against(
    model: Model,
    where: Mapping[str, str | None],
    archive: Any,
    opts: AuditOptions,
    *,
    warn: Warn = no_warn,
    repairs: SnapshotRepairs | None = None,
) -> AuditResult:
    """The live tiers (`where`: tier name -> URL or root) against a snapshot (tier by tier: what the snapshot
    had and the live tier lacks, etc.); `repairs` names the snapshot's path for the restore commands."""
    from statekit.tiers.redis.records import parse_member_db  # noqa: F401  (fail early if the tier is absent)

    snap = read_archive(archive, model, where, keys_only=opts.keys_only)
    live = open_live(model, where, keys_only=opts.keys_only, tiers=list(snap))
    try:
        for t in snap:
            if t not in live.sources:
                warn(f"{t} tier is in the snapshot but not configured live: not compared")
        return compare_states(model, snap, live.sources, opts, ("the snapshot", "the live tier"), repairs)
    finally:
        live.close()


def diff_archives(
    model: Model,
    a: Any,
    b: Any,
    opts: AuditOptions,
    where: Mapping[str, str | None],
    repairs: SnapshotRepairs | None = None,
) -> AuditResult:
    """Archive B against archive A, tier by tier (`where`: the configured tiers, e.g. which Redis database to
    read, else the first one); `repairs` names A's path for the restore commands."""
    sa = read_archive(a, model, where, keys_only=opts.keys_only)
    sb = read_archive(b, model, where, keys_only=opts.keys_only)
    return compare_states(model, sa, sb, opts, ("A", "B"), repairs)


def _redis_glob(pattern: str) -> Any:
    """A matcher for a Redis MATCH pattern as templates write them (`*`, `?` and backslash escapes)."""
    import re

    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL).fullmatch
