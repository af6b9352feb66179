"""The live db tier for the audit: one streamed SELECT per table through a server-side cursor, kept in
memory (the db side of an audit is the authority and is small next to the key material)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from statekit.audit.entities import DbLocator, Entity, Locator, Model
from statekit.audit.sources.records import (
    Record,
    RecordKey,
    TierData,
    Unparseable,
    connect_error_text,
    first_line,
    normalise,
)
from statekit.config import redact_url
from statekit.errors import ConfigError, TierError, TierUnavailable


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
        reason = connect_error_text(getattr(exc, "orig", None) or exc, parsed.password)
        raise TierUnavailable(f"db {shown}: cannot connect: {reason}") from None
    return engine


def db_text(value: Any) -> bytes:
    """A column value as the bytes the audit compares."""
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

    tier = DbLocator.kind

    def __init__(self, engine: Any, model: Model, *, keys_only: bool = False) -> None:
        self.engine = engine
        self.model = model
        self.keys_only = keys_only
        self.data = TierData(self.tier)
        self.unparseable: list[Unparseable] = []

    @classmethod
    def open(cls, url: str, model: Model, *, keys_only: bool = False) -> DbReader:
        """A reader of the database at this URL."""
        return cls(open_engine(url), model, keys_only=keys_only)

    def list_scopes(self) -> set[str]:
        """Stream every row once; returns the scopes present."""
        import sqlalchemy as sa

        self.data = TierData(self.tier)
        scopes: set[str] = set()
        for ent in self.model.entities.values():
            loc = ent.locators.get(self.tier)
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
        tier = self.tier
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=2000).execute(stmt)
                for row in result:
                    keys = [str(row[i]) for i in range(nkeys)]
                    if plain and len(ent.vars) == nkeys:
                        scope, rest = keys[0], tuple(keys[1:])
                    else:
                        scope, rest = normalise(ent, dict(zip(key_vars, keys)))
                    raw = row[nkeys] if has_value else None
                    where = table_text + ", ".join([f"{c}={k}" for c, k in zip(loc.key_columns, keys)])
                    rec = Record(
                        db_text(raw) if keep_value and raw is not None else None,
                        (tier, loc.table, where),
                        {c: row[i] for c, i in extra_at} if extra_at else None,
                        has_value and raw is None,
                    )
                    yield scope, rest, rec
        except Exception as exc:
            if isinstance(exc, (TierError, TierUnavailable)):
                raise
            raise TierError(f'db: cannot read "{loc.table}" ({type(exc).__name__}: {first_line(exc)})') from None

    def load(self, scopes: Iterable[str]) -> TierData:
        """The rows of these scopes (already in memory)."""
        return self.data.select(scopes)

    def notes(self, model: Model, entity_counts: Mapping[tuple[str, str], int]) -> list[str]:
        """Nothing to add to the audit's header."""
        return []

    def refresh(self, scopes: list[str]) -> None:
        """Re-read the db side before a re-check (it is small and already streamed once)."""
        self.list_scopes()

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()
