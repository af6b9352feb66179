"""`make bench`: run every benchmark in this folder, one after another, each printing its own ratios
against the peer tools measured in the same run (absolute times drift on shared machines)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_db.py", "bench_redis.py", "bench_audit.py"]


def bench_env(environ: dict[str, str]) -> dict[str, str]:
    """The benchmarks' environment. The audit benchmark empties the Redis database it is given: only a URL
    set on purpose is one (a test server's included, which the tests empty too); otherwise the benchmarks
    start a private redis-server, so a Redis on the default port (the application's, perhaps) is never
    touched. PostgreSQL defaults to the local server, where only scratch databases are made and dropped."""
    env = dict(environ)
    env.setdefault("STATEKIT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    env.setdefault("STATEKIT_BENCH_PG_URL", env["STATEKIT_TEST_PG_URL"])
    if env.get("STATEKIT_TEST_REDIS_URL"):
        env.setdefault("STATEKIT_BENCH_REDIS_URL", env["STATEKIT_TEST_REDIS_URL"])
    return env


def main() -> int:
    """Run the benchmarks named on the command line (default: all) and report failures."""
    wanted = sys.argv[1:] or BENCHES
    env = bench_env(dict(os.environ))
    failed = []
    for name in wanted:
        script = HERE / name
        if not script.exists():
            print(f"== {name}: not present, skipped")
            continue
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, str(script)], env=env)
        print(f"== {name}: exit {rc} after {time.monotonic() - t0:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
