"""File-system primitives every layer shares: writing a file atomically, making a rename durable, and
opening files for reading without following a symlink or changing them, hashing a file.

Atomic writes go to a dot-prefixed temporary name in the target directory, are fsynced, renamed into place
and the directory fsynced, so a crash leaves either the old file or the new one, never a partial one.

Reading: never through a symlink at the last component, and without an access-time update. A backup or an
audit reads every file; under the default `relatime` mount option the first read after a write still stamps
the inode's atime, which turns a read-only pass into one inode write per file (several seconds of journal
traffic on 200k files). O_NOATIME avoids that; the kernel allows it only to the file's owner (or
CAP_FOWNER), so for anyone else the open is retried without it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from statekit.errors import StorageError

# -- writing ----------------------------------------------------------------------------------------------

# How much an atomic_output file takes in before it asks the kernel to start writing it out.
WRITE_BEHIND = 8 << 20
_FADVISE = hasattr(os, "posix_fadvise")


class _WriteBehind(io.FileIO):
    """A file that starts the kernel writing back every WRITE_BEHIND bytes it has taken in, without waiting
    for it (posix_fadvise DONTNEED starts writeback of a range's dirty pages and leaves pages still being
    written in the cache). The fsync at the end then waits for the last stretch only, instead of the whole
    file's writeback starting then; where posix_fadvise is missing it is an ordinary file."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, "wb")
        self._started = 0  # bytes before this offset have had their writeback started
        self._offset = 0

    def write(self, data: Any) -> int:
        n = super().write(data) or 0
        self._offset += n
        if self._offset - self._started >= WRITE_BEHIND and _FADVISE:
            try:
                os.posix_fadvise(self.fileno(), self._started, self._offset - self._started, os.POSIX_FADV_DONTNEED)
            except OSError:  # advice only: the fsync at the end still makes the file durable
                pass
            self._started = self._offset
        return n


@contextmanager
def atomic_output(path: Path, *, overwrite: bool = False, mode: int = 0o600) -> Iterator[IO[bytes]]:
    """Open a temporary file (`mode`, 0600 unless asked) next to `path`; on success fsync it, rename it to
    `path` and fsync the directory. On any error the temporary file is removed, so nothing that looks
    finished is left behind."""
    directory = path.parent
    if not overwrite and path.exists():
        raise StorageError(f"{path}: already exists, not overwritten")
    tmp = directory / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        if mode != 0o600:
            os.fchmod(fd, mode)  # exact, whatever the umask
    except OSError as exc:
        raise StorageError(f"{directory}: cannot create {path.name}: {exc.strerror}") from None
    fh = io.BufferedWriter(_WriteBehind(fd), buffer_size=1 << 20)
    try:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException as exc:
        try:
            fh.close()
        except OSError:
            pass
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise StorageError(f"{path}: write failed: {exc.strerror or exc}") from None
        raise


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory so a rename in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The temporary name atomic_output gives a file while it is written.
ATOMIC_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


def write_file_atomic(path: str, src: Callable[[int], None], mode: int, mtime_ns: int | None = None) -> None:
    """Write a file as temp (0600) → `src(fd)` → fsync → chmod/utime → rename → fsync the directory, so the
    path holds either its old or its new content, never a partial one."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:10]}.statekit-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        src(fd)
        os.fsync(fd)
        os.fchmod(fd, mode & 0o7777)
        if mtime_ns is not None:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(directory)


# -- reading ----------------------------------------------------------------------------------------------

O_NOATIME: int = getattr(os, "O_NOATIME", 0)
_BASE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_for_reading(path: str, flags: int = 0, *, dir_fd: int | None = None) -> int:
    """A read-only descriptor (O_NOFOLLOW, plus `flags`), with O_NOATIME where the kernel allows it."""
    if O_NOATIME:
        try:
            return os.open(path, _BASE | O_NOATIME | flags, dir_fd=dir_fd)
        except PermissionError as exc:
            if exc.errno != errno.EPERM:
                raise
    return os.open(path, _BASE | flags, dir_fd=dir_fd)


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's content, read in blocks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
