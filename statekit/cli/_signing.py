"""Signature options: `snapshot --sign-key FILE` signs the new archive; `verify/restore --signer PUBKEY` refuse an
archive without a valid signature by one of the given keys (exit 11)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from statekit.model import Warn, no_warn

if TYPE_CHECKING:
    from statekit.archive.signing import SignatureInfo, SigningKey

F = TypeVar("F", bound=Callable[..., Any])


def signer_options(func: F) -> F:
    """--signer PUBKEY (repeatable) for commands that read archives."""
    return click.option(
        "--signer",
        "signers",
        multiple=True,
        metavar="STATEKIT-SIGN1…",
        help="Accept the archive only with a valid <archive>.sig by this public key (repeatable).",
    )(func)


def sign_key_options(func: F) -> F:
    """--sign-key FILE for commands that write archives."""
    return click.option(
        "--sign-key",
        metavar="FILE",
        help="Sign the archive with this key (`statekit keygen --sign`); default [archive] sign_key.",
    )(func)


def check_signers(
    archive_path: str | Path, signers: Sequence[str], configured: Sequence[str] = ()
) -> SignatureInfo | None:
    """Verify `<archive>.sig` before anything else reads the archive. With --signer keys a signature is
    required (SignatureError, exit 11, when it is missing or invalid). Otherwise the configured `[archive]
    signers` are trusted: a valid signature by one of them makes the archive trusted, no signature leaves it
    untrusted data (None), a signature that fails is refused (exit 11)."""
    from statekit.archive.signing import signature_path, verify_signature

    if signers:
        return verify_signature(archive_path, signers)
    if configured and signature_path(archive_path).exists():
        return verify_signature(archive_path, configured)
    return None


def trust_options(func: F) -> F:
    """--trust-archive-sql for commands that may create tables from an archive."""
    return click.option(
        "--trust-archive-sql",
        is_flag=True,
        help="db: apply the archive's own SQL (defaults, checks, generated columns, indexes, native DDL) to "
        "tables it creates, although the archive is not signed by a trusted key (--signer, [archive] signers).",
    )(func)


def load_sign_key(sign_key: str | None, configured: str | None, warn: Warn = no_warn) -> SigningKey | None:
    """The signing key from --sign-key, else [archive] sign_key; read before the snapshot starts so a bad key
    fails in a second, not after an hour of work."""
    path = sign_key or configured
    if not path:
        return None
    from statekit.archive.signing import read_signing_key

    return read_signing_key(path, warn=warn)


def sign_archive_file(archive_path: str | Path, key: SigningKey | None) -> Path | None:
    """Write `<archive>.sig` when a key was given; returns its path (None without a key)."""
    if key is None:
        return None
    from statekit.archive.signing import sign_archive

    return sign_archive(archive_path, key)


__all__ = [
    "check_signers",
    "load_sign_key",
    "sign_archive_file",
    "sign_key_options",
    "signer_options",
    "trust_options",
]
