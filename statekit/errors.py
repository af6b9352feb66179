"""One error hierarchy for statekit: each class carries its exit code.

The library raises these; only the CLI entry point turns them into a one-line message and an exit code.
Exit code ranges: 0 ok, 1 drift found by an audit, 2 usage or configuration, 3-19 specific failures,
130 interrupted.
"""

from __future__ import annotations


class StatekitError(Exception):
    """Base class: a failure statekit can explain in one line."""

    exit_code = 19
    kind = "error"
    # Set by a restore that failed after its first change but rolled every change back (one transaction).
    target_unchanged = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(StatekitError):
    """Bad flags, bad arguments, conflicting options."""

    exit_code = 2
    kind = "usage"


class ConfigError(UsageError):
    """A configuration file or setting is invalid."""

    kind = "config"


class CorruptArchive(StatekitError):
    """The archive is damaged, truncated, tampered with or not an archive at all."""

    exit_code = 3
    kind = "corrupt-archive"


class UnsupportedFormat(CorruptArchive):
    """The archive was written by a newer statekit (a format this version cannot read)."""

    exit_code = 13
    kind = "unsupported-format"


class DecryptionError(StatekitError):
    """No identity or passphrase given can open the archive."""

    exit_code = 4
    kind = "no-matching-key"


class KeyFileError(StatekitError):
    """An identity, recipient or signing key is missing or malformed."""

    exit_code = 4
    kind = "bad-key"


class TierUnavailable(StatekitError):
    """A database, Redis server or files root cannot be reached."""

    exit_code = 5
    kind = "tier-unavailable"


class TierError(StatekitError):
    """A tier failed while statekit was reading or writing it."""

    exit_code = 6
    kind = "tier-failed"


class LockHeld(StatekitError):
    """Another statekit run holds the repository lock."""

    exit_code = 7
    kind = "lock-held"


class Refused(StatekitError):
    """statekit refused to act: no confirmation, an unsafe plan, an incompatible target, a stale plan."""

    exit_code = 8
    kind = "refused"


class StorageError(StatekitError):
    """Writing or reading archive storage failed (disk full, permissions, read-only, object store)."""

    exit_code = 9
    kind = "storage"


class HookFailed(StatekitError):
    """A --pre-hook or --post-hook command failed."""

    exit_code = 10
    kind = "hook-failed"


class SignatureError(StatekitError):
    """An archive signature is missing, malformed or does not verify."""

    exit_code = 11
    kind = "bad-signature"


class Interrupted(StatekitError):
    """The run was interrupted (SIGINT/SIGTERM)."""

    exit_code = 130
    kind = "interrupted"


EXIT_CODES: list[tuple[int, str]] = [
    (0, "success"),
    (1, "audit/diff found drift, doctor found warnings (findings printed)"),
    (2, "usage or configuration error"),
    (3, "archive corrupt, truncated, tampered with or not an archive"),
    (4, "no matching identity / wrong passphrase / bad key file"),
    (5, "a tier (database, Redis, files root) cannot be reached"),
    (6, "a tier failed while reading or writing"),
    (7, "repository lock held by another run"),
    (8, "refused: not confirmed, unsafe plan, incompatible target, stale plan"),
    (9, "storage error: disk full, permission denied, read-only, object store"),
    (10, "a pre/post hook failed"),
    (11, "signature missing or invalid"),
    (13, "archive format newer than this statekit"),
    (19, "other failure"),
    (130, "interrupted"),
]
