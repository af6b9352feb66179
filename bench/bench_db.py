"""Benchmark of the db tier against pg_dump/pg_restore, measured in one run (medians of --reps).

    python bench/bench_db.py --rows 1000000 --reps 3        # against $STATEKIT_TEST_PG_URL or 127.0.0.1:5432

Two tables of mixed types (rows/2 each, about 200 bytes a row) are created in a scratch database. Printed:
statekit snapshot vs `pg_dump -Fc` of the same tables; statekit restore vs `pg_restore --data-only` into the
same empty schema; snapshot `--jobs 2` vs `--jobs 1`; peak RSS of a snapshot of 100k vs --rows rows. statekit
runs in a child process (`--child`) so its RSS is its own (os.wait4); its time is measured inside the child
around snapshot_db/restore_db. Archives are encrypted to a fresh X25519 key when statekit.archive.keys is
available. The scratch databases are dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TABLE_DDL = """CREATE TABLE {name} (
    id bigint PRIMARY KEY, account int NOT NULL, label text, note varchar(120), amount numeric(14,2),
    ratio double precision, active boolean, created timestamptz, ref uuid, attrs jsonb, blob bytea)"""
FILL = """INSERT INTO {name} SELECT g, g % 100000, 'label ' || md5(g::text), repeat(chr(97 + g % 26), g % 60),
    (g * 1.37)::numeric(14,2), g / 7.0, g % 3 = 0, timestamptz '2024-01-01' + g * interval '1 second',
    md5(g::text)::uuid, jsonb_build_object('k', g, 'tag', md5((g * 3)::text)),
    decode(md5((g * 7)::text), 'hex')
    FROM generate_series({lo}, {hi}) g"""
TABLES = ("bench_a", "bench_b")


def _pg(url: str) -> tuple[str, dict[str, str]]:
    """conninfo and the environment for the pg_* tools."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    env = dict(os.environ)
    env.update(PGHOST=u.host or "127.0.0.1", PGPORT=str(u.port or 5432), PGUSER=u.username or "postgres")
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    return f"host={env['PGHOST']} port={env['PGPORT']} user={env['PGUSER']}", env


def _db_url(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _admin(url: str, sql: str) -> None:
    import psycopg

    conninfo, env = _pg(url)
    with psycopg.connect(conninfo + " dbname=postgres", autocommit=True, password=env.get("PGPASSWORD")) as c:
        c.execute(sql)


def _run(url: str, *sql: str) -> None:
    import psycopg

    from statekit.tiers.sql.connect import DbTarget

    with psycopg.connect(DbTarget(url).psycopg_conninfo(), autocommit=True) as c:
        for s in sql:
            c.execute(s)


def _fresh_target(url: str) -> None:
    """Empty the restore target's tables and write out every dirty buffer (CHECKPOINT needs a superuser or
    pg_checkpoint; without it the figures still come, with more noise)."""
    _run(url, f"TRUNCATE {', '.join(TABLES)}")
    try:
        _run(url, "CHECKPOINT")
    except Exception as exc:  # a benchmark goes on without it
        print(f"note: CHECKPOINT failed ({exc}); restore timings include earlier writes", file=sys.stderr)


def make_dataset(url: str, rows: int, with_data: bool = True) -> None:
    half = rows // 2
    stmts = []
    for i, name in enumerate(TABLES):
        stmts.append(TABLE_DDL.format(name=name))
        if with_data:
            stmts.append(FILL.format(name=name, lo=i * half + 1, hi=(i + 1) * half))
    stmts.append("VACUUM ANALYZE" if with_data else "SELECT 1")
    _run(url, *stmts)


# -- child: one statekit operation, timed inside the process -------------------------------------------


def child(args: argparse.Namespace) -> None:
    from statekit.archive.format import Archive, ArchiveWriter, atomic_output
    from statekit.config import DbConfig
    from statekit.model import RestoreOptions
    from statekit.tiers.sql import restore_db, snapshot_db

    secret = os.environ.get("BENCH_IDENTITY")
    identity: Any = None
    if secret:
        from statekit.archive.keys import X25519Identity

        identity = X25519Identity.from_string(secret)
    path = Path(args.archive)
    t0 = time.perf_counter()
    if args.child == "snapshot":
        path.unlink(missing_ok=True)
        with atomic_output(path) as fh:
            w = ArchiveWriter(fh, recipients=[identity.recipient()] if identity else None)
            summary = snapshot_db(DbConfig(url=args.url), w, jobs=args.jobs)
            w.finish({"tiers": [summary.to_json()]})
        extra = {"rows": summary.counts["rows"], "size": path.stat().st_size}
    else:
        archive = Archive(path, [identity] if identity else [])
        report = restore_db(archive, RestoreOptions(tier="db", target=args.url), DbConfig(), undo=None)
        extra = {"rows": report.counts.get("rows", 0)}
    print(json.dumps({"seconds": time.perf_counter() - t0, **extra}))


def run_child(op: str, url: str, archive: Path, jobs: int = 1) -> tuple[float, int, dict[str, Any]]:
    """(seconds measured in the child, peak RSS in bytes, child's JSON)."""
    cmd = [sys.executable, __file__, "--child", op, "--url", url, "--archive", str(archive), "--jobs", str(jobs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=os.environ.copy())
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"statekit {op} failed (exit {proc.returncode})")
    doc = json.loads(out.decode().strip().splitlines()[-1])
    return float(doc["seconds"]), int(usage.ru_maxrss) * 1024, doc


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small-rows", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--url", default=os.environ.get("STATEKIT_TEST_PG_URL")
                    or "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")  # fmt: skip
    ap.add_argument("--child", choices=["snapshot", "restore"])
    ap.add_argument("--archive")
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows as it happens
    for tool in ("pg_dump", "pg_restore"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found on PATH")
    try:
        from statekit.archive.keys import generate_identity

        os.environ["BENCH_IDENTITY"] = generate_identity().to_string()
        crypto = "age X25519"
    except ImportError:
        crypto = "none (statekit.archive.keys missing)"
    tag = uuid.uuid4().hex[:8]
    names = {k: f"statekit_bench_{k}_{tag}" for k in ("src", "small", "dst")}
    _, env = _pg(args.url)
    tmp = Path(tempfile.mkdtemp(prefix="statekit-bench-"))
    try:
        for n in names.values():
            _admin(args.url, f'CREATE DATABASE "{n}"')
        src, small, dst = (_db_url(args.url, names[k]) for k in ("src", "small", "dst"))
        t0 = time.perf_counter()
        make_dataset(src, args.rows)
        make_dataset(small, args.small_rows)
        make_dataset(dst, 0, with_data=False)
        print(f"dataset: {args.rows} rows in {TABLES} ({time.perf_counter() - t0:.1f}s), encryption: {crypto}")
        tflags = [x for t in TABLES for x in ("-t", t)]
        snap1, snap2, dump, rest, prest = [], [], [], [], []
        rss_big = rss_small = 0
        archive = tmp / "bench.statekit"
        dumpfile = tmp / "bench.dump"
        for rep in range(args.reps):
            s, rss, doc = run_child("snapshot", src, archive, jobs=1)
            snap1.append(s)
            rss_big = max(rss_big, rss)
            s, _, _ = run_child("snapshot", src, tmp / "bench2.statekit", jobs=2)
            snap2.append(s)
            dump.append(timed(["pg_dump", "-Fc", *tflags, "-f", str(dumpfile), names["src"]], env))

            # Each restore starts from an empty target and a clean buffer cache (CHECKPOINT), and the two
            # take turns going first, so neither pays for the writes of the one before it.
            def ours() -> None:
                _fresh_target(dst)
                rest.append(run_child("restore", dst, archive)[0])

            def theirs() -> None:
                _fresh_target(dst)
                prest.append(timed(["pg_restore", "--data-only", "-d", names["dst"], str(dumpfile)], env))

            for step in (ours, theirs) if rep % 2 == 0 else (theirs, ours):
                step()
            print(f"rep {rep + 1}: snapshot {snap1[-1]:.2f}s (jobs 2: {snap2[-1]:.2f}s), pg_dump {dump[-1]:.2f}s, "
                  f"restore {rest[-1]:.2f}s, pg_restore {prest[-1]:.2f}s")  # fmt: skip
        for _ in range(args.reps):
            _, rss, _ = run_child("snapshot", small, tmp / "small.statekit")
            rss_small = max(rss_small, rss)
        med = statistics.median
        mb = 1 << 20
        print(f"archive {doc['size'] / mb:.1f} MiB, pg_dump -Fc {dumpfile.stat().st_size / mb:.1f} MiB")
        results = [
            ("snapshot / pg_dump -Fc", med(snap1) / med(dump), 0.5),
            ("restore / pg_restore --data-only", med(rest) / med(prest), 1.0),
            ("snapshot jobs 2 / jobs 1", med(snap2) / med(snap1), 1.0),
            (f"peak RSS {args.rows} / {args.small_rows} rows", rss_big / rss_small, 1.3),
        ]
        print(f"medians: snapshot {med(snap1):.2f}s, jobs 2 {med(snap2):.2f}s, pg_dump {med(dump):.2f}s, "
              f"restore {med(rest):.2f}s, pg_restore {med(prest):.2f}s")  # fmt: skip
        print(f"peak RSS: {rss_small / mb:.0f} MiB at {args.small_rows} rows, {rss_big / mb:.0f} MiB at "
              f"{args.rows} rows (target < 250 MiB: {'ok' if rss_big < 250 * mb else 'MISSED'})")  # fmt: skip
        for label, ratio, target in results:
            verdict = "ok" if ratio <= target else "MISSED"
            print(f"{label:<40} {ratio:6.2f}  (target <= {target}: {verdict})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for n in names.values():
            try:
                _admin(args.url, f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
            except Exception as exc:  # keep cleaning up the others
                print(f"could not drop {n}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    main()
