"""The statekit command line: thin wrappers around the library; shared parts are in statekit.cli._app."""

from __future__ import annotations

import sys

# Each command module registers its commands on the `cli` group when the group first needs them.
from statekit.cli._app import cli, run
from statekit.model import tune_gc


def main() -> None:
    """Console-script entry point."""
    tune_gc()
    sys.exit(run())


__all__ = ["cli", "main", "run"]
