"""The statekit command line: thin wrappers around the library; shared parts are in statekit.cli._app."""

from __future__ import annotations

import sys

from statekit.cli._app import cli, run


def _register() -> None:
    import importlib

    for module in ("keys_cmd", "snapshot_cmd", "archive_cmd", "restore_cmd", "audit_cmd", "repo_cmd"):
        try:
            importlib.import_module(f"statekit.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"statekit.cli.{module}":
                raise


_register()


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


__all__ = ["cli", "main"]
