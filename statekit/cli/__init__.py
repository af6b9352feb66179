"""The statekit command line: thin wrappers around the library; shared parts are in statekit.cli._app."""

from __future__ import annotations

import gc
import sys

# Each command module registers its commands on the `cli` group when the group first needs them. Nothing
# imported here loads OpenSSL: `main` sets its CPU features first (the command modules load it later).
from statekit.cli._app import cli, run
from statekit.model import steady_clock, tune_gc, tune_malloc


def main() -> None:
    """Console-script entry point (also `python -m statekit`)."""
    steady_clock()
    tune_malloc()
    tune_gc()
    code = run()
    # At exit the interpreter runs one last full collection over every object the run left behind (SQLAlchemy's
    # and psycopg's modules are most of them) although the process is about to end: frozen, they are skipped, which
    # takes about 0.1 s off every command. Every file a command writes is closed (and synced) before run()
    # returns, and the interpreter flushes stdout and stderr itself.
    gc.freeze()
    sys.exit(code)


__all__ = ["cli", "main", "run"]
