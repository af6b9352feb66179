"""`statekit doctor`: an Evolution .env plus the live servers, each warning with its reason and fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fixtures.evolution.generate import generate
from fixtures.evolution.harness import invoke, write_config

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
    generate(pg_url, redis_url, tmp_path / "i", mode="redis", instances=2, keys_per_instance=2, prefix="evo")
    env = _env(tmp_path / ".env", redis_url, pg_url, CACHE_REDIS_SAVE_INSTANCES="true",
               DATABASE_CONNECTION_CLIENT_NAME="other")  # fmt: skip
    res = invoke("doctor", "--env-file", env, "--json")
    assert res.code == 1, res.err
    checks = _checks(res)
    assert {k for k, v in checks.items() if v["status"] == "warn"} == {
        "save-instances-twice", "persistence", "prefix", "client-name"}  # fmt: skip
    assert "'evo'" in checks["prefix"]["fix"]
    assert "appendonly" in checks["persistence"]["fix"]
    assert "CACHE_REDIS_SAVE_INSTANCES=false" in checks["save-instances-twice"]["fix"]
    assert "'evolution'" in checks["client-name"]["reason"]
    human = invoke("doctor", "--env-file", env)
    assert "fix:" in human.out and "4 warnings" in human.out


def test_a_healthy_deployment_has_no_warnings(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    generate(pg_url, redis_url, tmp_path / "i", mode="cache", instances=2, keys_per_instance=2)
    redis.Redis.from_url(redis_url).config_set("appendonly", "yes")
    res = invoke(
        "doctor", "--env-file", _env(tmp_path / ".env", redis_url, pg_url), "--files-root", str(tmp_path / "i")
    )
    assert res.code == 0, res.out + res.err
    assert "OK    mode-vs-data: 2 instances have creds and keys where cache mode reads them" in res.out
    assert "no warnings" in res.out


@pytest.mark.parametrize(
    "written,env_over,new",
    [
        ("redis", {}, "cache"),
        ("cache", {"CACHE_REDIS_SAVE_INSTANCES": "true"}, "redis"),
        ("files", {}, "cache"),
        ("cache", {"CACHE_REDIS_ENABLED": "false"}, "files"),
    ],
)
def test_a_mode_change_prints_the_migration_in_order(
    written: str, env_over: dict[str, str], new: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    """The .env's mode disagrees with where the data lives: doctor names the mode the data was written in and
    prints the statekit commands to run before restarting Evolution, in order; run as printed, they leave
    nothing for doctor to warn about."""
    root = tmp_path / "i"
    generate(pg_url, redis_url, root, mode=written, instances=3, logged_out=1)
    redis.Redis.from_url(redis_url).config_set("appendonly", "yes")
    env = _env(tmp_path / ".env", redis_url, pg_url, **env_over)
    res = invoke("doctor", "--env-file", env, "--files-root", str(root), "--json")
    assert res.code == 1, res.out + res.err
    check = _checks(res)["mode-vs-data"]
    assert check["status"] == "warn"
    assert f"the .env says {new} mode, but 3 of 3 instances" in check["reason"]
    assert f"where {written} mode keeps it" in check["reason"]
    commands = check["commands"]
    assert commands[-2].startswith(f"statekit audit --profile evolution-api --mode evolution={new}")
    assert all(c.startswith("statekit reconcile") and f"--mode evolution={written}" in c for c in commands[:-2])
    human = invoke("doctor", "--env-file", env, "--files-root", str(root))
    assert "        1. statekit reconcile --profile evolution-api" in human.out
    write_config(Path("statekit.toml"), db_url=pg_url, redis_url=redis_url, files_root=str(root))
    for command in commands[:-2]:
        ran = invoke(*command.split()[1:-3], "--yes", "--no-encryption")
        assert ran.code == 0, ran.out + ran.err
    after = invoke("doctor", "--env-file", env, "--files-root", str(root), "--json")
    assert _checks(after)["mode-vs-data"]["status"] == "ok", after.out
    assert invoke(*commands[-2].split("#")[0].split()[1:]).code == 0


def test_the_env_is_read_as_evolution_reads_it(tmp_path: Path) -> None:
    from statekit.profiles.evolution.profile import mode_of_env, prefix_of_env, read_env_file

    env = tmp_path / ".env"
    env.write_text(
        "# comment\nexport CACHE_REDIS_ENABLED=true\nCACHE_REDIS_SAVE_INSTANCES='true'\n"
        "DATABASE_SAVE_DATA_INSTANCE=true # inline comment\nCACHE_REDIS_PREFIX_KEY=\n"
    )
    values = read_env_file(str(env))
    assert mode_of_env(values) == "redis"
    assert prefix_of_env(values) == "evolution-cache"  # empty is unset: Evolution's default
    assert mode_of_env({"CACHE_REDIS_ENABLED": "1", "DATABASE_SAVE_DATA_INSTANCE": "true"}) == "files"
    assert mode_of_env({"PROVIDER_ENABLED": "true", "CACHE_REDIS_ENABLED": "true"}) == "provider"
    assert mode_of_env({}) == "none"


def test_missing_env_file_is_a_usage_error() -> None:
    res = invoke("doctor", "--env-file", "nope.env")
    assert res.code == 2
    assert "nope.env" in res.err
