"""Audit results for people (a summary grouped by entity and class, with the first examples) and for
programs (one JSON document, or JSON lines). No click here: the CLI prints what these return."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from statekit.audit.findings import FINDING_CLASSES, AuditResult, Finding

AUDIT_SCHEMA = "statekit.audit/v1"


def summary(result: AuditResult) -> dict[str, dict[str, int]]:
    """entity → class → count."""
    out: dict[str, dict[str, int]] = {}
    for f in result.findings:
        per = out.setdefault(f.entity, {})
        per[f.cls] = per.get(f.cls, 0) + 1
    return out


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def tier_counts(result: AuditResult, counts: dict[tuple[str, str], int] | None = None) -> dict[str, dict[str, int]]:
    """tier → entity → ids with a record there (or, given `counts`, those counts)."""
    out: dict[str, dict[str, int]] = {t: {} for t in result.tiers}
    for (entity, tier), n in sorted((result.entity_counts if counts is None else counts).items()):
        if tier in out:
            out[tier][entity] = n
    return out


def audit_document(result: AuditResult, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The --json document (findings never carry values)."""
    ready, sessions = result.readiness
    modes: dict[str, Any] = {}
    if result.servers:
        modes = {
            "servers": [t.to_json() for t in result.servers.values()],
            "readiness": {"ready": ready, "sessions": sessions},
        }
    return {
        "audit_schema": AUDIT_SCHEMA,
        "clean": not result.drift,
        "tiers": result.tiers,
        "entities": result.entities,
        "keys_only": result.keys_only,
        "scopes": result.scopes,
        "values_compared": result.values,
        "duration_s": round(result.duration_s, 3),
        "summary": summary(result),
        "tier_counts": tier_counts(result),
        "tier_records": tier_counts(result, result.record_counts),
        "tier_ids": dict(result.tier_ids),
        **modes,
        "notes": list(result.notes),
        "findings": [f.to_json() for f in result.findings],
        **(extra or {}),
    }


def audit_jsonl(result: AuditResult, *, extra: dict[str, Any] | None = None) -> Iterator[str]:
    """--jsonl: one line per finding, then one summary line."""
    for f in result.findings:
        yield json.dumps({"type": "finding", "audit_schema": AUDIT_SCHEMA, **f.to_json()})
    doc = audit_document(result, extra=extra)
    doc.pop("findings")
    yield json.dumps({"type": "summary", **doc})


def _finding_line(f: Finding) -> str:
    parts = [f"{f.cls:<11}", f"{f.tier:<11}", f.id or "-"]
    if f.key:
        parts.append(f.key)
    text = "  ".join(parts)
    if f.fields:
        text += "  fields " + ", ".join(f.fields[:5]) + (" …" if len(f.fields) > 5 else "")
    if f.detail:
        text += f"  ({f.detail})"
    return text


def header_lines(result: AuditResult) -> list[str]:
    """Servers with their modes, records per tier, readiness and notes (the lines under the title)."""
    lines: list[str] = []
    for t in result.servers.values():
        where = f"{t.mode} mode" + (f", prefix {t.prefix}" if t.prefix and t.covered else "") + f", from {t.origin}"
        if not t.covered:
            why = "no server configured for this clientName" if t.origin == "-" else f"{t.mode} mode is not covered"
            lines.append(f"  server {t.name}: {_plural(t.instances, 'instance')} NOT audited ({why})")
            continue
        lines.append(f"  server {t.name} ({where}): {_plural(t.instances, 'instance')}, "
                     f"{t.sessions:,} with a session, {t.ready:,} ready to boot without a QR code")  # fmt: skip
    counts = tier_counts(result)
    if counts and result.entity_counts:
        parts = []
        for tier, per in counts.items():
            shown = []
            for e, n in per.items():
                total = result.record_counts.get((e, tier), n)
                shown.append(f"{e} {n:,}" if total == n else f"{e} {total:,} in {n:,} ids")
            parts.append(f"{tier} {', '.join(shown) or 'nothing'}")
        lines.append("  records per tier: " + " · ".join(parts))
    ready, sessions = result.readiness
    if result.servers:
        lines.append(f"  readiness: {ready:,} of {sessions:,} instances with a session would boot without a QR code")
    lines.extend(f"  note: {n}" for n in result.notes)
    return lines


def audit_lines(result: AuditResult, *, examples: int = 3, title: str = "audit") -> list[str]:
    """The human summary: per entity and class, a count and the first examples, then the repair."""
    lines = [
        f"{title}: {', '.join(result.tiers)} · {len(result.entities)} entities · {result.scopes:,} ids · "
        f"{result.values:,} values{' (keys only)' if result.keys_only else ''} in {result.duration_s:.2f}s"
    ]
    lines.extend(header_lines(result))
    by_entity: dict[str, dict[str, list[Finding]]] = {}
    for f in result.findings:
        by_entity.setdefault(f.entity, {}).setdefault(f.cls, []).append(f)
    for entity in result.entities + sorted(set(by_entity) - set(result.entities)):
        classes = by_entity.get(entity)
        if not classes:
            lines.append(f"  {entity}: ok")
            continue
        counts = ", ".join(f"{c} {len(classes[c])}" for c in FINDING_CLASSES if c in classes)
        lines.append(f"  {entity}: {counts}")
        for cls in FINDING_CLASSES:
            shown = classes.get(cls, [])
            for f in shown[:examples]:
                lines.append("    " + _finding_line(f))
            if len(shown) > examples:
                lines.append(f"    … and {len(shown) - examples} more {cls}")
            repairs = list(dict.fromkeys(f.repair or _default_repair(f) for f in shown))
            for hint in repairs[:4]:
                lines.append(f"    repair: {hint}")
    drift = [f for f in result.findings if f.cls != "transient"]
    transient = len(result.findings) - len(drift)
    if drift:
        lines.append("drift: " + _plural(len(drift), "finding") + (f" (+{transient} transient)" if transient else ""))
    else:
        lines.append("clean" + (f" ({_plural(transient, 'transient finding')} gone on re-check)" if transient else ""))
    return lines


def _default_repair(f: Finding) -> str:
    if f.cls == "unparseable":
        return f"a name that fits no template of the model: remove {f.where or 'it'} or extend the model"
    if f.cls == "transient":
        return "none: it was caught mid-write and was gone on re-check"
    return f"{f.entity} in {f.tier}: `statekit audit` of the live tiers names the tier to reconcile it from"
