"""statekit: back up, audit and repair application state across a SQL database, Redis and key files."""

from __future__ import annotations

__version__ = "0.1.0"
