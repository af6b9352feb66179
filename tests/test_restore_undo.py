"""Undo archives go back where they came from.

For each tier a restore goes to a target that is NOT the configured one (Redis database 5 while the
configuration names database 0, a --target directory, a second database); the command it prints puts that
target back, run as printed (it names that target with --target/--target-url: an undo archive's recorded target
is only its claim, so without the flag it would go to the configured one), and the configured target is never
touched. The same after
`kill -9` of the restore in its writing phase. Also: directories a files restore creates are 0700 under umask
000, and a full file system while the undo archive is written is exit 9 with the target unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.servers import RedisProcess

STATEKIT = os.environ.get("STATEKIT_TEST_BIN") or str(Path(sys.executable).parent / "statekit")


def _env(**config: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_") or k.startswith("STATEKIT_TEST")}
    env.update(config)
    return env


def sk(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([STATEKIT, *args], capture_output=True, text=True, env=env or _env(), cwd=cwd, timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def printed_command(stderr: str) -> list[str]:
    """The undo command a restore printed, as argv (the program name replaced by the installed one)."""
    lines = [ln for ln in stderr.splitlines() if "to put the target back:" in ln]
    assert lines, f"no undo command printed: {stderr}"
    words = shlex.split(lines[0].split("to put the target back:", 1)[1])
    assert words[:2] == ["statekit", "restore"], words
    return [STATEKIT, *words[1:]]


def run_printed(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def restore_then_kill(args: list[str], env: dict[str, str], started: Callable[[], bool]) -> tuple[str, int | None]:
    """Run a restore, SIGKILL it once `started()` holds after the undo command was printed; (stderr so far,
    exit code when it finished before the kill)."""
    proc = subprocess.Popen([STATEKIT, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "to put the target back:" in line:
            break
    deadline = time.monotonic() + 60
    while proc.poll() is None and not started() and time.monotonic() < deadline:
        time.sleep(0.0005)
    code = proc.poll()
    if code is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    else:
        seen.append(proc.stderr.read())
    return "".join(seen), code


# -- Redis -----------------------------------------------------------------------------------------------------


@pytest.fixture
def two_redis() -> Iterator[tuple[str, str]]:
    """Source and target servers of our own (a snapshot takes every non-empty database of its server)."""
    servers = [RedisProcess().start(), RedisProcess().start()]
    try:
        yield servers[0].url.rsplit("/", 1)[0], servers[1].url.rsplit("/", 1)[0]
    finally:
        for server in servers:
            server.stop()


def _redis_state(url: str) -> dict[bytes, Any]:
    client = redis.Redis.from_url(url)
    return {k: (client.dump(k), client.pttl(k) > 0) for k in client.scan_iter(count=1000)}


def _fill(url: str, prefix: str, start: int, count: int, tag: str) -> None:
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + count):
        if i % 3:
            pipe.set(f"{prefix}:{i}", f"{tag}-{i}")
        else:
            pipe.hset(f"{prefix}:{i}", mapping={"creds": f"{tag}-{i}", "n": str(i)})
    pipe.execute()


@pytest.mark.parametrize("kill", [False, True], ids=["complete", "kill-9"])
def test_redis_undo_goes_back_to_database_5(
    kill: bool, tmp_path: Path, age_keys: tuple[str, str], two_redis: tuple[str, str]
) -> None:
    identity, recipient = age_keys
    src, dst = two_redis
    n = 20_000 if kill else 300
    _fill(f"{src}/0", "k", 0, n, "new")
    archive = tmp_path / "r.statekit"
    assert sk("snapshot", "--redis-url", f"{src}/0", "--to", str(archive), "-r", recipient).returncode == 0
    _fill(f"{dst}/0", "live", 0, 50, "live")  # the configured database: never touched
    _fill(f"{dst}/5", "k", n // 2, n, "old")  # the restore's target: half replaced, half created
    live, before = _redis_state(f"{dst}/0"), _redis_state(f"{dst}/5")
    env = _env(STATEKIT_REDIS_URL=f"{dst}/0")
    args = ["restore", str(archive), "--tier", "redis", "--target-url", f"{dst}/5", "-i", identity, "--yes",
            "--undo-dir", str(tmp_path)]  # fmt: skip
    if kill:
        target = redis.Redis.from_url(f"{dst}/5")
        err, code = restore_then_kill(args, env, lambda: int(target.dbsize()) > n + n // 4)
        assert code is None, f"the restore finished before the kill: {err}"
    else:
        proc = sk(*args, env=env)
        assert proc.returncode == 0, proc.stderr
        err = proc.stderr
        assert _redis_state(f"{dst}/5") != before
    command = printed_command(err)
    assert command[command.index("--target-url") + 1] == f"{dst}/5" and "--flush" not in command
    proc = run_printed(command, env)
    assert proc.returncode == 0, proc.stderr
    assert (
        "target: redis://127.0.0.1" in proc.stdout and "/5 (the target the undo archive was saved from)" in proc.stdout
    )
    assert _redis_state(f"{dst}/5") == before
    assert _redis_state(f"{dst}/0") == live


def test_redis_undo_of_a_flush_restore_flushes_by_itself(
    tmp_path: Path, age_keys: tuple[str, str], two_redis: tuple[str, str]
) -> None:
    identity, recipient = age_keys
    src, dst = two_redis
    _fill(f"{src}/0", "k", 0, 200, "new")
    archive = tmp_path / "r.statekit"
    assert sk("snapshot", "--redis-url", f"{src}/0", "--to", str(archive), "-r", recipient).returncode == 0
    _fill(f"{dst}/3", "other", 0, 100, "old")
    before = _redis_state(f"{dst}/3")
    proc = sk("restore", str(archive), "--tier", "redis", "--target-url", f"{dst}/3", "--flush", "-i", identity,
              "--yes", "--undo-dir", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not any(k.startswith(b"other:") for k in _redis_state(f"{dst}/3"))
    proc = run_printed(printed_command(proc.stderr), _env())
    assert proc.returncode == 0, proc.stderr
    assert _redis_state(f"{dst}/3") == before
    # into an empty database the undo archive holds nothing of it, yet empties it again
    proc = sk("restore", str(archive), "--tier", "redis", "--target-url", f"{dst}/4", "--flush", "-i", identity,
              "--yes", "--undo-dir", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert redis.Redis.from_url(f"{dst}/4").dbsize() == 200
    assert run_printed(printed_command(proc.stderr), _env()).returncode == 0
    assert redis.Redis.from_url(f"{dst}/4").dbsize() == 0


def test_undo_to_another_target_needs_the_flag_and_says_so(
    tmp_path: Path, age_keys: tuple[str, str], two_redis: tuple[str, str]
) -> None:
    identity, recipient = age_keys
    src, dst = two_redis
    _fill(f"{src}/0", "k", 0, 30, "new")
    archive = tmp_path / "r.statekit"
    assert sk("snapshot", "--redis-url", f"{src}/0", "--to", str(archive), "-r", recipient).returncode == 0
    _fill(f"{dst}/5", "k", 0, 10, "old")
    proc = sk("restore", str(archive), "--tier", "redis", "--target-url", f"{dst}/5", "-i", identity, "--yes",
              "--undo-dir", str(tmp_path))  # fmt: skip
    undo = printed_command(proc.stderr)[2]
    plan = sk("restore", undo, "--tier", "redis", "--target-url", f"{dst}/7", "-i", identity, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert f"target: {dst}/7 (NOT the target the undo archive was saved from ({dst}/5)" in plan.stdout
    assert redis.Redis.from_url(f"{dst}/7").dbsize() == 0


# -- files -----------------------------------------------------------------------------------------------------


def _visible(root: Path) -> Iterator[tuple[str, Path]]:
    """The files under root as (relative path, path), without the restore's hidden staging directory."""
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            yield str(rel), p


def _sizes(root: Path) -> dict[str, int]:
    return {rel: p.stat().st_size for rel, p in _visible(root)}


def _files(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha256(p.read_bytes()).hexdigest() for rel, p in _visible(root)}


@pytest.mark.parametrize("kill", [False, True], ids=["complete", "kill-9"])
def test_files_undo_goes_back_to_the_target_directory(kill: bool, tmp_path: Path, age_keys: tuple[str, str]) -> None:
    identity, recipient = age_keys
    src, live, other = tmp_path / "src", tmp_path / "live", tmp_path / "other"
    # Killed: enough files that promoting them (a rename and a directory fsync each) outlasts many looks at the
    # target, which only compare names and sizes, so the kill lands halfway whatever the machine's speed.
    count, size = (400, 4096) if kill else (48, 64)
    for i in range(count):
        (src / f"inst-{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"inst-{i % 4}" / f"key-{i}.json").write_bytes(os.urandom(size))
        if i % 2:
            (other / f"inst-{i % 4}").mkdir(parents=True, exist_ok=True)
            (other / f"inst-{i % 4}" / f"key-{i}.json").write_bytes(b"old")
    live.mkdir()
    (live / "live.json").write_text("live")
    archive = tmp_path / "f.statekit"
    assert sk("snapshot", "--files-root", str(src), "--to", str(archive), "-r", recipient).returncode == 0
    before, live_before = _files(other), _files(live)
    env = _env(STATEKIT_FILES_ROOT=str(live))
    args = ["restore", str(archive), "--tier", "files", "--target", str(other), "-i", identity, "--yes",
            "--undo-dir", str(tmp_path)]  # fmt: skip
    if kill:
        sizes = _sizes(other)
        err, code = restore_then_kill(args, env, lambda: _sizes(other) != sizes)
        assert code is None, f"the restore finished before the kill: {err}"
    else:
        proc = sk(*args, env=env)
        assert proc.returncode == 0, proc.stderr
        err = proc.stderr
    command = printed_command(err)
    assert command[command.index("--target") + 1] == str(other)
    proc = run_printed(command, env)
    assert proc.returncode == 0, proc.stderr
    assert _files(other) == before
    assert _files(live) == live_before


def test_directories_are_0700_under_umask_000(tmp_path: Path, age_keys: tuple[str, str]) -> None:
    identity, recipient = age_keys
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "k.json").write_text("{}")
    archive = tmp_path / "f.statekit"
    assert sk("snapshot", "--files-root", str(src), "--to", str(archive), "-r", recipient).returncode == 0
    proc = subprocess.run([STATEKIT, "restore", str(archive), "--tier", "files", "--target", "new/deep", "-i",
                           identity, "--yes", "--no-undo"], capture_output=True, text=True, env=_env(),
                          cwd=tmp_path, preexec_fn=lambda: os.umask(0))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for d in ("new", "new/deep", "new/deep/a", "new/deep/a/b"):
        assert (tmp_path / d).stat().st_mode & 0o7777 == 0o700, d


def test_full_file_system_while_writing_the_undo_archive_is_exit_9(tmp_path: Path, age_keys: tuple[str, str]) -> None:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    identity, recipient = age_keys
    src, target = tmp_path / "src", tmp_path / "target"
    src.mkdir()
    target.mkdir()
    for i in range(8):
        (src / f"k{i}.bin").write_bytes(os.urandom(64 * 1024))
        (target / f"k{i}.bin").write_bytes(os.urandom(512 * 1024))  # what the undo archive must hold: 4 MiB
    archive = tmp_path / "f.statekit"
    assert sk("snapshot", "--files-root", str(src), "--to", str(archive), "-r", recipient).returncode == 0
    before = _files(target)
    small = Path(tempfile.mkdtemp(prefix="statekit-full-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode:
        small.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        proc = sk("restore", str(archive), "--tier", "files", "--target", str(target), "-i", identity, "--yes",
                  "--undo-dir", str(small))  # fmt: skip
        assert proc.returncode == 9, proc.stderr
        assert "undo archive" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert list(small.iterdir()) == []  # no temporary file left behind
        assert _files(target) == before
    finally:
        subprocess.run(["umount", str(small)], check=True)
        small.rmdir()


# -- db ----------------------------------------------------------------------------------------------------------


def _pg(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def _fill_pg(url: str, rows: int, salt: str) -> None:
    with _pg(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, note text NOT NULL)")
        conn.execute("TRUNCATE accounts")
        conn.execute("INSERT INTO accounts SELECT g, md5(%s || g::text) || repeat('x', 200) "
                     "FROM generate_series(1, %s) g", (salt, rows))  # fmt: skip


def _pg_state(url: str) -> tuple[Any, ...]:
    with _pg(url) as conn:
        row = conn.execute("SELECT count(*), md5(coalesce(string_agg(id || ':' || note, ',' ORDER BY id), '')) "
                           "FROM accounts").fetchone()  # fmt: skip
    return tuple(row or ())


@pytest.mark.parametrize("kill", [False, True], ids=["complete", "kill-9"])
def test_db_undo_goes_back_to_the_second_database(
    kill: bool, tmp_path: Path, age_keys: tuple[str, str], pg_url: str, pg_url2: str
) -> None:
    identity, recipient = age_keys
    rows = 200_000 if kill else 500
    _fill_pg(pg_url, rows, "new")
    archive = tmp_path / "d.statekit"
    assert sk("snapshot", "--db-url", pg_url, "--to", str(archive), "-r", recipient).returncode == 0
    _fill_pg(pg_url, 10, "live")  # the configured database now: never touched by the undo
    _fill_pg(pg_url2, rows // 2, "old")
    live, before = _pg_state(pg_url), _pg_state(pg_url2)
    env = _env(STATEKIT_DB_URL=pg_url)
    args = ["restore", str(archive), "--tier", "db", "--target-url", pg_url2, "-i", identity, "--yes",
            "--undo-dir", str(tmp_path)]  # fmt: skip
    if kill:
        err, code = restore_then_kill(args, env, lambda: True)
        assert code is None, f"the restore finished before the kill: {err}"
    else:
        proc = sk(*args, env=env)
        assert proc.returncode == 0, proc.stderr
        err = proc.stderr
        assert _pg_state(pg_url2) != before
    command = printed_command(err)
    assert command[command.index("--target-url") + 1] == pg_url2
    proc = run_printed(command, env)
    assert proc.returncode == 0, proc.stderr
    assert _pg_state(pg_url2) == before
    assert _pg_state(pg_url) == live


# -- interruptions and failures after the first change -----------------------------------------------------------


def test_sigterm_after_the_first_change_is_130_and_names_the_way_back(
    tmp_path: Path, age_keys: tuple[str, str], two_redis: tuple[str, str]
) -> None:
    identity, recipient = age_keys
    src, dst = two_redis
    _fill(f"{src}/0", "k", 0, 20_000, "new")
    archive = tmp_path / "r.statekit"
    assert sk("snapshot", "--redis-url", f"{src}/0", "--to", str(archive), "-r", recipient).returncode == 0
    _fill(f"{dst}/2", "k", 10_000, 20_000, "old")
    before = _redis_state(f"{dst}/2")
    target = redis.Redis.from_url(f"{dst}/2")
    proc = subprocess.Popen([STATEKIT, "restore", str(archive), "--tier", "redis", "--target-url", f"{dst}/2", "-i",
                             identity, "--yes", "--undo-dir", str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env(), text=True)  # fmt: skip
    assert proc.stderr is not None
    first = ""
    for line in proc.stderr:
        first += line
        if "to put the target back:" in line:
            break
    while proc.poll() is None and int(target.dbsize()) <= 20_000:
        time.sleep(0.0005)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait() == 130, rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith("Error: interrupted; the target may be partly restored; the undo archive "), last
    command = printed_command(first)
    assert shlex.join(["statekit", *command[1:]]) in last
    assert run_printed(command, _env()).returncode == 0
    assert _redis_state(f"{dst}/2") == before


def test_redis_restore_with_keys_it_could_not_write_exits_6(
    tmp_path: Path, age_keys: tuple[str, str], two_redis: tuple[str, str]
) -> None:
    identity, recipient = age_keys
    src, dst = two_redis
    client = redis.Redis.from_url(f"{src}/0")
    pipe = client.pipeline(transaction=False)
    for i in range(2000):
        pipe.set(f"big:{i}", "v" * 2000, ex=3600)  # with an expiry: one SET per key, each reply counted
    pipe.execute()
    archive = tmp_path / "r.statekit"
    assert sk("snapshot", "--redis-url", f"{src}/0", "--to", str(archive), "-r", recipient).returncode == 0
    full = redis.Redis.from_url(f"{dst}/0")
    used = int(full.info("memory")["used_memory"])
    full.config_set("maxmemory-policy", "noeviction")
    full.config_set("maxmemory", str(used + 1_000_000))  # room for about a quarter of the keys
    proc = sk("restore", str(archive), "--tier", "redis", "--target-url", f"{dst}/0", "-i", identity, "--yes",
              "--undo-dir", str(tmp_path))  # fmt: skip
    full.config_set("maxmemory", "0")
    assert proc.returncode == 6, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "redis restore incomplete:" in last and "could not be written" in last, last
    assert "puts the target back: statekit restore" in last
    assert "failed" in proc.stdout and "OOM" in proc.stdout


def test_the_prompt_names_the_target(tmp_path: Path, age_keys: tuple[str, str]) -> None:
    import pty

    identity, recipient = age_keys
    src, target = tmp_path / "src", tmp_path / "target"
    src.mkdir()
    (src / "k.json").write_text("{}")
    archive = tmp_path / "f.statekit"
    assert sk("snapshot", "--files-root", str(src), "--to", str(archive), "-r", recipient).returncode == 0
    main, child = pty.openpty()
    proc = subprocess.Popen([STATEKIT, "restore", str(archive), "--tier", "files", "--target", str(target), "-i",
                             identity], stdin=child, stdout=child, stderr=child, env=_env())  # fmt: skip
    os.close(child)
    seen = b""
    while b"[y/N]" not in seen:
        chunk = os.read(main, 4096)
        assert chunk, seen
        seen += chunk
    os.write(main, b"n\n")
    assert proc.wait(timeout=60) == 8
    os.close(main)
    text = seen.decode()
    assert f"Restore the files tier from {archive} into {target}?" in text, text
    assert f"target: {target}" in text
    assert not target.exists()
