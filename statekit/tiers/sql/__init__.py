"""The db tier: SQL databases (PostgreSQL, MySQL/MariaDB, SQLite) to and from archive members.

Public entry points: `snapshot_db`, `plan_db_restore`, `restore_db`. Archive layout: docs/FORMAT.md ("db members").
"""

from __future__ import annotations

from statekit.tiers.sql.restore import plan_db_restore, restore_db
from statekit.tiers.sql.snapshot import snapshot_db

__all__ = ["plan_db_restore", "restore_db", "snapshot_db"]
