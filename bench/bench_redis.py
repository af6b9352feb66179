"""Benchmark of the redis tier against a hand-written redis-py baseline and `redis-cli --rdb`, in one run.

    python bench/bench_redis.py --keys 1000000             # a private local redis-server (same binary)
    python bench/bench_redis.py --url redis://127.0.0.1:6379/0   # or a given server (spare dbs)

By default a private `redis-server` (the system one, no persistence) is started on a free port, so tests
that share the main server cannot disturb the figures. Fills a spare database (--db, default 15; it must be
empty) with --keys small strings, 10 % with a TTL.
Printed: statekit snapshot keys/s (through an ArchiveWriter, encrypted to a fresh X25519 key when
statekit.archive.keys is there) vs the baseline (redis-py scan_iter + pipelined PTTL/DUMP); statekit restore
keys/s into an empty second database (--restore-db, default 14) vs pipelined redis-py RESTORE; `redis-cli
--rdb` (the server's own dump, the floor); peak RSS of a snapshot + restore of 100k keys vs --keys keys.
statekit runs in a child process (--child) so its RSS is its own (os.wait4). Both databases are flushed at
the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from statekit.model import steady_clock  # noqa: E402

steady_clock()  # as the statekit command does at start, before redis-py loads OpenSSL (the child inherits it)

import redis  # noqa: E402


def _url(base: str, db: int) -> str:
    return base.rsplit("/", 1)[0] + f"/{db}" if base.count("/") > 2 else f"{base}/{db}"


def fill(url: str, n: int) -> None:
    """n small string keys, every tenth with a one-hour TTL."""
    r = redis.Redis.from_url(url)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        if i % 10 == 0:
            pipe.set(b"bench:key:%d" % i, b"value-%d-%s" % (i, b"x" * 16), px=3_600_000)
        else:
            pipe.set(b"bench:key:%d" % i, b"value-%d-%s" % (i, b"x" * 16))
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    r.close()


def _identity(archive: Path) -> Any:
    """A fresh X25519 identity kept next to the archive (None when statekit.archive.keys is not there)."""
    try:
        from statekit.archive.keys import X25519Identity, generate_identity
    except ImportError:
        return None
    path = archive.with_suffix(".key")
    if path.exists():
        return X25519Identity.from_string(path.read_text())
    ident = generate_identity()
    path.write_text(ident.to_string())
    return ident


def child(mode: str, src: str, dst: str, archive: Path) -> dict[str, Any]:
    """Runs in the child process: one statekit snapshot or restore, timed around the library call."""
    from statekit.archive.reader import Archive
    from statekit.archive.writer import ArchiveWriter
    from statekit.config import RedisConfig
    from statekit.fsio import atomic_output
    from statekit.model import RestoreOptions, tune_gc, tune_malloc
    from statekit.tiers.redis import restore_redis, snapshot_redis

    tune_malloc()  # as the statekit command does at start
    tune_gc()
    src_db = int(src.rsplit("/", 1)[1])
    if mode == "snapshot":
        with atomic_output(archive, overwrite=True) as fh:
            ident = _identity(archive)
            w = ArchiveWriter(fh, recipients=[ident.recipient()] if ident else None)
            t0 = time.perf_counter()
            summary = snapshot_redis(RedisConfig(url=src, dbs=[src_db]), w)
            w.finish({"tiers": [summary.to_json()]})
            dt = time.perf_counter() - t0
        return {"seconds": dt, "keys": summary.counts["keys"], "bytes": archive.stat().st_size}
    ident = _identity(archive)
    a = Archive(archive, [ident] if ident else [])
    a.index()  # the engine verifies the archive before calling the tier; not part of the tier's time
    t0 = time.perf_counter()
    opts = RestoreOptions(tier="redis", target=dst, db_map={src_db: int(dst.rsplit("/", 1)[1])})
    rep = restore_redis(a, opts, RedisConfig(), undo=None)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "keys": rep.counts["created"]}


def run_child(mode: str, src: str, dst: str, archive: Path) -> tuple[dict[str, Any], int]:
    """Run `child` in a fresh interpreter; returns its result and its peak RSS in KiB."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", mode, "--src", src, "--dst", dst, "--archive", str(archive)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"child {mode} failed with status {status}")
    return json.loads(out), usage.ru_maxrss


def baseline_snapshot(url: str) -> tuple[float, int]:
    """redis-py: scan_iter(count=1000) + a pipeline of PTTL and DUMP per 1000 keys."""
    r = redis.Redis.from_url(url)
    t0 = time.perf_counter()
    out: list[tuple[bytes, int, bytes]] = []
    batch: list[bytes] = []

    def flush() -> None:
        pipe = r.pipeline(transaction=False)
        for k in batch:
            pipe.pttl(k)
            pipe.dump(k)
        res = pipe.execute()
        for i, k in enumerate(batch):
            out.append((k, res[2 * i], res[2 * i + 1]))
        batch.clear()

    for key in r.scan_iter(count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            flush()
    flush()
    dt = time.perf_counter() - t0
    n = len(out)
    baseline_snapshot.data = out  # type: ignore[attr-defined]
    r.close()
    return dt, n


def baseline_restore(url: str) -> float:
    """redis-py: pipelined RESTORE ... ABSTTL of what baseline_snapshot read, 1000 per pipeline."""
    data: list[tuple[bytes, int, bytes]] = baseline_snapshot.data  # type: ignore[attr-defined]
    r = redis.Redis.from_url(url)
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for i, (k, ttl, payload) in enumerate(data):
        pipe.restore(k, now + ttl if ttl > 0 else 0, payload, absttl=True)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    dt = time.perf_counter() - t0
    r.close()
    return dt


def redis_cli_rdb(url: str, tmp: Path) -> float | None:
    """`redis-cli --rdb FILE`: the server writes its whole RDB (all dbs); the floor for any snapshot."""
    cli = shutil.which("redis-cli")
    if cli is None:
        return None
    from urllib.parse import urlsplit

    u = urlsplit(url)
    t0 = time.perf_counter()
    subprocess.run(
        [cli, "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379), "--rdb", str(tmp / "dump.rdb")],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - t0


def main() -> int:
    """Parse arguments, run the benchmark (or, with --child, one measured statekit call)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--db", type=int, default=15)
    ap.add_argument("--restore-db", type=int, default=14)
    ap.add_argument("--child")
    ap.add_argument("--src")
    ap.add_argument("--dst")
    ap.add_argument("--archive")
    ap.add_argument("--url", help="benchmark this server instead of a private redis-server")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.src, args.dst, Path(args.archive))))
        return 0
    server = None
    if args.url:
        base = args.url
    else:
        from statekit.servers import RedisProcess, default_redis_server

        server = RedisProcess(binary=default_redis_server()).start()
        base = server.url
    try:
        return _bench(args, base)
    finally:
        if server is not None:
            server.stop()


def _bench(args: argparse.Namespace, base: str) -> int:
    src, dst = _url(base, args.db), _url(base, args.restore_db)
    rs, rd = redis.Redis.from_url(src), redis.Redis.from_url(dst)
    if rs.dbsize() or rd.dbsize():
        print(f"databases {args.db} and {args.restore_db} must be empty (they are flushed afterwards)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="statekit-bench-"))
    load0 = os.getloadavg()[0]  # absolute figures mean little on a busy machine; the ratios still do
    try:
        rss: dict[int, int] = {}
        results: dict[str, Any] = {}
        for n in sorted({100_000, args.keys}):
            rs.flushdb()
            rd.flushdb()
            fill(src, n)
            snap, rss_s = run_child("snapshot", src, dst, tmp / f"a{n}.statekit")
            rest, rss_r = run_child("restore", src, dst, tmp / f"a{n}.statekit")
            assert snap["keys"] == n and rest["keys"] == n, (snap, rest)
            rss[n] = max(rss_s, rss_r)
            print(f"  {n:,} keys: snapshot {n / snap['seconds']:,.0f} keys/s, RSS {rss_s / 1024:.0f} MiB; "
                  f"restore {n / rest['seconds']:,.0f} keys/s, RSS {rss_r / 1024:.0f} MiB", flush=True)  # fmt: skip
            results[n] = (snap, rest)
        n = args.keys
        snap, rest = results[n]
        rd.flushdb()
        b_snap, b_n = baseline_snapshot(src)
        b_rest = baseline_restore(dst)
        rdb = redis_cli_rdb(src, tmp)
        sk_s = n / snap["seconds"]
        sk_r = n / rest["seconds"]
        bs = b_n / b_snap
        br = b_n / b_rest
        print(f"keys: {n:,} small strings, 10 % with TTL; archive {snap['bytes'] / 1e6:.1f} MB; "
              f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
        print(f"snapshot  statekit {sk_s:>10,.0f} keys/s  baseline {bs:>10,.0f} keys/s  ratio {sk_s / bs:.2f}x")
        print(f"restore   statekit {sk_r:>10,.0f} keys/s  baseline {br:>10,.0f} keys/s  ratio {sk_r / br:.2f}x")
        if rdb is not None:
            floor = n / rdb
            print(
                f"redis-cli --rdb     {floor:>10,.0f} keys/s  (server-side floor; statekit {sk_s / floor:.2f}x of it)"
            )
        small, big = rss[100_000], rss[max(rss)]
        print(f"peak RSS  100k keys {small / 1024:.0f} MiB, {max(rss):,} keys {big / 1024:.0f} MiB, "
              f"ratio {big / small:.2f}")  # fmt: skip
        ok = sk_s >= 250_000 and sk_r >= 400_000 and sk_s >= 3 * bs and sk_r >= 3 * br and big <= 1.3 * small
        print("targets (snapshot >= 250k/s, restore >= 400k/s, each >= 3x baseline, RSS ratio <= 1.3):",
              "met" if ok else "NOT met")  # fmt: skip
        return 0
    finally:
        rs.flushdb()
        rd.flushdb()
        rs.close()
        rd.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
