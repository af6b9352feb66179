"""Shared helpers for the redis tier tests: archive round trips and key comparison."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from statekit.archive.reader import Archive
from statekit.archive.writer import ArchiveWriter
from statekit.config import RedisConfig
from statekit.fsio import atomic_output
from statekit.model import MemberSink, RestoreOptions, RestoreReport, TierSummary, now_ms
from statekit.tiers.redis import restore_redis, snapshot_redis


def take(path: Path, cfg: RedisConfig, **kw: Any) -> tuple[Archive, TierSummary]:
    """Snapshot `cfg` into an unencrypted archive at `path`."""
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=None)
        summary = snapshot_redis(cfg, w, **kw)
        w.finish({"tiers": [summary.to_json()]})
    return Archive(path), summary


class FileUndo:
    """An UndoSink writing an unencrypted archive."""

    def __init__(self, path: Path):
        self.path = path
        self._ctx = atomic_output(path)
        self._fh = self._ctx.__enter__()
        self._w = ArchiveWriter(self._fh, recipients=None)
        self.sink: MemberSink = self._w
        self.sealed = False

    def seal(self, tier_summary: TierSummary) -> str:
        self._w.finish({"kind": "undo", "tiers": [tier_summary.to_json()]})  # "X" records: undo archives only
        self._ctx.__exit__(None, None, None)
        self.sealed = True
        return str(self.path)


def put_back(archive: Archive, target: str, *, undo_path: Path | None = None, **opts: Any) -> RestoreReport:
    """Restore `archive` into `target` (undo archive at undo_path when given)."""
    o = RestoreOptions(tier="redis", target=target, **opts)
    undo = FileUndo(undo_path) if undo_path else None
    return restore_redis(archive, o, RedisConfig(), undo=undo)


def state(url: str) -> dict[bytes, tuple[bytes, Any, int]]:
    """Every key of a database: type, a comparable value and its absolute expiry in epoch ms (-1 none): the
    clock just before PTTL plus PTTL, so two states taken seconds apart still compare."""
    r = redis.Redis.from_url(url)
    out: dict[bytes, tuple[bytes, Any, int]] = {}
    for key in r.scan_iter(count=1000):
        t = r.type(key)
        assert isinstance(key, bytes) and isinstance(t, bytes)
        if t == b"string":
            v: Any = r.get(key)
        elif t == b"list":
            v = r.lrange(key, 0, -1)
        elif t == b"set":
            v = sorted(r.smembers(key))
        elif t == b"zset":
            v = r.zrange(key, 0, -1, withscores=True)
        elif t == b"hash":
            v = sorted(r.hgetall(key).items())
        elif t == b"stream":
            # fields every version reports (7.0 adds entries-read and lag)
            groups = [
                {f: g[f] for f in ("name", "consumers", "pending", "last-delivered-id")} for g in r.xinfo_groups(key)
            ]
            v = (r.xrange(key), groups)
        else:
            v = r.dump(key)
        before = now_ms()
        ttl = r.pttl(key)
        out[key] = (t, v, before + ttl if ttl >= 0 else -1)
    r.close()
    return out


def same_state(
    a: dict[bytes, tuple[bytes, Any, int]], b: dict[bytes, tuple[bytes, Any, int]], tol_ms: int = 2000
) -> None:
    """Assert two `state()` results hold the same keys, values and expiry times (within tol_ms)."""
    assert a.keys() == b.keys(), set(a) ^ set(b)
    for k in a:
        ta, va, xa = a[k]
        tb, vb, xb = b[k]
        assert ta == tb, k
        assert va == vb, k
        if xa == -1 or xb == -1:
            assert xa == xb, (k, xa, xb)
        else:
            assert abs(xa - xb) <= tol_ms, (k, xa, xb)


@contextlib.contextmanager
def client(url: str) -> Iterator[redis.Redis]:
    """A redis-py client that is closed afterwards."""
    r = redis.Redis.from_url(url)
    try:
        yield r
    finally:
        r.close()
