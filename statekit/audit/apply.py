"""Reconcile, applying half: save what will be overwritten or deleted into an undo archive (in the target
tier's own snapshot format, so `statekit restore UNDO --tier …` puts it back), then apply each operation with
compare-and-set: WATCH/MULTI/EXEC per Redis key, check-then-replace per file. An operation whose target
changed since the plan is skipped and reported as a conflict, never forced."""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from statekit.audit.entities import FilesLocator, Model, RedisLocator
from statekit.audit.plan import Operation, ReconcilePlan
from statekit.audit.sources.files import read_file
from statekit.errors import StorageError, TierError
from statekit.fsio import fsync_dir, open_for_reading, write_file_atomic
from statekit.model import Progress, TierSummary, UndoSink, no_progress, now_ms
from statekit.tiers.files.restore import make_parents


@dataclass
class ApplyResult:
    """What an apply did."""

    counts: dict[str, int] = field(default_factory=lambda: {"create": 0, "update": 0, "delete": 0})
    conflicts: list[str] = field(default_factory=list)
    undo_archive: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return {"applied": dict(self.counts), "conflicts": list(self.conflicts), "undo_archive": self.undo_archive}


class Writer(Protocol):
    """How reconcile writes into one tier: `apply` seals the undo archive (if any) before the first change,
    then applies each operation with compare-and-set."""

    tier: str

    def apply(
        self,
        plan: ReconcilePlan,
        location: str | None,
        *,
        model: Model | None,
        undo: UndoSink | None,
        progress: Progress = no_progress,
    ) -> ApplyResult: ...


class RedisWriter:
    """Reconcile into a Redis database: WATCH/MULTI/EXEC per batch of keys."""

    tier = RedisLocator.kind

    def apply(
        self,
        plan: ReconcilePlan,
        location: str | None,
        *,
        model: Model | None,
        undo: UndoSink | None,
        progress: Progress = no_progress,
    ) -> ApplyResult:
        """Apply the plan to the Redis database at `location` (a URL)."""
        from statekit.audit.sources.redis import open_redis

        client = open_redis(location) if location else None
        if client is not None:
            client.statekit_url = location
        try:
            result = ApplyResult()
            if not plan.ops:
                return result
            if client is None:
                raise TierError("reconcile: no Redis connection for the target")
            if undo is not None:
                result.undo_archive = _save_redis_undo(client, plan.ops, undo)
            _apply_redis(client, plan.ops, result, progress)
            return result
        finally:
            if client is not None:
                client.close()


class FilesWriter:
    """Reconcile into a files root: check-then-replace per file."""

    tier = FilesLocator.kind

    def apply(
        self,
        plan: ReconcilePlan,
        location: str | None,
        *,
        model: Model | None,
        undo: UndoSink | None,
        progress: Progress = no_progress,
    ) -> ApplyResult:
        """Apply the plan under the files root `location`."""
        result = ApplyResult()
        if not plan.ops:
            return result
        if location is None:
            raise TierError("reconcile: no files root for the target")
        root = os.path.abspath(location)
        if undo is not None:
            result.undo_archive = _save_files_undo(root, plan.ops, undo)
        _apply_files(root, plan.ops, result, progress)
        return result


# -- redis ------------------------------------------------------------------------------------------------


def _by_key(ops: list[Operation]) -> dict[str, list[Operation]]:
    out: dict[str, list[Operation]] = {}
    for op in ops:
        out.setdefault(op.loc[1], []).append(op)
    return out


def _save_redis_undo(client: Any, ops: list[Operation], undo: UndoSink) -> str:
    """DUMP every existing key the plan touches into redis tier records (restorable with replace)."""
    from statekit.tiers.redis.records import NO_EXPIRY, RecordWriter, payload_rdb_version

    summary = TierSummary(RedisWriter.tier, started_at=time.time())
    keys = [k.encode("utf-8", "surrogateescape") for k in _by_key(ops)]
    info = client.info("server")
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    writer = RecordWriter(undo.sink, db, str(info.get("redis_version", "")), now_ms())
    rdb = 0
    for i in range(0, len(keys), 1000):
        part = keys[i : i + 1000]
        pipe = client.pipeline(transaction=False)
        for k in part:
            pipe.pttl(k)
            pipe.dump(k)
        t0 = now_ms()
        replies = pipe.execute()
        for j, k in enumerate(part):
            ttl, payload = replies[2 * j], replies[2 * j + 1]
            if isinstance(payload, bytes) and isinstance(ttl, int) and ttl != -2:
                writer.add_dump(k, payload, t0 + ttl if ttl >= 0 else NO_EXPIRY)
                rdb = rdb or payload_rdb_version(payload)
    writer.flush()
    summary.finished_at = time.time()
    summary.counts = {"keys": writer.keys}
    summary.details = {
        "server_version": str(info.get("redis_version", "")),
        "rdb_version": rdb,
        "mode": "standalone",
        "undo_of": "statekit reconcile",
        "point_in_time": False,
    }
    return undo.seal(summary)


def _apply_redis(client: Any, ops: list[Operation], result: ApplyResult, progress: Progress) -> None:
    """Compare-and-set in batches of keys on one connection: WATCH the batch and read the fields the plan
    saw (one round trip), check them, then MULTI … EXEC the writes (one round trip). EXEC fails as a whole
    if any watched key changed in between; that batch is then retried key by key so only the keys that
    really changed are skipped."""
    from statekit.tiers.redis.resp import RespConnection

    url = getattr(client, "statekit_url", None)
    kw = client.connection_pool.connection_kwargs
    conn = RespConnection(url or f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}")
    try:
        groups = list(_by_key(ops).items())
        done = 0
        for i in range(0, len(groups), _BATCH):
            batch = groups[i : i + _BATCH]
            if not _cas_batch(conn, batch, result):
                for item in batch:  # someone wrote during the batch: find out which keys, one by one
                    if not _cas_batch(conn, [item], result):
                        result.conflicts.extend(f"{op.where()}: changed while applying, skipped" for op in item[1])
            done += sum(len(g) for _, g in batch)
            progress(RedisWriter.tier, done, 0)
    finally:
        conn.close()


_BATCH = 500


def _cas_batch(conn: Any, batch: list[tuple[str, list[Operation]]], result: ApplyResult) -> bool:
    """One WATCH/check/MULTI/EXEC round for a batch of keys; False when EXEC was aborted."""
    from statekit.tiers.redis.resp import ReplyError, pack

    keys = [k.encode("utf-8", "surrogateescape") for k, _ in batch]
    reads = [pack(b"WATCH", *keys)]
    for key, (_, group) in zip(keys, batch):
        wanted = [op.loc[2].encode("utf-8", "surrogateescape") for op in group if len(op.loc) > 2]
        reads.append(pack(b"HMGET", key, *wanted) if wanted else pack(b"EXISTS", key))
        reads.append(pack(b"EXISTS", key))
    conn.send(b"".join(reads))
    replies = conn.read(len(reads))
    writes: list[bytes] = []
    applied: list[Operation] = []
    for j, (key, (name, group)) in enumerate(zip(keys, batch)):
        current_reply, exists_reply = replies[1 + 2 * j], replies[2 + 2 * j]
        if isinstance(current_reply, ReplyError):
            result.conflicts.append(f"{name}: {current_reply}")
            continue
        fields = [op.loc[2] for op in group if len(op.loc) > 2]
        current = dict(zip(fields, current_reply)) if fields else {}
        if not all(_redis_unchanged(op, current, bool(exists_reply)) for op in group):
            result.conflicts.extend(f"{op.where()}: changed since the plan, skipped" for op in group)
            continue
        for op in group:
            if len(op.loc) > 2:
                fname = op.loc[2].encode("utf-8", "surrogateescape")
                writes.append(
                    pack(b"HDEL", key, fname) if op.op == "delete" else pack(b"HSET", key, fname, op.after or b"")
                )
            else:
                writes.append(pack(b"DEL", key) if op.op == "delete" else pack(b"SET", key, op.after or b""))
            applied.append(op)
    if not writes:
        conn.send(pack(b"UNWATCH"))
        conn.read(1)
        return True
    conn.send(b"".join([pack(b"MULTI"), *writes, pack(b"EXEC")]))
    replies = conn.read(len(writes) + 2)
    if replies[-1] is None:
        return False  # a watched key changed: nothing of this batch was written
    for op in applied:
        result.counts[op.op] += 1
    return True


def _redis_unchanged(op: Operation, current: dict[str, bytes | None], exists: bool) -> bool:
    if len(op.loc) > 2:
        return current.get(op.loc[2]) == op.before
    if op.op == "delete":
        return exists
    return not exists if op.before is None else True


# -- files ------------------------------------------------------------------------------------------------


def _safe_path(root: str, rel: str) -> str:
    path = os.path.normpath(os.path.join(root, rel))
    if os.path.commonpath([root, path]) != root or path == root:
        raise StorageError(f"reconcile: {rel} is outside the files root")
    return path


def _dir_files(root: str, rel_dir: str) -> Iterator[str]:
    base = _safe_path(root, rel_dir)
    for dirpath, _dirs, files in os.walk(base, followlinks=False):
        for name in files:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                yield os.path.relpath(full, root)


def _save_files_undo(root: str, ops: list[Operation], undo: UndoSink) -> str:
    """Every file the plan overwrites or deletes, as files/<relative path> members with mode and mtime."""
    summary = TierSummary(FilesWriter.tier, started_at=time.time())
    rels: list[str] = []
    for op in ops:
        if op.op == "create":
            continue
        rel = op.loc[1]
        rels.extend(_dir_files(root, rel) if rel.endswith("/") else [rel])
    n = 0
    for rel in dict.fromkeys(rels):
        try:
            fd = open_for_reading(_safe_path(root, rel))
        except FileNotFoundError:
            continue
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            data = fh.read()
        undo.sink.add(f"{FilesWriter.tier}/{rel}", data, mode=st.st_mode & 0o7777, mtime=st.st_mtime,
                      meta={"files": 1, "mtime_ns": st.st_mtime_ns})  # fmt: skip
        n += 1
    summary.finished_at = time.time()
    summary.counts = {"files": n}
    summary.details = {"root": root, "undo_of": "statekit reconcile"}
    return undo.seal(summary)


def _apply_files(root: str, ops: list[Operation], result: ApplyResult, progress: Progress) -> None:
    for i, op in enumerate(ops, 1):
        rel = op.loc[1]
        path = _safe_path(root, rel)
        if rel.endswith("/"):
            if os.path.islink(path.rstrip("/")) or not os.path.isdir(path):
                result.conflicts.append(f"{rel}: changed since the plan, skipped")
                continue
            shutil.rmtree(path)
            result.counts["delete"] += 1
            continue
        current = read_file(root, rel)
        if current != op.before:
            result.conflicts.append(f"{rel}: changed since the plan, skipped")
            continue
        try:
            if op.op == "delete":
                os.unlink(path)
                fsync_dir(os.path.dirname(path))
            else:
                make_parents(root, os.path.dirname(path), "reconcile")
                mode = os.lstat(path).st_mode & 0o7777 if op.before is not None else 0o600
                _write_atomic(path, op.after or b"", mode)
        except OSError as exc:
            raise StorageError(f"reconcile: cannot write {rel}: {exc.strerror}") from None
        result.counts[op.op] += 1
        progress(FilesWriter.tier, i, 0)


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    def write_all(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    write_file_atomic(path, write_all, mode)
