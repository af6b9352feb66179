"""`statekit init` and `statekit keygen`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from statekit.cli._app import App, cli, common_options, exit_status_epilog
from statekit.config import DEFAULT_CONFIG_NAME, STARTER_CONFIG
from statekit.errors import Refused, StorageError


@cli.command(epilog=exit_status_epilog())
@click.option("-o", "--output", default=DEFAULT_CONFIG_NAME, show_default=True, help="File to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@common_options
def init(app: App, output: str, force: bool) -> None:
    """Write a commented starter statekit.toml."""
    path = Path(output)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise Refused(f"{path} already exists; refusing to overwrite a config file (use --force)") from None
    except OSError as exc:
        raise StorageError(f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(STARTER_CONFIG)
    app.result({"path": str(path)}, f"wrote {path}: edit it, then run `statekit snapshot --to DIR`")


@cli.command(epilog=exit_status_epilog())
@click.option("-o", "--output", metavar="FILE", help="Write the identity here (mode 0600) instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite an existing identity file.")
@click.option("--sign", "signing", is_flag=True, help="Make an Ed25519 signing key instead of an age identity.")
@common_options
def keygen(app: App, output: str | None, force: bool, signing: bool) -> None:
    """Make a new age identity (AGE-SECRET-KEY-1…) and print its recipient (age1…).

    Keys are interchangeable with age-keygen's. Keep the identity away from the backup host: the host needs
    only the recipient to write archives."""
    if signing:
        from statekit.archive.signing import generate_signing_key, write_signing_key

        key = generate_signing_key()
        if not output:
            raise click.UsageError("--sign needs -o FILE (the private signing key is never printed)")
        write_signing_key(output, key, force=force)
        public = key.public_string()
        app.result({"path": output, "public_key": public}, f"Public signing key: {public}")
        return
    from statekit.archive.keys import generate_identity, write_identity_file

    identity = generate_identity()
    recipient = identity.recipient().to_string()
    if output:
        write_identity_file(output, identity, force=force)
        app.result({"path": output, "recipient": recipient}, f"Public key: {recipient}")
    else:
        if app.json:
            app.result({"recipient": recipient, "identity": identity.to_string()}, None)
            return
        click.echo(f"# public key: {recipient}")
        click.echo(identity.to_string())
