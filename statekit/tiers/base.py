"""What every tier provides: the `Tier` base class the registry (statekit.tiers) holds one instance of per tier,
and the member decoder each tier hands its archive readers.

A tier is a package under statekit/tiers/ with its snapshot, restore, member decoding and rehearsal; its
package `__init__` holds a `Tier` subclass that imports those modules only when a method needs them, so
loading the registry costs no more than the adapters (a snapshot never loads restore code).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from statekit.config import redact_url
from statekit.model import (
    Member,
    MemberSink,
    MemberSource,
    Progress,
    RestoreOptions,
    RestoreReport,
    TierSummary,
    UndoSink,
    Warn,
)

if TYPE_CHECKING:
    from statekit.archive.reader import Archive
    from statekit.config import Config
    from statekit.tiers.rehearsal import RehearsalReport

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class MemberDecoder(Protocol[R_co]):
    """Turns one tier's archive members into that tier's records. Members are fed in archive order (every
    member whose name starts with `prefix`); `finish` yields what only the end of the archive completes."""

    prefix: str

    def feed(self, member: Member) -> Iterator[R_co]: ...

    def finish(self) -> Iterator[R_co]: ...


def decode(source: MemberSource, decoder: MemberDecoder[R]) -> Iterator[R]:
    """Every record `decoder` finds in `source` (one pass over the tier's members)."""
    for member in source.members(prefix=decoder.prefix):
        yield from decoder.feed(member)
    yield from decoder.finish()


def decode_tiers(source: MemberSource, decoders: Sequence[MemberDecoder[R]]) -> Iterator[R]:
    """The records of several tiers in one pass over `source`: each member goes to the decoder of its prefix."""
    for member in source.members():
        for decoder in decoders:
            if member.name.startswith(decoder.prefix):
                yield from decoder.feed(member)
                break
    for decoder in decoders:
        yield from decoder.finish()


class Tier(ABC):
    """One tier: what it is called, where it is configured, and how it is snapshotted, restored, decoded and
    rehearsed. Every method that does the work imports its module on first use."""

    name: str  # archive member prefix (`<name>/`), --tier value, entry in snapshot.json
    section: str  # the config section ([db], [redis], [files])
    title: str  # how a person calls it
    url_target: bool = True  # a restore target is a URL (--target-url); otherwise a directory (--target)
    live_audit: bool = True  # `statekit audit` can read this tier live
    # The restore reads and verifies the whole archive in its load pass and changes nothing unless that pass
    # verified (one transaction): the engine then needs no verifying pass of its own when the head names the
    # tiers and the target.
    verifies_while_loading: bool = False

    @property
    def prefix(self) -> str:
        """The archive member prefix of this tier."""
        return f"{self.name}/"

    # -- configuration and targets ------------------------------------------------------------------------

    @abstractmethod
    def target(self, cfg: Config) -> str | None:
        """The configured source / restore target (a URL or a directory), None when not configured."""

    def configured(self, cfg: Config) -> bool:
        """True when the configuration names a source for this tier."""
        return bool(self.target(cfg))

    def describe_target(self, target: str | None) -> dict[str, Any]:
        """The `restore_target` object recorded in an undo archive (no password)."""
        return {"tier": self.name, "url": redact_url(target)}

    def show_target(self, target: str | None) -> str:
        """A target as a person reads it in a plan or a prompt (a URL without its password)."""
        return redact_url(target) or "(no target)"

    def undo_target(self, target: dict[str, Any], members: Sequence[str], summary: TierSummary) -> dict[str, Any]:
        """The `restore_target` to record once the undo archive holds `members` (a tier adds what it needs to
        go back to the same place)."""
        return target

    def undo_options(self, opts: RestoreOptions, recorded: dict[str, Any], same_server: bool) -> RestoreOptions:
        """Options for restoring an undo archive that recorded `recorded` (`same_server`: the restore goes to
        the server it recorded)."""
        return opts

    def same_target(self, shown: str, recorded: str) -> bool:
        """True when a target named by the user (without password) is the recorded one."""
        return shown == recorded

    password_per_server: bool = False  # a configured URL of the same server lends its password to any path

    # -- the work ------------------------------------------------------------------------------------------

    @abstractmethod
    def snapshot(
        self, cfg: Config, writer: MemberSink, *, jobs: int | None, progress: Progress, warn: Warn
    ) -> TierSummary:
        """Write the tier's members into `writer`."""

    @abstractmethod
    def plan_restore(self, archive: Archive, opts: RestoreOptions, cfg: Config) -> RestoreReport:
        """What a restore would do (writes nothing)."""

    @abstractmethod
    def restore(
        self,
        archive: Archive,
        opts: RestoreOptions,
        cfg: Config,
        *,
        undo: UndoSink | None,
        progress: Progress,
        warn: Warn,
    ) -> RestoreReport:
        """Restore the tier (after sealing `undo`, when given, before the first change)."""

    @abstractmethod
    def decoder(self) -> MemberDecoder[object]:
        """A fresh decoder of this tier's members."""

    def records(self, source: MemberSource) -> Iterator[object]:
        """This tier's records in `source`, decoded by its decoder."""
        return decode(source, self.decoder())

    @abstractmethod
    def rehearse(self, archive: Archive, report: RehearsalReport, *, trusted: bool, warn: Warn) -> None:
        """Restore the archive's tier into a throwaway target and add the comparisons to `report`."""

    def __repr__(self) -> str:
        return f"<tier {self.name}>"


def same_server(a: str, b: str) -> bool:
    """True when two URLs (passwords redacted or not) name the same scheme, user, host and port."""
    try:
        return _netloc_key(a) == _netloc_key(b)
    except ValueError:
        return False


def _netloc_key(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1].lower()
    return parts.scheme, f"{parts.username or ''}@{host}"
