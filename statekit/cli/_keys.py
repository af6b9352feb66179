"""Key options shared by the commands that write archives (recipients) and read them (identities)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from statekit.cli._app import App, _isatty
from statekit.credentials import load_identities, load_recipients, read_passphrase

if TYPE_CHECKING:
    from statekit.archive.keys import Identity, Recipient

F = TypeVar("F", bound=Callable[..., Any])


def recipient_options(func: F) -> F:
    """--recipient, --recipients-file, --passphrase-file, --ask-passphrase, --no-encryption."""
    for deco in reversed(
        [
            click.option("-r", "--recipient", "recipients", multiple=True, metavar="AGE1…",
                         help="Encrypt to this age public key (repeatable; replaces the config's)."),
            click.option("-R", "--recipients-file", "recipients_files", multiple=True, metavar="FILE",
                         help="Encrypt to every public key in FILE (repeatable)."),
            click.option("--passphrase-file", metavar="FILE",
                         help="Encrypt with the passphrase in FILE (or set STATEKIT_PASSPHRASE)."),
            click.option("--ask-passphrase", is_flag=True, help="Prompt for a passphrase on the terminal."),
            click.option("--no-encryption", is_flag=True,
                         help="Write an UNENCRYPTED archive (never the default)."),
        ]
    ):  # fmt: skip
        func = deco(func)
    return func


def identity_options(func: F) -> F:
    """--identity and --passphrase-file for reading archives."""
    for deco in reversed(
        [
            click.option("-i", "--identity", "identities", multiple=True, metavar="FILE",
                         help="age identity file (repeatable; default $STATEKIT_IDENTITY, [archive] identity)."),
            click.option("--passphrase-file", metavar="FILE",
                         help="Passphrase of a passphrase-encrypted archive (or set STATEKIT_PASSPHRASE)."),
        ]
    ):  # fmt: skip
        func = deco(func)
    return func


def resolve_recipients(
    app: App,
    recipients: tuple[str, ...],
    recipients_files: tuple[str, ...],
    passphrase_file: str | None,
    ask_passphrase: bool,
) -> list[Recipient]:
    """The recipients a new archive is encrypted to."""
    cfg = app.config().archive
    prompt: Callable[[], str] | None = None
    if ask_passphrase:
        if not _isatty(sys.stdin):
            from statekit.errors import UsageError

            raise UsageError("--ask-passphrase needs a terminal; use STATEKIT_PASSPHRASE or --passphrase-file")
        prompt = _ask_new_passphrase

    explicit = bool(recipients or recipients_files)
    passphrase = read_passphrase(passphrase_file, prompt=prompt)
    if passphrase is not None and not explicit:
        # A passphrase replaces the configured recipients rather than clashing with them, but never silently.
        if cfg.recipients or cfg.recipients_file:
            source = f"--passphrase-file {passphrase_file}" if passphrase_file else (
                "STATEKIT_PASSPHRASE" if os.environ.get("STATEKIT_PASSPHRASE") else "the passphrase prompt"
            )  # fmt: skip
            configured = "recipients_file" if cfg.recipients_file and not cfg.recipients else "recipients"
            app.warn(
                f"{source} replaces the configured [archive] {configured}: this archive is encrypted to the "
                "passphrase only, not to those keys"
            )
        return load_recipients(cfg.__class__(), passphrase=passphrase)
    return load_recipients(cfg, recipients=recipients, recipients_files=recipients_files, passphrase=passphrase)


def _ask_new_passphrase() -> str:
    return str(click.prompt("Passphrase", hide_input=True, confirmation_prompt=True, err=True))


def resolve_identities(app: App, identities: tuple[str, ...], passphrase_file: str | None) -> list[Identity]:
    """The identities (and passphrase) used to open archives."""
    passphrase = read_passphrase(passphrase_file)
    return load_identities(app.config().archive, identity_files=identities, passphrase=passphrase, warn=app.warn)


def prompt_passphrase_identity() -> Identity | None:
    """On a terminal, ask for a passphrase (for archives that need one and got none)."""
    if not _isatty(sys.stdin):
        return None
    from statekit.archive.keys import ScryptIdentity

    value = click.prompt("Archive passphrase", hide_input=True, err=True)
    return ScryptIdentity(str(value).encode())


def with_passphrase_retry(app: App, identities: list[Identity], action: Callable[[list[Identity]], Any]) -> Any:
    """Run `action`; if no identity matched and a person is at the terminal, ask for a passphrase once."""
    from statekit.errors import DecryptionError

    try:
        return action(identities)
    except DecryptionError:
        if identities:
            raise
        extra = prompt_passphrase_identity()
        if extra is None:
            raise
        return action([extra])


__all__ = [
    "identity_options",
    "recipient_options",
    "resolve_identities",
    "resolve_recipients",
    "with_passphrase_retry",
]
