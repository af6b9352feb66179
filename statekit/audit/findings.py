"""What an audit reports: findings, the options it ran with, the result and its tallies.

Classes of finding: `missing` (absent from a tier that should hold it), `orphan` (present without its
authority), `mismatch` (values differ; `fields` are JSON paths), `unparseable` (a name or value that fits the
model nowhere), and `transient` (gone when re-checked after a short delay: caught mid-write, not drift).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from statekit.audit.entities import Entity, Model
from statekit.audit.repairs import Given
from statekit.audit.sources.records import RecordKey, Unparseable

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
    # What the repair commands printed with the findings carry over from the audit's command line.
    given: Given = field(default_factory=Given)


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


def root_of(model: Model, ent: Entity) -> Entity:
    """The entity's root (the one without a parent)."""
    while ent.parent is not None:
        ent = model.entities[ent.parent]
    return ent


def key_text(rest: RecordKey) -> str | None:
    """A record's key below its scope as findings show it (None for the scope's single record)."""
    return "/".join(rest) if rest else None


def chunks(items: list[str], n: int) -> Iterator[list[str]]:
    """The items in consecutive batches of n."""
    for i in range(0, len(items), n):
        yield items[i : i + n]


def unparseable_findings(items: Iterable[Unparseable]) -> list[Finding]:
    """One finding per name that fits no template, with how to repair it."""
    return [
        Finding("unparseable", u.entity, u.scope, None, u.tier, u.where, [], u.detail,
                f"remove {u.where} (a name the application never reads) or extend the entity model")
        for u in items
    ]  # fmt: skip
