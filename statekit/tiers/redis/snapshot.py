"""Snapshot of Redis: SCAN page by page; per page one pipelined round trip for the expiry and value of every key.

Per database (or per cluster primary) the work is spread over three connections so that the server always
has the next request queued while Python packs the previous page:

* the *side* connection only lists keys: as soon as SCAN page i arrives, the SCAN for page i+1 is sent;
* the *main* connection carries page i's first request: one MGET of all its keys plus a PTTL per key
  (strings are most keys in practice; MGET costs the server far less than a DUMP per key, and a plain value
  restores into any version). Its replies are read only after page i+1's request has been sent;
* the *aux* connection (opened when first needed) makes the follow-up round trips: MGET answers nil for a
  key that is not a string, and those keys get OBJECT ENCODING (compact encodings such as listpack and
  intset are small by construction; anything else has its TYPE and length checked, so a big key is never
  DUMPed whole), then PTTL + DUMP.

A page whose strings would bring back more than 16 MiB (judged by the sizes seen so far; the first page
always) is read carefully instead, all on the aux connection: STRLEN + PTTL of every key, then the values
in MGETs of at most 16 MiB each, one after the other, and strings over `big_key_bytes` in chunks. Neither
statekit nor the server's output buffer then holds a page of large values.

With `atomic_pages` the page's PTTLs and DUMPs run inside MULTI/EXEC instead (strings too, as DUMP), so
each key's value and expiry are read at the same instant. On a cluster strings are DUMPed too (an MGET
must stay within one hash slot); there the first request is the OBJECT ENCODING probe.

Big keys are read in chunks (bigkeys.py) on the aux connection; they are not atomic and the summary says
so. SCAN is not point in time: a key present for the whole scan is in the archive, a key created or deleted
meanwhile may or may not be.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from statekit.config import RedisConfig, redact_url
from statekit.errors import ConfigError
from statekit.model import MemberSink, Progress, TierSummary, Warn, announce_total, no_progress, no_warn, now_ms
from statekit.tiers.redis import cluster
from statekit.tiers.redis.keyspace import url_db
from statekit.tiers.redis.records import TYPE_BY_NAME, TYPE_NAMES
from statekit.tiers.redis.resp import RespConnection, keyspace_counts, parse_info
from statekit.tiers.redis.scanner import BIG_LIST_LIMIT, DbScanner, ScanCounts, server_info


def snapshot_redis(
    cfg: RedisConfig,
    sink: MemberSink,
    *,
    progress: Progress = no_progress,
    warn: Warn = no_warn,
    clock: Callable[[], int] = now_ms,
) -> TierSummary:
    """Write every selected key of the configured Redis (standalone or Cluster) into `sink`. `clock` gives
    the time in epoch milliseconds that turns each key's PTTL into an absolute expiry."""
    summary = TierSummary("redis", started_at=time.time())
    _check_cfg(cfg)
    assert cfg.url is not None
    seed = RespConnection(cfg.url)
    totals: dict[int, ScanCounts] = {}
    done = [0, 0]

    def tick(n: int, nbytes: int) -> None:
        done[0] += n
        done[1] += nbytes
        progress("redis", done[0], done[1])

    try:
        info = server_info(seed)
        # (node, db) pairs to scan; node None = the server of the URL
        shards: list[tuple[tuple[str, int] | None, int]]
        if info.mode == "cluster":
            if cfg.dbs and cfg.dbs != [0]:
                raise ConfigError("redis: a Redis Cluster has only database 0 (fix [redis] dbs)")
            shards = [(node, 0) for node in cluster.primaries(seed)]
        else:
            named = url_db(cfg.url)
            # [redis] dbs wins; else a URL that names a database means that one; else every non-empty one
            dbs = (
                sorted(set(cfg.dbs))
                or ([named] if named is not None else [])
                or sorted(db for db, n in keyspace_counts(parse_info(seed.call(b"INFO", b"keyspace"))).items() if n)
            )
            shards = [(None, db) for db in dbs]
            sizes = keyspace_counts(parse_info(seed.call(b"INFO", b"keyspace")))
            announce_total(progress, "redis", sum(sizes.get(db, 0) for db in dbs))
        seqs: dict[int, int] = {}
        for node, db in shards:
            conn = seed.other_db(db) if node is None else seed.sibling(node[0], node[1])
            try:
                counts = totals.setdefault(db, ScanCounts())
                scanner = DbScanner(conn, db, cfg, info, sink, first_seq=seqs.get(db, 0), tick=tick, clock=clock)
                scanner.run(counts)
                seqs[db] = scanner.writer.seq
            finally:
                conn.close()
    finally:
        seed.close()
    summary.finished_at = time.time()
    keys = sum(c.keys for c in totals.values())
    summary.counts = {
        "keys": keys,
        "vanished": sum(c.vanished for c in totals.values()),
        "big_keys": sum(c.big_count for c in totals.values()),
        "module_keys": sum(c.modules for c in totals.values()),
    }
    big = [name for c in totals.values() for name in c.big][:BIG_LIST_LIMIT]
    summary.details = {
        "source": redact_url(cfg.url),
        "server_version": info.version,
        "rdb_version": info.rdb_version,
        "mode": info.mode,
        "primaries": len(shards) if info.mode == "cluster" else 1,
        "dbs": {
            str(db): {"keys": c.keys, "with_expiry": c.expiring, "vanished": c.vanished, "big_keys": c.big_count}
            for db, c in sorted(totals.items())
        },
        "match": list(cfg.match),
        "types": list(cfg.types),
        "point_in_time": False,
        "consistency": "SCAN is not point-in-time: every key present for the whole scan is in the archive; "
        "keys created, deleted or changed during the scan may be missing or newer",
        "vanished": summary.counts["vanished"],
        "big_keys": big,
        "big_keys_atomic": False,
        "big_key_note": "big keys are read in chunks and are not atomic"
        if summary.counts["big_keys"]
        else "no big keys",
        "atomic_pages": cfg.atomic_pages,
    }
    if summary.counts["module_keys"]:
        note = (
            f"redis: {summary.counts['module_keys']} module-type key(s) kept as DUMP payloads: they restore "
            f"only into Redis {info.version} with the same modules loaded"
        )
        summary.warnings.append(note)
        warn(note)
    if summary.counts["big_keys"]:
        note = f"redis: {summary.counts['big_keys']} big key(s) read in chunks, not atomically (e.g. {big[0]})"
        summary.warnings.append(note)
        warn(note)
    return summary


def _check_cfg(cfg: RedisConfig) -> None:
    if not cfg.url:
        raise ConfigError("redis: no URL configured (set [redis] url or STATEKIT_REDIS_URL)")
    bad = [t for t in cfg.types if t not in TYPE_BY_NAME]
    if bad:
        raise ConfigError(f"redis: unknown type {bad[0]!r} in [redis] types (known: {', '.join(TYPE_NAMES)})")
    if cfg.scan_count <= 0:
        raise ConfigError("redis: scan_count must be positive")
    if any(db < 0 for db in cfg.dbs):
        raise ConfigError("redis: database numbers must not be negative")


__all__ = ["snapshot_redis"]
