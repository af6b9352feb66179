"""`statekit diff` without an entity model: two archives compared tier by tier on what they hold — files by
path and content, Redis keys by name and value (hashes field by field, so a re-encoded DUMP payload of the
same hash is not a difference), database rows by primary key. Only SHA-256 digests are kept in memory."""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

from statekit.audit.findings import AuditResult, Finding

if TYPE_CHECKING:
    from statekit.tiers.sql.members import TableSegment

_Digests = dict[str, dict[str, Any]]  # entity → record id → digest (or field → digest for hashes)


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archive_digests(archive: Any, *, redis_db: int | None = None) -> tuple[_Digests, dict[str, str]]:
    """One pass over an archive: entity → id → digest, and entity → tier."""
    from statekit.tiers import TIERS as REGISTRY
    from statekit.tiers.base import MemberDecoder, decode_tiers
    from statekit.tiers.files.members import FileRecord
    from statekit.tiers.redis import portable
    from statekit.tiers.redis.members import RedisDecoder, RedisKey
    from statekit.tiers.redis.records import TYPE_HASH, parse_member_db
    from statekit.tiers.sql.members import TableSegment

    out: _Digests = {}
    tiers: dict[str, str] = {}
    dbs = sorted({d for m in archive.manifest.get("members", []) if (d := parse_member_db(m["name"])) is not None})
    want_db = redis_db if redis_db in dbs else (dbs[0] if dbs else None)
    only_db = RedisDecoder({want_db} if want_db is not None else set())
    decoders: list[MemberDecoder[object]] = [only_db if t.name == "redis" else t.decoder() for t in REGISTRY]
    for rec in decode_tiers(archive, decoders):
        if isinstance(rec, FileRecord):
            out.setdefault("files", {})[rec.rel] = _h(rec.data)
            tiers["files"] = "files"
        elif isinstance(rec, RedisKey):
            tiers["redis"] = "redis"
            keys = out.setdefault("redis", {})
            key = rec.key.decode("utf-8", "surrogateescape")
            if rec.items is not None:  # a big key, from its chunks
                if rec.type == TYPE_HASH:
                    keys[key] = {
                        f.decode("utf-8", "surrogateescape"): _h(v) for f, v in zip(rec.items[::2], rec.items[1::2])
                    }
                else:
                    keys[key] = _h(b"\0".join(rec.items))
                continue
            payload = rec.payload or b""
            try:
                rtype, value = portable.decode(payload)
            except portable.Uncarriable:  # streams (as every version keeps them), module types
                keys[key] = _h(portable.comparable(payload))
                continue
            if rtype == TYPE_HASH:
                keys[key] = {f.decode("utf-8", "surrogateescape"): _h(v) for f, v in value}  # type: ignore[attr-defined]
            else:
                keys[key] = _h(repr((rtype, value)).encode())
        elif isinstance(rec, TableSegment):
            entity = f"db:{rec.table['name']}"
            tiers[entity] = "db"
            _table_digests(rec, out.setdefault(entity, {}))
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


def raw_diff(a: Any, b: Any, *, redis_db: int | None = None) -> AuditResult:
    """Archive B against archive A without an entity model."""
    started = time.monotonic()
    da, ta = archive_digests(a, redis_db=redis_db)
    db, tb = archive_digests(b, redis_db=redis_db)
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
    entities = sorted(set(da) | set(db))
    return AuditResult(findings, sorted(set(tier_of.values())), entities, scopes=values, values=values,
                       duration_s=time.monotonic() - started)  # fmt: skip
