"""Where keys come from: recipients and identities from config, flags and environment; passphrases from
STATEKIT_PASSPHRASE, a file or a TTY prompt — never from the command line."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from statekit.config import ArchiveConfig
from statekit.errors import KeyFileError, UsageError
from statekit.model import Warn, no_warn

if TYPE_CHECKING:
    from statekit.archive.keys import Identity, Recipient


def read_passphrase(
    passphrase_file: str | None,
    *,
    environ: Mapping[str, str] | None = None,
    prompt: Callable[[], str] | None = None,
) -> bytes | None:
    """The passphrase from --passphrase-file, else $STATEKIT_PASSPHRASE, else the prompt (when given)."""
    env = os.environ if environ is None else environ
    if passphrase_file:
        try:
            text = Path(passphrase_file).read_bytes()
        except OSError as exc:
            raise KeyFileError(f"passphrase file {passphrase_file}: {exc.strerror}") from None
        value = text.rstrip(b"\r\n")
        if not value:
            raise KeyFileError(f"passphrase file {passphrase_file} is empty")
        return value
    if env.get("STATEKIT_PASSPHRASE"):
        return env["STATEKIT_PASSPHRASE"].encode()
    if prompt is not None:
        value_s = prompt()
        if not value_s:
            raise UsageError("empty passphrase")
        return value_s.encode()
    return None


def load_recipients(
    cfg: ArchiveConfig,
    *,
    recipients: Sequence[str] = (),
    recipients_files: Sequence[str] = (),
    passphrase: bytes | None = None,
) -> list[Recipient]:
    """Recipients from flags (which replace the config's when given), else from the config file."""
    from statekit.archive.keys import ScryptRecipient, parse_recipient, read_recipients_file

    out: list[Recipient] = []
    names = list(recipients) or list(cfg.recipients)
    files = list(recipients_files) or ([cfg.recipients_file] if cfg.recipients_file else [])
    for text in names:
        out.append(parse_recipient(text))
    for path in files:
        out.extend(read_recipients_file(path))
    if passphrase is not None:
        if out:
            raise UsageError("a passphrase cannot be combined with recipients (age allows only one scrypt stanza)")
        out.append(ScryptRecipient(passphrase))
    return out


def load_identities(
    cfg: ArchiveConfig,
    *,
    identity_files: Sequence[str] = (),
    passphrase: bytes | None = None,
    environ: Mapping[str, str] | None = None,
    warn: Warn = no_warn,
) -> list[Identity]:
    """Identities from --identity, else $STATEKIT_IDENTITY (already merged into cfg), plus the passphrase."""
    from statekit.archive.keys import ScryptIdentity, read_identity_file

    out: list[Identity] = []
    files = list(identity_files) or ([cfg.identity] if cfg.identity else [])
    for path in files:
        out.extend(read_identity_file(path, warn=warn))
    if passphrase is not None:
        out.append(ScryptIdentity(passphrase))
    return out


def undo_recipients(identities: Sequence[Identity], configured: Sequence[Recipient]) -> list[Recipient]:
    """Who can read an undo archive: the configured recipients, else whoever could read the source archive."""
    from statekit.archive.keys import ScryptIdentity, ScryptRecipient, X25519Identity

    if configured:
        return list(configured)
    out: list[Recipient] = []
    for ident in identities:
        if isinstance(ident, X25519Identity):
            out.append(ident.recipient())
        elif isinstance(ident, ScryptIdentity) and not out:
            # ScryptIdentity keeps its passphrase private; the undo archive must open with the same one.
            out.append(ScryptRecipient(ident.passphrase))
            break
    return out
