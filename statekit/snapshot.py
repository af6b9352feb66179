"""The snapshot engine: every configured tier into one archive, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from statekit import __version__
from statekit.archive.writer import ArchiveWriter
from statekit.config import Config
from statekit.errors import Refused, StorageError, UsageError
from statekit.fsio import atomic_output
from statekit.model import Progress, TierSummary, Warn, no_progress, no_warn, utc_stamp
from statekit.tiers import TIERS
from statekit.tiers import get as get_tier

if TYPE_CHECKING:
    from statekit.archive.keys import Recipient

ARCHIVE_SUFFIX = ".statekit"
SIDECAR_SUFFIX = ".meta.json"


@dataclass
class SnapshotOptions:
    """What to snapshot and how."""

    tiers: list[str] | None = None  # None: every configured tier
    jobs: int | None = None
    level: int = 1
    name: str = "statekit"
    allow_unencrypted: bool = False


@dataclass
class SnapshotResult:
    """A finished snapshot: where it is and what went in."""

    path: Path
    snapshot_id: str
    started_at: float
    finished_at: float
    size: int
    sha256: str
    encrypted: bool
    tiers: list[TierSummary] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (no secrets)."""
        return {
            "path": str(self.path),
            "snapshot_id": self.snapshot_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": round(self.finished_at - self.started_at, 3),
            "size": self.size,
            "sha256": self.sha256,
            "encrypted": self.encrypted,
            "tiers": [t.to_json() for t in self.tiers],
            "totals": self.totals,
            "warnings": self.warnings,
        }


def configured_tiers(cfg: Config) -> list[str]:
    """The tiers that have a source configured, in snapshot order."""
    return [t.name for t in TIERS if t.configured(cfg)]


def archive_path_for(dest: Path, name: str, now: float) -> Path:
    """A directory gets a generated `<name>-<UTC timestamp>.statekit`; anything else is the file to write."""
    if dest.is_dir() or str(dest).endswith(os.sep):
        return dest / f"{name}-{utc_stamp(now)}{ARCHIVE_SUFFIX}"
    return dest


class _HashingFile:
    """Counts and hashes what goes to the archive file, for the sidecar and signatures."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()


def take_snapshot(
    cfg: Config,
    dest: Path,
    recipients: Sequence[Recipient],
    opts: SnapshotOptions,
    *,
    progress: Progress = no_progress,
    warn: Warn = no_warn,
) -> SnapshotResult:
    """Snapshot the selected tiers into one archive at `dest` (a file, or a directory for a generated name).

    The archive is written 0600 under a temporary name, fsynced and renamed only when complete."""
    tiers = opts.tiers or configured_tiers(cfg)
    if not tiers:
        raise UsageError("nothing to snapshot: configure [db] url, [redis] url or [files] root (or pass flags)")
    for t in tiers:
        get_tier(t)  # an unknown name is a UsageError naming the choices
    if not recipients and not opts.allow_unencrypted:
        raise Refused(
            "no recipient or passphrase: refusing to write an unencrypted archive "
            "(give --recipient/--recipients-file, set STATEKIT_PASSPHRASE, or pass --no-encryption)"
        )
    started = time.time()
    path = archive_path_for(dest, opts.name, started)
    if not path.parent.is_dir():
        raise StorageError(f"{path.parent}: no such directory")
    warnings: list[str] = []

    def _warn(msg: str) -> None:
        warnings.append(msg)
        warn(msg)

    summaries: list[TierSummary] = []
    with atomic_output(path) as raw:
        out = _HashingFile(raw)
        writer = ArchiveWriter(out, recipients=list(recipients), level=opts.level, created_at=started,  # type: ignore[arg-type]
                               head={"kind": "snapshot", "tiers": list(tiers)})  # fmt: skip
        for tier in tiers:
            summaries.append(_snapshot_tier(tier, cfg, writer, opts, progress, _warn))
        finished = time.time()
        doc = {
            "kind": "snapshot",
            "created_at": _iso(started),
            "finished_at": _iso(finished),
            "host": socket.gethostname(),
            "tiers": [s.to_json() for s in summaries],
            "tier_window_s": round(max(s.finished_at for s in summaries) - min(s.started_at for s in summaries), 6),
            "options": {
                "compression": f"zstd-{opts.level}",
                "encryption": _describe_recipients(recipients),
                "jobs": opts.jobs,
            },
        }
        manifest = writer.finish(doc)
    result = SnapshotResult(
        path=path,
        snapshot_id=writer.snapshot_id,
        started_at=started,
        finished_at=finished,
        size=out.size,
        sha256=out.digest.hexdigest(),
        encrypted=bool(recipients),
        tiers=summaries,
        totals=manifest["totals"],
        warnings=warnings,
    )
    write_sidecar(result, opts.name)
    return result


def _describe_recipients(recipients: Sequence[Recipient]) -> dict[str, Any]:
    from statekit.archive.keys import ScryptRecipient

    if not recipients:
        return {"type": "none"}
    if any(isinstance(r, ScryptRecipient) for r in recipients):
        return {"type": "age-scrypt"}
    return {"type": "age-x25519", "recipients": [r.to_string() for r in recipients]}  # type: ignore[attr-defined]


def _snapshot_tier(
    tier: str, cfg: Config, writer: ArchiveWriter, opts: SnapshotOptions, progress: Progress, warn: Warn
) -> TierSummary:
    return get_tier(tier).snapshot(cfg, writer, jobs=opts.jobs, progress=progress, warn=warn)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def sidecar_path(archive: Path) -> Path:
    """The non-secret metadata file kept next to an archive."""
    return archive.with_name(archive.name + SIDECAR_SUFFIX)


def write_sidecar(result: SnapshotResult, name: str) -> None:
    """Write `<archive>.meta.json`: what `statekit list` shows without an identity (no secrets inside)."""
    doc = {
        "sidecar_version": 1,
        "name": name,
        "archive": result.path.name,
        "snapshot_id": result.snapshot_id,
        "created_at": _iso(result.started_at),
        "created_ts": result.started_at,
        "duration_s": round(result.finished_at - result.started_at, 3),
        "size": result.size,
        "sha256": result.sha256,
        "encrypted": result.encrypted,
        "statekit_version": __version__,
        "tiers": {t.tier: t.counts for t in result.tiers},
    }
    with atomic_output(sidecar_path(result.path), overwrite=True) as fh:
        fh.write((json.dumps(doc, indent=2) + "\n").encode())
