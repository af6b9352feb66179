"""Crash safety: `kill -9` at random points.

- During snapshot: the repository never holds a `*.statekit` that does not verify; leftovers are dot-prefixed
  temporary files that `statekit verify` rejects; the lock left by the dead run does not block the next run.
- During restore: a database target is either untouched or fully restored (one transaction); each key file is
  its old or its new version, never partial; for Redis, restoring the undo archive puts the target back.

Random delays come from one seed, printed in every failure (set STATEKIT_TEST_SEED to replay a run).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
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

from statekit.archive.reader import Archive
from statekit.errors import StatekitError
from tests.servers import RedisProcess

STATEKIT = str(Path(sys.executable).parent / "statekit")
SEED = int(os.environ.get("STATEKIT_TEST_SEED", str(int(time.time()))))
TEMP_RE = re.compile(r"^\..+\.[0-9a-f]{6,}\.tmp$")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_") or k.startswith("STATEKIT_TEST")}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `statekit` in a subprocess, as cron would run it."""
    proc = subprocess.run([STATEKIT, *args], capture_output=True, text=True, env=_env(), cwd=cwd, timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def kill_after(args: list[str], delay: float, cwd: Path | None = None) -> int | None:
    """Start statekit, SIGKILL it after `delay` seconds; its exit code if it finished first, else None."""
    proc = subprocess.Popen([STATEKIT, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
                            cwd=cwd)  # fmt: skip
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert proc.returncode == 0, f"seed {SEED}: run that was not killed failed: {err}"
    return proc.returncode


def kill_at_size(args: list[str], repo: Path, size: int, jitter: float = 0.0) -> int | None:
    """Start statekit and SIGKILL it (`jitter` seconds later) once its temporary archive in `repo` holds
    `size` bytes: a kill point chosen by progress, not by a guess at how long a run takes. Its exit code
    if it finished first, else None."""
    proc = subprocess.Popen([STATEKIT, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())

    def written() -> int:
        sizes = [0]
        for p in repo.glob(".*.statekit.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                sizes.append(p.stat().st_size)
        return max(sizes)

    deadline = time.monotonic() + 120  # only turns a hang into a failure
    while proc.poll() is None and written() < size and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(jitter)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None
    assert proc.stderr is not None
    assert proc.returncode == 0, f"seed {SEED}: run that was not killed failed: {proc.stderr.read().decode()}"
    return proc.returncode


def kill_when(args: list[str], started_writing: Callable[[], bool], jitter: float) -> int | None:
    """Start statekit and SIGKILL it `jitter` seconds after `started_writing()` first holds (polled every
    millisecond), so the kill lands inside a short writing phase; its exit code if it finished first."""
    proc = subprocess.Popen([STATEKIT, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + 120
    while proc.poll() is None and not started_writing() and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(jitter)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None
    assert proc.stderr is not None
    assert proc.returncode == 0, f"seed {SEED}: run that was not killed failed: {proc.stderr.read().decode()}"
    return proc.returncode


def timed(args: list[str], cwd: Path | None = None) -> float:
    """Wall time of one complete, successful run."""
    start = time.monotonic()
    proc = run_cli(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return time.monotonic() - start


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Key files big enough (40 MiB, incompressible) that a snapshot takes about half a second."""
    root = tmp_path_factory.mktemp("big")
    rng = random.Random(1)
    for i in range(160):
        d = root / f"inst-{i % 16}"
        d.mkdir(exist_ok=True)
        (d / f"pre-key-{i}.bin").write_bytes(rng.randbytes(256 * 1024))
    return root


def _verifies(path: Path, identity: str) -> bool:
    from statekit.archive.keys import read_identity_file

    try:
        Archive(path, read_identity_file(identity)).index()
    except StatekitError:
        return False
    return True


# -- snapshot ---------------------------------------------------------------------------------------------------


def test_kill_during_snapshot(tmp_path: Path, age_keys: tuple[str, str], big_root: Path) -> None:
    identity, recipient = age_keys
    repo = tmp_path / "repo"
    repo.mkdir()
    args = ["snapshot", "--files-root", str(big_root), "--to", str(repo), "-r", recipient, "--name", "crash"]
    assert run_cli(*args).returncode == 0
    (first,) = repo.glob("*.statekit")
    size = first.stat().st_size
    assert _verifies(first, identity)
    for p in repo.glob("*.statekit*"):
        p.unlink()
    rng = random.Random(SEED)
    leftovers: set[Path] = set()
    killed = finished = 0
    for trial in range(30):
        # 24 kills part way through the data, 6 around the end (finishing the file, renaming, the sidecar)
        at = rng.randint(1, int(size * 0.9)) if trial < 24 else size
        delay = 0.0 if trial < 24 else rng.uniform(0, 0.05)
        if kill_at_size(args, repo, at, delay) is None:
            killed += 1
        else:
            finished += 1
        for path in sorted(repo.iterdir()):
            name = path.name
            if name == "locks":
                continue
            if name.endswith(".statekit"):
                # The promise: anything named *.statekit is a finished archive.
                assert _verifies(path, identity), f"seed {SEED} trial {trial} (killed at {at} bytes): {name}"
                path.unlink()
                path.with_name(name + ".meta.json").unlink(missing_ok=True)
            elif name.endswith(".statekit.meta.json"):
                pass  # only written after its archive; removed with it above
            else:
                assert TEMP_RE.match(name), f"seed {SEED} trial {trial}: unexpected file {name} in the repository"
                leftovers.add(path)
    assert killed >= 24, f"seed {SEED}: only {killed} of 30 runs were killed (24 kill points are mid-data)"
    # The lock of a killed run never blocks the next run.
    proc = run_cli(*args)
    assert proc.returncode == 0, f"seed {SEED}: the run after the kills failed: {proc.stderr}"
    (archive,) = repo.glob("*.statekit")
    assert _verifies(archive, identity)
    # Leftover temporaries (if the engine does not clean them up) must never pass as archives.
    remaining = {p for p in leftovers if p.exists()}
    accepted = []
    for path in sorted(remaining)[:10]:
        proc = run_cli("verify", str(path), "-i", identity)
        assert proc.returncode == 0 or proc.stderr.startswith("Error: "), proc.stderr
        if proc.returncode not in (3, 9):
            accepted.append(path.name)
    print(f"seed {SEED}: {killed} killed, {finished} finished; {len(leftovers)} temp files left by killed runs, "
          f"{len(remaining)} still there after the next successful run")  # fmt: skip
    assert accepted == [], f"seed {SEED}: statekit verify accepted leftover temporary files {accepted}"


# -- restore: files ---------------------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kill_during_files_restore(tmp_path: Path, age_keys: tuple[str, str]) -> None:
    identity, recipient = age_keys
    rng = random.Random(SEED + 1)
    new_root = tmp_path / "new"
    names = [f"inst-{i % 8}/session-{i}.json" for i in range(64)]
    new: dict[str, bytes] = {}
    old: dict[str, bytes] = {}
    for i, rel in enumerate(names):
        new[rel] = rng.randbytes(384 * 1024)
        if i % 4:  # a quarter of the files exist only in the archive (created by the restore)
            old[rel] = rng.randbytes(300 * 1024)
        (new_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (new_root / rel).write_bytes(new[rel])
    archive = tmp_path / "files.statekit"
    assert run_cli("snapshot", "--files-root", str(new_root), "--to", str(archive), "-r", recipient).returncode == 0
    target = tmp_path / "target"

    def reset() -> None:
        import shutil

        shutil.rmtree(target, ignore_errors=True)
        for rel, data in old.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(data)

    args = ["restore", str(archive), "--tier", "files", "--target", str(target), "-i", identity, "--yes",
            "--undo-dir", str(tmp_path)]  # fmt: skip
    reset()
    full = timed(args)
    old_hash = {rel: hashlib.sha256(d).hexdigest() for rel, d in old.items()}
    new_hash = {rel: hashlib.sha256(d).hexdigest() for rel, d in new.items()}
    for trial in range(8):
        reset()
        delay = rng.uniform(0.1, full)
        kill_after(args, delay)
        for rel in names:
            path = target / rel
            allowed = {new_hash[rel], old_hash.get(rel)} if rel in old else {new_hash[rel]}
            if not path.exists():
                assert rel not in old, f"seed {SEED} trial {trial}: {rel} vanished"
                continue
            assert _digest(path) in allowed, f"seed {SEED} trial {trial} (killed at {delay:.2f}s): {rel} is partial"
        stray = [p.relative_to(target) for p in target.rglob("*") if p.is_file()]
        stray = [p for p in stray if p.as_posix() not in new]
        # Temporaries of a killed restore live under dot-prefixed names (a temp file, or a staging folder).
        hidden = [p for p in stray if any(part.startswith(".") for part in p.parts)]
        assert hidden == stray, f"seed {SEED}: stray files not hidden: {sorted(set(stray) - set(hidden))[:5]}"
    # A complete restore afterwards gives exactly the archived files.
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    for rel in names:
        assert _digest(target / rel) == new_hash[rel]


# -- restore: database ------------------------------------------------------------------------------------------


def _pg(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def _fill_pg(url: str, rows: int, salt: str) -> None:
    with _pg(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text)")
        conn.execute("TRUNCATE accounts")
        conn.execute(
            "INSERT INTO accounts SELECT g, g %% 1000, md5(%s || g::text) || repeat('x', 100) "
            "FROM generate_series(1, %s) g",
            (salt, rows),
        )


def _pg_fingerprint(url: str) -> tuple[object, ...]:
    with _pg(url) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(balance), 0), "
            "md5(coalesce(string_agg(id::text || ':' || balance || ':' || note, ',' ORDER BY id), '')) FROM accounts"
        ).fetchone()
    return tuple(row or ())


def test_kill_during_db_restore(tmp_path: Path, age_keys: tuple[str, str], pg_url: str, pg_url2: str) -> None:
    identity, recipient = age_keys
    _fill_pg(pg_url, 100_000, "new")
    archive = tmp_path / "db.statekit"
    proc = run_cli("snapshot", "--db-url", pg_url, "--to", str(archive), "-r", recipient)
    assert proc.returncode == 0, proc.stderr
    new_fp = _pg_fingerprint(pg_url)
    _fill_pg(pg_url2, 90_000, "old")
    old_fp = _pg_fingerprint(pg_url2)
    # Time a complete restore into the source database (same size of work), not into the target.
    full = timed(["restore", str(archive), "--tier", "db", "--target-url", pg_url, "-i", identity, "--yes",
                  "--no-undo"])  # fmt: skip
    args = ["restore", str(archive), "--tier", "db", "--target-url", pg_url2, "-i", identity, "--yes",
            "--undo-dir", str(tmp_path)]  # fmt: skip
    rng = random.Random(SEED + 2)
    outcomes = []
    for trial in range(6):
        delay = rng.uniform(0.1, full * 0.95)
        finished = kill_after(args, delay) is not None
        fp = _pg_fingerprint(pg_url2)
        assert fp in (old_fp, new_fp), f"seed {SEED} trial {trial} (killed at {delay:.2f}s): target half-restored"
        if fp == new_fp:
            _fill_pg(pg_url2, 90_000, "old")  # put the old state back for the next trial
        outcomes.append("finished" if finished else ("new" if fp == new_fp else "old"))
    # A killed restore's open transaction must not hold locks that block the next one.
    proc = run_cli(*args)
    assert proc.returncode == 0, f"seed {SEED}: restore after kills failed: {proc.stderr}"
    assert _pg_fingerprint(pg_url2) == new_fp
    print(f"seed {SEED}: db restore outcomes {outcomes}")


# -- restore: Redis ---------------------------------------------------------------------------------------------


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def _redis_state(url: str) -> dict[bytes, tuple[bytes, object]]:
    """Every key with its type and value (strings and hashes, what these tests write), read in pipelines."""
    client = _redis(url)
    keys = list(client.scan_iter(count=1000))
    state: dict[bytes, tuple[bytes, object]] = {}
    for start in range(0, len(keys), 2000):
        batch = keys[start : start + 2000]
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.type(key)
        kinds = pipe.execute()
        for key, kind in zip(batch, kinds):
            pipe.get(key) if kind == b"string" else pipe.hgetall(key)
        for key, kind, value in zip(batch, kinds, pipe.execute()):
            state[key] = (kind, value)
    return state


def _fill_redis(url: str, prefix: str, start: int, count: int, tag: str) -> None:
    client = _redis(url)
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + count):
        if i % 3:
            pipe.set(f"{prefix}:{i}", f"{tag}-{i}-" + "v" * 64)
        else:
            pipe.hset(f"{prefix}:{i}", mapping={"creds": f"{tag}-{i}", "n": str(i)})
        if i % 1000 == 0:
            pipe.execute()
    pipe.execute()


@pytest.fixture
def two_redis() -> Iterator[tuple[str, str]]:
    """Two redis-server processes of our own (source, target): a snapshot of a shared server would also take
    other tests' databases (the tier archives every non-empty db whatever the URL's db number)."""
    servers = [RedisProcess().start(), RedisProcess().start()]
    try:
        yield servers[0].url, servers[1].url
    finally:
        for server in servers:
            server.stop()


def test_kill_during_redis_restore(tmp_path: Path, age_keys: tuple[str, str], two_redis: tuple[str, str]) -> None:
    identity, recipient = age_keys
    redis_url, redis_url2 = two_redis
    # Source: keys 0..29999 ("new"); target: keys 15000..44999 ("old"): half replaced, half created.
    _fill_redis(redis_url, "k", 0, 30_000, "new")
    archive = tmp_path / "redis.statekit"
    proc = run_cli("snapshot", "--redis-url", redis_url, "--to", str(archive), "-r", recipient)
    assert proc.returncode == 0, proc.stderr
    rng = random.Random(SEED + 3)
    target = _redis(redis_url2)
    report = []
    for trial in range(4):
        target.flushdb()
        _fill_redis(redis_url2, "k", 15_000, 30_000, "old")
        before = _redis_state(redis_url2)
        undo_dir = tmp_path / f"undo-{trial}"
        undo_dir.mkdir()
        args = ["restore", str(archive), "--tier", "redis", "--target-url", redis_url2, "-i", identity, "--yes",
                "--undo-dir", str(undo_dir)]  # fmt: skip
        if trial == 0:
            kill_after(args, rng.uniform(0.2, 0.6))  # early: while verifying, planning or saving the undo archive
        else:
            # The writing phase lasts a fraction of a second: kill soon after the first key appears.
            kill_when(args, lambda: int(target.dbsize()) > 30_000, rng.uniform(0.0, 0.04))
        undos = sorted(undo_dir.glob("*.statekit"))
        after_kill = _redis_state(redis_url2)
        touched = sum(1 for k, v in after_kill.items() if before.get(k) != v)
        if not undos:
            # Killed before the undo archive was sealed: nothing may have changed yet.
            assert touched == 0, f"seed {SEED} trial {trial}: target changed without a sealed undo archive"
            report.append("killed before the undo archive was sealed: target unchanged")
            continue
        (undo,) = undos
        assert _verifies(undo, identity)
        proc = run_cli("restore", str(undo), "--tier", "redis", "--target-url", redis_url2, "-i", identity, "--yes",
                       "--no-undo")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        restored = _redis_state(redis_url2)
        created = sorted(set(restored) - set(before))
        changed = sorted(k for k in before if restored.get(k) != before[k])
        report.append(f"{touched} keys written before the kill; after restoring the undo archive "
                      f"{len(created)} extra, {len(changed)} differing")  # fmt: skip
        assert not changed, f"seed {SEED} trial {trial}: undo did not restore {len(changed)} keys, e.g. {changed[:3]}"
        assert not created, (
            f"seed {SEED} trial {trial}: after restoring the undo archive, {len(created)} keys created by the "
            f"killed restore are still there, e.g. {created[:3]} ({report[-1]})"
        )
    print(f"seed {SEED}: redis restore kills: {report}")


def test_kill_during_redis_flush_restore_then_undo_with_flush(
    tmp_path: Path, age_keys: tuple[str, str], two_redis: tuple[str, str]
) -> None:
    """With --flush the undo archive holds the whole databases; restoring it with --flush gives the exact old state
    (the documented way back in docs/SECURITY.md)."""
    identity, recipient = age_keys
    redis_url, redis_url2 = two_redis
    _fill_redis(redis_url, "k", 0, 30_000, "new")
    archive = tmp_path / "redis.statekit"
    assert run_cli("snapshot", "--redis-url", redis_url, "--to", str(archive), "-r", recipient).returncode == 0
    _fill_redis(redis_url2, "k", 15_000, 30_000, "old")
    target = _redis(redis_url2)
    before = _redis_state(redis_url2)
    undo_dir = tmp_path / "undo"
    undo_dir.mkdir()
    args = ["restore", str(archive), "--tier", "redis", "--target-url", redis_url2, "-i", identity, "--yes",
            "--flush", "--undo-dir", str(undo_dir)]  # fmt: skip
    # The flush empties the database first: kill soon after the key count first drops.
    kill_when(args, lambda: int(target.dbsize()) < 30_000, random.Random(SEED + 5).uniform(0.0, 0.04))
    (undo,) = sorted(undo_dir.glob("*.statekit"))
    proc = run_cli("restore", str(undo), "--tier", "redis", "--target-url", redis_url2, "-i", identity, "--yes",
                   "--flush", "--no-undo")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _redis_state(redis_url2) == before


def test_leftover_temp_is_never_an_archive(tmp_path: Path, age_keys: tuple[str, str], big_root: Path) -> None:
    """A temp file frozen at any size (what a kill leaves) fails `statekit verify`: a truncated one by its content,
    a complete one (killed between the final fsync and the rename) by its temporary name."""
    identity, recipient = age_keys
    archive = tmp_path / "whole.statekit"
    assert run_cli("snapshot", "--files-root", str(big_root), "--to", str(archive), "-r", recipient).returncode == 0
    data = archive.read_bytes()
    rng = random.Random(SEED + 4)
    cut_points: list[Callable[[int], int]] = [lambda n: 0, lambda n: 200, lambda n: n - 1, lambda n: n - 17]
    failures = []
    # The whole file too: a run killed between its final fsync and the rename leaves a complete temp file.
    cuts = [f(len(data)) for f in cut_points] + [rng.randrange(1, len(data)) for _ in range(4)] + [len(data)]
    for cut in cuts:
        part = tmp_path / f".whole.statekit.{cut:012x}.tmp"
        part.write_bytes(data[:cut])
        proc = run_cli("verify", str(part), "-i", identity)
        if proc.returncode != 3:
            failures.append(f"{cut} of {len(data)} bytes: exit {proc.returncode}")
        if cut < len(data):
            renamed = part.rename(tmp_path / f"renamed-{cut}.statekit")
            assert not _verifies(renamed, identity)
    assert failures == [], f"statekit verify accepted temporary files cut at {failures}"
