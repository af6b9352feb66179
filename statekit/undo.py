"""Undo archives: what a restore is about to replace, saved before its first change, with the target it
was taken from. That record is only the archive's claim (anyone with the public key can write an archive that
says it is an undo archive): restoring an undo archive goes to the configured target, or to the one named with
--target/--target-url, and is refused when the recorded target is another, unless the archive is signed by a
trusted key (then it goes back to its recorded target). The command a restore prints to put its target back
names that target with the flag whenever it is not the configured one.

An undo archive's snapshot.json has `"kind": "undo"` and a `restore_target` object (docs/FORMAT.md), which
its format.json repeats at the head of the archive when the target is complete before the first member:

    {"tier": "redis", "url": "redis://:***@host:6379/5", "dbs": [5], "flush": false}
    {"tier": "db", "url": "postgresql+psycopg://app:***@host/appdb"}
    {"tier": "files", "root": "/srv/keys"}

Passwords are never stored. When the recorded URL had one, it is taken from the configured URL of the same
server (same scheme, user, host and port), or from an explicit --target-url naming the same target.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from statekit.archive.writer import ArchiveWriter
from statekit.config import Config, redact_url
from statekit.errors import CorruptArchive, Refused, StorageError, UsageError
from statekit.fsio import atomic_output
from statekit.model import MemberSink, RestoreOptions, TierSummary, utc_stamp
from statekit.textfmt import printable
from statekit.tiers import get as get_tier
from statekit.tiers.base import Tier, same_server

if TYPE_CHECKING:
    from statekit.archive.keys import Recipient
    from statekit.archive.reader import Archive

# A callback told the undo archive's path as soon as it is sealed, before the restore's first change.
OnSealed = Callable[[str], None]


class _UndoOutput:
    """The undo archive's file: a failed write (disk full, quota, read-only) is a StorageError naming it."""

    def __init__(self, fh: IO[bytes], path: Path) -> None:
        self._fh = fh
        self._path = path

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            what = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
            raise StorageError(
                f"cannot write the undo archive {self._path}: {what}; nothing was changed (free space or give "
                "--undo-dir on another file system)"
            ) from None

    def flush(self) -> None:
        self._fh.flush()


class UndoArchive:
    """An archive of what a restore is about to replace. The tier writes into `sink`, then `seal()`
    finishes, fsyncs and renames it — before the tier's first change."""

    def __init__(
        self,
        directory: Path,
        tier: str,
        recipients: Sequence[Recipient],
        *,
        source: dict[str, Any],
        allow_unencrypted: bool,
        target: dict[str, Any] | None = None,
        on_sealed: OnSealed | None = None,
    ) -> None:
        if not recipients and not allow_unencrypted:
            raise Refused(
                "no key to encrypt the undo archive with (give --recipient, or --no-undo for a disposable target)"
            )
        if not directory.is_dir():
            raise UsageError(f"undo directory {directory} does not exist")
        directory = Path(os.path.abspath(directory))  # printed in the command that puts the target back
        self.tier = tier
        self.started = time.time()
        self.path = directory / f"undo-{tier}-{utc_stamp(self.started)}.statekit"
        n = 1
        while self.path.exists():
            n += 1
            self.path = directory / f"undo-{tier}-{utc_stamp(self.started)}-{n}.statekit"
        self._source = source
        self._target = target
        self._on_sealed = on_sealed
        self._stack = ExitStack()
        fh = self._stack.enter_context(atomic_output(self.path))
        out: Any = _UndoOutput(fh, self.path)
        head: dict[str, Any] = {"kind": "undo", "tiers": [tier]}
        if target is not None and type(get_tier(tier)).undo_target is Tier.undo_target:
            # Complete now, so the head carries it too; a tier that adds to it when sealed (Redis: the databases
            # and flush) leaves it to snapshot.json.
            head["restore_target"] = target
        self._writer = ArchiveWriter(out, recipients=list(recipients), created_at=self.started, head=head)
        # A plain attribute (not a property) so UndoArchive satisfies the UndoSink protocol's settable `sink`.
        self.sink: MemberSink = self._writer
        self.sealed: str | None = None

    def seal(self, tier_summary: TierSummary) -> str:
        """Finish and durably store the undo archive; returns its path."""
        doc: dict[str, Any] = {
            "kind": "undo",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "undo_of": self._source,
        }
        if self._target is not None:
            members = [e.name for e in self._writer.entries]
            doc["restore_target"] = get_tier(self.tier).undo_target(dict(self._target), members, tier_summary)
        doc["tiers"] = [tier_summary.to_json()]
        self._writer.finish(doc)
        self._stack.close()
        self.sealed = str(self.path)
        if self._on_sealed is not None:
            self._on_sealed(self.sealed)
        return self.sealed

    def abort(self) -> None:
        """Drop an unsealed undo archive (its temporary file is removed)."""
        if self.sealed is None:
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


# -- the target a restore writes to ------------------------------------------------------------------------


def configured_target(cfg: Config, tier: str) -> str | None:
    """The configured target of a tier: a URL, or a directory for a tier restored into one."""
    return get_tier(tier).target(cfg)


def describe_target(tier: str, target: str | None) -> dict[str, Any]:
    """The `restore_target` object recorded in an undo archive (passwords redacted)."""
    return get_tier(tier).describe_target(target)


def show_target(tier: str, target: str | None) -> str:
    """A target as a person reads it in a plan or a prompt (a URL without its password)."""
    return get_tier(tier).show_target(target)


def recorded_target(snapshot: dict[str, Any], tier: str) -> dict[str, Any] | None:
    """The `restore_target` of an undo archive for this tier (None for a snapshot, or an undo archive of
    another tier). Undo archives written before `restore_target` existed give their `undo_of.target`."""
    if snapshot.get("kind") != "undo":
        return None
    doc = snapshot.get("restore_target")
    url_target = get_tier(tier).url_target
    if isinstance(doc, dict) and doc.get("tier") == tier:
        where = doc.get("url" if url_target else "root")
        if not isinstance(where, str) or not where or "\0" in where:
            raise CorruptArchive("the undo archive's restore_target is damaged (no target it could go back to)")
        return doc
    tiers = snapshot.get("tiers")
    first = tiers[0] if isinstance(tiers, list) and tiers and isinstance(tiers[0], dict) else {}
    undo_of = snapshot.get("undo_of")
    old = undo_of.get("target") if isinstance(undo_of, dict) else None
    if first.get("tier") != tier or not isinstance(old, str):
        return None
    return {"tier": tier, "url": old} if url_target else {"tier": tier, "root": old}


def target_record(archive: Archive) -> dict[str, Any]:
    """The document an archive's recorded target is read from: its head (format.json) when that says what the
    archive is and, for an undo archive, holds the whole target, so no pass over the archive is needed; else
    snapshot.json (archives written before the head carried these; undo archives whose target is settled
    only when they are sealed), which takes a verifying pass. Every pass checks the head against snapshot.json."""
    head = archive.head()
    kind = head.get("kind")
    if kind == "snapshot" or (kind == "undo" and isinstance(head.get("restore_target"), dict)):
        return head
    return archive.snapshot


@dataclass
class ResolvedTarget:
    """Where a restore goes and why: `target` is what the tier adapter gets (a URL with its password),
    `note` explains a target chosen for an undo archive, or one that differs from what it recorded."""

    options: RestoreOptions
    shown: str
    note: str | None = None
    recorded: dict[str, Any] | None = None


def resolve_target(
    snapshot: dict[str, Any], opts: RestoreOptions, cfg: Config, *, trusted: bool = False
) -> ResolvedTarget:
    """Where this restore writes. The target an undo archive records is only its claim (anyone with the public
    key can write one): without --target/--target-url the restore goes to the configured target, and an undo
    archive that records another is refused (Refused, exit 8, naming the flag that sends it there) — unless it
    is signed by a trusted key (`trusted`), which goes back to its recorded target. With --target/--target-url:
    that target (the plan and the prompt say when it is not the recorded one)."""
    from dataclasses import replace

    recorded = recorded_target(snapshot, opts.tier)
    configured = configured_target(cfg, opts.tier)
    if recorded is None:
        target = opts.target or configured
        return ResolvedTarget(opts, show_target(opts.tier, target))
    tier = get_tier(opts.tier)
    if not tier.url_target:
        root = recorded.get("root")
        if not isinstance(root, str) or not root:
            raise UsageError(f"the undo archive records no {tier.title} directory; give --target DIR")
        if opts.target is None:
            if not trusted and not is_configured(cfg, opts.tier, root):
                raise _elsewhere(tier, "root", root, "--target")
            back = root if trusted else configured
            return ResolvedTarget(
                replace(opts, target=back), tier.show_target(back), "the directory the undo archive was saved from",
                recorded,
            )  # fmt: skip
        if tier.same_target(_recorded_form(tier, opts.target) or "", _recorded_form(tier, root) or root):
            return ResolvedTarget(
                opts, tier.show_target(opts.target), "the directory the undo archive was saved from", recorded
            )
        return _explicit(opts, recorded, root)
    url = recorded.get("url")
    if not isinstance(url, str) or not url:
        raise UsageError("the undo archive records no target URL; give --target-url")
    if opts.target is None:
        if not trusted and not is_configured(cfg, opts.tier, url):
            raise _elsewhere(tier, "", url, "--target-url")
        new = tier.undo_options(opts, recorded, not trusted)
        new.target = _with_password(url, configured, opts.tier) if trusted else configured
        return ResolvedTarget(
            new, show_target(opts.tier, new.target), "the target the undo archive was saved from", recorded
        )
    if _placeholder(opts.target):
        # The redacted URL a restore prints in its undo command: the password comes from the configuration.
        opts = replace(opts, target=_with_password(opts.target, configured, opts.tier, "--target-url"))
    assert opts.target is not None
    new = tier.undo_options(opts, recorded, same_server(redact_url(opts.target) or "", url))
    if tier.same_target(redact_url(opts.target) or "", url):
        return ResolvedTarget(
            new, show_target(opts.tier, opts.target), "the target the undo archive was saved from", recorded
        )
    return _explicit(new, recorded, url)


def _recorded_form(tier: Tier, target: str | None) -> str | None:
    """A target as an undo archive records it: a directory made absolute, a URL without its password."""
    value = tier.describe_target(target).get("url" if tier.url_target else "root")
    return value if isinstance(value, str) and value else None


def is_configured(cfg: Config, tier: str, target: str) -> bool:
    """Whether `target` (a directory, or a URL with or without its password) is the configured target of
    `tier`, both compared as an undo archive records them (absolute directory, URL without password)."""
    adapter = get_tier(tier)
    configured = _recorded_form(adapter, configured_target(cfg, tier))
    return configured is not None and adapter.same_target(configured, _recorded_form(adapter, target) or target)


def _elsewhere(tier: Tier, what: str, recorded: str, flag: str) -> Refused:
    """The refusal of an undo archive that records a target other than the configured one."""
    import shlex

    where = " ".join(w for w in (tier.title, what, printable(recorded)) if w)
    return Refused(
        f"this undo archive was made for {where}, not the configured target; pass {flag} "
        f"{shlex.quote(printable(recorded))} to restore it there"
    )


def _placeholder(url: str) -> bool:
    """Whether a URL holds `***` where its password goes (a URL as statekit prints it)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.password == "***" or any(item.endswith("=***") for item in parts.query.split("&"))


def _explicit(opts: RestoreOptions, recorded: dict[str, Any], original: str) -> ResolvedTarget:
    shown = show_target(opts.tier, opts.target)
    return ResolvedTarget(
        opts, shown, f"NOT the target the undo archive was saved from ({original}): chosen with the flag", recorded
    )


def _with_password(recorded: str, configured: str | None, tier: str, given: str = "") -> str:
    """The recorded URL (or the one `given` with a flag), with the password the configured URL of the same
    server holds (if it had one)."""
    whose = f"the {given} URL" if given else "the undo archive's target"
    try:
        parts = urlsplit(recorded)
    except ValueError:
        raise UsageError(f"{whose} is an unreadable URL {printable(recorded)!r}") from None
    if parts.password is None and "***" not in parts.query:
        return recorded
    if configured and same_server(redact_url(configured) or "", recorded):
        conf = urlsplit(configured)
        if get_tier(tier).password_per_server or redact_url(configured) == recorded:
            return urlunsplit((conf.scheme, conf.netloc, parts.path, conf.query, parts.fragment))
    raise UsageError(
        f"{whose} {printable(recorded)} needs its password, which is never stored: configure that "
        "server's URL, or give the same URL with the password in --target-url"
    )


def undo_command(path: str, tier: str, extra: Sequence[str] = ()) -> str:
    """The command that puts the target back from the undo archive at `path` (for a person to copy)."""
    import shlex

    words = ["statekit", "restore", path, "--tier", tier, *extra, "--yes"]
    return " ".join(shlex.quote(w) for w in words)
