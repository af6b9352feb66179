"""What a db restore created, as its undo archive lists it, read back strictly: restoring that undo archive
drops it, so each list is archive data and never trusted as SQL.

`details.created_by_restore`: the tables, each as `schema.table` (PostgreSQL) or `table` (MySQL/MariaDB,
SQLite). PostgreSQL only: `details.created_types_by_restore`, the enums and domains the restore created, each as
`schema.type`, and `details.created_schemas_by_restore`, the schemas it created. Only plain names are listed:
word characters, `$` and `-`, at most MAX_NAME characters per part, at most MAX_TABLES entries per list. A
created object with any other name is recorded under the list's name plus `_kept` instead and is never dropped.
"""

from __future__ import annotations

import re
from typing import Any

from statekit.errors import CorruptArchive
from statekit.tiers.sql.dialects import Dialect

MAX_TABLES = 10_000
MAX_NAME = 64
_PLAIN = re.compile(rf"[\w$-]{{1,{MAX_NAME}}}")
TABLES = "created_by_restore"
TYPES = "created_types_by_restore"
SCHEMAS = "created_schemas_by_restore"
# what each list names, for messages
_WHAT = {TABLES: "table name", TYPES: "schema-qualified type name", SCHEMAS: "schema name"}


def plain_key(key: str, dialect: Dialect) -> bool:
    """Whether a target table key is one an undo archive may list in `created_by_restore`."""
    return _parse(key, dialect.key_parts()) is not None


def plain_type(key: str) -> bool:
    """Whether a created enum's or domain's `schema.name` is one `created_types_by_restore` may list."""
    return _parse(key, 2, exact=True) is not None


def plain_schema(name: str) -> bool:
    """Whether a created schema's name is one `created_schemas_by_restore` may list."""
    return _parse(name, 1) is not None


def _parse(entry: object, parts_max: int, *, exact: bool = False) -> tuple[str | None, str] | None:
    if not isinstance(entry, str) or len(entry) > 2 * MAX_NAME + 1:
        return None
    parts = entry.split(".")
    if len(parts) > parts_max or (exact and len(parts) != parts_max):
        return None
    if not all(_PLAIN.fullmatch(part) for part in parts):
        return None
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _listed(snapshot: dict[str, Any], key: str) -> list[Any]:
    """The raw list `key` of an undo archive's db tier details; [] for any other archive or when absent."""
    target = snapshot.get("restore_target")
    if snapshot.get("kind") != "undo" or not isinstance(target, dict) or target.get("tier") != "db":
        return []
    tiers = snapshot.get("tiers")
    db = [t for t in tiers if isinstance(t, dict) and t.get("tier") == "db"] if isinstance(tiers, list) else []
    details = db[0].get("details") if db else None
    listed = details.get(key) if isinstance(details, dict) else None
    if listed is None:
        return []
    if not isinstance(listed, list) or len(listed) > MAX_TABLES:
        raise CorruptArchive(f"the undo archive's {key} is damaged (not a list of plain {_WHAT[key]}s)")
    return listed


def _read(
    snapshot: dict[str, Any], key: str, parts_max: int, what: str, *, exact: bool
) -> list[tuple[str | None, str]]:
    out: list[tuple[str | None, str]] = []
    for entry in _listed(snapshot, key):
        parsed = _parse(entry, parts_max, exact=exact)
        if parsed is None:
            shown = repr(entry)[:80] if isinstance(entry, str) else type(entry).__name__
            raise CorruptArchive(f"the undo archive's {key} names {shown}, not a plain {what}; nothing was changed")
        if parsed not in out:
            out.append(parsed)
    return out


def created_by_restore(snapshot: dict[str, Any], dialect: Dialect) -> list[tuple[str | None, str]]:
    """The (schema, table) pairs a db undo archive lists as created by the restore it undoes; [] for any other
    archive. A malformed list (wrong type, too long, a name that is not plain) is CorruptArchive: nothing
    is dropped, nothing restored."""
    return _read(snapshot, TABLES, dialect.key_parts(), f"{dialect.name} table name", exact=False)


def created_types_by_restore(snapshot: dict[str, Any]) -> list[tuple[str, str]]:
    """The (schema, name) pairs of the enums and domains a db undo archive lists as created by the restore it
    undoes (PostgreSQL); [] for any other archive. Malformed: CorruptArchive, as created_by_restore."""
    read = _read(snapshot, TYPES, 2, _WHAT[TYPES], exact=True)
    return [(schema or "", name) for schema, name in read]


def created_schemas_by_restore(snapshot: dict[str, Any]) -> list[str]:
    """The schemas a db undo archive lists as created by the restore it undoes (PostgreSQL); [] for any other
    archive. Malformed: CorruptArchive, as created_by_restore."""
    return [name for _, name in _read(snapshot, SCHEMAS, 1, _WHAT[SCHEMAS], exact=True)]
