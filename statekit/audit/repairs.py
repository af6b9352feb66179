"""The command that repairs a finding, for the audit's text output. A repair always copies FROM the live
copy: a stale copy is overwritten from the live one, and a live place that lost its copy is never filled
from a stale one unless the user declares the mode that copy was written in (`--mode`).

A printed command must run as printed: `Given` carries what the command that prints it was given on its
command line (config file, profile, modes, tier locations, keys) into the commands it prints, passwords left
out (statekit then reads them from STATEKIT_DB_PASSWORD / STATEKIT_REDIS_PASSWORD)."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from statekit.audit.entities import LOCATOR_KINDS, Entity, Model

# Where a URL option's password goes instead of the printed command line.
PASSWORD_ENV = {"--db-url": "STATEKIT_DB_PASSWORD", "--redis-url": "STATEKIT_REDIS_PASSWORD"}


def repair_command(cls: str, ent: Entity, tier: str, base: Model, view: Model, server: str | None, given: Given) -> str:
    """One line: the statekit command (or the one thing to do) that repairs this kind of finding, with what
    `given` carries over from the command line that prints it."""
    root = ent
    while root.parent is not None:
        root = base.entities[root.parent]
    if cls == "orphan":
        source = _other_source(tier, root.authority)
        return given.reconcile("--from", source, "--to", tier, "--entity", ent.name, "--prune-orphans")
    if cls == "transient":
        return "none: it was caught mid-write and was gone on re-check"
    loc = ent.locators.get(tier)
    role = loc.role if loc is not None else None
    auth = ent.authority
    if cls == "unparseable":
        if tier == auth:
            return f"no other live copy: {given.restore(tier)} (the application reads it as absent)"
        return given.reconcile("--from", auth, "--to", tier, "--entity", ent.name)
    if tier == auth or role == "live":
        return _refill_live(ent, tier, base, view, server, given)
    return given.reconcile("--from", auth, "--to", tier, "--entity", ent.name)


def _other_source(target: str, authority: str) -> str:
    if authority != target:
        return authority
    return LOCATOR_KINDS[target].fills_from[0].kind


def _refill_live(ent: Entity, tier: str, base: Model, view: Model, server: str | None, given: Given) -> str:
    """The live place lost its copy: a stale copy may be the one to keep only if the mode changed without a
    migration. Name the mode in which that copy is live, so the user decides."""
    full = base.entities.get(ent.name, ent)
    modes = base.modes
    if modes is not None and view.mode is not None and server is not None:
        for mode, (live, roles) in full.modes.items():
            if live != tier and roles.get(tier, "ignored") != "live" and mode != view.mode:
                command = given.reconcile("--mode", f"{server}={mode}", "--from", live, "--to", tier, "--entity",
                                          ent.name)  # fmt: skip
                return (
                    f"if {live} holds the current copy (the mode changed without a migration): {command}; else "
                    f"{given.restore(tier)} or pair the instance again"
                )
    return f"no live copy to repair from: {given.restore(tier)}"


# -- what a printed command carries over -------------------------------------------------------------------


def url_without_password(url: str) -> tuple[str, bool]:
    """The URL without its password (in the user part, or a `password=` query item), and whether it had one."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, False
    had = parts.password is not None
    netloc = parts.netloc
    if had:
        user, _, host = netloc.rpartition("@")
        name = user.split(":", 1)[0]
        netloc = f"{name}@{host}" if name else host
    query = parts.query
    if "password" in query.lower():
        kept = [item for item in query.split("&") if "password" not in item.partition("=")[0].lower()]
        had = had or len(kept) != len(query.split("&"))
        query = "&".join(kept)
    if not had:
        return url, False
    return urlunsplit(parts._replace(netloc=netloc, query=query)), True


def same_place(a: str | None, b: str | None) -> bool:
    """Two locations (as printed: passwords masked or left out) name the same place."""
    if a is None or b is None:
        return a == b
    return url_without_password(a)[0] == url_without_password(b)[0]


@dataclass(frozen=True)
class Given:
    """What a command was given on its command line that the commands it prints need too (a configuration
    file, an environment variable or a default carries over by itself)."""

    config_file: str | None = None
    profile: str | None = None
    modes: tuple[str, ...] = ()
    db_url: str | None = None
    redis_url: str | None = None
    files_root: str | None = None
    identities: tuple[str, ...] = ()
    passphrase_file: str | None = None

    def __post_init__(self) -> None:
        # like the undo command a restore prints: paths absolute, so the command runs from any directory
        object.__setattr__(self, "config_file", local_path(self.config_file))
        object.__setattr__(self, "files_root", local_path(self.files_root))
        object.__setattr__(self, "identities", tuple(p for p in map(local_path, self.identities) if p))
        object.__setattr__(self, "passphrase_file", local_path(self.passphrase_file))

    def _urls(self) -> list[tuple[str, str | None]]:
        return [("--db-url", self.db_url), ("--redis-url", self.redis_url)]

    def model_args(self) -> list[str]:
        """--config, --profile, --mode and the tier locations, for reconcile and apply (shell words)."""
        args = ["--config", self.config_file] if self.config_file else []
        if self.profile:
            args += ["--profile", self.profile]
        for mode in self.modes:
            args += ["--mode", mode]
        for flag, url in self._urls():
            if url:
                args += [flag, url_without_password(url)[0]]
        if self.files_root:
            args += ["--files-root", self.files_root]
        return args

    def restore_args(self, tier: str) -> list[str]:
        """--config, the keys that opened the archive, and the tier's location, for `statekit restore`."""
        from statekit.tiers import get as get_tier

        args = ["--config", self.config_file] if self.config_file else []
        for path in self.identities:
            args += ["-i", path]
        if self.passphrase_file:
            args += ["--passphrase-file", self.passphrase_file]
        where = dict(self._urls()).get(f"--{tier}-url") if get_tier(tier).url_target else self.files_root
        if where:
            args += ["--target-url" if get_tier(tier).url_target else "--target", url_without_password(where)[0]]
        return args

    def notes(self) -> list[str]:
        """What the printed commands leave out: the passwords given in URLs."""
        out = []
        for flag, url in self._urls():
            if url and url_without_password(url)[1]:
                out.append(f"{flag} is printed without its password: set {PASSWORD_ENV[flag]} to run it")
        return out

    def reconcile(self, *words: str) -> str:
        """`statekit reconcile` with this command line's model and places, then `words`, as one shell line."""
        return shell(["statekit", "reconcile", *self.model_args(), *words])

    def restore(self, tier: str) -> str:
        """`statekit restore ARCHIVE --tier TIER` with the keys that opened the archive and the tier's place
        (ARCHIVE stands for the snapshot the user picks)."""
        return shell(["statekit", "restore", "ARCHIVE", "--tier", tier, *self.restore_args(tier)])


def local_path(path: str | None) -> str | None:
    """A path made absolute (an s3:// or other URL as it is)."""
    return path if not path or "://" in path else os.path.abspath(path)


def shell(words: Sequence[str]) -> str:
    """Words as one shell command line (quoted where needed)."""
    return " ".join(shlex.quote(w) for w in words)


# -- two states of the tiers: audit --against, diff -------------------------------------------------------


@dataclass(frozen=True)
class SnapshotRepairs:
    """How to repair what differs between an archive and the live tiers (`audit --against ARCHIVE`), or
    between two archives (`diff A B`): put the archive's copy back with `statekit restore`, narrowed to the
    record (`--match` a key or path, `--tables` with `--mode merge` for rows)."""

    archive: str  # the archive whose copy a restore puts back (the snapshot, or A)
    given: Given = Given()
    diff: bool = False  # diff A B (else audit --against ARCHIVE)

    def hint(self, cls: str, loc: Sequence[str]) -> str:
        """One finding's repair; `loc` is its record's location (tier, key / path / table, …)."""
        tier = loc[0]
        if cls == "orphan":
            if self.diff:
                return "none from A, which lacks it (it was written after A)"
            audit = shell(["statekit", "audit", *self.given.model_args()])
            return f"none from the snapshot, which lacks it; to compare it with the other live tiers: {audit}"
        words = ["statekit", "restore", local_path(self.archive) or "", "--tier", tier, *_narrow(loc)]
        words += self.given.restore_args(tier)
        if self.diff:
            return f"to put A's copy back into the live {tier} tier: {shell(words)}"
        return f"if the snapshot's copy is the one to keep: {shell(words)}"


def _narrow(loc: Sequence[str]) -> list[str]:
    """The restore options that limit it to one record's key, file or table."""
    tier = loc[0]
    name = loc[1] if len(loc) > 1 else ""
    if not name:
        return []
    if tier == "redis":
        return ["--match", re.sub(r"([*?\[\]\\])", r"\\\1", name)]  # a Redis glob matching only this key
    if tier == "files":
        return ["--match", re.sub(r"[*?]", "?", name)]  # path globs have no escape: `?` stands for the one
    if tier == "db":
        return ["--tables", name, "--mode", "merge"]
    return []
