"""`statekit diff` without an entity model: two archives compared tier by tier on what they hold — files by
path and content, Redis keys by name and value (hashes field by field, so a re-encoded DUMP payload of the
same hash is not a difference), database rows by primary key. Only SHA-256 digests are kept in memory."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from statekit.audit.entities import DbLocator, FilesLocator, RedisLocator
from statekit.audit.findings import AuditResult, Finding
from statekit.audit.sources.redis import url_db

if TYPE_CHECKING:
    from statekit.audit.repairs import SnapshotRepairs
    from statekit.tiers.base import MemberDecoder
    from statekit.tiers.sql.members import TableSegment

_Digests = dict[str, dict[str, Any]]  # entity → record id → digest (or field → digest for hashes)


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _TierDigests:
    """What one pass over an archive keeps of one tier: a digest per record, by entity (a tier's own name, or
    `<tier>:<table>` for rows), and each entity's tier."""

    tier: str

    def __init__(self, archive: Any, location: str | None) -> None:
        self.out: _Digests = {}
        self.tiers: dict[str, str] = {}

    def decoder(self) -> MemberDecoder[object]:
        """A decoder of the tier's members."""
        from statekit.tiers import get as get_tier

        return get_tier(self.tier).decoder()

    def add(self, rec: object) -> bool:
        """Digest a decoded record; False when the record is another tier's."""
        raise NotImplementedError


class _FileDigests(_TierDigests):
    """Files by path and content."""

    tier = FilesLocator.kind

    def __init__(self, archive: Any, location: str | None) -> None:
        from statekit.tiers.files.members import FileRecord

        super().__init__(archive, location)
        self.kind = FileRecord

    def add(self, rec: object) -> bool:
        """One digest per file."""
        if not isinstance(rec, self.kind):
            return False
        self.out.setdefault(self.tier, {})[rec.rel] = _h(rec.data)
        self.tiers[self.tier] = self.tier
        return True


class _KeyDigests(_TierDigests):
    """Keys of one Redis database (the one the configured URL selects when the archive holds it, else its
    first one) by name and value; a hash field by field."""

    tier = RedisLocator.kind

    def __init__(self, archive: Any, location: str | None) -> None:
        from statekit.tiers.redis.members import RedisKey
        from statekit.tiers.redis.records import parse_member_db

        super().__init__(archive, location)
        self.kind = RedisKey
        dbs = sorted({d for m in archive.manifest.get("members", []) if (d := parse_member_db(m["name"])) is not None})
        wanted = url_db(location)
        self.want = wanted if wanted in dbs else (dbs[0] if dbs else None)

    def decoder(self) -> MemberDecoder[object]:
        """The redis tier's decoder, limited to the one database."""
        from statekit.tiers.redis.members import RedisDecoder

        return RedisDecoder({self.want} if self.want is not None else set())

    def add(self, rec: object) -> bool:
        """One digest per key (per field of a hash)."""
        from statekit.tiers.redis import portable
        from statekit.tiers.redis.records import TYPE_HASH

        if not isinstance(rec, self.kind):
            return False
        self.tiers[self.tier] = self.tier
        keys = self.out.setdefault(self.tier, {})
        key = rec.key.decode("utf-8", "surrogateescape")
        if rec.items is not None:  # a big key, from its chunks
            if rec.type == TYPE_HASH:
                keys[key] = {
                    f.decode("utf-8", "surrogateescape"): _h(v) for f, v in zip(rec.items[::2], rec.items[1::2])
                }
            else:
                keys[key] = _h(b"\0".join(rec.items))
            return True
        payload = rec.payload or b""
        try:
            try:
                rtype, value = portable.decode(payload)
            except portable.Uncarriable:  # streams (as every version keeps them), module types
                keys[key] = _h(portable.comparable(payload))
                return True
        except portable.Malformed as exc:  # a damaged or crafted archive (exit 3): name the key
            from statekit.tiers.redis.bigkeys import show_key

            raise portable.Malformed(f"key {show_key(rec.key)}: {exc.reason}") from None
        if rtype == TYPE_HASH:
            keys[key] = {f.decode("utf-8", "surrogateescape"): _h(v) for f, v in value}  # type: ignore[attr-defined]
        else:
            keys[key] = _h(repr((rtype, value)).encode())
        return True


class _RowDigests(_TierDigests):
    """Database rows by primary key, one entity per table."""

    tier = DbLocator.kind

    def __init__(self, archive: Any, location: str | None) -> None:
        from statekit.tiers.sql.members import TableSegment

        super().__init__(archive, location)
        self.kind = TableSegment

    def add(self, rec: object) -> bool:
        """One digest per row."""
        if not isinstance(rec, self.kind):
            return False
        entity = f"{self.tier}:{rec.table['name']}"
        self.tiers[entity] = self.tier
        _table_digests(rec, self.out.setdefault(entity, {}))
        return True


_DIGESTS: dict[str, type[_TierDigests]] = {d.tier: d for d in (_RowDigests, _KeyDigests, _FileDigests)}


def archive_digests(archive: Any, where: Mapping[str, str | None]) -> tuple[_Digests, dict[str, str]]:
    """One pass over an archive: entity → id → digest, and entity → tier (`where`: the configured tiers)."""
    from statekit.tiers import TIERS as REGISTRY
    from statekit.tiers.base import decode_tiers

    parts = [_DIGESTS[t.name](archive, where.get(t.name)) for t in REGISTRY if t.name in _DIGESTS]
    out: _Digests = {}
    tiers: dict[str, str] = {}
    for rec in decode_tiers(archive, [p.decoder() for p in parts]):
        for part in parts:
            if part.add(rec):
                break
    for part in parts:
        out.update(part.out)
        tiers.update(part.tiers)
    return out, tiers


def _table_digests(segment: TableSegment, out: dict[str, Any]) -> None:
    cols = segment.columns
    pk = [cols.index(c) for c in segment.table.get("primary_key", []) if c in cols]
    for row in segment.rows():
        text = json.dumps([None if v is None else str(v) for v in row], ensure_ascii=False)
        if pk:
            out[", ".join(f"{cols[i]}={row[i]}" for i in pk)] = _h(text.encode())
        else:  # no primary key: the row is its own identity
            out[_h(text.encode())[:16]] = "row"


def raw_diff(a: Any, b: Any, where: Mapping[str, str | None], repairs: SnapshotRepairs | None = None) -> AuditResult:
    """Archive B against archive A without an entity model (`where`: the configured tiers); with `repairs`,
    each finding with the restore that puts A's copy back."""
    started = time.monotonic()
    da, ta = archive_digests(a, where)
    db, tb = archive_digests(b, where)
    tier_of = {**ta, **tb}
    findings: list[Finding] = []
    values = 0
    for entity in sorted(set(da) | set(db)):
        ra, rb = da.get(entity, {}), db.get(entity, {})
        tier = tier_of.get(entity, entity)
        values += len(ra) + len(rb)
        for rid in sorted(ra.keys() - rb.keys()):
            findings.append(Finding("missing", entity, rid, None, tier, rid, [], "in A, not in B"))
        for rid in sorted(rb.keys() - ra.keys()):
            findings.append(Finding("orphan", entity, rid, None, tier, rid, [], "in B, not in A"))
        for rid in sorted(ra.keys() & rb.keys()):
            x, y = ra[rid], rb[rid]
            if x == y:
                continue
            fields: list[str] = ["$"]
            if isinstance(x, dict) and isinstance(y, dict):
                fields = [f"$[{json.dumps(f)}]" for f in sorted(set(x) | set(y)) if x.get(f) != y.get(f)][:20]
            findings.append(Finding("mismatch", entity, rid, None, tier, rid, fields, "differs between A and B"))
    if repairs is not None:
        for f in findings:
            # a row's table is in its entity (`db:<table>`); a key or file is its own id
            name = f.entity.partition(":")[2] if f.tier == DbLocator.kind else (f.id or "")
            f.repair = repairs.hint(f.cls, (f.tier, name))
    entities = sorted(set(da) | set(db))
    return AuditResult(findings, sorted(set(tier_of.values())), entities, scopes=values, values=values,
                       duration_s=time.monotonic() - started)  # fmt: skip
