"""Benchmark: the evolution-api audit and reconcile on realistic key sets.

Each instance holds a real Baileys key set after its first login (812 pre-keys, sessions incl. LID `_1`
users, sender keys, app-state sync keys and their LT-hash versions, lid mappings, device lists: about 840
keys), written as a cache-mode server that used to run in files mode leaves them: creds in "Session", keys in
the Redis hash (live) and the same keys as files (the copy from before the move), so the audit reads and
compares every key in two tiers. `--keys N` uses N keys per instance instead.

Targets: full-value audit ≥ 50k entity values/s end to end, keys-only audit ≥ 200k/s, peak RSS < 1 GB, and
the creds migration into Redis (`reconcile --from db --to redis --entity creds`, as for the
CACHE_REDIS_SAVE_INSTANCES false → true flip) of 10k cache-mode instances < 10 s. Each statekit
run is a subprocess of the real CLI, so the figures include start-up, and its peak RSS is measured alone
(RUSAGE_CHILDREN after each run).

Servers: $STATEKIT_BENCH_PG_URL (a server URL; a scratch database is created) or a SQLite file, and
$STATEKIT_BENCH_REDIS_URL (a db that is FLUSHED) or a redis-server started here.

    python bench/bench_audit.py [--instances 300] [--keys N] [--migrate-instances 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures.evolution.generate import generate  # noqa: E402
from fixtures.evolution.harness import write_config  # noqa: E402

# the statekit command of the interpreter running this (`make bench`: statekit as pip installs it)
_COMMAND = Path(sys.executable).parent / "statekit"
STATEKIT = [str(_COMMAND)] if _COMMAND.exists() else [sys.executable, "-m", "statekit"]


def _pg_database(server_url: str) -> tuple[str, Any]:
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = f"skbench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return make_url(server_url).set(database=name).render_as_string(hide_password=False), drop


def _run(args: list[str], cwd: Path) -> tuple[float, int, dict[str, Any] | None, float]:
    """Run statekit; returns (seconds, exit code, JSON output or None, peak RSS MiB of that run)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([*STATEKIT, *args], cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    doc = None
    if "--json" in args and proc.stdout.strip():
        doc = json.loads(proc.stdout)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"statekit {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    # ru_maxrss is the max over all children so far: it only tells this run's peak when it grew.
    return elapsed, proc.returncode, doc, max(peak, before) / 1024


def main(argv: list[str] | None = None) -> int:
    """Generate the state, run the measurements, print the figures and whether each target is met."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--keys", type=int, default=None, help="keys per instance (default: a real key set)")
    ap.add_argument(
        "--migrate-instances",
        type=int,
        default=10_000,
        help="instances (20 keys each) whose creds the migration step copies into Redis",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="statekit-bench-audit-"))
    cleanups: list[Any] = []
    redis_proc = None
    try:
        pg = os.environ.get("STATEKIT_BENCH_PG_URL")
        if pg:
            db_url, drop = _pg_database(pg)
            cleanups.append(drop)
        else:
            db_url = f"sqlite:///{work / 'evolution.db'}"
        redis_url = os.environ.get("STATEKIT_BENCH_REDIS_URL")
        if not redis_url:
            from statekit.servers import RedisProcess, default_redis_server

            redis_proc = RedisProcess(binary=default_redis_server()).start()
            redis_url = redis_proc.url
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        root = work / "instances"
        t0 = time.perf_counter()
        gen = generate(db_url, redis_url, root, mode="cache", history="files", instances=args.instances,
                       keys_per_instance=args.keys)  # fmt: skip
        seed_s = time.perf_counter() - t0
        keys = round(sum(len(k) for k in gen.keys.values()) / max(1, len(gen.keys)))
        write_config(work / "statekit.toml", db_url=db_url, redis_url=redis_url, files_root=str(root),
                     extra='[profile_options]\nmode = "cache"')  # fmt: skip
        results: dict[str, Any] = {"instances": args.instances, "keys_per_instance": keys,
                                   "db": db_url.split(":", 1)[0], "seed_s": round(seed_s, 1)}  # fmt: skip
        full_s, code, doc, rss = _run(["audit", "--json", "--recheck-rounds", "0"], work)
        assert doc is not None and code == 0, doc
        results["full_audit"] = {"seconds": round(full_s, 2), "values": doc["values_compared"],
                                 "values_per_s": round(doc["values_compared"] / full_s),
                                 "engine_s": doc["duration_s"], "peak_rss_mib": round(rss)}  # fmt: skip
        keys_s, code, doc, rss2 = _run(["audit", "--json", "--keys-only", "--recheck-rounds", "0"], work)
        assert doc is not None and code == 0
        results["keys_only_audit"] = {"seconds": round(keys_s, 2), "values": doc["values_compared"],
                                      "values_per_s": round(doc["values_compared"] / keys_s),
                                      "engine_s": doc["duration_s"], "peak_rss_mib": round(rss2)}  # fmt: skip
        rec_s, code, doc, rss3 = _run(["reconcile", "--from", "db", "--to", "redis", "--entity", "creds", "--yes",
                                       "--no-encryption", "--json"], work)  # fmt: skip
        assert doc is not None and code == 0
        results["reconcile_creds"] = {"seconds": round(rec_s, 2), "created": doc["applied"]["create"],
                                      "peak_rss_mib": round(rss3)}  # fmt: skip
        again_s, code, doc, _ = _run(["audit", "--json", "--recheck-rounds", "0"], work)
        results["audit_after_reconcile"] = {"seconds": round(again_s, 2), "clean": bool(doc and doc["clean"])}
        # The migration for CACHE_REDIS_SAVE_INSTANCES false -> true on many instances: every cache-mode
        # instance's creds copied from "Session" into its hash (small hashes, so the undo archive stays small).
        many = args.migrate_instances
        redis.Redis.from_url(redis_url).flushdb()
        if pg:
            db2, drop2 = _pg_database(pg)
            cleanups.append(drop2)
        else:
            db2 = f"sqlite:///{work / 'migrate.db'}"
        mig = work / "migrate"
        mig.mkdir()
        generate(db2, redis_url, mig / "instances", mode="cache", instances=many, keys_per_instance=20,
                 cache_entries=False)  # fmt: skip
        write_config(mig / "statekit.toml", db_url=db2, redis_url=redis_url, files_root=str(mig / "instances"),
                     extra='[profile_options]\nmode = "cache"')  # fmt: skip
        mig_s, code, doc, rss4 = _run(["reconcile", "--from", "db", "--to", "redis", "--entity", "creds", "--yes",
                                       "--no-encryption", "--json"], mig)  # fmt: skip
        assert doc is not None and code == 0
        results["migrate_creds"] = {"instances": many, "seconds": round(mig_s, 2),
                                    "created": doc["applied"]["create"], "peak_rss_mib": round(rss4)}  # fmt: skip
        targets = {
            "full_audit >= 50k values/s": results["full_audit"]["values_per_s"] >= 50_000,
            "keys_only >= 200k values/s": results["keys_only_audit"]["values_per_s"] >= 200_000,
            "peak RSS < 1 GiB": max(rss, rss2, rss3, rss4) < 1024,
            f"migrate creds of {many:,} instances < 10 s": mig_s < 10,
        }
        results["targets"] = targets
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            print(f"seeded {args.instances} instances x {keys} keys ({results['db']}) in {seed_s:.1f}s")
            for name in ("full_audit", "keys_only_audit", "reconcile_creds", "audit_after_reconcile", "migrate_creds"):
                print(f"  {name:<22} {results[name]}")
            for name, ok in targets.items():
                print(f"  {'PASS' if ok else 'MISS'} {name}")
        return 0  # like the other benchmarks: the figures and target lines are the result, not the exit code
    finally:
        for fn in cleanups:
            fn()
        if redis_proc is not None:
            redis_proc.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
