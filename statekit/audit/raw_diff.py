"""`statekit diff` without an entity model: two archives compared tier by tier on what they hold — files by
path and content, Redis keys by name and value (hashes field by field, so a re-encoded DUMP payload of the
same hash is not a difference), database rows by primary key. Only SHA-256 digests are kept in memory."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

from statekit.audit.findings import AuditResult, Finding

_Digests = dict[str, dict[str, Any]]  # entity → record id → digest (or field → digest for hashes)


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archive_digests(archive: Any, *, redis_db: int | None = None) -> tuple[_Digests, dict[str, str]]:
    """One pass over an archive: entity → id → digest, and entity → tier."""
    from statekit.tiers.redis import portable
    from statekit.tiers.redis.records import (
        TAG_BEGIN,
        TAG_CHUNK,
        TAG_DUMP,
        TYPE_HASH,
        iter_records,
        parse_member_db,
        read_member,
    )

    out: _Digests = {}
    tiers: dict[str, str] = {}
    tables: dict[str, dict[str, Any]] = {}
    big: dict[bytes, tuple[int, list[bytes]]] = {}
    dbs = sorted({d for m in archive.manifest.get("members", []) if (d := parse_member_db(m["name"])) is not None})
    want_db = redis_db if redis_db in dbs else (dbs[0] if dbs else None)
    for member in archive.members():
        name = member.name
        if name.startswith("files/"):
            out.setdefault("files", {})[name[len("files/") :]] = _h(member.read_all())
            tiers["files"] = "files"
        elif name.startswith("redis/") and parse_member_db(name) == want_db:
            tiers["redis"] = "redis"
            keys = out.setdefault("redis", {})
            _, body = read_member(member.stream, name)
            for rec in iter_records(body, name):
                key = rec.key.decode("utf-8", "surrogateescape")
                if rec.tag == TAG_DUMP:
                    try:
                        rtype, value = portable.decode(rec.value)
                    except portable.Uncarriable:  # streams (as every version keeps them), module types
                        keys[key] = _h(portable.comparable(rec.value))
                        continue
                    if rtype == TYPE_HASH:
                        keys[key] = {f.decode("utf-8", "surrogateescape"): _h(v) for f, v in value}  # type: ignore[attr-defined]
                    else:
                        keys[key] = _h(repr((rtype, value)).encode())
                elif rec.tag == TAG_BEGIN:
                    big[rec.key] = (rec.type, [])
                elif rec.tag == TAG_CHUNK and rec.key in big:
                    big[rec.key][1].extend(rec.items or [])
        elif name == "db/schema.json":
            for t in json.loads(member.read_all()).get("tables", []):
                tables[t["member"]] = t
        elif name.startswith("db/"):
            prefix = name.rpartition(".")[0].rpartition(".")[0]
            table = tables.get(prefix)
            if table is not None:
                entity = f"db:{table['name']}"
                tiers[entity] = "db"
                _table_digests(member.stream, name.rpartition(".")[2], table, out.setdefault(entity, {}))
    for bkey, (type_, items) in big.items():
        k = bkey.decode("utf-8", "surrogateescape")
        if type_ == TYPE_HASH:
            out["redis"][k] = {f.decode("utf-8", "surrogateescape"): _h(v) for f, v in zip(items[::2], items[1::2])}
        else:
            out["redis"][k] = _h(b"\0".join(items))
    return out, tiers


def _table_digests(stream: Any, encoding: str, table: dict[str, Any], out: dict[str, Any]) -> None:
    from statekit.tiers.sql.values import iter_jsonl, split_copy_line

    cols = [c["name"] for c in table.get("columns", []) if not c.get("generated")]
    pk = [cols.index(c) for c in table.get("primary_key", []) if c in cols]
    rows: Iterable[list[Any]]
    if encoding == "copy":
        rows = (split_copy_line(line.rstrip(b"\n")) for line in stream)
    else:
        rows = iter_jsonl(stream, len(cols))
    for row in rows:
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
