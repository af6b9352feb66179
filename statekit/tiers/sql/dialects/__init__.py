"""The SQL dialects statekit speaks, behind one interface (`Dialect`): PostgreSQL, MySQL/MariaDB, SQLite.

`dialect_for(name)` returns the one instance of a dialect for a URL backend name or an archive's `dialect`.
"""

from __future__ import annotations

from statekit.errors import ConfigError
from statekit.tiers.sql.dialects.base import Dialect
from statekit.tiers.sql.dialects.mysql import MySQL
from statekit.tiers.sql.dialects.postgresql import PostgreSQL
from statekit.tiers.sql.dialects.sqlite import SQLite

__all__ = ["DIALECTS", "Dialect", "dialect_for"]

_ALL: dict[str, Dialect] = {d.name: d for d in (PostgreSQL(), MySQL(), SQLite())}
_ALIASES = {"mariadb": "mysql"}
DIALECTS: tuple[str, ...] = tuple(_ALL)


def dialect_for(name: str) -> Dialect:
    """The dialect of a URL backend (postgresql, mysql, mariadb, sqlite) or of an archive."""
    d = _ALL.get(_ALIASES.get(name, name))
    if d is None:
        raise ConfigError(f"unsupported database '{name[:40]}' (postgresql, mysql, mariadb, sqlite)")
    return d
