"""Audit results for people (a summary grouped by entity and class, with the first examples) and for
programs (one JSON document, or JSON lines). No click here: the CLI prints what these return."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from statekit.audit.diff import FINDING_CLASSES, AuditResult, Finding

AUDIT_SCHEMA = "statekit.audit/v1"


def summary(result: AuditResult) -> dict[str, dict[str, int]]:
    """entity → class → count."""
    out: dict[str, dict[str, int]] = {}
    for f in result.findings:
        per = out.setdefault(f.entity, {})
        per[f.cls] = per.get(f.cls, 0) + 1
    return out


def audit_document(result: AuditResult, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The --json document (findings never carry values)."""
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


def audit_lines(result: AuditResult, *, examples: int = 3, title: str = "audit") -> list[str]:
    """The human summary: per entity and class, a count and the first examples."""
    lines = [
        f"{title}: {', '.join(result.tiers)} · {len(result.entities)} entities · {result.scopes:,} ids · "
        f"{result.values:,} values{' (keys only)' if result.keys_only else ''} in {result.duration_s:.2f}s"
    ]
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
    drift = [f for f in result.findings if f.cls != "transient"]
    transient = len(result.findings) - len(drift)
    if drift:
        lines.append(f"drift: {len(drift)} findings" + (f" (+{transient} transient)" if transient else ""))
    else:
        lines.append("clean" + (f" ({transient} transient findings gone on re-check)" if transient else ""))
    return lines
