"""Repositories that hold archives: a local directory or an `s3://bucket/prefix`.

Both kinds keep `<name>-<UTC stamp>.statekit` archives side by side with their non-secret
`<archive>.meta.json` sidecars (and any other `<archive>.*` companions, e.g. signatures), plus a `locks/`
folder. Reading and writing stream: an S3 upload is a multipart upload whose memory use is one part,
whatever the archive size.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from statekit.errors import StorageError, UsageError
from statekit.fsio import atomic_output, fsync_dir

ARCHIVE_SUFFIX = ".statekit"
SIDECAR_SUFFIX = ".meta.json"
LOCK_DIR = "locks"
# `<name>-20261127T175200Z.statekit`, optionally with a `-N` disambiguator before the suffix.
_ARCHIVE_RE = re.compile(r"^(?P<name>.+)-(?P<stamp>\d{8}T\d{6}Z)(?:-\d+)?\.statekit$")
_COPY_BLOCK = 1 << 20
# S3 allows at most 10,000 parts; 16 MiB parts cover 160 GiB, and the part size grows past that.
DEFAULT_PART_SIZE = 16 << 20
_MIN_PART_SIZE = 5 << 20


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
                shutil.copyfileobj(src, out, _COPY_BLOCK)
            for key in self.list_keys():  # small companions such as the signature travel along
                if key.startswith(archive + ".") and not key.endswith(SIDECAR_SUFFIX):
                    (tmpdir / key).write_bytes(self.read_bytes(key) or b"")
            yield dest
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)


class LocalRepository(Repository):
    """A directory on a local (or mounted) file system."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.root = path

    def _path(self, key: str) -> Path:
        return self.root / key

    def check(self) -> None:
        """Fail with StorageError unless the repository directory exists."""
        if not self.root.is_dir():
            raise StorageError(f"{self.root}: no such repository directory")

    def ensure(self) -> None:
        """Create the repository directory, and any missing parent, 0700; an existing one is left as it is."""
        if self.root.is_dir():
            return
        if self.root.exists():
            raise StorageError(
                f"{self.root}: exists and is not a directory (an archive file name must end in {ARCHIVE_SUFFIX})"
            )
        missing: list[Path] = []
        at = self.root
        while not at.exists() and at != at.parent:
            missing.append(at)
            at = at.parent
        if not at.is_dir():
            raise StorageError(f"{self.root}: cannot create the repository directory: {at} is not a directory")
        for folder in reversed(missing):
            try:
                folder.mkdir(mode=0o700)
            except FileExistsError:
                if not folder.is_dir():
                    raise StorageError(f"{self.root}: {folder} exists and is not a directory") from None
                continue
            except OSError as exc:
                raise StorageError(
                    f"{self.root}: cannot create the repository directory: {exc.strerror or exc}"
                ) from None
            os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
        try:
            fsync_dir(at)
        except OSError:
            pass  # a parent we may write but not read: the archive's own fsyncs still hold

    def list_keys(self, folder: str = "") -> dict[str, int]:
        base = self._path(folder) if folder else self.root
        out: dict[str, int] = {}
        try:
            with os.scandir(base) as it:
                for entry in it:
                    if entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
                        out[entry.name] = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            if folder:
                return {}
            raise StorageError(f"{self.root}: no such repository directory") from None
        except OSError as exc:
            raise StorageError(f"{base}: cannot list: {exc.strerror}") from None
        return out

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"{self._path(key)}: cannot read: {exc.strerror}") from None

    def _ensure_parent(self, key: str) -> Path:
        path = self._path(key)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{path.parent}: cannot create: {exc.strerror}") from None
        return path

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._ensure_parent(key)
        with atomic_output(path, overwrite=True) as fh:
            fh.write(data)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        # Write the whole content to a temporary file, then hard-link it into place: link() fails if the name
        # exists, and a reader never sees a half-written object.
        path = self._ensure_parent(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            fsync_dir(path.parent)
            return True
        except OSError as exc:
            raise StorageError(f"{path}: cannot create: {exc.strerror}") from None
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"{self._path(key)}: cannot delete: {exc.strerror}") from None

    def open_read(self, key: str) -> IO[bytes]:
        try:
            return open(self._path(key), "rb", buffering=_COPY_BLOCK)
        except FileNotFoundError:
            raise UsageError(f"{self._path(key)}: no such archive") from None
        except IsADirectoryError:
            raise UsageError(f"{self._path(key)}: is a directory, not an archive") from None
        except OSError as exc:
            raise StorageError(f"{self._path(key)}: cannot read: {exc.strerror}") from None

    def upload_file(self, local: Path, key: str) -> None:
        dest = self._path(key)
        if local.resolve() == dest.resolve():
            return
        with open(local, "rb") as src, atomic_output(dest) as out:
            shutil.copyfileobj(src, out, _COPY_BLOCK)

    @contextmanager
    def fetched(self, archive: str) -> Iterator[Path]:
        """The archive's own path (no copy for a local repository)."""
        path = self._path(archive)
        if path.is_dir():
            raise UsageError(f"{path}: is a directory, not an archive")
        if not path.exists():
            raise UsageError(f"{path}: no such archive")
        yield path

    def describe(self, key: str) -> str:
        return str(self._path(key))


def is_s3_url(text: str | None) -> bool:
    """True for `s3://bucket[/prefix]`."""
    return bool(text) and str(text).startswith("s3://")


def open_repository(location: str) -> Repository:
    """The repository at `location`: `s3://bucket/prefix` or a local directory path."""
    if is_s3_url(location):
        from statekit.repo.s3 import S3Repository

        return S3Repository.from_url(location)
    if "://" in location:
        raise UsageError(f"{location}: unsupported repository URL (use a directory or s3://bucket/prefix)")
    return LocalRepository(Path(location))


def is_archive_path(location: str) -> bool:
    """True when a local `--to` names one archive file (`….statekit`) rather than a repository directory."""
    return location.endswith(ARCHIVE_SUFFIX) and not Path(location).is_dir()


def split_archive_url(location: str) -> tuple[Repository, str]:
    """(repository, archive name) for an archive address: a local path or `s3://bucket/prefix/archive`."""
    if is_s3_url(location):
        base, _, key = location.rstrip("/").rpartition("/")
        if base in ("s3:/", "s3:") or not key:
            raise UsageError(f"{location}: expected s3://bucket/[prefix/]ARCHIVE")
        return open_repository(base), key
    path = Path(location)
    return LocalRepository(path.parent), path.name
