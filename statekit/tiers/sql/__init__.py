"""The db tier: SQL databases (PostgreSQL, MySQL/MariaDB, SQLite) to and from archive members.

Public entry points: `snapshot_db`, `plan_db_restore`, `restore_db`. Archive layout: docs/FORMAT.md ("db members").
They are imported on first use, so a snapshot does not pay for loading the restore code and the other way round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from statekit.tiers.sql.restore import plan_db_restore, restore_db
    from statekit.tiers.sql.snapshot import snapshot_db

__all__ = ["plan_db_restore", "restore_db", "snapshot_db"]


def __getattr__(name: str) -> Any:
    if name == "snapshot_db":
        from statekit.tiers.sql.snapshot import snapshot_db

        return snapshot_db
    if name in ("plan_db_restore", "restore_db"):
        from statekit.tiers.sql import restore

        return getattr(restore, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
