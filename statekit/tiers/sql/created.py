"""Tables a db restore created, as its undo archive lists them (`details.created_by_restore`), read back
strictly: restoring that undo archive drops them, so the list is archive data and never trusted as SQL.

statekit records each as `schema.table` (PostgreSQL) or `table` (MySQL/MariaDB, SQLite). Only plain names are
listed: word characters, `$` and `-`, at most MAX_NAME characters per part, at most MAX_TABLES entries. A
created table with any other name is recorded under `created_by_restore_kept` instead and is never dropped.
"""

from __future__ import annotations

import re
from typing import Any

from statekit.errors import CorruptArchive
from statekit.tiers.sql.dialects import Dialect

MAX_TABLES = 10_000
MAX_NAME = 64
_PLAIN = re.compile(rf"[\w$-]{{1,{MAX_NAME}}}")


def plain_key(key: str, dialect: Dialect) -> bool:
    """Whether a target table key is one an undo archive may list in `created_by_restore`."""
    return _parse(key, dialect) is not None


def _parse(entry: object, dialect: Dialect) -> tuple[str | None, str] | None:
    if not isinstance(entry, str) or len(entry) > 2 * MAX_NAME + 1:
        return None
    parts = entry.split(".")
    if len(parts) > dialect.key_parts():
        return None
    if not all(_PLAIN.fullmatch(part) for part in parts):
        return None
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def created_by_restore(snapshot: dict[str, Any], dialect: Dialect) -> list[tuple[str | None, str]]:
    """The (schema, table) pairs a db undo archive lists as created by the restore it undoes; [] for any other
    archive. A malformed list (wrong type, too long, a name that is not plain) is CorruptArchive: nothing
    is dropped, nothing restored."""
    target = snapshot.get("restore_target")
    if snapshot.get("kind") != "undo" or not isinstance(target, dict) or target.get("tier") != "db":
        return []
    tiers = snapshot.get("tiers")
    db = [t for t in tiers if isinstance(t, dict) and t.get("tier") == "db"] if isinstance(tiers, list) else []
    details = db[0].get("details") if db else None
    listed = details.get("created_by_restore") if isinstance(details, dict) else None
    if listed is None:
        return []
    if not isinstance(listed, list) or len(listed) > MAX_TABLES:
        raise CorruptArchive("the undo archive's created_by_restore is damaged (not a list of plain table names)")
    out: list[tuple[str | None, str]] = []
    for entry in listed:
        parsed = _parse(entry, dialect)
        if parsed is None:
            shown = repr(entry)[:80] if isinstance(entry, str) else type(entry).__name__
            raise CorruptArchive(
                f"the undo archive's created_by_restore names {shown}, not a plain {dialect.name} table name; "
                "nothing was changed"
            )
        if parsed not in out:
            out.append(parsed)
    return out
