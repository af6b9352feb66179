"""Evolution API's health figures as Prometheus gauges, for the audit's metrics file."""

from __future__ import annotations

from dataclasses import dataclass

from statekit.ops.metrics import Metric


@dataclass
class EvolutionStatus:
    """Evolution API health as the audit sees it: the share of instances whose auth state is complete in the
    authority (session-restore readiness), the database round-trip time and Redis's keyspace hit ratio."""

    readiness: float | None = None
    db_latency_seconds: float | None = None
    redis_hit_ratio: float | None = None
    ready: int | None = None  # instances that would boot without a new QR code under their server's mode
    sessions: int | None = None  # instances that should boot paired (open, or with creds in the live place)

    def gauges(self) -> list[Metric]:
        """One gauge per figure that is known (an unknown one is left out, not written as 0)."""
        out = []
        for name, help_text, value in (
            (
                "statekit_evolution_session_restore_readiness_ratio",
                "Share of the instances with a session that would boot without a new QR code",
                self.readiness,
            ),
            (
                "statekit_evolution_instances_ready",
                "Instances whose creds and keys are in the live place of their server's mode",
                self.ready,
            ),
            (
                "statekit_evolution_instances_with_session",
                "Instances that should boot paired (open, or with creds in the live place)",
                self.sessions,
            ),
            ("statekit_db_roundtrip_seconds", "Database round-trip time (SELECT 1)", self.db_latency_seconds),
            (
                "statekit_redis_keyspace_hit_ratio",
                "Redis keyspace_hits / (hits + misses) from INFO stats",
                self.redis_hit_ratio,
            ),
        ):
            if value is not None:
                out.append(Metric(name, help_text).add(value))
        return out
