"""The statekit command line: thin wrappers around the library; shared parts are in statekit.cli._app."""

from __future__ import annotations

import sys

# Each command module registers its commands on the `cli` group when the group first needs them. Nothing
# imported here loads OpenSSL: `main` sets its CPU features first (the command modules load it later).
from statekit.cli._app import cli, run
from statekit.model import steady_clock, tune_gc


def main() -> None:
    """Console-script entry point (also `python -m statekit`)."""
    steady_clock()
    tune_gc()
    sys.exit(run())


__all__ = ["cli", "main", "run"]
