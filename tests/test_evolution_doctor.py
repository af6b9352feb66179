"""`statekit doctor`: an Evolution .env plus the live servers, each warning with its reason and fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fixtures.evolution.generate import generate
from fixtures.evolution.harness import invoke

pytestmark = pytest.mark.private_redis


@pytest.fixture(autouse=True)
def _appendonly_back_off(redis_url: str) -> Iterator[None]:
    """Some tests turn AOF on for the doctor to see; the module's server is shared by its tests."""
    yield
    redis.Redis.from_url(redis_url).config_set("appendonly", "no")


def _env(path: Path, redis_url: str, pg_url: str, **over: str) -> str:
    values = {
        "DATABASE_PROVIDER": "postgresql",
        "DATABASE_CONNECTION_URI": pg_url.replace("+psycopg", "") + "?schema=evolution_api",
        "DATABASE_CONNECTION_CLIENT_NAME": "evolution",
        "DATABASE_SAVE_DATA_INSTANCE": "true",
        "CACHE_REDIS_ENABLED": "true",
        "CACHE_REDIS_URI": redis_url,
        "CACHE_REDIS_PREFIX_KEY": "evolution",
        "CACHE_REDIS_SAVE_INSTANCES": "false",
        **over,
    }
    path.write_text("# Evolution\n" + "\n".join(f"{k}={v}" for k, v in values.items()) + "\n")
    return str(path)


def _checks(res: object) -> dict[str, dict[str, str]]:
    return {c["check"]: c for c in res.json()["checks"]}  # type: ignore[attr-defined]


def test_every_warning_with_reason_and_fix(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    generate(pg_url, redis_url, tmp_path / "i", instances=2, keys_per_instance=2, prefix="evo")
    env = _env(tmp_path / ".env", redis_url, pg_url, CACHE_REDIS_SAVE_INSTANCES="true",
               DATABASE_CONNECTION_CLIENT_NAME="other")  # fmt: skip
    res = invoke("doctor", "--env-file", env, "--json")
    assert res.code == 1, res.err
    checks = _checks(res)
    assert {k for k, v in checks.items() if v["status"] == "warn"} == {
        "save-instances-twice", "persistence", "prefix", "client-name"}  # fmt: skip
    assert "'evo'" in checks["prefix"]["fix"]
    assert "appendonly" in checks["persistence"]["fix"]
    assert "reconcile" in checks["save-instances-twice"]["fix"]
    assert "'evolution'" in checks["client-name"]["reason"]
    human = invoke("doctor", "--env-file", env)
    assert "fix:" in human.out and "4 warning(s)" in human.out


def test_a_healthy_deployment_has_no_warnings(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    generate(pg_url, redis_url, tmp_path / "i", instances=2, keys_per_instance=2)
    redis.Redis.from_url(redis_url).config_set("appendonly", "yes")
    res = invoke("doctor", "--env-file", _env(tmp_path / ".env", redis_url, pg_url))
    assert res.code == 0, res.out + res.err
    assert "no warnings" in res.out


def test_missing_env_file_is_a_usage_error() -> None:
    res = invoke("doctor", "--env-file", "nope.env")
    assert res.code == 2
    assert "nope.env" in res.err
