"""The repository interface: what every place that holds archives (a local directory, an `s3://bucket/prefix`)
provides, and the archive naming they share.

Both kinds keep `<name>-<UTC stamp>.statekit` archives side by side with their non-secret
`<archive>.meta.json` sidecars (and any other `<archive>.*` companions, e.g. signatures), plus a `locks/`
folder. Reading and writing stream: an S3 upload is a multipart upload whose memory use is one part,
whatever the archive size.
"""

from __future__ import annotations

import calendar
import json
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from statekit.fsio import atomic_output

ARCHIVE_SUFFIX = ".statekit"
SIDECAR_SUFFIX = ".meta.json"
LOCK_DIR = "locks"
# `<name>-20261127T175200Z.statekit`, optionally with a `-N` disambiguator before the suffix.
_ARCHIVE_RE = re.compile(r"^(?P<name>.+)-(?P<stamp>\d{8}T\d{6}Z)(?:-\d+)?\.statekit$")
COPY_BLOCK = 1 << 20


@dataclass
class ArchiveInfo:
    """One archive in a repository, as listing sees it (the sidecar, if present, is already read)."""

    archive: str
    name: str
    created_ts: float
    size: int
    sidecar: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The archive as `statekit list --json` shows it (nothing secret: sidecars hold none)."""
        side = self.sidecar or {}
        return {
            "archive": self.archive,
            "name": self.name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_ts)),
            "created_ts": self.created_ts,
            "size": self.size,
            "snapshot_id": side.get("snapshot_id"),
            "encrypted": side.get("encrypted"),
            "duration_s": side.get("duration_s"),
            "tiers": side.get("tiers", {}),
            "sidecar": self.sidecar is not None,
        }


def parse_archive_name(filename: str) -> tuple[str, float] | None:
    """(name, UTC timestamp) of a `<name>-<stamp>.statekit` file name, or None for anything else."""
    m = _ARCHIVE_RE.match(filename)
    if not m:
        return None
    try:
        ts = float(calendar.timegm(time.strptime(m.group("stamp"), "%Y%m%dT%H%M%SZ")))
    except ValueError:
        return None
    return m.group("name"), ts


@dataclass
class Repository(ABC):
    """Where archives are kept. Keys are plain names relative to the repository root (`locks/x.lock`)."""

    url: str
    _listing: dict[str, int] = field(default_factory=dict, repr=False)

    # -- object primitives (used by archives, sidecars and locks) -------------------------------------------
    @abstractmethod
    def list_keys(self, folder: str = "") -> dict[str, int]:
        """Object names directly inside `folder` (not in subfolders) with their sizes."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """A small object's content, or None when it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Create or replace a small object atomically."""

    @abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create a small object only if it does not exist yet; False if it already does."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object (no error if it is already gone)."""

    @abstractmethod
    def open_read(self, key: str) -> IO[bytes]:
        """A stream of an object's content (close it when done)."""

    @abstractmethod
    def upload_file(self, local: Path, key: str) -> None:
        """Store a finished local file under `key`, streaming (memory independent of its size)."""

    def describe(self, key: str) -> str:
        """A user-facing address of an object in this repository."""
        return f"{self.url.rstrip('/')}/{key}"

    # -- archives -----------------------------------------------------------------------------------------
    def list_archives(self, name: str | None = None) -> list[ArchiveInfo]:
        """Every archive (of `name`, if given), oldest first, with its sidecar when present."""
        keys = self.list_keys()
        out = []
        for key, size in keys.items():
            parsed = parse_archive_name(key)
            if parsed is None or (name is not None and parsed[0] != name):
                continue
            sidecar = self.read_sidecar(key) if key + SIDECAR_SUFFIX in keys else None
            created = parsed[1]
            if sidecar and isinstance(sidecar.get("created_ts"), (int, float)):
                created = float(sidecar["created_ts"])
            out.append(ArchiveInfo(key, parsed[0], created, size, sidecar))
        out.sort(key=lambda a: (a.created_ts, a.archive))
        return out

    def read_sidecar(self, archive: str) -> dict[str, Any] | None:
        """The `<archive>.meta.json` document, or None if absent or unreadable."""
        raw = self.read_bytes(archive + SIDECAR_SUFFIX)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def delete_archive(self, archive: str) -> list[str]:
        """Remove an archive and its companions (`<archive>.*`: sidecar, signature); returns what went."""
        removed = []
        for key in sorted(self.list_keys()):
            if key == archive or key.startswith(archive + "."):
                self.delete(key)
                removed.append(key)
        return removed

    @contextmanager
    def fetched(self, archive: str) -> Iterator[Path]:
        """A local path to the archive: the file itself for a local repository, else a 0600 temporary copy
        that is removed afterwards."""
        tmpdir = Path(tempfile.mkdtemp(prefix="statekit-fetch-"))
        try:
            dest = tmpdir / Path(archive).name
            with self.open_read(archive) as src, atomic_output(dest) as out:
                shutil.copyfileobj(src, out, COPY_BLOCK)
            for key in self.list_keys():  # small companions such as the signature travel along
                if key.startswith(archive + ".") and not key.endswith(SIDECAR_SUFFIX):
                    (tmpdir / key).write_bytes(self.read_bytes(key) or b"")
            yield dest
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
