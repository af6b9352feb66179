"""Faults while statekit works, simulated for real: a PostgreSQL or Redis server killed, a connection cut from
another session (`pg_terminate_backend`, `CLIENT KILL`), a full filesystem (a 2 MiB tmpfs), a read-only
destination, a key file that cannot be read.

Each must end in a one-line error with a documented exit code, leave no archive (and no temporary file), and
leave the target as it was (for Redis, which has no transactions: as the undo archive puts it back).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.servers import EmbeddedPostgres, RedisProcess, embedded_pg_bin, server_account, wait_port

STATEKIT = str(Path(sys.executable).parent / "statekit")
TIER_CODES = (5, 6)  # tier unavailable / tier failed mid-work: both documented, both "the server went away"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_") or k.startswith("STATEKIT_TEST")}
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """The installed `statekit` in a subprocess; a traceback is always a failure."""
    proc = subprocess.run([*prefix, STATEKIT, *args], capture_output=True, text=True, env=_env(env), timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def run_with_fault(args: list[str], ready: Callable[[], bool], fault: Callable[[], None], *,
                   repeat: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Start statekit; when `ready()` first holds (polled every few ms), call `fault()` (again and again with
    `repeat`, which defeats a client that reconnects); return the finished process."""
    proc = subprocess.Popen([STATEKIT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + timeout
    fired = False
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if fired and not repeat:
                time.sleep(0.01)
                continue
            try:
                if fired or ready():
                    fault()
                    fired = True
            except Exception:
                if not fired:
                    raise
            time.sleep(0.003)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert fired, f"the fault never fired: the run ended first ({proc.returncode}): {err}"
    assert "Traceback" not in out + err, err
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], codes: tuple[int, ...], *words: str) -> None:
    """Exit code in `codes`; stderr ends with exactly one `Error: …` line that names each of `words`, and any
    line before it is one of statekit's `warning: …` lines (no driver's or library's own log line)."""
    assert proc.returncode in codes, f"exit {proc.returncode}, wanted one of {codes}: {proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    ours = ("warning: ", "undo archive saved: ", "  to put the target back: ")
    assert all(line.startswith(ours) for line in lines[:-1]), proc.stderr
    for word in words:
        assert word.lower() in errors[0].lower(), f"{errors[0]!r} does not mention {word!r}"


def assert_no_archive(repo: Path) -> None:
    """No archive, no sidecar, no temporary file: only the (released) lock folder may remain."""
    left = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    assert left == [], f"the failed run left {left}"


# -- PostgreSQL -------------------------------------------------------------------------------------------------


WATCHER = "statekit-fault-test"


def _pg(url: str) -> psycopg.Connection[Any]:
    """A session of the test itself, named so the fault below never terminates it."""
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True,
                           application_name=WATCHER)  # fmt: skip


def _fill(url: str, rows: int) -> None:
    with _pg(url) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text)")
        conn.execute("INSERT INTO accounts SELECT g, g %% 97, repeat(md5(g::text), 3) FROM generate_series(1, %s) g",
                     (rows,))  # fmt: skip
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, entry text NOT NULL)")
        conn.execute("INSERT INTO ledger SELECT g, 'entry ' || g FROM generate_series(1, 100) g")


@contextlib.contextmanager
def _ledger_locked(url: str) -> Iterator[None]:
    """Hold an ACCESS EXCLUSIVE lock on `ledger` from a session of the test: a snapshot or restore that
    reaches that table waits there, mid-run, until the fault has struck (then the lock goes)."""
    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), application_name=WATCHER)
    conn.execute("LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.close()


def _copy_running(url: str, direction: str) -> Callable[[], bool]:
    """True once another session runs `COPY … TO STDOUT` / `FROM STDIN` on the database of `url`."""
    dbname = url.rsplit("/", 1)[1].split("?")[0]
    watcher = _pg(url)

    def check() -> bool:
        row = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND query ILIKE %s AND state = 'active'",
            (dbname, f"COPY%{direction}%"),
        ).fetchone()
        return bool(row and row[0])

    return check


def _waits_for_the_lock(url: str) -> Callable[[], bool]:
    """True once a session other than the test's own waits for a lock on the database of `url`."""
    dbname = url.rsplit("/", 1)[1].split("?")[0]
    watcher = _pg(url)

    def check() -> bool:
        row = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name <> %s "
            "AND wait_event_type = 'Lock'",
            (dbname, WATCHER),
        ).fetchone()
        return bool(row and row[0])

    return check


def _fingerprint(url: str) -> tuple[object, ...]:
    with _pg(url) as conn:
        return tuple(conn.execute(
            "SELECT count(*), coalesce(sum(balance), 0), md5(coalesce(string_agg(id || ':' || balance || ':' || note, "
            "',' ORDER BY id), '')) FROM accounts").fetchone() or ())  # fmt: skip


def _terminate_others(url: str) -> Callable[[], None]:
    dbname = url.rsplit("/", 1)[1].split("?")[0]

    def fault() -> None:
        with _pg(url) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                         "AND application_name <> %s", (dbname, WATCHER))  # fmt: skip

    return fault


def test_pg_connection_cut_mid_snapshot(tmp_path: Path, age_keys: tuple[str, str], pg_url: str) -> None:
    _fill(pg_url, 120_000)
    repo = tmp_path / "repo"
    repo.mkdir()
    with _ledger_locked(pg_url):
        proc = run_with_fault(["snapshot", "--db-url", pg_url, "--to", str(repo), "-r", age_keys[1]],
                              _waits_for_the_lock(pg_url), _terminate_others(pg_url), repeat=True)  # fmt: skip
    assert_one_line_error(proc, TIER_CODES, "db")
    assert_no_archive(repo)


def _terminate_one_copy(url: str) -> Callable[[], None]:
    """Terminate one of the sessions running `COPY … FROM STDIN` on the database of `url` (the others go on)."""
    dbname = url.rsplit("/", 1)[1].split("?")[0]

    def fault() -> None:
        with _pg(url) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                         "AND application_name <> %s AND query ILIKE 'COPY%%FROM STDIN%%' AND state = 'active' "
                         "ORDER BY pid LIMIT 1", (dbname, WATCHER))  # fmt: skip

    return fault


@pytest.mark.parametrize("jobs", [1, 2])
def test_pg_connection_cut_mid_restore(
    jobs: int, tmp_path: Path, age_keys: tuple[str, str], pg_url: str, pg_url2: str
) -> None:
    """One job: its connections are cut again and again. --jobs 2: one of the two connections is cut while both
    load (the other goes on until the restore stops it). Either way one line saying nothing changed (no COMMIT
    was sent: the server rolled it back), the target as it was, and no staging table left behind."""
    identity, recipient = age_keys
    _fill(pg_url, 120_000 if jobs == 1 else 300_000)
    archive = tmp_path / "db.statekit"
    assert run_cli("snapshot", "--db-url", pg_url, "--to", str(archive), "-r", recipient).returncode == 0
    _fill(pg_url2, 1_000)
    before = _fingerprint(pg_url2)
    fault = _terminate_others(pg_url2) if jobs == 1 else _terminate_one_copy(pg_url2)
    proc = run_with_fault(["restore", str(archive), "--tier", "db", "--target-url", pg_url2, "-i", identity, "--yes",
                           "--jobs", str(jobs), "--undo-dir", str(tmp_path)],
                          _copy_running(pg_url2, "FROM STDIN"), fault, repeat=jobs == 1)  # fmt: skip
    assert_one_line_error(proc, TIER_CODES, "db")
    assert "nothing was changed" in proc.stderr, proc.stderr
    assert _fingerprint(pg_url2) == before
    with _pg(pg_url2) as conn:
        left = conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'statekit_stage%'").fetchall()
    assert left == []


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (PostgreSQL backends of our own postmaster), from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry))
    return out


def _kill_postgres(server: EmbeddedPostgres) -> Callable[[], None]:
    def fault() -> None:
        assert server.proc is not None
        victims = [server.proc.pid, *_children(server.proc.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.proc.wait()

    return fault


def _restart_postgres(server: EmbeddedPostgres) -> None:
    """Start the killed cluster again on its data directory (crash recovery rolls back open transactions)."""
    ids = server_account()

    def as_user() -> None:
        if ids:
            os.setgid(ids[1])
            os.setuid(ids[0])

    server.proc = subprocess.Popen(
        [str(embedded_pg_bin() / "postgres"), "-D", str(server.root / "data"), "-p", str(server.port), "-h",
         "127.0.0.1", "-k", str(server.root), "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=as_user,
    )  # fmt: skip
    wait_port(server.port)
    deadline = time.monotonic() + 30
    while True:
        try:
            _pg(server.url).close()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def own_pg() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL 18 of our own, to kill."""
    server = EmbeddedPostgres().start()
    try:
        yield server
    finally:
        server.stop()


def test_pg_server_killed_mid_snapshot_and_restore(tmp_path: Path, age_keys: tuple[str, str], own_pg: EmbeddedPostgres,
                                                   pg_url: str) -> None:  # fmt: skip
    identity, recipient = age_keys
    url = own_pg.url
    _fill(url, 120_000)
    repo = tmp_path / "repo"
    repo.mkdir()
    with _ledger_locked(url):
        proc = run_with_fault(["snapshot", "--db-url", url, "--to", str(repo), "-r", recipient],
                              _waits_for_the_lock(url), _kill_postgres(own_pg))  # fmt: skip
    assert_one_line_error(proc, TIER_CODES, "db")
    assert_no_archive(repo)
    # Restore into our server from an archive of the shared one, and kill the server while rows stream in.
    _restart_postgres(own_pg)
    before = _fingerprint(url)
    _fill(pg_url, 120_000)
    archive = tmp_path / "db.statekit"
    assert run_cli("snapshot", "--db-url", pg_url, "--to", str(archive), "-r", recipient).returncode == 0
    proc = run_with_fault(["restore", str(archive), "--tier", "db", "--target-url", url, "-i", identity, "--yes",
                           "--undo-dir", str(tmp_path)],
                          _copy_running(url, "FROM STDIN"), _kill_postgres(own_pg))  # fmt: skip
    assert_one_line_error(proc, TIER_CODES, "db")
    assert "nothing was changed" in proc.stderr, proc.stderr
    _restart_postgres(own_pg)
    assert _fingerprint(url) == before, "the killed restore's transaction survived the crash"


def test_pg_server_killed_mid_jobs_restore(tmp_path: Path, age_keys: tuple[str, str], own_pg: EmbeddedPostgres,
                                           pg_url: str) -> None:  # fmt: skip
    """The server dies while --jobs 2 loads: one line that says the target is as it was (no transaction could
    commit), the target as it was after crash recovery, and the next restore clears the staging tables."""
    identity, recipient = age_keys
    url = own_pg.url
    _fill(url, 1_000)
    before = _fingerprint(url)
    _fill(pg_url, 300_000)
    archive = tmp_path / "db.statekit"
    assert run_cli("snapshot", "--db-url", pg_url, "--to", str(archive), "-r", recipient).returncode == 0
    restore = ["restore", str(archive), "--tier", "db", "--target-url", url, "-i", identity, "--yes", "--jobs", "2",
               "--undo-dir", str(tmp_path)]  # fmt: skip
    proc = run_with_fault(restore, _copy_running(url, "FROM STDIN"), _kill_postgres(own_pg))
    assert_one_line_error(proc, TIER_CODES, "db")
    assert "nothing was changed" in proc.stderr and "partly" not in proc.stderr, proc.stderr
    _restart_postgres(own_pg)
    assert _fingerprint(url) == before, "the killed restore's transaction survived the crash"
    assert run_cli(*restore).returncode == 0
    with _pg(url) as conn:
        left = conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'statekit_stage%'").fetchall()
    assert left == []
    assert _fingerprint(url) == _fingerprint(pg_url)


# -- Redis ------------------------------------------------------------------------------------------------------


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def _fill_redis(url: str, count: int, tag: str, start: int = 0) -> None:
    client = _redis(url)
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + count):
        pipe.set(f"k:{i}", f"{tag}-{i}-" + "x" * 40)
        if i % 2000 == 0:
            pipe.execute()
    pipe.execute()


def _statekit_connected(url: str) -> Callable[[], bool]:
    """True once a client other than this watcher is connected and running commands."""
    watcher = _redis(url)

    def check() -> bool:
        clients = watcher.client_list()
        return any(c.get("cmd") not in ("client|list", "client", "NULL") for c in clients if c["id"] != str(
            watcher.client_id()))  # fmt: skip

    return check


def _client_kill(url: str, *, pause_writes: bool = False) -> Callable[[], None]:
    """Close statekit's connections to the server. With `pause_writes`, writes first wait (CLIENT PAUSE … WRITE,
    until CLIENT UNPAUSE): a restore caught writing cannot finish between two kills, whatever the machine's speed,
    and its client's reconnect-and-retry runs out against the next kill."""
    killer = _redis(url)
    paused = False

    def fault() -> None:
        nonlocal paused
        if pause_writes and not paused:
            killer.client_pause(60_000, all=False)
            paused = True
        killer.client_kill_filter(_type="normal", skipme=True)

    return fault


def test_redis_connection_cut_mid_snapshot(tmp_path: Path, age_keys: tuple[str, str], own_redis: RedisProcess) -> None:
    _fill_redis(own_redis.url, 60_000, "v")
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run_with_fault(["snapshot", "--redis-url", own_redis.url, "--to", str(repo), "-r", age_keys[1]],
                          _statekit_connected(own_redis.url), _client_kill(own_redis.url), repeat=True)  # fmt: skip
    assert_one_line_error(proc, TIER_CODES, "redis")
    assert_no_archive(repo)


def test_redis_server_killed_mid_snapshot(tmp_path: Path, age_keys: tuple[str, str], own_redis: RedisProcess) -> None:
    _fill_redis(own_redis.url, 60_000, "v")
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run_with_fault(["snapshot", "--redis-url", own_redis.url, "--to", str(repo), "-r", age_keys[1]],
                          _statekit_connected(own_redis.url), own_redis.kill)  # fmt: skip
    assert_one_line_error(proc, TIER_CODES, "redis")
    assert_no_archive(repo)


def _state(url: str) -> dict[bytes, bytes]:
    client = _redis(url)
    keys = list(client.scan_iter(count=1000))
    values = client.mget(keys) if keys else []
    return dict(zip(keys, values))


@pytest.mark.parametrize("fault", ["client-kill", "server-kill"])
def test_redis_fault_mid_restore(tmp_path: Path, age_keys: tuple[str, str], fault: str) -> None:
    identity, recipient = age_keys
    source, target = RedisProcess().start(), RedisProcess().start()
    try:
        _fill_redis(source.url, 40_000, "new")
        archive = tmp_path / "r.statekit"
        assert run_cli("snapshot", "--redis-url", source.url, "--to", str(archive), "-r", recipient).returncode == 0
        _fill_redis(target.url, 40_000, "old")  # the same keys: the restore replaces every one
        before = _state(target.url)
        undo_dir = tmp_path / "undo"
        undo_dir.mkdir()
        written = _redis(target.url)

        def restoring() -> bool:
            return bool(written.get("k:0") != before[b"k:0"] or written.get("k:39999") != before[b"k:39999"])

        args = ["restore", str(archive), "--tier", "redis", "--target-url", target.url, "-i", identity, "--yes",
                "--undo-dir", str(undo_dir)]  # fmt: skip
        if fault == "client-kill":
            proc = run_with_fault(args, restoring, _client_kill(target.url, pause_writes=True), repeat=True)
            _redis(target.url).client_unpause()
        else:
            proc = run_with_fault(args, restoring, target.kill)
        assert_one_line_error(proc, TIER_CODES, "redis")
        if fault == "server-kill":
            return  # the server and its data are gone: the error is all there is to check
        undos = sorted(undo_dir.glob("*.statekit"))
        assert len(undos) == 1, "the first change was made without a sealed undo archive"
        proc = run_cli("restore", str(undos[0]), "--tier", "redis", "--target-url", target.url, "-i", identity,
                       "--yes", "--no-undo")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert _state(target.url) == before
    finally:
        source.stop()
        target.stop()


# -- the filesystem ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs mounted at `path` (root only); skipped with the reason when mounting is not permitted."""
    path.mkdir(exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not root'}): full/read-only disk untested")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def big_files(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    rng = random.Random(7)
    for i in range(24):
        (root / f"inst-{i % 4}").mkdir(parents=True, exist_ok=True)
        (root / f"inst-{i % 4}" / f"key-{i}.bin").write_bytes(rng.randbytes(256 * 1024))
    return root


def test_full_filesystem_during_snapshot(tmp_path: Path, age_keys: tuple[str, str], big_files: Path) -> None:
    with tmpfs(tmp_path / "small", "size=2m") as repo:
        proc = run_cli("snapshot", "--files-root", str(big_files), "--to", str(repo), "-r", age_keys[1])
        assert_one_line_error(proc, (9,), "no space")
        assert_no_archive(repo)


def test_read_only_destination(tmp_path: Path, age_keys: tuple[str, str], big_files: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as repo:
        proc = run_cli("snapshot", "--files-root", str(big_files), "--to", str(repo), "-r", age_keys[1])
        assert_one_line_error(proc, (9,), "read-only")
        assert_no_archive(repo)


def test_full_filesystem_during_files_restore(tmp_path: Path, age_keys: tuple[str, str], big_files: Path) -> None:
    identity, recipient = age_keys
    archive = tmp_path / "f.statekit"
    assert run_cli("snapshot", "--files-root", str(big_files), "--to", str(archive), "-r", recipient).returncode == 0
    with tmpfs(tmp_path / "small", "size=2m") as target:
        (target / "inst-0").mkdir()
        (target / "inst-0" / "key-0.bin").write_bytes(b"old")
        proc = run_cli("restore", str(archive), "--tier", "files", "--target", str(target), "-i", identity, "--yes",
                       "--no-undo")  # fmt: skip
        assert_one_line_error(proc, (9,), "no space")
        assert (target / "inst-0" / "key-0.bin").read_bytes() == b"old"
        left = [p.name for p in target.rglob("*") if p.is_file() and p.name != "key-0.bin"]
        assert left == [], f"staged or temporary files left behind: {left}"


# Without CAP_DAC_OVERRIDE even root gets EACCES on a mode-000 file: a real unreadable file, no mocks.
NO_DAC = ("setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search", "--")


@pytest.fixture
def unreadable_root(tmp_path: Path) -> Path:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE")
    root = tmp_path / "root"
    (root / "inst-1").mkdir(parents=True)
    (root / "inst-1" / "creds.json").write_text("{}")
    secret = root / "inst-1" / "pre-key-7.json"
    secret.write_text('{"k": 1}')
    secret.chmod(0)
    probe = subprocess.run([*NO_DAC, "cat", str(secret)], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("cannot make a file unreadable here (capabilities not droppable)")
    return root


def test_unreadable_key_file_is_an_error_naming_it(
    tmp_path: Path, age_keys: tuple[str, str], unreadable_root: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run_cli(
        "snapshot", "--files-root", str(unreadable_root), "--to", str(repo), "-r", age_keys[1], prefix=NO_DAC
    )
    assert_one_line_error(proc, (6,), "inst-1/pre-key-7.json", "skip_unreadable")
    assert_no_archive(repo)


def test_unreadable_key_file_skipped_by_option(
    tmp_path: Path, age_keys: tuple[str, str], unreadable_root: Path
) -> None:
    identity, recipient = age_keys
    repo = tmp_path / "repo"
    repo.mkdir()
    config = tmp_path / "statekit.toml"
    config.write_text("[files]\nskip_unreadable = true\n")
    proc = run_cli("snapshot", "--config", str(config), "--files-root", str(unreadable_root), "--to", str(repo),
                   "-r", recipient, "--json", prefix=NO_DAC)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "inst-1/pre-key-7.json" in proc.stdout  # the warning names the file (in the JSON result's warnings)
    (archive,) = repo.glob("*.statekit")
    target = tmp_path / "restored"
    proc = run_cli("restore", str(archive), "--tier", "files", "--target", str(target), "-i", identity, "--yes",
                   "--no-undo")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in target.rglob("*") if p.is_file()) == ["creds.json"]
