"""Benchmark of the db tier against the server's own COPY, pg_dump and pg_restore, measured in one run.

    python bench/bench_db.py                       # against $STATEKIT_TEST_PG_URL or 127.0.0.1:5432
    python bench/bench_db.py --reps 3 --rows 2000000 --mixed-rows 1000000

Data sets, each in a scratch database with an empty copy of its tables as the restore target:
  single  one table of --rows rows (int primary key, md5 text, timestamptz, float, text, bool)
  mixed   two tables of --mixed-rows rows in all, eleven columns of mixed types (jsonb, bytea, numeric, uuid …)
  mid     the single table at --mid-rows rows (500,000), where fixed start-up costs show
  small   the mixed tables at --small-rows rows, for the peak-RSS ratio
  many    --many-tables small tables (serial key, a unique and a plain index), --many-rows rows in all: where
          per-table round trips show (snapshot against pg_dump, restore against pg_restore)

Every tool runs as a whole process, start-up included: `statekit snapshot` / `statekit restore` (the CLI, an
X25519-encrypted archive, restore with --yes --no-undo in replace mode, with one job and with --jobs 2),
`pg_dump -Fc`, `pg_restore --data-only`, and the floors: `psql -c "COPY t TO STDOUT" > /dev/null`,
`psql -c "\\copy t FROM file"`, and the server floor of a restore (one psql transaction: TRUNCATE, drop the
primary keys, `\\copy`, add the keys); the COPY out and the server floor also in binary COPY (the format statekit
archives tables of these types in). Each restore starts from emptied tables after a CHECKPOINT, and every
repetition and restore once no autovacuum worker runs (the one a restore sets off would otherwise run next to
the tool after it). Within a repetition the tools take turns going first (alternating runs), and a ratio is
taken per repetition between runs made next to each other; the median and the range over repetitions are
printed, so the noise of a shared machine shows. Peak RSS comes from os.wait4. The scratch databases are
dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SINGLE_DDL = "CREATE TABLE {name} (id int PRIMARY KEY, h text, ts timestamptz, f float8, t text, b bool)"
SINGLE_FILL = """INSERT INTO {name} SELECT g, md5(g::text), timestamptz '2024-01-01' + g * interval '1 second',
    g / 7.0, 'row text ' || (g % 1000) || repeat('x', g % 40), g % 2 = 0 FROM generate_series({lo}, {hi}) g"""
MIXED_DDL = """CREATE TABLE {name} (
    id bigint PRIMARY KEY, account int NOT NULL, label text, note varchar(120), amount numeric(14,2),
    ratio double precision, active boolean, created timestamptz, ref uuid, attrs jsonb, blob bytea)"""
MIXED_FILL = """INSERT INTO {name} SELECT g, g % 100000, 'label ' || md5(g::text), repeat(chr(97 + g % 26), g % 60),
    (g * 1.37)::numeric(14,2), g / 7.0, g % 3 = 0, timestamptz '2024-01-01' + g * interval '1 second',
    md5(g::text)::uuid, jsonb_build_object('k', g, 'tag', md5((g * 3)::text)),
    decode(md5((g * 7)::text), 'hex')
    FROM generate_series({lo}, {hi}) g"""
MANY_DDL = """CREATE TABLE {name} (id serial PRIMARY KEY, code text UNIQUE, v int, created timestamptz DEFAULT now());
    CREATE INDEX ON {name} (v)"""
MANY_FILL = "INSERT INTO {name} (code, v) SELECT md5(g::text), g FROM generate_series({lo}, {hi}) g"
STATEKIT = str(Path(sys.executable).parent / "statekit")
BINARY = " (FORMAT binary)"


class Dataset:
    """A scratch source database with its tables filled, and an empty target with the same tables."""

    def __init__(self, label: str, tables: list[str], ddl: str, fill: str, rows: int, tag: str) -> None:
        self.label = label
        self.tables = tables
        self.ddl = ddl
        self.fill = fill
        self.rows = rows
        self.src = f"statekit_bench_{label}_src_{tag}"
        self.dst = f"statekit_bench_{label}_dst_{tag}"


def _pg_env(url: str) -> dict[str, str]:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    env = dict(os.environ)
    env.update(PGHOST=u.host or "127.0.0.1", PGPORT=str(u.port or 5432), PGUSER=u.username or "postgres")
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    return env


def _db_url(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _run(url: str, *sql: str) -> None:
    import psycopg

    from statekit.tiers.sql.connect import DbTarget

    with psycopg.connect(DbTarget(url).psycopg_conninfo(), autocommit=True) as c:
        for s in sql:
            c.execute(s)


def _make(url: str, ds: Dataset) -> None:
    _run(url, f'CREATE DATABASE "{ds.src}"', f'CREATE DATABASE "{ds.dst}"')
    per = ds.rows // len(ds.tables)
    src = [ds.ddl.format(name=t) for t in ds.tables]
    src += [ds.fill.format(name=t, lo=i * per + 1, hi=(i + 1) * per) for i, t in enumerate(ds.tables)]
    _run(_db_url(url, ds.src), *src, "VACUUM ANALYZE")
    _run(_db_url(url, ds.dst), *[ds.ddl.format(name=t) for t in ds.tables])


def _settle(url: str, limit: float = 60.0) -> None:
    """Let the machine go quiet before a repetition: the server's dirty buffers written (CHECKPOINT), the
    kernel's dirty pages written (sync), and no autovacuum worker running (waiting up to `limit` seconds). The
    restores of the repetition before leave hundreds of MB to write and set the server vacuuming and analysing
    the tables they loaded, for a second or more on one of the two cores: whichever tool ran next shared the
    machine with that work, and the tool that uses both cores (statekit's snapshot: the server, the reader and
    the compressor) lost the most."""
    import psycopg

    from statekit.tiers.sql.connect import DbTarget

    deadline = time.monotonic() + limit
    with psycopg.connect(DbTarget(url).psycopg_conninfo(), autocommit=True) as c:
        try:
            c.execute("CHECKPOINT")
        except psycopg.Error as exc:  # CHECKPOINT needs a superuser or pg_checkpoint; the figures still come
            print(f"note: CHECKPOINT failed ({exc}); timings include earlier writes", file=sys.stderr)
        os.sync()
        while time.monotonic() < deadline:
            row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'").fetchone()
            if not row or not row[0]:
                return
            time.sleep(0.2)
    print(f"note: autovacuum still running after {limit:.0f}s; timings include it", file=sys.stderr)


def _fresh_target(url: str, ds: Dataset) -> None:
    """Empty the target's tables and let the machine settle (every dirty buffer written), so no run pays for the
    one before."""
    _run(_db_url(url, ds.dst), f"TRUNCATE {', '.join(ds.tables)}")
    _settle(url)


def timed(cmd: list[str], env: dict[str, str], stdout: int | None = subprocess.DEVNULL) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one whole process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise SystemExit(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed (exit {code}): {err.strip()[:500]}")
    return wall, int(usage.ru_maxrss) * 1024


class Bench:
    """The tools, run as whole processes against one data set."""

    def __init__(self, url: str, tmp: Path, recipient: str, identity: Path) -> None:
        self.url = url
        self.env = _pg_env(url)
        self.tmp = tmp
        self.recipient = recipient
        self.identity = identity

    def snapshot(self, ds: Dataset, archive: Path) -> tuple[float, int]:
        archive.unlink(missing_ok=True)
        cmd = [STATEKIT, "snapshot", "--tier", "db", "--db-url", _db_url(self.url, ds.src), "--to", str(archive),
               "-r", self.recipient]  # fmt: skip
        return timed(cmd, self.env)

    def restore(self, ds: Dataset, archive: Path, rss: dict[str, int] | None = None, jobs: int = 1) -> float:
        _fresh_target(self.url, ds)
        cmd = [STATEKIT, "restore", str(archive), "--tier", "db", "--target-url", _db_url(self.url, ds.dst),
               "-i", str(self.identity), "--yes", "--no-undo", "--jobs", str(jobs)]  # fmt: skip
        wall, peak = timed(cmd, self.env)
        if rss is not None:
            rss[f"{ds.label} restore"] = max(rss.get(f"{ds.label} restore", 0), peak)
        return wall

    def pg_dump(self, ds: Dataset, out: Path) -> float:
        flags = [x for t in ds.tables for x in ("-t", t)]
        return timed(["pg_dump", "-Fc", *flags, "-f", str(out), ds.src], self.env)[0]

    def pg_restore(self, ds: Dataset, dump: Path) -> float:
        _fresh_target(self.url, ds)
        return timed(["pg_restore", "--data-only", "-d", ds.dst, str(dump)], self.env)[0]

    def copy_out(self, ds: Dataset, fmt: str = "") -> float:
        cmds = [x for t in ds.tables for x in ("-c", f"COPY {t} TO STDOUT{fmt}")]
        return timed(["psql", "-X", "-q", "-d", ds.src, *cmds], self.env)[0]

    def copy_in(self, ds: Dataset, files: dict[str, Path]) -> float:
        _fresh_target(self.url, ds)
        cmds = [x for t in ds.tables for x in ("-c", f"\\copy {t} FROM '{files[t]}'")]
        return timed(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", ds.dst, *cmds], self.env)[0]

    def floor_in(self, ds: Dataset, files: dict[str, Path], fmt: str = "") -> float:
        """The server's floor for a one-transaction load with the keys rebuilt (what a restore does):
        TRUNCATE, drop the primary keys, `\\copy` each file, add the keys back, COMMIT — all in psql."""
        _fresh_target(self.url, ds)
        sql = ["BEGIN", "SET LOCAL maintenance_work_mem = '512MB'", f"TRUNCATE {', '.join(ds.tables)}"]
        sql += [f"ALTER TABLE {t} DROP CONSTRAINT {t}_pkey" for t in ds.tables]
        sql += [f"\\copy {t} FROM '{files[t]}'{fmt}" for t in ds.tables]
        sql += [f"ALTER TABLE {t} ADD CONSTRAINT {t}_pkey PRIMARY KEY (id)" for t in ds.tables]
        cmds = [x for s in [*sql, "COMMIT"] for x in ("-c", s)]
        return timed(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", ds.dst, *cmds], self.env)[0]

    def repetition(
        self,
        ds: Dataset,
        rep: int,
        archive: Path,
        dump: Path,
        files: dict[str, Path],
        bfiles: dict[str, Path],
        rss: dict[str, int],
    ) -> dict[str, float]:
        """One repetition on a data set: seconds by tool; the tools take turns going first."""
        now: dict[str, float] = {}

        def snap() -> None:
            now["snapshot"], peak = self.snapshot(ds, archive)
            rss[ds.label] = max(rss.get(ds.label, 0), peak)

        if ds.label == "small":
            snap()
            self.restore(ds, archive, rss)
            return now
        _alternate(rep, [snap, lambda: now.__setitem__("copy_out", self.copy_out(ds)),
                         lambda: now.__setitem__("copy_out_bin", self.copy_out(ds, BINARY)),
                         lambda: now.__setitem__("pg_dump", self.pg_dump(ds, dump))])  # fmt: skip
        if files:
            _alternate(rep, [lambda: now.__setitem__("restore", self.restore(ds, archive, rss)),
                             lambda: now.__setitem__("restore_j2", self.restore(ds, archive, jobs=2)),
                             lambda: now.__setitem__("pg_restore", self.pg_restore(ds, dump)),
                             lambda: now.__setitem__("copy_in", self.copy_in(ds, files)),
                             lambda: now.__setitem__("floor_in", self.floor_in(ds, files)),
                             lambda: now.__setitem__("floor_in_bin", self.floor_in(ds, bfiles, BINARY))])  # fmt: skip
        elif ds.label == "many":
            _alternate(rep, [lambda: now.__setitem__("restore", self.restore(ds, archive, rss)),
                             lambda: now.__setitem__("restore_j2", self.restore(ds, archive, jobs=2)),
                             lambda: now.__setitem__("pg_restore", self.pg_restore(ds, dump))])  # fmt: skip
        return now

    def copy_files(self, ds: Dataset, fmt: str = "") -> dict[str, Path]:
        files = {}
        for t in ds.tables:
            files[t] = self.tmp / f"{ds.label}.{t}.{'bin' if fmt else 'copy'}"
            with open(files[t], "wb") as fh:
                subprocess.run(["psql", "-X", "-q", "-d", ds.src, "-c", f"COPY {t} TO STDOUT{fmt}"], env=self.env,
                               stdout=fh, check=True)  # fmt: skip
        return files


def _alternate(rep: int, steps: list[Callable[[], None]]) -> None:
    for step in steps if rep % 2 == 0 else reversed(steps):
        step()


def _spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:5.2f}  (range {min(values):.2f}–{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the single-table set")
    ap.add_argument("--mixed-rows", type=int, default=1_000_000, help="rows of the mixed set (two tables)")
    ap.add_argument("--mid-rows", type=int, default=500_000, help="rows of the single table where start-up shows")
    ap.add_argument("--small-rows", type=int, default=100_000, help="rows of the small mixed set (RSS ratio)")
    ap.add_argument("--many-tables", type=int, default=300, help="tables of the many-tables set")
    ap.add_argument("--many-rows", type=int, default=30_000, help="rows of the many-tables set, in all")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sets", default="single,mixed,mid,small,many", help="data sets to run, comma-separated")
    ap.add_argument("--url", default=os.environ.get("STATEKIT_BENCH_PG_URL") or os.environ.get("STATEKIT_TEST_PG_URL")
                    or "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")  # fmt: skip
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows as it happens
    for tool in ("pg_dump", "pg_restore", "psql", STATEKIT):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found")
    from statekit.archive.keys import generate_identity

    tag = uuid.uuid4().hex[:8]
    sets = [
        Dataset("single", ["big"], SINGLE_DDL, SINGLE_FILL, args.rows, tag),
        Dataset("mixed", ["bench_a", "bench_b"], MIXED_DDL, MIXED_FILL, args.mixed_rows, tag),
        Dataset("mid", ["big"], SINGLE_DDL, SINGLE_FILL, args.mid_rows, tag),
        Dataset("small", ["bench_a", "bench_b"], MIXED_DDL, MIXED_FILL, args.small_rows, tag),
        Dataset("many", [f"many_{i}" for i in range(args.many_tables)], MANY_DDL, MANY_FILL, args.many_rows, tag),
    ]
    wanted = set(args.sets.split(","))
    sets = [ds for ds in sets if ds.label in wanted]
    tmp = Path(tempfile.mkdtemp(prefix="statekit-bench-"))
    identity = generate_identity()
    id_file = tmp / "identity.txt"
    id_file.write_text(identity.to_string() + "\n")
    id_file.chmod(0o600)
    bench = Bench(args.url, tmp, identity.recipient().to_string(), id_file)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    try:
        t0 = time.perf_counter()
        for ds in sets:
            _make(args.url, ds)
        print(f"datasets made in {time.perf_counter() - t0:.0f}s")
        ratios: dict[str, list[float]] = {}
        rss: dict[str, int] = {}

        def ratio(name: str, value: float) -> None:
            ratios.setdefault(name, []).append(value)

        for ds in sets:
            archive = tmp / f"{ds.label}.statekit"
            dump = tmp / f"{ds.label}.dump"
            files = bench.copy_files(ds) if ds.label in ("single", "mixed") else {}
            bfiles = bench.copy_files(ds, BINARY) if files else {}
            times: dict[str, list[float]] = {}
            for rep in range(args.reps):
                _settle(args.url)
                now = bench.repetition(ds, rep, archive, dump, files, bfiles, rss)
                if ds.label == "small":
                    continue
                for k, v in now.items():
                    times.setdefault(k, []).append(v)
                ratio(f"{ds.label}: snapshot / COPY TO STDOUT", now["snapshot"] / now["copy_out"])
                ratio(f"{ds.label}: snapshot / binary COPY TO STDOUT", now["snapshot"] / now["copy_out_bin"])
                ratio(f"{ds.label}: snapshot / pg_dump -Fc", now["snapshot"] / now["pg_dump"])
                if "restore" in now:
                    ratio(f"{ds.label}: restore / pg_restore --data-only", now["restore"] / now["pg_restore"])
                    ratio(
                        f"{ds.label}: restore --jobs 2 / pg_restore --data-only", now["restore_j2"] / now["pg_restore"]
                    )
                    ratio(f"{ds.label}: restore --jobs 2 / restore", now["restore_j2"] / now["restore"])
                if "copy_in" in now:
                    ratio(f"{ds.label}: restore / \\copy FROM", now["restore"] / now["copy_in"])
                    ratio(f"{ds.label}: restore / server floor", now["restore"] / now["floor_in"])
                    ratio(f"{ds.label}: server floor / pg_restore", now["floor_in"] / now["pg_restore"])
                    ratio(f"{ds.label}: restore / binary server floor", now["restore"] / now["floor_in_bin"])
                    ratio(f"{ds.label}: binary server floor / pg_restore", now["floor_in_bin"] / now["pg_restore"])
                when = f"load average {os.getloadavg()[0]:.2f}, {time.strftime('%H:%M UTC', time.gmtime())}"
                print(f"{ds.label} rep {rep + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in now.items()) + f"; {when}")
            if times:
                print(f"{ds.label} medians: " + ", ".join(f"{k} {statistics.median(v):.2f}s" for k, v in times.items()))
                mb = 1 << 20
                print(f"{ds.label} sizes: archive {archive.stat().st_size / mb:.1f} MiB, pg_dump -Fc "
                      f"{dump.stat().st_size / mb:.1f} MiB")  # fmt: skip
        load = os.getloadavg()[0]
        print(f"\nload average {load:.2f} at the end; ratios over {args.reps} repetitions (median, range):")
        targets = {
            ": snapshot / COPY TO STDOUT": 1.5,
            "snapshot / pg_dump -Fc": 0.5,
            "restore / pg_restore": 0.8,
            "restore --jobs 2 / pg_restore": 0.6,
        }
        for name, values in ratios.items():
            # the targets are on the single, mixed and mid sets; the many-tables ratios have none
            target = None if name.startswith("many:") else next((v for k, v in targets.items() if k in name), None)
            verdict = (
                ""
                if target is None
                else f"  target <= {target}: " + ("ok" if statistics.median(values) <= target else "MISSED")
            )
            print(f"  {name:<52} {_spread(values)}{verdict}")
        mb = 1 << 20
        for what in ("", " restore"):
            if f"mixed{what}" in rss and f"small{what}" in rss:
                big, small = rss[f"mixed{what}"], rss[f"small{what}"]
                verdict = "ok" if big / small <= 1.3 else "MISSED"
                label = f"peak RSS{what or ' snapshot'}, mixed {args.mixed_rows} / {args.small_rows} rows"
                print(f"  {label:<52} {big / small:5.2f}  ({big / mb:.0f} MiB vs {small / mb:.0f} MiB; "
                      f"target <= 1.3: {verdict})")  # fmt: skip
        if "single" in rss:
            print(f"  peak RSS single {args.rows} rows: {rss['single'] / mb:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for ds in sets:
            for name in (ds.src, ds.dst):
                try:
                    _run(args.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                except Exception as exc:  # keep cleaning up the others
                    print(f"could not drop {name}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    main()
