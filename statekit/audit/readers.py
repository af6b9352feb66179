"""Live tier readers for the audit: the record model shared by every reader, the db reader, and
`open_live` (the redis and files readers are in redis_reader.py and files_reader.py).

Each reader works in two passes so memory stays bounded: `list_scopes()` finds which scopes (e.g. instance ids)
the tier holds (db: one streamed SELECT per table through a server-side cursor; redis: SCAN per key template;
files: one os.scandir walk that never follows symlinks), then `load(scopes)` fetches the values of one batch
of scopes (redis: one pipelined round trip of HGETALL/GET; files: one read per file).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from statekit.audit.entities import Entity, Locator, Model
from statekit.config import redact_url
from statekit.errors import ConfigError, TierError, TierUnavailable

RecordKey = tuple[str, ...]


class Record:
    """One record in one tier. `stored` is None in keys-only mode and for presence-only entities. `loc` is
    ("redis", key[, field]), ("files", relative path) or ("db", table, row description)."""

    __slots__ = ("extra", "loc", "null", "raw_vars", "stored")

    def __init__(
        self,
        stored: bytes | None,
        loc: tuple[str, ...],
        extra: dict[str, Any] | None = None,
        null: bool = False,
        raw_vars: dict[str, str] | None = None,
    ) -> None:
        self.stored = stored
        self.loc = loc
        self.extra = extra
        self.null = null  # db: the row exists but the value column is NULL
        self.raw_vars = raw_vars  # the name's own values where a name transform changed them

    @property
    def where(self) -> str:
        """The record's location for a person."""
        if self.loc[0] == "redis" and len(self.loc) > 2:
            return f"{self.loc[1]} [{self.loc[2]}]"
        return self.loc[-1] if self.loc[0] == "db" else self.loc[1]


@dataclass
class Unparseable:
    """A name in a tier that looks like it belongs to the model but fits none of its templates."""

    tier: str
    entity: str
    scope: str | None
    where: str
    detail: str


@dataclass
class TierData:
    """What one tier holds for a batch of scopes: entity → scope → rest-of-key → record."""

    tier: str
    records: dict[str, dict[str, dict[RecordKey, Record]]] = field(default_factory=dict)
    unparseable: list[Unparseable] = field(default_factory=list)

    def add(self, entity: str, scope: str, rest: RecordKey, rec: Record) -> None:
        """Store a record (the first one wins when two names map to the same record)."""
        self.records.setdefault(entity, {}).setdefault(scope, {}).setdefault(rest, rec)

    def scope_records(self, entity: str, scope: str) -> dict[RecordKey, Record] | None:
        """The entity's records of one scope, or None when the tier holds none."""
        return self.records.get(entity, {}).get(scope)

    def has_scope(self, scope: str) -> bool:
        """True when the tier holds anything at all for this scope."""
        return any(scope in per for per in self.records.values())

    def select(self, scopes: Iterable[str]) -> TierData:
        """The part of this (in-memory) tier data that belongs to these scopes."""
        wanted = set(scopes)
        out = TierData(self.tier)
        for ent, per in self.records.items():
            for scope in wanted & per.keys():
                out.records.setdefault(ent, {})[scope] = per[scope]
        return out


def _normalise(ent: Entity, values: dict[str, str]) -> tuple[str, RecordKey]:
    out = []
    for v in ent.vars:
        text = values.get(v, "")
        fn = ent.normalizers.get(v)
        out.append(fn(text) if fn else text)
    return out[0], tuple(out[1:])


def _raw_vars(ent: Entity, values: dict[str, str]) -> dict[str, str] | None:
    # Kept only when a transform changed a value, so reconcile can write the original name back.
    if not ent.normalizers:
        return None
    changed = {v: values[v] for v, fn in ent.normalizers.items() if v in values and fn(values[v]) != values[v]}
    return changed or None


# -- db ---------------------------------------------------------------------------------------------------


def open_engine(url: str) -> Any:
    """A SQLAlchemy engine for a URL (psycopg / pymysql drivers by default); TierUnavailable if unreachable."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    shown = redact_url(url)
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(f"db url {shown}: not a valid database URL") from None
    drivers = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}
    if "+" not in parsed.drivername and parsed.drivername in drivers:
        parsed = parsed.set(drivername=f"{parsed.drivername}+{drivers[parsed.drivername]}")
    engine = sa.create_engine(parsed, poolclass=NullPool)
    try:
        with engine.connect():
            pass
    except Exception as exc:
        reason = _connect_error_text(getattr(exc, "orig", None) or exc, parsed.password)
        raise TierUnavailable(f"db {shown}: cannot connect: {reason}") from None
    return engine


def _connect_error_text(exc: BaseException, secret: object) -> str:
    """The driver's own first line (as snapshot reports it), with the password masked."""
    line = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
    return line.replace(str(secret), "***") if secret else line


def _db_text(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    import json

    # A JSON/JSONB column comes back parsed: store it as compact JSON text.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class DbReader:
    """Reads every db locator of a model with one streamed SELECT per entity (values kept in memory: the
    db side of an audit is the authority and is small next to the key material)."""

    tier = "db"

    def __init__(self, engine: Any, model: Model, *, keys_only: bool = False) -> None:
        self.engine = engine
        self.model = model
        self.keys_only = keys_only
        self.data = TierData("db")
        self.unparseable: list[Unparseable] = []

    def list_scopes(self) -> set[str]:
        """Stream every row once; returns the scopes present."""
        import sqlalchemy as sa

        self.data = TierData("db")
        scopes: set[str] = set()
        for ent in self.model.entities.values():
            loc = ent.locators.get("db")
            if loc is None:
                continue
            for scope, rest, rec in self._rows(ent, loc, sa):
                self.data.add(ent.name, scope, rest, rec)
                scopes.add(scope)
        return scopes

    def _rows(self, ent: Entity, loc: Locator, sa: Any) -> Iterator[tuple[str, RecordKey, Record]]:
        assert loc.table is not None
        cols = list(dict.fromkeys([*loc.key_columns, *([loc.value_column] if loc.value_column else []), *loc.columns]))
        table = sa.table(loc.table, *[sa.column(c) for c in cols], schema=loc.schema)
        stmt = sa.select(*[table.c[c] for c in cols])
        if loc.filter:
            stmt = stmt.where(sa.text(loc.filter))
        nkeys = len(loc.key_columns)
        key_vars = ent.vars[:nkeys]
        plain = not any(v in ent.normalizers for v in key_vars)  # names used as stored: no transform call
        extra_at = [(c, cols.index(c)) for c in loc.columns]
        has_value = loc.value_column is not None
        keep_value = has_value and not (self.keys_only and not ent.presence)
        table_text = f'"{loc.table}" '
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=2000).execute(stmt)
                for row in result:
                    keys = [str(row[i]) for i in range(nkeys)]
                    if plain and len(ent.vars) == nkeys:
                        scope, rest = keys[0], tuple(keys[1:])
                    else:
                        scope, rest = _normalise(ent, dict(zip(key_vars, keys)))
                    raw = row[nkeys] if has_value else None
                    where = table_text + ", ".join([f"{c}={k}" for c, k in zip(loc.key_columns, keys)])
                    rec = Record(
                        _db_text(raw) if keep_value and raw is not None else None,
                        ("db", loc.table, where),
                        {c: row[i] for c, i in extra_at} if extra_at else None,
                        has_value and raw is None,
                    )
                    yield scope, rest, rec
        except Exception as exc:
            if isinstance(exc, (TierError, TierUnavailable)):
                raise
            raise TierError(f'db: cannot read "{loc.table}" ({type(exc).__name__}: {_first_line(exc)})') from None

    def load(self, scopes: Iterable[str]) -> TierData:
        """The rows of these scopes (already in memory)."""
        return self.data.select(scopes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


# -- re-reading suspects and opening the live tiers -------------------------------------------------------


def refresh_db(reader: DbReader, scopes: list[str]) -> None:
    """Re-read the db side (it is small and already streamed once)."""
    reader.list_scopes()


def refresh_redis(reader: Any, scopes: list[str]) -> None:
    """Re-derive the keys of these scopes from the templates that need nothing but the scope."""
    for scope in scopes:
        entries = []
        for g in reader.groups:
            ent = g.members[0][0]
            if set(g.template.vars) == {ent.scope_var} and ent.scope_var not in ent.normalizers:
                try:
                    name = g.template.render({ent.scope_var: scope})
                except ValueError:
                    continue
                entries.append((g, {ent.scope_var: scope}, name.encode("utf-8", "surrogateescape")))
            else:
                entries.extend(e for e in reader.keys.get(scope, []) if e[0] is g)
        reader.keys[scope] = entries


def refresh_files(reader: Any, scopes: list[str]) -> None:
    """Re-walk the directories of these scopes (the whole root when the templates do not say where)."""
    reader.list_scopes()


@dataclass
class LiveTiers:
    """The live readers of one audit and how to re-read suspects."""

    sources: dict[str, Any]
    skipped: list[str]

    def refresh(self, scopes: list[str]) -> None:
        """Re-list the given scopes in every tier (before a re-check round)."""
        from statekit.audit.files_reader import FilesReader
        from statekit.audit.redis_reader import RedisReader

        for src in self.sources.values():
            if isinstance(src, DbReader):
                refresh_db(src, scopes)
            elif isinstance(src, RedisReader):
                refresh_redis(src, scopes)
            elif isinstance(src, FilesReader):
                refresh_files(src, scopes)

    def close(self) -> None:
        """Release connections."""
        from statekit.audit.files_reader import FilesReader
        from statekit.audit.redis_reader import RedisReader

        for src in self.sources.values():
            if isinstance(src, DbReader):
                src.engine.dispose()
            elif isinstance(src, (RedisReader, FilesReader)):
                src.close()


def open_redis(url: str) -> Any:
    """A redis-py client for a URL (bytes replies); TierUnavailable when the server does not answer."""
    import redis

    shown = redact_url(url)
    try:
        client = redis.Redis.from_url(url, decode_responses=False, socket_timeout=60)
        client.ping()
    except ValueError:
        raise ConfigError(f"redis url {shown}: not a valid Redis URL") from None
    except Exception as exc:
        from urllib.parse import unquote, urlsplit

        password = unquote(urlsplit(url).password or "") or None
        raise TierUnavailable(f"redis {shown}: cannot connect: {_connect_error_text(exc, password)}") from None
    return client


def open_live(
    model: Model,
    *,
    db_url: str | None,
    redis_url: str | None,
    files_root: str | None,
    keys_only: bool = False,
    tiers: Iterable[str] | None = None,
) -> LiveTiers:
    """Readers for every tier the model uses and the configuration names; the rest are listed as skipped."""
    from statekit.audit.files_reader import FilesReader
    from statekit.audit.redis_reader import RedisReader

    used = {t for ent in model.entities.values() for t in ent.locators}
    if tiers is not None:
        used &= set(tiers)
    sources: dict[str, Any] = {}
    skipped: list[str] = []
    if "db" in used:
        if db_url:
            sources["db"] = DbReader(open_engine(db_url), model, keys_only=keys_only)
        else:
            skipped.append("db")
    if "redis" in used:
        if redis_url:
            client = open_redis(redis_url)
            client.statekit_url = redis_url
            sources["redis"] = RedisReader(client, model, keys_only=keys_only)
        else:
            skipped.append("redis")
    if "files" in used:
        if files_root:
            sources["files"] = FilesReader(files_root, model, keys_only=keys_only)
        else:
            skipped.append("files")
    return LiveTiers(sources, skipped)
