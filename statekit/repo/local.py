"""The local repository: a directory on a local (or mounted) file system."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from statekit.errors import StorageError, UsageError
from statekit.fsio import atomic_output, fsync_dir
from statekit.repo.base import ARCHIVE_SUFFIX, COPY_BLOCK, Repository


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
            return open(self._path(key), "rb", buffering=COPY_BLOCK)
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
            shutil.copyfileobj(src, out, COPY_BLOCK)

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
