"""The planning pass of a Redis restore and its undo archive (steps 2 and 3 of the order in restore.py):
every selected record classified (create / replace / skip / expired / uncarriable) and checked before the
first write, and what the restore will overwrite saved and sealed."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from typing import Any

from statekit.config import RedisConfig, redact_url
from statekit.errors import ConfigError, TierError
from statekit.model import Progress, RestoreOptions, RestoreReport, TierSummary, UndoSink, Warn, now_ms
from statekit.tiers.redis.bigkeys import BigKeyBuilder
from statekit.tiers.redis.checks import (
    BigKeyCheck,
    TargetLoadCheck,
    check_absent,
    check_conversion,
    check_envelope,
    check_expiry,
)
from statekit.tiers.redis.cluster import Router
from statekit.tiers.redis.keyspace import compile_match, url_db
from statekit.tiers.redis.records import (
    NO_EXPIRY,
    TAG_ABSENT,
    TAG_BEGIN,
    TAG_CHUNK,
    TAG_DUMP,
    TAG_END,
    TAG_VALUE,
    TYPE_MODULE,
    TYPE_STREAM,
    TYPE_ZSET,
    MemberHeader,
    RecordWriter,
    iter_heads,
    parse_member_db,
    read_member,
)
from statekit.tiers.redis.resp import ReplyError, pack, pack_many
from statekit.tiers.redis.scanner import DbScanner, ScanCounts
from statekit.tiers.redis.target import ACTIONS, EXAMPLES, DbPlan, RestoreTarget, flush_entry, uncarriable_reason

BATCH = 1000


def check_opts(opts: RestoreOptions) -> None:
    """Refuse restore options this tier does not know."""
    if opts.conflict not in ("replace", "skip", "fail"):
        raise ConfigError(f"redis: --conflict must be replace, skip or fail, not {opts.conflict!r}")
    if opts.ttl not in ("absolute", "relative"):
        raise ConfigError(f"redis: --ttl must be absolute or relative, not {opts.ttl!r}")
    if any(a < 0 or b < 0 for a, b in opts.db_map.items()):
        raise ConfigError("redis: --db-map numbers must not be negative")


def chunk_items(body: bytes, start: int, length: int) -> list[bytes]:
    """The items of a chunk record whose items span body[start:start+length] (bounds checked by iter_heads)."""
    items = []
    pos, end = start, start + length
    while pos < end:
        (n,) = struct.unpack_from("<I", body, pos)
        items.append(body[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return items


def redis_members(archive: Any) -> Iterator[tuple[str, MemberHeader, bytes]]:
    """Each redis member of the archive: its name, header and body."""
    for member in archive.members("redis/"):
        if parse_member_db(member.name) is None:
            continue
        header, body = read_member(member.stream, member.name, member.size)
        yield member.name, header, body


def source_dbs(archive: Any) -> list[int]:
    """The databases the archive holds."""
    dbs = {parse_member_db(m["name"]) for m in archive.manifest.get("members", [])}
    return sorted(db for db in dbs if db is not None)


def effective_db_map(db_map: dict[int, int], named: int | None, sources: list[int]) -> dict[int, int]:
    """--db-map as given; without it, a target URL that names a database receives a one-database archive
    there (a multi-database archive then needs an explicit --db-map)."""
    if db_map or named is None:
        return dict(db_map)
    if len(sources) <= 1:
        return {db: named for db in sources}
    listed = ", ".join(str(d) for d in sources)
    raise ConfigError(
        f"redis: the archive holds databases {listed} but the target URL names database {named}: "
        "give --db-map SRC:DST for each, or a target URL without a database"
    )


class RestorePlanner:
    """A restore's planning pass: what it would do to each key, the checks of every record it would apply,
    and the undo archive of what it will overwrite."""

    def __init__(self, archive: Any, opts: RestoreOptions, cfg: RedisConfig, warn: Warn, progress: Progress):
        check_opts(opts)
        self.archive = archive
        self.opts = opts
        self.warn = warn
        self.progress = progress
        url = opts.target or cfg.url
        if not url:
            raise ConfigError("redis: no target URL (give --target-url or set [redis] url)")
        self.url = url
        self.match = compile_match(opts.match)
        archive.index()  # verified once, before anything is written (cached when the engine ran it)
        self.db_map = effective_db_map(opts.db_map, url_db(url), source_dbs(archive))
        self.target = RestoreTarget(url)
        self.target_rdb = self.target.info.rdb_version
        self.plans: dict[int, DbPlan] = {}
        self.conflicts: dict[int, set[bytes]] = {}
        self.problems: list[str] = []
        self._big: BigKeyBuilder | None = None

    def validation_key(self) -> tuple[object, ...]:
        """What a validating planning pass depended on: the same archive planned with the same key gives the
        same verdict (a later pass only finds more keys expired, which it skips)."""
        return (self.url, tuple(sorted(self.db_map.items())), tuple(self.opts.match), self.opts.ttl, self.target_rdb)

    def tdb(self, db: int) -> int:
        return self.db_map.get(db, db)

    def plan_for(self, db: int) -> DbPlan:
        p = self.plans.get(db)
        if p is None:
            p = self.plans[db] = DbPlan(db, self.tdb(db))
        return p

    # -- pass 1 ---------------------------------------------------------------------------------------
    def plan(self, *, validate: bool = True) -> None:
        """Classify every selected record (EXISTS on the target for the keys that are not expired) and, with
        `validate`, check every record the writing pass would apply (checks.py): a malformed one raises
        CorruptArchive naming its member, before anything is written."""
        empty = {
            self.tdb(db): self.opts.flush or self.target.dbsize(self.tdb(db)) == 0 for db in source_dbs(self.archive)
        }
        big = BigKeyCheck()
        loads: dict[int, TargetLoadCheck] = {}
        undo = self.archive.snapshot.get("kind") == "undo"  # only an undo archive may delete keys ("X")
        for name, header, body in redis_members(self.archive):
            db = header.db
            tdb = self.tdb(db)
            plan = self.plan_for(db)
            router = self.target.router(tdb)
            load = loads.get(tdb)
            if load is None and validate:
                load = loads[tdb] = TargetLoadCheck(router)
            conflicts = self.conflicts.setdefault(tdb, set())
            same = header.server_version == self.target.info.version
            now = now_ms()
            shift = now - header.taken_at_ms if self.opts.ttl == "relative" else 0
            batch: list[bytes] = []
            match = self.match
            target_rdb = self.target_rdb
            is_empty = empty[tdb]
            absent: list[bytes] = []
            for tag, type_, rdbv, expire, key, vstart, vlen in iter_heads(body, name):
                if tag == TAG_ABSENT:
                    check_absent(name, key, undo=undo)
                if tag in (TAG_BEGIN, TAG_CHUNK, TAG_END) and validate:
                    if tag == TAG_BEGIN:
                        big.begin(name, key, type_)
                    elif tag == TAG_CHUNK:
                        # Only sorted sets (scores) and streams need their items looked at; the others
                        # need only the item count, from the record's head.
                        (count,) = struct.unpack_from("<I", body, vstart - len(key) - 4)
                        items = chunk_items(body, vstart, vlen) if type_ in (TYPE_ZSET, TYPE_STREAM) else None
                        big.chunk(name, key, type_, count, items)
                    else:
                        big.end(name, key, vlen)
                if tag in (TAG_CHUNK, TAG_END):
                    continue
                if match is not None and not match(key):
                    continue
                if tag == TAG_ABSENT:
                    if not is_empty:
                        absent.append(key)
                    continue
                if expire != NO_EXPIRY and expire + shift <= now:
                    plan.note("expired", key)
                    continue
                if validate:
                    check_expiry(name, key, expire, shift, relative=self.opts.ttl == "relative")
                if tag == TAG_DUMP:
                    payload = body[vstart : vstart + vlen]
                    if validate:
                        check_envelope(name, key, payload, rdbv)
                    if rdbv > target_rdb or type_ == TYPE_MODULE:
                        reason = uncarriable_reason(payload, rdbv, target_rdb, same)
                        if reason:
                            plan.note("uncarriable", key, reason)
                            continue
                    if load is not None:
                        if rdbv > target_rdb:
                            check_conversion(name, key, payload, target_rdb)
                        else:
                            load.add(name, key, payload)
                if is_empty:
                    if plan.shown["create"] < EXAMPLES:
                        plan.note("create", key)
                    else:
                        plan.counts["create"] += 1
                else:
                    batch.append(key)
                    if len(batch) >= BATCH:
                        self._exists(router, batch, plan, conflicts)
                        batch = []
            if batch:
                self._exists(router, batch, plan, conflicts)
            for i in range(0, len(absent), BATCH):
                self._exists(router, absent[i : i + BATCH], plan, conflicts, tombstones=True)
        if validate:
            big.finish()
            for load in loads.values():
                load.flush()

    def _exists(
        self, router: Router, keys: list[bytes], plan: DbPlan, conflicts: set[bytes], *, tombstones: bool = False
    ) -> None:
        """Which keys exist on the target: those become conflicts (replace/skip, or delete for tombstones)."""
        replies = router.call(keys, [b"*2\r\n$6\r\nEXISTS\r\n$%d\r\n%s\r\n" % (len(k), k) for k in keys])
        for k, r in zip(keys, replies):
            if isinstance(r, ReplyError):
                raise TierError(f"redis {self.target.seed.label}: EXISTS failed: {r}")
            if r:
                conflicts.add(k)
                if self.opts.conflict == "skip":
                    plan.note("skip", k)
                else:
                    plan.note("delete" if tombstones else "replace", k)
            elif not tombstones:
                plan.note("create", k)

    def report(self, dry_run: bool) -> RestoreReport:
        rep = RestoreReport("redis", dry_run=dry_run)
        rep.plan = [p.to_json() for _, p in sorted(self.plans.items())]
        rep.problems = list(self.problems)
        return rep

    def plan_report(self) -> RestoreReport:
        """The dry-run report: counts per action, per-db plans with examples, uncarriable keys. With --flush
        it first lists each target database the flush empties with the keys it holds now (DBSIZE), and those
        keys count under "delete" (the per-db plans, by source database, count only the archive's keys)."""
        rep = self.report(dry_run=True)
        for action in ACTIONS:
            rep.counts[action] = sum(p.counts[action] for p in self.plans.values())
        if self.opts.flush:
            sizes = {tdb: self.target.dbsize(tdb) for tdb in self.target_dbs()}
            rep.plan[:0] = [flush_entry(tdb, n, undo=self.opts.undo, done=False) for tdb, n in sizes.items()]
            rep.counts["delete"] += sum(sizes.values())
        if self.opts.skip_uncarriable:  # the plan lists them; the other keys go ahead
            return rep
        for p in self.plans.values():
            for ex in p.examples:
                if ex["action"] == "uncarriable":
                    rep.problems.append(
                        f"db{p.source_db} {ex['key']}: cannot be restored: {ex.get('reason')} "
                        "(--skip-uncarriable restores the other keys)"
                    )
        return rep

    # -- undo -----------------------------------------------------------------------------------------
    def save_undo(self, undo: UndoSink) -> str:
        """Save what the restore will overwrite (or flush) into the undo archive and seal it: the old value
        of each key it replaces, and an "absent" record for each key it creates (restoring the undo archive
        deletes those). With --flush: the whole target databases (restoring that undo archive flushes them first)."""
        summary = TierSummary("redis", started_at=time.time())
        cfg = RedisConfig(url=self.url)
        saved = 0
        writers: dict[int, RecordWriter] = {}
        for tdb in self.target_dbs():
            router = self.target.router(tdb)
            seq = 0
            if self.opts.flush:
                # Everything in the target databases goes: save all of it, with the snapshot's own scanner.
                for node_conn in router.nodes():
                    scanner = DbScanner(node_conn, tdb, cfg, self.target.info, undo.sink, first_seq=seq)
                    scanner.run(ScanCounts())
                    seq = scanner.writer.seq
                    saved += scanner.writer.keys
                continue
            writer = writers[tdb] = RecordWriter(undo.sink, tdb, self.target.info.version, now_ms())
            keys = sorted(self.conflicts.get(tdb, set())) if self.opts.conflict == "replace" else []
            for i in range(0, len(keys), BATCH):
                part = keys[i : i + BATCH]
                t0 = now_ms()
                keys2 = [k for k in part for _ in (0, 1)]
                replies = router.call(keys2, [pack(c, k) for k in part for c in (b"PTTL", b"DUMP")])
                for j, k in enumerate(part):
                    ttl, payload = replies[2 * j], replies[2 * j + 1]
                    if isinstance(payload, bytes) and isinstance(ttl, int) and ttl != -2:
                        writer.add_dump(k, payload, t0 + ttl if ttl >= 0 else NO_EXPIRY)
        if writers:
            self._save_tombstones(writers)
        absent = 0
        for writer in writers.values():
            writer.flush()
            saved += writer.keys
            absent += writer.absent
        summary.finished_at = time.time()
        summary.details = {
            "source": redact_url(self.url),
            "server_version": self.target.info.version,
            "rdb_version": self.target.info.rdb_version,
            "mode": self.target.info.mode,
            "undo_of": "redis restore" + (" --flush" if self.opts.flush else ""),
            "target_dbs": self.target_dbs(),
            "point_in_time": False,
        }
        summary.counts = {"keys": saved, "absent": absent}
        return undo.seal(summary)

    def _save_tombstones(self, writers: dict[int, RecordWriter]) -> None:
        """One pass over the archive: every key the restore will create gets an "absent" record, so that
        restoring the undo archive deletes it again."""
        now = now_ms()
        match = self.match
        target_rdb = self.target_rdb
        for name, header, body in redis_members(self.archive):
            tdb = self.tdb(header.db)
            writer = writers[tdb]
            conflicts = self.conflicts.get(tdb, set())
            shift = now - header.taken_at_ms if self.opts.ttl == "relative" else 0
            same = header.server_version == self.target.info.version
            for tag, type_, rdbv, expire, key, vstart, vlen in iter_heads(body, name):
                if tag not in (TAG_DUMP, TAG_VALUE, TAG_BEGIN) or key in conflicts:
                    continue
                if match is not None and not match(key):
                    continue
                if expire != NO_EXPIRY and expire + shift <= now:
                    continue
                if (
                    tag == TAG_DUMP
                    and (rdbv > target_rdb or type_ == TYPE_MODULE)
                    and uncarriable_reason(body[vstart : vstart + vlen], rdbv, target_rdb, same)
                ):
                    continue
                writer.add_absent(key)

    def target_dbs(self) -> list[int]:
        """The target databases: those the archive's databases map to and, with --flush, also every database
        an explicit map names (an undo archive of a --flush restore into an empty database holds no member for
        it, yet must empty it again)."""
        dbs = {self.tdb(db) for db in source_dbs(self.archive)}
        if self.opts.flush:
            dbs |= set(self.db_map.values())
        return sorted(dbs)

    def targets_empty(self) -> bool:
        """True when every target database is empty now (or will be, with --flush)."""
        return self.opts.flush or all(self.target.dbsize(self.tdb(db)) == 0 for db in source_dbs(self.archive))

    def flush(self) -> dict[int, int]:
        """FLUSHDB every target database; returns the keys each held, read by a DBSIZE in the same MULTI."""
        removed: dict[int, int] = {}
        for tdb in self.target_dbs():
            n = 0
            for conn in self.target.router(tdb).nodes():
                conn.send(pack_many([[b"MULTI"], [b"DBSIZE"], [b"FLUSHDB"], [b"EXEC"]]))
                replies = conn.read(4)
                done = replies[3]
                if not (isinstance(done, list) and len(done) == 2 and isinstance(done[0], int) and done[1] == b"OK"):
                    found = [*replies[:3], *(done if isinstance(done, list) else [done])]
                    error = next((r for r in found if isinstance(r, ReplyError)), done)
                    raise TierError(f"redis {conn.label}: FLUSHDB of db {tdb} failed: {error}")
                n += done[0]
            removed[tdb] = n
        return removed
