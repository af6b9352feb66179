"""The SQL dialects statekit speaks, behind one interface (`Dialect`): PostgreSQL, MySQL/MariaDB, SQLite.

`dialect_for(name)` returns the one instance of a dialect for a URL backend name or an archive's `dialect`.
"""

from __future__ import annotations

import importlib
import threading

from statekit.errors import ConfigError
from statekit.tiers.sql.dialects.base import Dialect

__all__ = ["DIALECTS", "Dialect", "dialect_for"]

# A dialect's module loads when it is first asked for: a PostgreSQL run never imports the MySQL and SQLite ones.
_CLASSES = {"postgresql": "PostgreSQL", "mysql": "MySQL", "sqlite": "SQLite"}
_ALIASES = {"mariadb": "mysql"}
DIALECTS: tuple[str, ...] = tuple(_CLASSES)
_ALL: dict[str, Dialect] = {}
_LOCK = threading.Lock()


def dialect_for(name: str) -> Dialect:
    """The dialect of a URL backend (postgresql, mysql, mariadb, sqlite) or of an archive."""
    key = _ALIASES.get(name, name)
    d = _ALL.get(key)
    if d is not None:
        return d
    if key not in _CLASSES:
        raise ConfigError(f"unsupported database '{name[:40]}' (postgresql, mysql, mariadb, sqlite)")
    with _LOCK:
        if key not in _ALL:
            module = importlib.import_module(f"statekit.tiers.sql.dialects.{key}")
            _ALL[key] = getattr(module, _CLASSES[key])()
        return _ALL[key]
