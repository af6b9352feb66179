"""The statekit command line: thin wrappers around the library; shared parts are in statekit.cli._app."""

from __future__ import annotations

import sys

# Importing a command module registers its commands on the `cli` group.
from statekit.cli import archive_cmd, audit_cmd, keys_cmd, repo_cmd, restore_cmd, snapshot_cmd  # noqa: F401
from statekit.cli._app import cli, run


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


__all__ = ["cli", "main"]
