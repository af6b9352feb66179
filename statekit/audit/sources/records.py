"""The record model every audit source shares: a record in one tier, what a tier holds for a batch of
scopes, names that fit no template, and the `Source` interface the comparison reads through.

Each source works in two passes so memory stays bounded: `list_scopes()` finds which scopes (e.g. instance
ids) the tier holds, then `load(scopes)` fetches the values of one batch of scopes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from statekit.audit.entities import LOCATOR_KINDS, Entity

RecordKey = tuple[str, ...]


class Record:
    """One record in one tier. `stored` is None in keys-only mode and for presence-only entities. `loc` is
    the tier's name and the record's place there: a key and field, a relative path, a table and row
    description (each locator kind's `loc_text` reads its own)."""

    __slots__ = ("extra", "loc", "null", "raw_vars", "stored")

    def __init__(
        self,
        stored: bytes | None,
        loc: tuple[str, ...],
        extra: dict[str, Any] | None = None,
        null: bool = False,
        raw_vars: dict[str, str] | None = None,
    ) -> None:
        self.stored = stored
        self.loc = loc
        self.extra = extra
        self.null = null  # db: the row exists but the value column is NULL
        self.raw_vars = raw_vars  # the name's own values where a name transform changed them

    @property
    def where(self) -> str:
        """The record's location for a person (as its tier's locator kind writes it)."""
        return LOCATOR_KINDS[self.loc[0]].loc_text(self.loc)


@dataclass
class Unparseable:
    """A name in a tier that looks like it belongs to the model but fits none of its templates."""

    tier: str
    entity: str
    scope: str | None
    where: str
    detail: str


@dataclass
class TierData:
    """What one tier holds for a batch of scopes: entity → scope → rest-of-key → record."""

    tier: str
    records: dict[str, dict[str, dict[RecordKey, Record]]] = field(default_factory=dict)
    unparseable: list[Unparseable] = field(default_factory=list)

    def add(self, entity: str, scope: str, rest: RecordKey, rec: Record) -> None:
        """Store a record (the first one wins when two names map to the same record)."""
        self.records.setdefault(entity, {}).setdefault(scope, {}).setdefault(rest, rec)

    def scope_records(self, entity: str, scope: str) -> dict[RecordKey, Record] | None:
        """The entity's records of one scope, or None when the tier holds none."""
        return self.records.get(entity, {}).get(scope)

    def has_scope(self, scope: str) -> bool:
        """True when the tier holds anything at all for this scope."""
        return any(scope in per for per in self.records.values())

    def select(self, scopes: Iterable[str]) -> TierData:
        """The part of this (in-memory) tier data that belongs to these scopes."""
        wanted = set(scopes)
        out = TierData(self.tier)
        for ent, per in self.records.items():
            for scope in wanted & per.keys():
                out.records.setdefault(ent, {})[scope] = per[scope]
        return out


def normalise(ent: Entity, values: dict[str, str]) -> tuple[str, RecordKey]:
    """A name's variable values as a record's identity: the scope and the rest of the key, each through the
    entity's name transform where it has one."""
    out = []
    for v in ent.vars:
        text = values.get(v, "")
        fn = ent.normalizers.get(v)
        out.append(fn(text) if fn else text)
    return out[0], tuple(out[1:])


def raw_vars(ent: Entity, values: dict[str, str]) -> dict[str, str] | None:
    """The name's own values, kept only where a transform changed them (so reconcile can write the original
    name back)."""
    if not ent.normalizers:
        return None
    changed = {v: values[v] for v, fn in ent.normalizers.items() if v in values and fn(values[v]) != values[v]}
    return changed or None


class Source(Protocol):
    """A tier as the audit sees it: live (the tier's reader) or from an archive (sources/archive.py)."""

    tier: str
    unparseable: list[Unparseable]

    def list_scopes(self) -> set[str]: ...

    def load(self, scopes: Iterable[str]) -> TierData: ...


def first_line(exc: BaseException) -> str:
    """An error's first line, at most 200 characters (for messages that name the failed step)."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def connect_error_text(exc: BaseException, secret: object) -> str:
    """The driver's own first line (as snapshot reports it), with the password masked."""
    line = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
    return line.replace(str(secret), "***") if secret else line
