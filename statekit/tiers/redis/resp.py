"""The Redis wire, done by hand: RESP commands packed as bytes, replies parsed with hiredis.

redis-py opens the socket (TLS, unix sockets, AUTH with ACL users, SELECT are its job); after that statekit
writes whole pipelines of pre-packed commands and parses the replies with `hiredis.Reader`, which is several
times faster than redis-py's Pipeline object (see DESIGN.md, "Performance facts").
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis
from redis.connection import ConnectionPool

from statekit.config import redact_url
from statekit.errors import ConfigError, TierError, TierUnavailable

# Error replies come back as values (instances of this class), not as exceptions, so one bad key in a
# pipeline does not hide the replies of the others.
ReplyError = hiredis.ReplyError

_RECV = 1 << 20
# A dead peer must not hang a cron job forever, but DUMP of a huge key or FLUSHDB may legitimately take long.
_SOCKET_TIMEOUT = 600.0
_SCHEMES = ("redis", "rediss", "unix")


def pack(*args: bytes) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    return b"*%d\r\n" % len(args) + b"".join([b"$%d\r\n%s\r\n" % (len(a), a) for a in args])


def pack_many(commands: Sequence[Sequence[bytes]]) -> bytes:
    """Several commands in one buffer, ready for a single write."""
    return b"".join(pack(*c) for c in commands)


def check_url(url: str | None) -> str:
    """Refuse a missing or malformed Redis URL (ConfigError, never echoing a password)."""
    if not url:
        raise ConfigError("redis: no URL configured (set [redis] url or STATEKIT_REDIS_URL)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"redis URL {redact_url(url)!s}: malformed") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"redis URL {redact_url(url)!s}: scheme must be one of {', '.join(s + '://' for s in _SCHEMES)}"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"redis URL {redact_url(url)!s}: no host")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"redis URL {redact_url(url)!s}: bad port")
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(f"redis URL {redact_url(url)!s}: database must be a number, not {db!r}")
    return url


def _scrub(message: str, secret: str | None) -> str:
    if secret:
        message = message.replace(secret, "***")
    return message


class RespConnection:
    """One connection to one Redis server, used as a raw pipe of RESP commands and replies."""

    def __init__(self, url: str, *, db: int | None = None, host: str | None = None, port: int | None = None):
        check_url(url)
        self.url = url
        self.label = str(redact_url(url))
        try:
            pool = ConnectionPool.from_url(url)
        except ValueError as exc:
            raise ConfigError(f"redis URL {self.label}: {exc}") from None
        kwargs: dict[str, Any] = dict(pool.connection_kwargs)
        if kwargs.get("password") is None and os.environ.get("STATEKIT_REDIS_PASSWORD"):
            # keeps the secret out of the URL, the config file and the process list
            kwargs["password"] = os.environ["STATEKIT_REDIS_PASSWORD"]
        self._password: str | None = kwargs.get("password")
        # RESP2 on every server: replies have one shape (flat arrays, no maps or doubles) whatever the
        # server version or the redis-py default.
        kwargs["protocol"] = 2
        if db is not None:
            kwargs["db"] = db
        if host is not None:
            kwargs["host"] = host
            kwargs["port"] = port
            self.label = f"{host}:{port}"
        self.db = int(kwargs.get("db") or 0)
        self._kwargs = kwargs
        self._conn = pool.connection_class(**kwargs)
        try:
            self._conn.connect()
        except (redis.RedisError, OSError) as exc:
            raise TierUnavailable(f"redis {self.label}: cannot connect: {_scrub(str(exc), self._password)}") from None
        sock = self._conn._sock
        if sock is None:  # pragma: no cover - redis-py always sets it after connect()
            raise TierUnavailable(f"redis {self.label}: cannot connect")
        sock.settimeout(_SOCKET_TIMEOUT)
        self._sock: socket.socket = sock
        self._reader = hiredis.Reader()
        self._buf = bytearray(_RECV)

    def sibling(self, host: str, port: int, db: int = 0) -> RespConnection:
        """A connection to another node with the same credentials and TLS settings (cluster nodes)."""
        return RespConnection(self.url, db=db, host=host, port=port)

    def other_db(self, db: int) -> RespConnection:
        """A second connection to the same server, selecting `db`."""
        return RespConnection(self.url, db=db, host=self._kwargs.get("host"), port=self._kwargs.get("port"))

    # -- raw pipe ---------------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Write packed commands (no reply is read)."""
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise TierError(f"redis {self.label}: connection lost while writing: {exc}") from None

    def read(self, n: int) -> list[Any]:
        """Read exactly `n` replies (error replies are ReplyError values)."""
        out: list[Any] = []
        append = out.append
        gets = self._reader.gets
        while len(out) < n:
            reply = gets()
            if reply is False:
                self._fill()
                continue
            append(reply)
        return out

    def read_one(self) -> Any:
        """Read one reply."""
        while True:
            reply = self._reader.gets()
            if reply is not False:
                return reply
            self._fill()

    def _fill(self) -> None:
        try:
            got = self._sock.recv_into(self._buf)
        except OSError as exc:
            raise TierError(f"redis {self.label}: connection lost while reading: {exc}") from None
        if not got:
            raise TierError(f"redis {self.label}: server closed the connection")
        self._reader.feed(self._buf, 0, got)  # type: ignore[arg-type]  # hiredis takes any buffer

    # -- single commands --------------------------------------------------------------------------------
    def call(self, *args: bytes | str | int) -> Any:
        """Run one command and return its reply; an error reply raises TierError."""
        reply = self.call_raw(*args)
        if isinstance(reply, ReplyError):
            name = _b(args[0]).decode("ascii", "replace")
            if str(reply).startswith("NOAUTH"):
                raise TierUnavailable(f"redis {self.label}: authentication required (give a password)")
            raise TierError(f"redis {self.label}: {name} failed: {reply}")
        return reply

    def call_raw(self, *args: bytes | str | int) -> Any:
        """Run one command and return its reply, an error reply as a ReplyError value."""
        self.send(pack(*[_b(a) for a in args]))
        return self.read_one()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        try:
            self._conn.disconnect()
        except (redis.RedisError, OSError):
            pass

    def __enter__(self) -> RespConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _b(value: bytes | str | int) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return b"%d" % value
    return value.encode()


def parse_info(text: bytes) -> dict[str, str]:
    """INFO output as a flat dict of field -> value."""
    out: dict[str, str] = {}
    for line in text.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        k, _, v = line.partition(":")
        out[k] = v
    return out


def keyspace_counts(info: dict[str, str]) -> dict[int, int]:
    """Non-empty databases and their key counts, from INFO keyspace fields (db0:keys=1,expires=0,...)."""
    out: dict[int, int] = {}
    for k, v in info.items():
        if k.startswith("db") and k[2:].isdigit():
            fields = dict(item.split("=", 1) for item in v.split(",") if "=" in item)
            out[int(k[2:])] = int(fields.get("keys", "0"))
    return out


def rdb_version_for(server_version: str) -> int:
    """The RDB version a server of this version writes (and the newest it loads)."""
    try:
        major, minor = (int(p) for p in server_version.split(".")[:2])
    except ValueError:
        return 9
    if (major, minor) >= (7, 4):
        return 12
    if (major, minor) >= (7, 2):
        return 11
    if major >= 7:
        return 10
    if major >= 5:
        return 9
    return 8
