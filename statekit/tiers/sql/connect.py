"""Database URLs, connections and driver errors for the db tier.

Passwords come from the URL, else $STATEKIT_DB_PASSWORD, else (PostgreSQL) libpq's own ~/.pgpass lookup. They
never appear in a message: every driver exception is re-raised as a statekit error whose text is scrubbed.

A URL is parsed here, by the grammar SQLAlchemy's `make_url` reads, without loading SQLAlchemy: a PostgreSQL
snapshot talks to the server through psycopg alone and never pays for importing it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from statekit.config import redact_url
from statekit.errors import ConfigError, StatekitError, TierError, TierUnavailable
from statekit.tiers.sql.dialects import Dialect, dialect_for

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import URL

_URL = re.compile(
    r"""(?P<name>[\w+]+)://
        (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
        (?:(?:\[(?P<ipv6host>[^/?]+)\]|(?P<ipv4host>[^/:?]+))?(?::(?P<port>[^/?]*))?)?
        (?:/(?P<database>[^?]*))?
        (?:\?(?P<query>.*))?""",
    re.X,
)


@dataclasses.dataclass(frozen=True)
class DbUrl:
    """The parts of a database URL: `driver://user:password@host:port/database?key=value`, percent-decoded."""

    drivername: str
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)  # never in a message
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> DbUrl:
        """Parse a URL as SQLAlchemy's make_url does; ValueError when it is not one."""
        m = _URL.match(text)
        if m is None:
            raise ValueError("not a database URL")
        parts = m.groupdict()
        port = parts["port"]
        return cls(
            drivername=parts["name"],
            username=None if parts["username"] is None else unquote(parts["username"]),
            password=None if parts["password"] is None else unquote(parts["password"]),
            host=parts["ipv4host"] or parts["ipv6host"],
            port=None if port is None else int(port),
            database=None if parts["database"] is None else unquote(parts["database"]),
            query=tuple(parse_qsl(parts["query"] or "")),
        )

    @property
    def backend(self) -> str:
        """`postgresql` of `postgresql+psycopg`."""
        return self.drivername.partition("+")[0]

    @property
    def driver(self) -> str | None:
        """`psycopg` of `postgresql+psycopg` (None when the URL names none)."""
        return self.drivername.partition("+")[2] or None

    def replace(self, **changes: Any) -> DbUrl:
        """A copy with some parts changed."""
        return dataclasses.replace(self, **changes)

    def params(self) -> dict[str, str]:
        """The query parameters (the last value of a repeated key)."""
        return dict(self.query)

    def to_sqlalchemy(self) -> URL:
        """The same URL as SQLAlchemy's URL object (loads SQLAlchemy)."""
        from sqlalchemy.engine import URL

        query: dict[str, str | list[str]] = {}
        for key, value in self.query:
            if key in query:
                prev = query[key]
                query[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
            else:
                query[key] = value
        return URL.create(
            self.drivername,
            username=self.username,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.database,
            query=query,
        )


class DbTarget:
    """A parsed database URL with the password resolved; `shown` is the redacted form for messages."""

    def __init__(self, url: str | None, *, must_exist: bool = True) -> None:
        if not url:
            raise ConfigError("db: no database URL configured ([db] url, STATEKIT_DB_URL or --target-url)")
        self.shown: str = redact_url(url) or ""
        try:
            parsed = DbUrl.parse(url)
        except ValueError:
            raise ConfigError(f"db url {self.shown}: not a valid database URL") from None
        backend = parsed.backend
        try:
            dialect = dialect_for(backend)
        except ConfigError as exc:
            raise ConfigError(f"db url {self.shown}: {exc}") from None
        if "+" not in parsed.drivername:
            # SQLAlchemy's own default drivers (psycopg2, mysqlclient) are not installed with statekit
            parsed = parsed.replace(drivername=f"{backend}+{dialect.driver}")
        elif dialect.native_copy and parsed.driver != dialect.driver:
            raise ConfigError(f"db url {self.shown}: use postgresql+psycopg:// (psycopg 3) for PostgreSQL")
        password = os.environ.get("STATEKIT_DB_PASSWORD")
        if parsed.password is None and password and dialect.uses_password():
            parsed = parsed.replace(password=password)
        self.parts: DbUrl = parsed
        self.dialect: Dialect = dialect
        self._secret = str(parsed.password) if parsed.password else None
        dialect.check_url(parsed.database, self.shown, must_exist=must_exist)

    def scrub(self, text: str) -> str:
        """The first line of a driver message with the password (if any) masked."""
        line = (str(text).strip().splitlines() or [""])[0]
        if self._secret:
            line = line.replace(self._secret, "***")
        return line

    @cached_property
    def url(self) -> URL:
        """The URL as SQLAlchemy takes it."""
        return self.parts.to_sqlalchemy()

    def engine(self) -> sa.Engine:
        """A pool-less engine: statekit opens a few long connections, never many short ones."""
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        return sa.create_engine(self.url, poolclass=NullPool, **self.dialect.engine_options())

    def psycopg_conninfo(self) -> str:
        """libpq connection string for psycopg (libpq itself reads ~/.pgpass when no password is set)."""
        from psycopg.conninfo import make_conninfo

        u = self.parts
        params: dict[str, Any] = {"dbname": u.database or "postgres"}
        if u.host:
            params["host"] = u.host
        if u.port:
            params["port"] = u.port
        if u.username:
            params["user"] = u.username
        if u.password:
            params["password"] = str(u.password)
        params.update(u.params())
        params.setdefault("application_name", "statekit")
        return make_conninfo(**params)

    def psycopg_connect(self, application_name: str = "statekit") -> Any:
        """A psycopg 3 connection (not in autocommit), errors translated."""
        import psycopg

        try:
            conn = psycopg.connect(self.psycopg_conninfo(), application_name=application_name)
        except psycopg.Error as exc:
            raise TierUnavailable(f"db {self.shown}: cannot connect: {self.scrub(str(exc))}") from None
        return conn

    @contextmanager
    def connection(self) -> Iterator[sa.Connection]:
        """A SQLAlchemy connection with connection failures turned into TierUnavailable."""
        engine = self.engine()
        try:
            try:
                conn = engine.connect()
            except Exception as exc:
                raise TierUnavailable(f"db {self.shown}: cannot connect: {self.scrub(_driver_text(exc))}") from None
            try:
                yield conn
            finally:
                try:
                    conn.close()
                except Exception:
                    pass
        finally:
            engine.dispose()

    def fail(self, what: str, exc: BaseException) -> StatekitError:
        """Turn a driver exception raised mid-work into TierError (or TierUnavailable if the link died)."""
        if isinstance(exc, StatekitError):
            return exc
        text = self.scrub(_driver_text(exc))
        if _is_disconnect(exc):
            return TierUnavailable(f"db {self.shown}: connection lost while {what}: {text}")
        return TierError(f"db {self.shown}: {what} failed: {text}")


def _driver_text(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc) or type(exc).__name__


def _is_disconnect(exc: BaseException) -> bool:
    if getattr(exc, "connection_invalidated", False):
        return True
    orig = getattr(exc, "orig", exc)
    name = type(orig).__name__
    if name in ("OperationalError", "InterfaceError"):
        text = str(orig).lower()
        return any(w in text for w in ("terminat", "connection", "server closed", "lost", "broken pipe"))
    return False
