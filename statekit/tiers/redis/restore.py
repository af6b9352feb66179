"""Restore of Redis from an archive: plan (dry run) and apply with pipelined RESTORE ... ABSTTL.

Redis has no transaction to roll back, so the order is strict:

1. the archive has been verified end to end (the engine runs `archive.index()`; we call it again, cached);
2. a planning pass reads every record and asks the target which keys exist (pipelined EXISTS), giving the
   create / replace / skip / expired / uncarriable counts, and checks every record it would apply
   (checks.py: the target loads each DUMP payload as an already expired key, newer ones are converted, big
   keys' chunks are checked for order and shape); a malformed record is refused with exit 3 and
   `--conflict fail` refuses here, before any write;
3. the keys that will be replaced (or, with --flush, the whole target databases) are saved into the undo
   archive, which is sealed before the first change;
4. the writing pass: RESTORE without REPLACE (strings: SET NX) for keys that did not exist, so a key that
   appears meanwhile is left alone and reported; RESTORE REPLACE (SET) for the saved ones. Payloads newer
   than the target's RDB version go through portable.convert; a key that cannot be carried is reported and
   never half written. Big keys are rebuilt in chunks under a temporary name and renamed into place.
"""

from __future__ import annotations

import struct
import time
import weakref
from collections.abc import Iterator
from typing import Any

from statekit.config import RedisConfig, redact_url
from statekit.errors import ConfigError, Refused, TierError
from statekit.model import (
    Progress,
    RestoreOptions,
    RestoreReport,
    TierSummary,
    UndoSink,
    Warn,
    announce_total,
    no_progress,
    no_warn,
    now_ms,
)
from statekit.tiers.redis import portable
from statekit.tiers.redis.bigkeys import BigKeyBuilder, show_key
from statekit.tiers.redis.checks import BigKeyCheck, TargetLoadCheck, check_conversion, check_envelope
from statekit.tiers.redis.cluster import Pending, Router
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
from statekit.tiers.redis.resp import ReplyError, pack
from statekit.tiers.redis.snapshot import DbScanner, ScanCounts
from statekit.tiers.redis.target import ACTIONS, EXAMPLES, DbPlan, RestoreTarget, uncarriable_reason

_BATCH = 1000
# Archives whose records a planning pass has checked, with what it checked them for (see validation_key).
_VALIDATED: weakref.WeakKeyDictionary[Any, set[tuple[object, ...]]] = weakref.WeakKeyDictionary()
_ALREADY_THERE = "already present (written by someone else during the restore, or listed twice by SCAN); left as is"
_HEAD = struct.Struct("<BBHqII")


def _check_opts(opts: RestoreOptions) -> None:
    if opts.conflict not in ("replace", "skip", "fail"):
        raise ConfigError(f"redis: --conflict must be replace, skip or fail, not {opts.conflict!r}")
    if opts.ttl not in ("absolute", "relative"):
        raise ConfigError(f"redis: --ttl must be absolute or relative, not {opts.ttl!r}")
    if any(a < 0 or b < 0 for a, b in opts.db_map.items()):
        raise ConfigError("redis: --db-map numbers must not be negative")


def _chunk_items(body: bytes, start: int, length: int) -> list[bytes]:
    """The items of a chunk record whose items span body[start:start+length] (bounds checked by iter_heads)."""
    items = []
    pos, end = start, start + length
    while pos < end:
        (n,) = struct.unpack_from("<I", body, pos)
        items.append(body[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return items


def _members(archive: Any) -> Iterator[tuple[str, MemberHeader, bytes]]:
    for member in archive.members("redis/"):
        if parse_member_db(member.name) is None:
            continue
        header, body = read_member(member.stream, member.name, member.size)
        yield member.name, header, body


def _source_dbs(archive: Any) -> list[int]:
    dbs = {parse_member_db(m["name"]) for m in archive.manifest.get("members", [])}
    return sorted(db for db in dbs if db is not None)


def _effective_db_map(db_map: dict[int, int], named: int | None, sources: list[int]) -> dict[int, int]:
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


class _Restorer:
    def __init__(self, archive: Any, opts: RestoreOptions, cfg: RedisConfig, warn: Warn, progress: Progress):
        _check_opts(opts)
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
        self.db_map = _effective_db_map(opts.db_map, url_db(url), _source_dbs(archive))
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
            self.tdb(db): self.opts.flush or self.target.dbsize(self.tdb(db)) == 0 for db in _source_dbs(self.archive)
        }
        big = BigKeyCheck()
        loads: dict[int, TargetLoadCheck] = {}
        for name, header, body in _members(self.archive):
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
                if tag in (TAG_BEGIN, TAG_CHUNK, TAG_END) and validate:
                    if tag == TAG_BEGIN:
                        big.begin(name, key, type_)
                    elif tag == TAG_CHUNK:
                        # Only sorted sets (scores) and streams need their items looked at; the others
                        # need only the item count, from the record's head.
                        (count,) = struct.unpack_from("<I", body, vstart - len(key) - 4)
                        items = _chunk_items(body, vstart, vlen) if type_ in (TYPE_ZSET, TYPE_STREAM) else None
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
                    if len(batch) >= _BATCH:
                        self._exists(router, batch, plan, conflicts)
                        batch = []
            if batch:
                self._exists(router, batch, plan, conflicts)
            for i in range(0, len(absent), _BATCH):
                self._exists(router, absent[i : i + _BATCH], plan, conflicts, tombstones=True)
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
        """The dry-run report: counts per action, per-db plans with examples, uncarriable keys."""
        rep = self.report(dry_run=True)
        for action in ACTIONS:
            rep.counts[action] = sum(p.counts[action] for p in self.plans.values())
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
            for i in range(0, len(keys), _BATCH):
                part = keys[i : i + _BATCH]
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
        for name, header, body in _members(self.archive):
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
        dbs = {self.tdb(db) for db in _source_dbs(self.archive)}
        if self.opts.flush:
            dbs |= set(self.db_map.values())
        return sorted(dbs)

    def targets_empty(self) -> bool:
        """True when every target database is empty now (or will be, with --flush)."""
        return self.opts.flush or all(self.target.dbsize(self.tdb(db)) == 0 for db in _source_dbs(self.archive))

    def flush(self) -> None:
        for tdb in self.target_dbs():
            for conn in self.target.router(tdb).nodes():
                conn.call(b"FLUSHDB")

    # -- pass 2 ---------------------------------------------------------------------------------------
    def apply(self, counts: dict[str, int]) -> list[dict[str, Any]]:
        """The writing pass; returns what happened per source database."""
        done = 0
        nbytes = 0
        per_db: dict[int, dict[str, int]] = {}
        announce_total(self.progress, "redis", int(self.archive.manifest.get("totals", {}).get("keys", 0)))
        for name, header, body in _members(self.archive):
            tdb = self.tdb(header.db)
            router = self.target.router(tdb)
            conflicts = self.conflicts.get(tdb, set())
            same = header.server_version == self.target.info.version
            before = dict(counts)
            done += self._apply_member(name, header, body, router, conflicts, same, counts)
            mine = per_db.setdefault(header.db, dict.fromkeys(counts, 0))
            for k, v in counts.items():
                mine[k] += v - before[k]
            nbytes += len(body)
            self.progress("redis", done, nbytes)
        return [{"db": db, "target_db": self.tdb(db), "counts": c} for db, c in sorted(per_db.items())]

    def _apply_member(
        self,
        name: str,
        header: MemberHeader,
        body: bytes,
        router: Router,
        conflicts: set[bytes],
        same: bool,
        counts: dict[str, int],
    ) -> int:
        replace = self.opts.conflict == "replace"
        match = self.match
        target_rdb = self.target_rdb
        relative = self.opts.ttl == "relative"
        pxat = self.target.set_pxat
        shift = 0
        now = now_ms()
        if relative:
            shift = now - header.taken_at_ms
        unpack = _HEAD.unpack_from
        pos = 0
        end = len(body)
        keys: list[bytes] = []
        cmds: list[bytes] = []
        replacing: list[bool] = []
        dels: list[bytes] = []
        # the batch in flight: ("cmds", sent, keys, replacing) or ("mset", sent, keys, args)
        pending: tuple[str, Pending, list[bytes], list[Any]] | None = None
        retry: list[tuple[list[bytes], list[bytes]]] = []  # MSETNX batches that found a key there
        n = 0
        big = self._big  # a big key's records may continue from the previous member
        # New strings without expiry on a standalone target go in as one MSETNX per batch: a tenth of the
        # server's and the packer's work per key, and still never overwriting a key someone else just wrote
        # (MSETNX sets all or nothing; on "nothing" the batch is retried key by key with SET NX).
        mset = pxat and not router.cluster
        mset_keys: list[bytes] = []
        mset_args: list[bytes] = []
        mset_seen: set[bytes] = set()
        # RESTORE key ttl payload ABSTTL [REPLACE], packed by hand: this loop runs once per key.
        create_tail = b"\r\n$6\r\nABSTTL\r\n"
        replace_tail = b"\r\n$6\r\nABSTTL\r\n$7\r\nREPLACE\r\n"
        while pos < end:
            tag, type_, rdbv, expire, klen, vlen = unpack(body, pos)
            pos += 20
            key = body[pos : pos + klen]
            pos += klen
            if tag != TAG_DUMP and tag != TAG_VALUE:
                if tag == TAG_ABSENT:  # undo archives: the key did not exist before the restore
                    if match is not None and not match(key):
                        continue
                    if not replace:
                        counts["skipped"] += key in conflicts
                        continue
                    dels.append(key)
                    if len(dels) >= _BATCH:
                        # same connection: the RESTOREs in flight must be read before the DELs' replies
                        if pending is not None:
                            self._settle_any(router, pending, counts, retry)
                            pending = None
                        if cmds:
                            self._settle(router, router.send(keys, cmds), keys, replacing, counts)
                            keys, cmds, replacing = [], [], []
                        self._delete(router, dels, counts)
                        dels = []
                    continue
                # Big keys are rare: finish the pipeline first, then rebuild synchronously.
                if pending is not None:
                    self._settle_any(router, pending, counts, retry)
                    pending = None
                if cmds:
                    self._settle(router, router.send(keys, cmds), keys, replacing, counts)
                    keys, cmds, replacing = [], [], []
                pos, big = self._big_record(tag, type_, expire, key, vlen, body, pos, name, big, router,
                                            conflicts, shift, now, counts)  # fmt: skip
                n += tag == TAG_END
                continue
            payload = body[pos : pos + vlen]
            pos += vlen
            n += 1
            if match is not None and not match(key):
                continue
            if expire != NO_EXPIRY:
                expire += shift
                if expire <= now:
                    counts["expired"] += 1
                    continue
            else:
                expire = 0
            if tag == TAG_VALUE:
                if mset and not expire and key not in conflicts and key not in mset_seen:
                    mset_seen.add(key)  # SCAN may list a key twice: the second goes the SET NX way
                    mset_keys.append(key)
                    mset_args.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (klen, key, vlen, payload))
                    if len(mset_keys) >= _BATCH:
                        sent = self._send_msetnx(router, mset_keys, mset_args)
                        if pending is not None:
                            self._settle_any(router, pending, counts, retry)
                        pending = ("mset", sent, mset_keys, mset_args)
                        mset_keys, mset_args, mset_seen = [], [], set()
                    continue
                if pxat:
                    # SET key value [NX] [PXAT ms]: a plain string, whatever the target's version
                    exists = key in conflicts
                    if exists and not replace:
                        counts["skipped"] += 1
                        continue
                    tail = (b"" if exists else b"$2\r\nNX\r\n") + (
                        b"$4\r\nPXAT\r\n$%d\r\n%d\r\n" % (len(b"%d" % expire), expire) if expire else b""
                    )
                    argc = 3 + (not exists) + (2 if expire else 0)
                    cmds.append(
                        b"*%d\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n%s" % (argc, klen, key, vlen, payload, tail)
                    )
                    replacing.append(exists)
                    keys.append(key)
                    if len(cmds) >= _BATCH:
                        sent = router.send(keys, cmds)
                        if pending is not None:
                            self._settle_any(router, pending, counts, retry)
                        pending = ("cmds", sent, keys, replacing)
                        keys, cmds, replacing = [], [], []
                    continue
                # Before Redis 6.2 SET has no PXAT: build a DUMP payload and RESTORE it like the others.
                payload = portable.encode(portable.TYPE_STRING, payload, target_rdb)
            elif rdbv > target_rdb or type_ == TYPE_MODULE:
                reason = uncarriable_reason(payload, rdbv, target_rdb, same)
                if reason is None and rdbv > target_rdb:
                    try:
                        payload = portable.convert(payload, target_rdb)
                    except portable.Uncarriable as exc:
                        reason = str(exc)
                if reason is not None:
                    counts["skipped" if self.opts.skip_uncarriable else "failed"] += 1
                    self._problem(header.db, key, reason)
                    continue
            ttl = b"%d" % expire
            if key in conflicts:
                if not replace:
                    counts["skipped"] += 1
                    continue
                cmds.append(
                    b"*6\r\n$7\r\nRESTORE\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s%s"
                    % (klen, key, len(ttl), ttl, len(payload), payload, replace_tail)
                )
                replacing.append(True)
            else:
                cmds.append(
                    b"*5\r\n$7\r\nRESTORE\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s%s"
                    % (klen, key, len(ttl), ttl, len(payload), payload, create_tail)
                )
                replacing.append(False)
            keys.append(key)
            if len(cmds) >= _BATCH:
                # Send this batch before reading the previous one's replies: the server restores one
                # batch while Python packs the next.
                sent = router.send(keys, cmds)
                if pending is not None:
                    self._settle_any(router, pending, counts, retry)
                pending = ("cmds", sent, keys, replacing)
                keys, cmds, replacing = [], [], []
        if cmds:
            sent = router.send(keys, cmds)
            if pending is not None:
                self._settle_any(router, pending, counts, retry)
            pending = ("cmds", sent, keys, replacing)
        if mset_keys:
            sent = self._send_msetnx(router, mset_keys, mset_args)
            if pending is not None:
                self._settle_any(router, pending, counts, retry)
            pending = ("mset", sent, mset_keys, mset_args)
        if pending is not None:
            self._settle_any(router, pending, counts, retry)
        for batch_keys, batch_args in retry:  # nothing in flight any more: safe to go key by key
            cmds = [b"*4\r\n$3\r\nSET\r\n" + a + b"$2\r\nNX\r\n" for a in batch_args]
            self._settle(router, router.send(batch_keys, cmds), batch_keys, [False] * len(batch_keys), counts)
        if dels:
            self._delete(router, dels, counts)
        self._big = big
        return n

    @staticmethod
    def _send_msetnx(router: Router, keys: list[bytes], args: list[bytes]) -> Pending:
        """Send one MSETNX creating these string keys (no expiry): all of them, or none if any exists."""
        head = b"*%d\r\n$6\r\nMSETNX\r\n" % (1 + 2 * len(keys))
        return router.send(keys[:1], [head + b"".join(args)])

    def _settle_any(
        self,
        router: Router,
        pending: tuple[str, Pending, list[bytes], list[Any]],
        counts: dict[str, int],
        retry: list[tuple[list[bytes], list[bytes]]],
    ) -> None:
        """Read the replies of the batch in flight; an MSETNX that set nothing is retried key by key later
        (with SET NX), once no other batch is in flight on the connection."""
        kind, sent, keys, extra = pending
        if kind == "cmds":
            self._settle(router, sent, keys, extra, counts)
            return
        (reply,) = router.wait(sent)
        if reply == 1:
            counts["created"] += len(keys)
        elif isinstance(reply, ReplyError):
            raise TierError(f"redis: MSETNX failed: {reply}")
        else:
            retry.append((keys, extra))

    def _delete(self, router: Router, keys: list[bytes], counts: dict[str, int]) -> None:
        replies = router.call(keys, [b"*2\r\n$3\r\nDEL\r\n$%d\r\n%s\r\n" % (len(k), k) for k in keys])
        for key, r in zip(keys, replies):
            if isinstance(r, ReplyError):
                counts["failed"] += 1
                self.problems_append(f"{show_key(key)}: not deleted: {r}")
            else:
                counts["deleted"] += r

    def _settle(
        self, router: Router, sent: Pending, keys: list[bytes], replacing: list[bool], counts: dict[str, int]
    ) -> None:
        replies = router.wait(sent)
        if replies.count(b"OK") == len(replies):  # the usual case, counted in C
            n_replaced = replacing.count(True)
            counts["replaced"] += n_replaced
            counts["created"] += len(replies) - n_replaced
            return
        for key, repl, r in zip(keys, replacing, replies):
            if isinstance(r, ReplyError):
                text = str(r)
                if text.startswith("BUSYKEY"):
                    counts["skipped"] += 1
                    self.problems_append(f"{show_key(key)}: {_ALREADY_THERE}")
                else:
                    counts["failed"] += 1
                    self.problems_append(f"{show_key(key)}: not restored: {text}")
            elif r is None:  # SET ... NX found the key there
                counts["skipped"] += 1
                self.problems_append(f"{show_key(key)}: {_ALREADY_THERE}")
            else:
                counts["replaced" if repl else "created"] += 1

    def problems_append(self, text: str) -> None:
        if len(self.problems) < 100:
            self.problems.append(text)
        elif len(self.problems) == 100:
            self.problems.append("... more problems not listed")

    def _problem(self, db: int, key: bytes, reason: str) -> None:
        self.problems_append(f"db{db} {show_key(key)}: not restored: {reason}")

    def _big_record(
        self,
        tag: int,
        type_: int,
        expire: int,
        key: bytes,
        count: int,
        body: bytes,
        pos: int,
        name: str,
        big: BigKeyBuilder | None,
        router: Router,
        conflicts: set[bytes],
        shift: int,
        now: int,
        counts: dict[str, int],
    ) -> tuple[int, BigKeyBuilder | None]:
        if tag == TAG_CHUNK:
            items = []
            for _ in range(count):
                (n,) = struct.unpack_from("<I", body, pos)
                items.append(body[pos + 4 : pos + 4 + n])
                pos += 4 + n
            if big is not None and big.active:
                big.add(items)
            return pos, big
        if tag == TAG_BEGIN:
            b = BigKeyBuilder(
                router,
                key,
                type_,
                NO_EXPIRY if expire == NO_EXPIRY else expire + shift,
                modern_streams=self.target_rdb >= 10,
            )
            if self.match is not None and not self.match(key):
                b.active = False
            elif b.expire != NO_EXPIRY and b.expire <= now:
                counts["expired"] += 1
                b.active = False
            elif key in conflicts and self.opts.conflict != "replace":
                counts["skipped"] += 1
                b.active = False
            else:
                b.replace = key in conflicts
                b.start()
            return pos, b
        if tag == TAG_END:
            if big is not None and big.active:
                outcome = big.finish()
                if outcome == "skipped":
                    self.problems_append(f"{show_key(key)}: {_ALREADY_THERE}")
                counts[outcome] += 1
            return pos, None
        raise TierError(f"archive member {name}: unknown record tag {tag:#x}")


def plan_redis_restore(archive: Any, opts: RestoreOptions, cfg: RedisConfig) -> RestoreReport:
    """Dry run: what a restore would create, replace, skip, leave expired or could not carry. Writes nothing."""
    r = _Restorer(archive, opts, cfg, no_warn, no_progress)
    try:
        r.plan()
        _VALIDATED.setdefault(archive, set()).add(r.validation_key())
        return r.plan_report()
    finally:
        r.target.close()


def restore_redis(
    archive: Any,
    opts: RestoreOptions,
    cfg: RedisConfig,
    *,
    undo: UndoSink | None,
    progress: Progress = no_progress,
    warn: Warn = no_warn,
) -> RestoreReport:
    """Restore the archive's redis members into the target; returns created/replaced/skipped/expired/failed."""
    r = _Restorer(archive, opts, cfg, warn, progress)
    try:
        # Every record is checked before the first write; the engine's planning pass (plan_redis_restore)
        # already did that for this archive and target, so only the classification is redone.
        validated = _VALIDATED.get(archive)
        checked = validated is not None and r.validation_key() in validated
        # Into empty databases nothing can conflict and there is nothing to save: once checked, no new pass.
        if not (checked and r.targets_empty()):
            r.plan(validate=not checked)
        if opts.dry_run:
            return r.plan_report()
        if opts.conflict == "fail":
            n = sum(p.counts["replace"] + p.counts["delete"] for p in r.plans.values())
            if n:
                example = next(
                    e["key"] for p in r.plans.values() for e in p.examples if e["action"] in ("replace", "delete")
                )
                raise Refused(f"redis: {n} key(s) already exist in the target (e.g. {example}); --conflict fail")
        undo_path = r.save_undo(undo) if undo is not None else None
        if opts.flush:
            r.flush()
        counts = dict.fromkeys(("created", "replaced", "skipped", "expired", "failed", "deleted"), 0)
        outcome = r.apply(counts)
        rep = r.report(dry_run=False)
        rep.plan = outcome
        rep.counts = counts
        rep.undo_archive = undo_path
        return rep
    finally:
        r.target.close()


__all__ = ["plan_redis_restore", "restore_redis", "uncarriable_reason"]
