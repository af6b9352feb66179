"""What the audit compares: one source per tier, live or from an archive.

`records` holds the record model every source shares; `db`, `redis` and `files` read the live tiers (db: one
streamed SELECT per table through a server-side cursor; redis: SCAN per key template, then one pipelined round
trip per batch; files: one os.scandir walk that never follows symlinks, then one read per file); `archive`
reads the same records from a snapshot. `open_live` opens the live source of every tier a model uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from statekit.audit.entities import TIERS, Model
from statekit.audit.sources.db import DbReader
from statekit.audit.sources.files import FilesReader
from statekit.audit.sources.records import Source
from statekit.audit.sources.redis import RedisReader


class LiveSource(Source, Protocol):
    """A live tier: it can re-read suspects before a re-check and holds connections to release."""

    def refresh(self, scopes: list[str]) -> None: ...

    def notes(self, model: Model, entity_counts: Mapping[tuple[str, str], int]) -> list[str]: ...

    def close(self) -> None: ...


class _Opener(Protocol):
    tier: str

    def open(self, location: str, model: Model, *, keys_only: bool = False) -> LiveSource: ...


# The live source of each tier the audit reads (opened in the order of statekit.audit.entities.TIERS).
LIVE_SOURCES: dict[str, _Opener] = {kind.tier: kind for kind in (DbReader, RedisReader, FilesReader)}


@dataclass
class LiveTiers:
    """The live sources of one audit and how to re-read suspects."""

    sources: dict[str, LiveSource]
    skipped: list[str]

    def refresh(self, scopes: list[str]) -> None:
        """Re-list the given scopes in every tier (before a re-check round)."""
        for src in self.sources.values():
            src.refresh(scopes)

    def close(self) -> None:
        """Release connections."""
        for src in self.sources.values():
            src.close()


def open_live(
    model: Model,
    where: Mapping[str, str | None],
    *,
    keys_only: bool = False,
    tiers: Iterable[str] | None = None,
) -> LiveTiers:
    """Sources for every tier the model uses and `where` locates (tier name -> URL or root); the rest are
    listed as skipped."""
    used = {t for ent in model.entities.values() for t in ent.locators}
    if tiers is not None:
        used &= set(tiers)
    sources: dict[str, LiveSource] = {}
    skipped: list[str] = []
    for tier in TIERS:
        if tier not in used:
            continue
        location = where.get(tier)
        if location:
            sources[tier] = LIVE_SOURCES[tier].open(location, model, keys_only=keys_only)
        else:
            skipped.append(tier)
    return LiveTiers(sources, skipped)
