"""Health figures an audit reports next to its findings: session-restore readiness, database round-trip
time and Redis's keyspace hit ratio (as monitoring for Evolution API asks for)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from statekit.audit.engine import Locations
from statekit.audit.findings import AuditResult
from statekit.errors import StatekitError


def db_roundtrip_seconds(
    url: str | None, samples: int = 5, *, clock: Callable[[], float] = time.perf_counter
) -> float | None:
    """Median time of `SELECT 1` on an open connection (seconds by `clock`), or None without a database."""
    if not url:
        return None
    import sqlalchemy as sa

    from statekit.tiers.sql.connect import DbTarget

    target = DbTarget(url)
    with target.connection() as conn:
        times = []
        for _ in range(samples):
            t0 = clock()
            conn.execute(sa.text("SELECT 1")).scalar()
            times.append(clock() - t0)
    return statistics.median(times)


def redis_hit_ratio(url: str | None) -> float | None:
    """keyspace_hits / (hits + misses) from INFO stats, or None when Redis has served no lookup yet."""
    if not url:
        return None
    from statekit.tiers.redis.resp import RespConnection, parse_info

    conn = RespConnection(url)
    try:
        info = parse_info(conn.call(b"INFO", b"stats"))
    finally:
        conn.close()
    hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
    return hits / (hits + misses) if hits + misses else None


def write_audit_metrics(path: str | Path, result: AuditResult, where: Locations, *, evolution: bool) -> None:
    """Write the audit's Prometheus metrics; the Evolution figures only for the evolution-api profile."""
    from statekit.ops.metrics import audit_metrics, write_metrics
    from statekit.profiles.evolution.metrics import EvolutionStatus

    findings: dict[tuple[str, str], int] = {}
    for f in result.findings:
        findings[(f.entity, f.cls)] = findings.get((f.entity, f.cls), 0) + 1
    status = None
    if evolution:
        ready, sessions = result.readiness
        if result.servers:
            status = EvolutionStatus(readiness=ready / sessions if sessions else None, ready=ready, sessions=sessions)
        else:
            status = EvolutionStatus(readiness=result.complete / result.roots if result.roots else None)
        try:
            status.db_latency_seconds = db_roundtrip_seconds(where.get("db"))
            status.redis_hit_ratio = redis_hit_ratio(where.get("redis"))
        except StatekitError:
            pass  # the audit itself already reported an unreachable tier
    metrics = audit_metrics(
        findings=findings,
        entity_counts=result.entity_counts,
        drift=result.drift,
        finished=time.time(),
        gauges=status.gauges() if status is not None else (),
    )
    write_metrics(path, metrics)
