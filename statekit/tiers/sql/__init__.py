"""The db tier: SQL databases (PostgreSQL, MySQL/MariaDB, SQLite) to and from archive members.

Public entry points: `snapshot_db`, `plan_db_restore`, `restore_db`; the member decoder: members.py. Archive
layout: docs/FORMAT.md ("db members"). They are imported on first use, so a snapshot does not pay for loading
the restore code and the other way round.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from statekit.config import redact_url
from statekit.model import MemberSink, Progress, RestoreOptions, RestoreReport, TierSummary, UndoSink, Warn
from statekit.tiers.base import Tier

if TYPE_CHECKING:
    from statekit.archive.reader import Archive
    from statekit.config import Config
    from statekit.tiers.rehearsal import RehearsalReport
    from statekit.tiers.sql.members import DbDecoder
    from statekit.tiers.sql.restore import plan_db_restore, restore_db
    from statekit.tiers.sql.snapshot import snapshot_db


class DbTier(Tier):
    """The db tier's adapter (see statekit.tiers.base.Tier)."""

    name = "db"
    section = "db"
    title = "database"
    verifies_while_loading = True

    def target(self, cfg: Config) -> str | None:
        return cfg.db.url

    def describe_target(self, target: str | None) -> dict[str, Any]:
        return {"tier": self.name, "url": redact_url(_absolute_sqlite(target))}

    def snapshot(
        self, cfg: Config, writer: MemberSink, *, jobs: int | None, progress: Progress, warn: Warn
    ) -> TierSummary:
        from statekit.tiers.sql.snapshot import snapshot_db

        return snapshot_db(cfg.db, writer, jobs=jobs or cfg.db.jobs, progress=progress, warn=warn)

    def plan_restore(self, archive: Archive, opts: RestoreOptions, cfg: Config) -> RestoreReport:
        from statekit.tiers.sql.restore import plan_db_restore

        return plan_db_restore(archive, opts, cfg.db)

    def restore(
        self,
        archive: Archive,
        opts: RestoreOptions,
        cfg: Config,
        *,
        undo: UndoSink | None,
        progress: Progress,
        warn: Warn,
    ) -> RestoreReport:
        from statekit.tiers.sql.restore import restore_db

        return restore_db(archive, opts, cfg.db, undo=undo, progress=progress, warn=warn)

    def decoder(self) -> DbDecoder:
        from statekit.tiers.sql.members import DbDecoder

        return DbDecoder()

    def rehearse(self, archive: Archive, report: RehearsalReport, *, trusted: bool, warn: Warn) -> None:
        from statekit.tiers.sql.rehearse import rehearse_db

        rehearse_db(archive, report, trusted=trusted, warn=warn)


def _absolute_sqlite(url: str | None) -> str | None:
    """A SQLite URL with a relative file name names a different file in another directory: make it absolute."""
    if not url or not url.startswith("sqlite") or ":///" not in url:
        return url
    head, _, rest = url.partition(":///")
    path, sep, query = rest.partition("?")
    if not path or path.startswith("/") or path == ":memory:":
        return url
    return f"{head}:///{os.path.abspath(path)}{sep}{query}"


def __getattr__(name: str) -> Any:
    if name == "snapshot_db":
        from statekit.tiers.sql.snapshot import snapshot_db

        return snapshot_db
    if name in ("plan_db_restore", "restore_db"):
        from statekit.tiers.sql import restore

        return getattr(restore, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DbTier", "plan_db_restore", "restore_db", "snapshot_db"]
