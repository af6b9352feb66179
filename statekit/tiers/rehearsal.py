"""What a restore rehearsal reports (statekit.ops.rehearse runs it; each tier's `rehearse` adds its checks),
and the helpers the tiers' rehearsals share."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

_MOD = 1 << 256


@dataclass
class Check:
    """One comparison: what the archive says, what the rehearsal found."""

    tier: str
    item: str
    what: str  # rows, keys, files, sha256, content
    expected: Any
    actual: Any

    @property
    def ok(self) -> bool:
        """True when both sides agree."""
        return bool(self.expected == self.actual)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"tier": self.tier, "item": self.item, "what": self.what, "expected": self.expected,
                "actual": self.actual, "ok": self.ok}  # fmt: skip


@dataclass
class RehearsalReport:
    """All comparisons of one rehearsal."""

    started: float
    finished: float = 0.0
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every comparison agreed."""
        return all(c.ok for c in self.checks)

    def per_tier(self) -> dict[str, dict[str, int]]:
        """passed/failed counts by tier (for metrics)."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"passed": 0, "failed": 0})
        for c in self.checks:
            out[c.tier]["passed" if c.ok else "failed"] += 1
        return dict(out)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (every check, failures first)."""
        return {
            "ok": self.ok,
            "duration_s": round(self.finished - self.started, 3),
            "tiers": self.per_tier(),
            "failures": [c.to_json() for c in self.checks if not c.ok],
            "checks": [c.to_json() for c in self.checks],
            "notes": self.notes,
        }


class MultisetHash:
    """An order-independent hash of a multiset of byte strings (sum of SHA-256 values mod 2^256)."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, item: bytes) -> None:
        self.total = (self.total + int.from_bytes(hashlib.sha256(item).digest(), "big")) % _MOD

    def hexdigest(self) -> str:
        return f"{self.total:064x}"


class CollectingSink:
    """A MemberSink that hands what a re-snapshot of the rehearsal target produces to `on_member` (name,
    body, meta) instead of storing it."""

    def __init__(self, on_member: Callable[[str, bytes, dict[str, Any]], None]) -> None:
        self._on_member = on_member

    def add(self, name: str, data: bytes | bytearray | memoryview | IO[bytes], *, size: int | None = None,
            mode: int = 0o600, mtime: float | None = None, meta: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        body = data if isinstance(data, (bytes, bytearray, memoryview)) else data.read()
        self._on_member(name, bytes(body), dict(meta or {}))
