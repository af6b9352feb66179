"""What a restore target is and what a plan says: the target server with one Router per database, the
per-database plan with examples, and which payloads cannot be carried to the target at all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from statekit.errors import ConfigError
from statekit.tiers.redis.bigkeys import show_key
from statekit.tiers.redis.cluster import Router
from statekit.tiers.redis.resp import RespConnection
from statekit.tiers.redis.scanner import ServerInfo, server_info

EXAMPLES = 10  # a plan shows at most this many keys per action and database

ACTIONS = ("create", "replace", "skip", "expired", "uncarriable", "delete")

# Why a payload cannot go to an older server, by its RDB object type (the first byte). Every other type,
# streams included, is rebuilt for the target by portable.convert at restore time.
_HASH_TTL_TYPES = (22, 23, 24, 25)


def uncarriable_reason(payload: bytes, rdb: int, target_rdb: int, same_version: bool) -> str | None:
    """Why this DUMP payload cannot be restored into the target, or None when it can."""
    t = payload[0] if payload else 255
    if t in (6, 7):
        return None if same_version else "module type: restorable only into the same Redis version"
    if rdb <= target_rdb:
        return None
    if t in _HASH_TTL_TYPES:
        return f"hash with field expirations (RDB {rdb}) cannot be loaded by RDB {target_rdb}"
    return None


@dataclass
class DbPlan:
    """The plan for one source database: counts per action and a few example keys."""

    source_db: int
    target_db: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))
    examples: list[dict[str, Any]] = field(default_factory=list)
    shown: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))

    def note(self, action: str, key: bytes, reason: str | None = None) -> None:
        """Count one key under `action`, keeping it as an example while there are few."""
        self.counts[action] += 1
        if self.shown[action] < EXAMPLES:
            self.shown[action] += 1
            ex: dict[str, Any] = {"action": action, "key": show_key(key)}
            if reason:
                ex["reason"] = reason
            self.examples.append(ex)

    def to_json(self) -> dict[str, Any]:
        """The plan entry of a RestoreReport."""
        return {
            "db": self.source_db,
            "target_db": self.target_db,
            "counts": dict(self.counts),
            "examples": self.examples,
        }


def flush_entry(target_db: int, keys: int, *, undo: bool, done: bool) -> dict[str, Any]:
    """The plan (or result) entry of a --flush restore for one target database: every key it holds is
    deleted before the restore; `keys` is how many it holds now (DBSIZE), or how many the flush removed.
    `undo` says whether an undo archive saves them first (not with --no-undo)."""
    if done:
        note = "deleted by FLUSHDB before the restore" + ("; the undo archive holds them" if undo else "")
    else:
        note = "FLUSHDB before the restore: every key it holds now is deleted" + (
            "; the undo archive saves them first" if undo else "; NOT saved (--no-undo): they cannot be put back"
        )
    return {"action": "flush", "target_db": target_db, "keys": keys, "note": note}


class RestoreTarget:
    """The restore target: server facts and one Router per target database."""

    def __init__(self, url: str):
        self.url = url
        self.seed = RespConnection(url)
        try:
            self.info: ServerInfo = server_info(self.seed)
        except BaseException:
            self.seed.close()
            raise
        self.cluster = self.info.mode == "cluster"
        major, minor = (int(p) if p.isdigit() else 0 for p in ([*self.info.version.split("."), "0", "0"])[:2])
        self.set_pxat = (major, minor) >= (6, 2)  # SET ... PXAT exists since Redis 6.2
        self._routers: dict[int, Router] = {}

    def router(self, db: int) -> Router:
        """The Router for database `db` (a cluster has only db 0)."""
        if self.cluster and db != 0:
            raise ConfigError(f"redis: a Redis Cluster has only database 0; map db {db} with --db-map {db}:0")
        r = self._routers.get(db)
        if r is None:
            r = self._routers[db] = Router(self.seed, cluster=self.cluster, db=db)
        return r

    def dbsize(self, db: int) -> int:
        """Keys in database `db` (summed over a cluster's primaries)."""
        return sum(int(c.call(b"DBSIZE")) for c in self.router(db).nodes())

    def close(self) -> None:
        """Close every connection."""
        for r in self._routers.values():
            r.close()
        self.seed.close()
