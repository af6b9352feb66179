"""snapshot_files: every selected file under the root into the archive as files/<relative path>.

Reading never follows a symlink (O_NOFOLLOW, lstat-based walk)."""

from __future__ import annotations

import errno
import io
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from statekit.config import FilesConfig
from statekit.errors import ConfigError, TierError, TierUnavailable
from statekit.fsio import open_for_reading
from statekit.model import (
    MemberSink,
    Progress,
    TierSummary,
    Warn,
    no_progress,
    no_warn,
)
from statekit.tiers.files.paths import MAX_FILE_BYTES, MAX_FILE_TEXT, PREFIX, STREAM_BYTES, path_selected


@dataclass
class _Entry:
    rel: str
    name: str  # the file's name in its directory
    dir_fd: int  # its directory, open while the entry is being handled


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _walk(root: str, warn: Warn, skipped: dict[str, int], skip_unreadable: bool = False) -> Iterator[_Entry]:
    """Regular files under root: each directory's files in sorted order, then its subdirectories.

    Every directory below the root is opened relative to its parent's descriptor with O_NOFOLLOW |
    O_DIRECTORY (openat semantics), and every file relative to its directory's: a directory swapped for a
    symlink while the walk runs is never followed, at any depth."""

    def note(what: str, message: str) -> None:
        warn(message)
        skipped[what] = skipped.get(what, 0) + 1

    def listing(fd: int, rel_dir: str) -> tuple[list[str], list[str]] | None:
        try:
            with os.scandir(fd) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if skip_unreadable and rel_dir:
                note("unreadable", f"files tier: cannot list {rel_dir}: {exc.strerror} (skipped)")
                return None
            raise TierError(
                f"files tier: cannot list {rel_dir or root}: {exc.strerror} "
                "(set [files] skip_unreadable = true to skip such directories)"
            ) from None
        files, subdirs = [], []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_symlink():
                note("symlinks", f"files tier: {rel} is a symlink, not followed (skipped)")
            elif entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith(".statekit-staging-"):
                    subdirs.append(entry.name)
            elif entry.is_file(follow_symlinks=False):
                files.append(entry.name)
            else:
                note("special", f"files tier: {rel} is a special file (device, fifo or socket), skipped")
        return files, subdirs

    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise TierError(f"files tier: cannot open {root}: {exc.strerror}") from None
    stack: list[tuple[int, str, Iterator[str]]] = [(root_fd, "", iter(()))]
    try:
        listed = listing(root_fd, "")
        files, subdirs = listed if listed else ([], [])
        for name in files:
            yield _Entry(name, name, root_fd)
        stack[-1] = (root_fd, "", iter(subdirs))
        while stack:
            fd, rel_dir, pending = stack[-1]
            sub = next(pending, None)
            if sub is None:
                stack.pop()
                os.close(fd)
                continue
            rel = f"{rel_dir}/{sub}" if rel_dir else sub
            try:
                child = os.open(sub, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    note("symlinks", f"files tier: {rel} is no longer a directory (a symlink?), not followed (skipped)")
                elif exc.errno != errno.ENOENT:  # a directory removed during the walk holds nothing
                    if not skip_unreadable:
                        raise TierError(
                            f"files tier: cannot list {rel}: {exc.strerror} "
                            "(set [files] skip_unreadable = true to skip such directories)"
                        ) from None
                    note("unreadable", f"files tier: cannot list {rel}: {exc.strerror} (skipped)")
                continue
            stack.append((child, rel, iter(())))
            listed = listing(child, rel)
            if listed is None:
                continue
            files, subdirs = listed
            for fname in files:
                yield _Entry(f"{rel}/{fname}", fname, child)
            stack[-1] = (child, rel, iter(subdirs))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _too_big(rel: str, size: int) -> TierError:
    """A key file over the bound a restore enforces: never archived (no restore could write it back)."""
    return TierError(
        f"files tier: {rel} is {size} bytes, more than the {MAX_FILE_TEXT} a key file may hold; "
        "exclude it with [files] exclude"
    )


class _SourceReader(io.RawIOBase):
    """Reads a big key file for the archive, turning read errors into a TierError that names the file (so they
    are not mistaken for errors writing the archive)."""

    def __init__(self, fh: IO[bytes], rel: str) -> None:
        self._fh = fh
        self._rel = rel

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        try:
            data = self._fh.read(len(buf))
        except OSError as exc:
            raise TierError(f"files tier: cannot read {self._rel}: {exc.strerror}") from None
        buf[: len(data)] = data
        return len(data)


def _check_root(cfg: FilesConfig) -> str:
    if not cfg.root:
        raise ConfigError("files tier: no root directory configured ([files] root or STATEKIT_FILES_ROOT)")
    root = os.path.abspath(cfg.root)
    if not os.path.isdir(root):
        raise TierUnavailable(f"files tier: root {cfg.root} is not a directory")
    return root


def snapshot_files(
    cfg: FilesConfig,
    sink: MemberSink,
    *,
    progress: Progress = no_progress,
    warn: Warn = no_warn,
) -> TierSummary:
    """Write every selected file under the root into the archive as files/<relative path>."""
    root = _check_root(cfg)
    summary = TierSummary("files", started_at=time.time())
    skipped: dict[str, int] = {}

    def note(message: str) -> None:
        # Kept in snapshot.json too, so `statekit inspect` shows what was left out.
        summary.warnings.append(message)
        warn(message)

    count = total = 0
    for entry in _walk(root, note, skipped, cfg.skip_unreadable):
        if not path_selected(entry.rel, cfg.include, cfg.exclude):
            continue
        try:
            fd = open_for_reading(entry.name, os.O_NONBLOCK, dir_fd=entry.dir_fd)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                note(f"files tier: {entry.rel} vanished during the snapshot (skipped)")
                continue
            if exc.errno == errno.ELOOP:
                # Replaced by a symlink since the directory was listed: still never followed.
                note(f"files tier: {entry.rel} is a symlink, not followed (skipped)")
                skipped["symlinks"] = skipped.get("symlinks", 0) + 1
                continue
            if cfg.skip_unreadable:
                note(f"files tier: cannot read {entry.rel}: {exc.strerror} (skipped)")
                skipped["unreadable"] = skipped.get("unreadable", 0) + 1
                continue
            raise TierError(
                f"files tier: cannot read {entry.rel}: {exc.strerror} "
                "(set [files] skip_unreadable = true to skip such files)"
            ) from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                # Swapped for a fifo or device since the listing (O_NONBLOCK kept the open from hanging).
                note(f"files tier: {entry.rel} is no longer a regular file (skipped)")
                skipped["special"] = skipped.get("special", 0) + 1
                continue
            os.set_blocking(fd, True)
            meta = {"files": 1, "mtime_ns": st.st_mtime_ns}
            name = PREFIX + entry.rel
            mode = st.st_mode & 0o7777
            if st.st_size > MAX_FILE_BYTES:
                raise _too_big(entry.rel, st.st_size)
            if st.st_size >= STREAM_BYTES:
                # Streamed: the archive takes st_size bytes (what the manifest records), so a file that grows
                # meanwhile stays within the bound. A read error half-way cannot be skipped: the archive is
                # mid-member.
                source = io.BufferedReader(_SourceReader(fh, entry.rel))
                sink.add(name, source, size=st.st_size, mode=mode, mtime=st.st_mtime, meta=meta)
                size = st.st_size
            else:
                try:
                    data = fh.read(MAX_FILE_BYTES + 1)
                except OSError as exc:
                    if cfg.skip_unreadable:
                        note(f"files tier: cannot read {entry.rel}: {exc.strerror} (skipped)")
                        skipped["unreadable"] = skipped.get("unreadable", 0) + 1
                        continue
                    raise TierError(f"files tier: cannot read {entry.rel}: {exc.strerror}") from None
                if len(data) > MAX_FILE_BYTES:  # grew since fstat
                    raise _too_big(entry.rel, len(data))
                # Write errors (disk full, read-only) propagate as OSError: the archive's, not the file's.
                sink.add(name, data, mode=mode, mtime=st.st_mtime, meta=meta)
                size = len(data)
        count += 1
        total += size
        progress("files", count, total)
    summary.finished_at = time.time()
    summary.counts = {"files": count, "bytes": total, **{f"skipped_{k}": v for k, v in skipped.items()}}
    summary.details = {"root": root, "include": list(cfg.include), "exclude": list(cfg.exclude)}
    return summary


# -- restore ----------------------------------------------------------------------------------------------
