"""Under load: a snapshot taken while writers hammer PostgreSQL and Redis (bounded in count and time, loopback
only) completes and is consistent: the archived account total equals the invariant the writers keep, and every
Redis key that existed for the whole scan is in the archive. An audit under load reports the write it caught in
flight as transient, not drift (the writer is held at a known point, never raced against a clock)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tests.servers import RedisProcess

STATEKIT = str(Path(sys.executable).parent / "statekit")
ACCOUNTS = 200
START_BALANCE = 1_000
INVARIANT = ACCOUNTS * START_BALANCE
STABLE_KEYS = 5_000
MAX_SECONDS = 30.0  # no writer runs longer than this, whatever happens to the test


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_") or k.startswith("STATEKIT_TEST")}
    proc = subprocess.run([STATEKIT, *args], capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def _pg(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


class Load:
    """Writer threads that run until `stop()`, `max_ops` operations each, or MAX_SECONDS, whichever comes first.
    `hold()` lets each writer finish the step it is in and keeps it from starting another until `resume()`."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._gates: list[threading.Lock] = []
        self.ops: dict[str, int] = {}
        self.errors: list[BaseException] = []

    def start(self, name: str, step: Callable[[random.Random], None], max_ops: int, pace: float = 0.0) -> None:
        """Run `step` in a thread of its own, with a seeded random generator, `pace` seconds between steps."""
        self.ops[name] = 0
        gate = threading.Lock()
        self._gates.append(gate)

        def loop() -> None:
            rng = random.Random(name)
            deadline = time.monotonic() + MAX_SECONDS
            try:
                while not self._stop.is_set() and self.ops[name] < max_ops and time.monotonic() < deadline:
                    with gate:
                        step(rng)
                        self.ops[name] += 1
                    time.sleep(pace)  # outside the gate, so hold() gets it between two steps
            except BaseException as exc:  # reported by stop(): a failing writer fails the test
                self.errors.append(exc)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def wait_warm(self, minimum: int = 20) -> None:
        """Start measuring only once every writer really writes."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.errors and min(self.ops.values()) < minimum:
            time.sleep(0.01)

    def hold(self) -> None:
        """Wait until no writer is inside a step, and keep them out of the next one."""
        for gate in self._gates:
            gate.acquire()

    def resume(self) -> None:
        """Undo hold()."""
        for gate in self._gates:
            gate.release()

    def stop(self) -> dict[str, int]:
        """Stop every writer; their operation counts."""
        self._stop.set()
        for t in self._threads:
            t.join(MAX_SECONDS)
        assert not self.errors, f"a writer failed: {self.errors[0]!r}"
        return dict(self.ops)


def _transfer(url: str) -> Callable[[random.Random], None]:
    conn = _pg(url)

    def step(rng: random.Random) -> None:
        a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
        amount = rng.randint(1, 50)
        with conn.transaction():
            conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, a))
            conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, b))

    return step


def _churn(url: str) -> Callable[[random.Random], None]:
    import redis

    client = redis.Redis.from_url(url)
    counter = iter(range(10**9))

    def step(rng: random.Random) -> None:
        pipe = client.pipeline(transaction=False)
        for _ in range(50):
            n = next(counter)
            pipe.set(f"churn:{n}", "x" * rng.randint(1, 200))
            if n >= 2000:
                pipe.delete(f"churn:{n - 2000}")
        pipe.execute()

    return step


def test_snapshot_under_load_is_consistent(tmp_path: Path, age_keys: tuple[str, str], pg_url: str, pg_url2: str,
                                           own_redis: RedisProcess) -> None:  # fmt: skip
    import redis

    identity, recipient = age_keys
    with _pg(pg_url) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)")
        conn.execute("INSERT INTO accounts SELECT g, %s FROM generate_series(1, %s) g", (START_BALANCE, ACCOUNTS))
        conn.execute("CREATE TABLE filler (id int PRIMARY KEY, pad text)")  # makes the snapshot last a while
        conn.execute("INSERT INTO filler SELECT g, repeat('p', 200) FROM generate_series(1, 100000) g")
    client = redis.Redis.from_url(own_redis.url)
    pipe = client.pipeline(transaction=False)
    for i in range(STABLE_KEYS):
        pipe.set(f"stable:{i}", f"v{i}")
    for i in range(30_000):  # enough keys that SCAN takes many pages while the table rehashes under churn
        pipe.set(f"bulk:{i}", "b")
    pipe.execute()

    load = Load()
    load.start("transfers-1", _transfer(pg_url), max_ops=20_000)
    load.start("transfers-2", _transfer(pg_url), max_ops=20_000)
    load.start("churn", _churn(own_redis.url), max_ops=5_000)
    load.wait_warm()
    try:
        archive = tmp_path / "load.statekit"
        proc = run_cli("snapshot", "--db-url", pg_url, "--redis-url", own_redis.url, "--to", str(archive),
                       "-r", recipient, "--json")  # fmt: skip
    finally:
        ops = load.stop()
    assert proc.returncode == 0, proc.stderr
    assert all(ops.get(name, 0) > 0 for name in ("transfers-1", "transfers-2", "churn")), ops
    with _pg(pg_url) as conn:
        assert conn.execute("SELECT sum(balance) FROM accounts").fetchone() == (INVARIANT,)

    # The database part: restore it and check the invariant the writers kept in every committed state.
    proc = run_cli("restore", str(archive), "--tier", "db", "--target-url", pg_url2, "-i", identity, "--yes",
                   "--no-undo", "--tables", "*accounts")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with _pg(pg_url2) as conn:
        row = conn.execute("SELECT count(*), sum(balance) FROM accounts").fetchone()
    assert row == (ACCOUNTS, INVARIANT), f"archived (accounts, total) {row} != ({ACCOUNTS}, {INVARIANT})"

    # The Redis part: every key that existed for the whole scan is in the archive.
    target = RedisProcess().start()
    try:
        proc = run_cli("restore", str(archive), "--tier", "redis", "--target-url", target.url, "-i", identity,
                       "--yes", "--no-undo")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        restored = redis.Redis.from_url(target.url)
        pipe = restored.pipeline(transaction=False)
        for i in range(STABLE_KEYS):
            pipe.get(f"stable:{i}")
        values = pipe.execute()
        missing = [i for i, v in enumerate(values) if v != f"v{i}".encode()]
        assert missing == [], f"{len(missing)} stable keys are missing from the archive, e.g. stable:{missing[0]}"
        assert restored.exists(*[f"bulk:{i}" for i in range(0, 30_000, 97)]) == len(range(0, 30_000, 97))
    finally:
        target.stop()


ENTITY_CONFIG = """\
[entity.creds]
authority = "db"
patterns = { id = "[^:/]+" }
db = { table = "Session", key = "sessionId", value = "creds", codec = "json-string" }
redis = { key = "ld:instance:{id}", field = "creds", codec = "json-string" }
"""


def test_audit_under_load_reports_transients_not_drift(tmp_path: Path, pg_url: str,
                                                       own_redis: RedisProcess) -> None:  # fmt: skip
    """An application writer updates database then cache, a moment apart, while the audit runs. One write is
    held in flight for the audit's first pass (database done, cache not yet); between the pass and the re-check
    the test finishes that write and holds the writer between two writes. The audit reports the held write,
    and anything else it caught mid-write, as transient, and no drift."""
    import redis

    from statekit.audit.engine import Locations, audit_live
    from statekit.audit.findings import AuditOptions
    from statekit.config import load_config
    from statekit.profiles import load_model

    ids = [f"inst{i}" for i in range(40)]
    client = redis.Redis.from_url(own_redis.url)
    with _pg(pg_url) as conn:
        conn.execute('CREATE TABLE "Session" ("sessionId" text PRIMARY KEY, creds text NOT NULL)')
        for i in ids:
            value = json.dumps({"n": 0, "id": i})
            conn.execute('INSERT INTO "Session" VALUES (%s, %s)', (i, json.dumps(value)))
            client.hset(f"ld:instance:{i}", "creds", json.dumps(value))
    writer_db = _pg(pg_url)
    writer_redis = redis.Redis.from_url(own_redis.url)
    counter = iter(range(1, 10**9))
    held, busy = ids[0], ids[1:]

    def write(i: str, value: str, *, cache: bool = True) -> None:
        writer_db.execute('UPDATE "Session" SET creds = %s WHERE "sessionId" = %s', (json.dumps(value), i))
        if cache:
            writer_redis.hset(f"ld:instance:{i}", "creds", json.dumps(value))

    def write_both(rng: random.Random) -> None:
        """The application's write: database first, then the Redis cache, a moment apart (not atomic)."""
        i = rng.choice(busy)
        value = json.dumps({"n": next(counter), "id": i})
        writer_db.execute('UPDATE "Session" SET creds = %s WHERE "sessionId" = %s', (json.dumps(value), i))
        time.sleep(0.002)
        writer_redis.hset(f"ld:instance:{i}", "creds", json.dumps(value))

    config = tmp_path / "statekit.toml"
    config.write_text(ENTITY_CONFIG)
    model = load_model(load_config(str(config)))
    in_flight = json.dumps({"n": -1, "id": held})
    write(held, in_flight, cache=False)  # caught between its two writes
    load = Load()
    load.start("app", write_both, max_ops=3_000, pace=0.01)
    pauses: list[int] = []

    def between_pass_and_recheck(delay: float) -> None:
        if not pauses:
            load.hold()
            writer_redis.hset(f"ld:instance:{held}", "creds", json.dumps(in_flight))
        pauses.append(load.ops["app"])

    try:
        load.wait_warm()
        result = audit_live(model, Locations({"db": pg_url, "redis": own_redis.url}),
                            AuditOptions(recheck_rounds=3, pause=between_pass_and_recheck))  # fmt: skip
    finally:
        if pauses:
            load.resume()
        ops = load.stop()
    assert len(pauses) == 1  # one re-check settles every suspect
    assert not result.drift, [(f.cls, f.id, f.detail) for f in result.findings]
    assert {f.cls for f in result.findings} == {"transient"}
    assert held in {f.id for f in result.findings}
    assert ops["app"] > 0
    # And at rest, with the writer stopped, the tiers agree.
    proc = run_cli("audit", "--config", str(config), "--db-url", pg_url, "--redis-url", own_redis.url)
    assert proc.returncode == 0, proc.stdout
