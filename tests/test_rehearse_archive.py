"""`statekit verify --rehearse`: restore into throwaway servers and compare with the manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STATEKIT = str(Path(sys.executable).with_name("statekit"))


def sk(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})  # fmt: skip


def _files(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "inst" / "a").mkdir(parents=True)
    (root / "inst" / "a" / "creds.json").write_text('{"noiseKey": "x"}')
    (root / "top.bin").write_bytes(bytes(range(256)) * 10)
    return root


def test_rehearse_files_archive_with_metrics(tmp_path: Path, age_keys: tuple[str, str]) -> None:
    identity, rec = age_keys
    archive = tmp_path / "a.statekit"
    assert sk("snapshot", "--files-root", str(_files(tmp_path)), "--to", str(archive), "-r", rec).returncode == 0
    prom = tmp_path / "rehearse.prom"
    out = sk("verify", "--rehearse", str(archive), "-i", identity, "--metrics-file", str(prom), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["rehearsal"]["ok"] is True
    assert doc["rehearsal"]["tiers"] == {"files": {"passed": 3, "failed": 0}}
    from prometheus_client.parser import text_string_to_metric_families

    samples = {s.name: s.value for f in text_string_to_metric_families(prom.read_text()) for s in f.samples}
    assert samples["statekit_rehearse_success"] == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="rehearsal servers run as their own account: needs root")
def test_rehearse_db_redis_and_files(tmp_path: Path, age_keys: tuple[str, str], pg_url: str, redis_url: str) -> None:
    import redis
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE TABLE "Instance" (id text PRIMARY KEY, name text, n int)'))
        conn.execute(sa.text('CREATE TABLE "Session" (id serial PRIMARY KEY, "sessionId" text, creds jsonb)'))
        conn.execute(
            sa.text("INSERT INTO \"Instance\" SELECT 'i' || g, 'name ' || g, g FROM generate_series(1, 500) g")
        )
        conn.execute(
            sa.text(
                "INSERT INTO \"Session\" (\"sessionId\", creds) SELECT 's' || g, jsonb_build_object('k', g) "
                "FROM generate_series(1, 300) g"
            )
        )
    engine.dispose()
    r = redis.Redis.from_url(redis_url)
    for i in range(200):
        r.hset(f"evolution:instance:{i}", mapping={"creds": f'{{"i": {i}}}', "n": str(i)})
    r.set("plain", b"\x00\xffbytes")
    r.set("expiring", "v", px=3_600_000)
    r.sadd("set", *[f"m{i}" for i in range(50)])
    r.zadd("zset", {f"z{i}": i / 3 for i in range(40)})
    r.rpush("list", *[f"l{i}" for i in range(30)])
    # a stream with a group and a pending entry: the rehearsal server (Redis 6.2) gets it converted
    for i in range(150):
        r.xadd("stream", {"f": f"v{i}"}, id=f"{i + 1}-0")
    r.xgroup_create("stream", "g", id="0")
    r.xreadgroup("g", "c", {"stream": ">"}, count=2)
    identity, rec = age_keys
    archive = tmp_path / "full.statekit"
    redis_db = int(redis_url.rsplit("/", 1)[1])
    snap = sk("snapshot", "--db-url", pg_url, "--redis-url", redis_url, "--files-root", str(_files(tmp_path)),
              "--to", str(archive), "-r", rec, env={"STATEKIT_REDIS_DBS": str(redis_db)})  # fmt: skip
    if snap.returncode != 0:
        pytest.fail(f"snapshot of db+redis+files failed: {snap.stderr}")
    out = sk("verify", "--rehearse", str(archive), "-i", identity, "--json")
    assert out.returncode == 0, out.stderr + out.stdout
    reh = json.loads(out.stdout)["rehearsal"]
    assert reh["ok"] is True, reh["failures"]
    checks = {(c["tier"], c["item"], c["what"]): c for c in reh["checks"]}
    assert checks[("db", "public.Instance", "rows")]["actual"] == 500
    assert checks[("db", "public.Session", "rows")]["actual"] == 300
    assert ("db", "public.Instance", "content") in checks or reh["notes"]
    # >=: the test Redis is shared by concurrent runs that may reuse this db number
    assert checks[("redis", f"db{redis_db}", "keys")]["actual"] >= 206
    assert checks[("redis", f"db{redis_db}", "content")]["ok"]
