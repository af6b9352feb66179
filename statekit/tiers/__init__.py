"""The tiers, and THE list of them: a tier is one package under statekit/tiers/ holding a `Tier`
(statekit.tiers.base) plus one line in `TIERS` below. Engines, CLI options and rehearsal loop over `TIERS`,
in snapshot order. Each tier knows its driver and nothing of crypto or the other tiers.
"""

from __future__ import annotations

from statekit.errors import UsageError
from statekit.tiers.base import Tier
from statekit.tiers.files import FilesTier
from statekit.tiers.redis import RedisTier
from statekit.tiers.sql import DbTier

TIERS: tuple[Tier, ...] = (DbTier(), RedisTier(), FilesTier())


def names() -> tuple[str, ...]:
    """Every tier's name, in snapshot order."""
    return tuple(t.name for t in TIERS)


def get(name: str) -> Tier:
    """The tier called `name` (a UsageError naming the choices for any other name)."""
    for tier in TIERS:
        if tier.name == name:
            return tier
    raise UsageError(f"unknown tier {name!r} (choose from {', '.join(names())})")


__all__ = ["TIERS", "Tier", "get", "names"]
