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
4. with --flush, FLUSHDB of each target database (the plan lists each with the keys it holds, counted under
   "delete"; the result under "deleted", as DBSIZE read in the same MULTI);
5. the writing pass: RESTORE without REPLACE (strings: SET NX) for keys that did not exist, so a key that
   appears meanwhile is left alone and reported; RESTORE REPLACE (SET) for the saved ones. Payloads newer
   than the target's RDB version go through portable.convert; a key that cannot be carried is reported and
   never half written. Big keys are rebuilt in chunks under a temporary name and renamed into place.
"""

from __future__ import annotations

import struct
import weakref
from typing import Any

from statekit.config import RedisConfig
from statekit.errors import Refused, TierError
from statekit.model import (
    Progress,
    RestoreOptions,
    RestoreReport,
    UndoSink,
    Warn,
    announce_total,
    no_progress,
    no_warn,
    now_ms,
)
from statekit.tiers.redis import portable
from statekit.tiers.redis.bigkeys import BigKeyBuilder, show_key
from statekit.tiers.redis.cluster import Pending, Router
from statekit.tiers.redis.records import (
    NO_EXPIRY,
    TAG_ABSENT,
    TAG_BEGIN,
    TAG_CHUNK,
    TAG_DUMP,
    TAG_END,
    TAG_VALUE,
    TYPE_MODULE,
    MemberHeader,
)
from statekit.tiers.redis.resp import ReplyError
from statekit.tiers.redis.restore_plan import BATCH, RestorePlanner, redis_members
from statekit.tiers.redis.target import flush_entry, uncarriable_reason

# Archives whose records a planning pass has checked, with what it checked them for (see validation_key).
_VALIDATED: weakref.WeakKeyDictionary[Any, set[tuple[object, ...]]] = weakref.WeakKeyDictionary()
_ALREADY_THERE = "already present (written by someone else during the restore, or listed twice by SCAN); left as is"
_HEAD = struct.Struct("<BBHqII")


class _Restorer(RestorePlanner):
    """The writing pass of a restore, on top of its planning pass."""

    # -- pass 2 ---------------------------------------------------------------------------------------
    def apply(self, counts: dict[str, int]) -> list[dict[str, Any]]:
        """The writing pass; returns what happened per source database."""
        done = 0
        nbytes = 0
        per_db: dict[int, dict[str, int]] = {}
        announce_total(self.progress, "redis", int(self.archive.manifest.get("totals", {}).get("keys", 0)))
        for name, header, body in redis_members(self.archive):
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
                    if len(dels) >= BATCH:
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
                    if len(mset_keys) >= BATCH:
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
                    if len(cmds) >= BATCH:
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
            if len(cmds) >= BATCH:
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
        flushed = r.flush() if opts.flush else {}
        counts = dict.fromkeys(("created", "replaced", "skipped", "expired", "failed", "deleted"), 0)
        counts["deleted"] = sum(flushed.values())  # the keys the flush removed, as the plan counted them
        outcome = r.apply(counts)
        rep = r.report(dry_run=False)
        rep.plan = [flush_entry(tdb, n, undo=undo_path is not None, done=True) for tdb, n in flushed.items()]
        rep.plan += outcome
        rep.counts = counts
        rep.undo_archive = undo_path
        return rep
    finally:
        r.target.close()


__all__ = ["plan_redis_restore", "restore_redis", "uncarriable_reason"]
