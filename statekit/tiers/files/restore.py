"""plan_files_restore / restore_files: archive members back under a target directory.

Writing stages every file, checks it against
the archive's manifest, then promotes each one atomically (temp file 0600, fsync, rename, fsync directory),
so each target file is either its old or its new version, never a partial one.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from typing import TYPE_CHECKING

from statekit.config import FilesConfig
from statekit.errors import ConfigError, CorruptArchive, Refused, StatekitError, StorageError
from statekit.fsio import fsync_dir, open_for_reading, sha256_file, write_file_atomic
from statekit.model import (
    Progress,
    RestoreOptions,
    RestoreReport,
    TierSummary,
    UndoSink,
    Warn,
    announce_total,
    no_progress,
    no_warn,
)
from statekit.tiers.files.paths import ABSENT_MEMBER, MAX_FILE_BYTES, MAX_FILE_TEXT, PREFIX, path_selected

if TYPE_CHECKING:
    from statekit.archive.reader import Archive

_MAX_ABSENT = 64 << 20  # the list of created paths in an undo archive: far more than any root holds
_DIR_MODE = 0o700  # directories a restore creates: private, whatever the umask
_FILE_MODE_BITS = 0o600  # the most a restored key file gets: the owner's read/write bits of its archived mode
_NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX)
_PATH_MAX = 4096  # bytes in a whole path, its terminating NUL included (Linux PATH_MAX)


def _target_root(opts: RestoreOptions, cfg: FilesConfig) -> str:
    target = opts.target or cfg.root
    if not target:
        raise ConfigError("files restore: no target (use --target DIR or configure [files] root)")
    return os.path.abspath(target)


def _safe_join(root: str, rel: str) -> str:
    path = os.path.normpath(os.path.join(root, rel))
    if os.path.commonpath([root, path]) != root or path == root:
        raise CorruptArchive(f"archive member files/{rel} would be written outside the target")
    return path


def _check_rel(root: str, rel: str) -> None:
    """Refuse a relative path no file system could hold or that is not plainly below the root, before anything
    is written: a component that is empty, `.`, `..` or longer than NAME_MAX bytes, a NUL, a whole destination
    longer than PATH_MAX, or a name that has no bytes on this system (lone surrogates other than the
    surrogateescape of a non-UTF-8 name, which a snapshot of such a file archives)."""
    where = f"archive member {PREFIX}{rel[:80]}{'…' if len(rel) > 80 else ''}"
    try:
        raw = os.fsencode(rel)
    except UnicodeError:
        raise CorruptArchive(f"{where}: the path is not valid UTF-8 and not a file name") from None
    if not raw or b"\0" in raw or raw.startswith(b"/"):
        raise CorruptArchive(f"{where}: unsafe path")
    for part in raw.split(b"/"):
        if part in (b"", b".", b".."):
            raise CorruptArchive(f"{where}: unsafe path (empty, '.' or '..' component)")
        if len(part) > _NAME_MAX:
            raise CorruptArchive(f"{where}: a path component is {len(part)} bytes, more than {_NAME_MAX}")
    if len(os.fsencode(root)) + 1 + len(raw) >= _PATH_MAX:
        raise CorruptArchive(f"{where}: the path under {root} would be longer than {_PATH_MAX - 1} bytes")


def _check_size(rel: str, size: object) -> None:
    """Refuse a key file bigger than MAX_FILE_BYTES (docs/SECURITY.md, "Resource bounds")."""
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_BYTES:
        raise CorruptArchive(
            f"archive member {PREFIX}{rel} is {size} bytes, more than the {MAX_FILE_TEXT} a key file may hold"
        )


def _selected_members(archive: Archive, opts: RestoreOptions) -> list[dict[str, object]]:
    out = []
    for m in archive.manifest.get("members", []):
        name = m["name"]
        if not name.startswith(PREFIX):
            continue
        rel = name[len(PREFIX) :]
        if opts.match and not path_selected(rel, opts.match, ()):
            continue
        out.append(m)
    return out


def plan_files_restore(archive: Archive, opts: RestoreOptions, cfg: FilesConfig) -> RestoreReport:
    """What a files restore would create, overwrite or leave unchanged (writes nothing)."""
    root = _target_root(opts, cfg)
    report = RestoreReport("files", dry_run=True)
    counts = {"create": 0, "overwrite": 0, "unchanged": 0}
    selected = _selected_members(archive, opts)
    for m in selected:
        rel = str(m["name"])[len(PREFIX) :]
        _check_rel(root, rel)
        _check_size(rel, m["size"])
    _check_no_file_dir_conflicts([str(m["name"])[len(PREFIX) :] for m in selected])
    absent = _absent_paths(archive, opts)
    for rel in absent:
        _check_rel(root, rel)
    for m in selected:
        rel = str(m["name"])[len(PREFIX) :]
        path = _safe_join(root, rel)
        problem = _unsafe_destination(root, path) or _undo_cannot_hold(path, opts)
        if problem:
            report.problems.append(f"{rel}: {problem}")
            counts["refused"] = counts.get("refused", 0) + 1
            report.plan.append({"path": rel, "action": "refused", "size": m["size"], "mode": m.get("mode")})
            continue
        action = "create"
        if os.path.lexists(path):
            action = "overwrite"
            if (
                os.path.isfile(path)
                and not os.path.islink(path)
                and os.path.getsize(path) == m["size"]
                and sha256_file(path) == m["sha256"]
            ):
                action = "unchanged"
        counts[action] += 1
        report.plan.append({"path": rel, "action": action, "size": m["size"], "mode": m.get("mode")})
    for rel in absent:
        path = _safe_join(root, rel)
        if os.path.isfile(path) and not os.path.islink(path) and not _unsafe_destination(root, path):
            problem = _undo_cannot_hold(path, opts)
            if problem:
                report.problems.append(f"{rel}: {problem}")
                continue
            counts["delete"] = counts.get("delete", 0) + 1
            report.plan.append({"path": rel, "action": "delete"})
    report.counts = counts
    return report


def _check_no_file_dir_conflicts(rels: list[str]) -> None:
    """Refuse an archive in which one path is a file and also a directory of another (`a` and `a/b`): no
    restore can write both, so it is damaged or crafted, and it must fail before the first write."""
    files = set(rels)
    for rel in rels:
        parent = rel
        while "/" in parent:
            parent = parent.rpartition("/")[0]
            if parent in files:
                raise CorruptArchive(
                    f"archive member {PREFIX}{rel} needs {parent} to be a directory, but the archive also holds "
                    f"{PREFIX}{parent} as a file"
                )


def _undo_cannot_hold(path: str, opts: RestoreOptions) -> str | None:
    """Why the undo archive could not save the file at `path` (None if it can): an undo archive is restored like
    any archive, so it may not hold a key file bigger than MAX_FILE_BYTES either."""
    if opts.undo and os.path.isfile(path) and not os.path.islink(path):
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            return (
                f"the file in the target is {size} bytes, more than the {MAX_FILE_TEXT} an undo archive may hold "
                "(use --no-undo to replace it without one)"
            )
    return None


def _absent_paths(archive: Archive, opts: RestoreOptions) -> list[str]:
    """Paths an undo archive says did not exist before the restore it undoes (empty for snapshots). Only an
    undo archive (snapshot.json `kind` "undo") may carry them: statekit's snapshot never writes this member,
    so in any other archive it is a forgery meant to delete files, and the archive is refused."""
    if not any(m["name"] == ABSENT_MEMBER for m in archive.manifest.get("members", [])):
        return []
    if archive.snapshot.get("kind") != "undo":
        raise CorruptArchive(
            f"archive member {ABSENT_MEMBER} (files to delete) is only valid in an undo archive, and this archive "
            "is not one"
        )
    import json

    for member in archive.members(ABSENT_MEMBER):
        if member.name == ABSENT_MEMBER:
            if member.size > _MAX_ABSENT:
                raise CorruptArchive(f"archive member {ABSENT_MEMBER} is implausibly large")
            try:
                paths = json.loads(member.read_all())["absent"]
                if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
                    raise TypeError("not a list of paths")
            except (ValueError, KeyError, TypeError, RecursionError):
                raise CorruptArchive(f"archive member {ABSENT_MEMBER} is damaged") from None
            return [p for p in paths if not opts.match or path_selected(p, opts.match, ())]
    return []


def _unsafe_destination(root: str, path: str) -> str | None:
    """Why writing `path` could leave the root or clobber something that is not a key file (None if safe)."""
    current = root
    for part in os.path.relpath(os.path.dirname(path), root).split(os.sep):
        if part == ".":
            continue
        current = os.path.join(current, part)
        if os.path.islink(current):
            return f"parent directory {current} is a symlink; refusing to write through it"
        if os.path.lexists(current) and not os.path.isdir(current):
            return f"{current} exists and is not a directory"
    if os.path.islink(path):
        return "the target is a symlink; refusing to replace it"
    if os.path.lexists(path) and not os.path.isfile(path):
        return "the target exists and is not a regular file"
    return None


def restore_files(
    archive: Archive,
    opts: RestoreOptions,
    cfg: FilesConfig,
    *,
    undo: UndoSink | None,
    progress: Progress = no_progress,
    warn: Warn = no_warn,
) -> RestoreReport:
    """Stage the archived files, check them against the manifest, then promote each one atomically."""
    plan = plan_files_restore(archive, opts, cfg)
    if plan.problems:
        raise Refused(f"files restore refused: {plan.problems[0]}")
    root = _target_root(opts, cfg)
    report = RestoreReport("files", counts={"created": 0, "overwritten": 0, "unchanged": 0})
    wanted = {str(p["path"]): p for p in plan.plan if p["action"] not in ("unchanged", "delete")}
    doomed = [str(p["path"]) for p in plan.plan if p["action"] == "delete"]
    report.counts["unchanged"] = plan.counts["unchanged"]
    # Every change is recorded so that a failure part way puts the target back as it was (see _Changes).
    changes = _Changes()
    try:
        _make_dirs(root, changes.dirs)
    except OSError as exc:
        changes.roll_back()
        raise StorageError(f"files restore: cannot create target {root}: {exc.strerror}") from None
    staging = os.path.join(root, f".statekit-staging-{uuid.uuid4().hex[:10]}")
    try:
        os.mkdir(staging, 0o700)
    except OSError as exc:
        changes.roll_back()
        raise StorageError(f"files restore: cannot write in {root}: {exc.strerror}") from None
    changes.staging = staging
    try:
        staged: list[tuple[str, str, int, int]] = []
        by_name = {m["name"]: m for m in archive.manifest.get("members", [])}
        for member in archive.members(PREFIX):
            rel = member.name[len(PREFIX) :]
            if rel not in wanted:
                continue
            _safe_join(root, rel)
            _check_size(rel, member.size)  # the tar header's size: what the stream will really yield
            spath = os.path.join(staging, f"{len(staged):08d}")
            mode = _restored_mode(member.mode, rel, warn)
            mtime_ns = _mtime_ns(by_name.get(member.name), member.mtime)
            try:
                with open(os.open(spath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                    # at most the tar header's size, checked above: the member's stream ends there
                    shutil.copyfileobj(member.stream, out, 1 << 20)
                    out.flush()
                    # Ready to be renamed into place: content durable, mode and mtime final.
                    os.fsync(out.fileno())
                    os.fchmod(out.fileno(), mode & 0o7777)
                    os.utime(out.fileno(), ns=(mtime_ns, mtime_ns))
            except OSError as exc:
                raise StorageError(f"files restore: cannot stage {rel} in {root}: {exc.strerror}") from None
            staged.append((rel, spath, mode, mtime_ns))
        # archive.members() raised CorruptArchive if anything disagreed with the manifest: only now promote.
        if undo is not None:
            _save_undo(root, [rel for rel, *_ in staged] + doomed, undo)
        announce_total(progress, "files", len(staged))
        written = 0
        for i, (rel, spath, mode, mtime_ns) in enumerate(staged, 1):
            written += os.path.getsize(spath)
            dest = _safe_join(root, rel)
            existed = os.path.lexists(dest)
            try:
                make_parents(root, os.path.dirname(dest), created=changes.dirs)
            except OSError as exc:
                raise StorageError(f"files restore: cannot create the folder of {rel}: {exc.strerror}") from None
            if os.path.islink(dest) or (existed and not os.path.isfile(dest)):
                raise StorageError(f"files restore: {rel} exists and is not a regular file; not replaced")

            def copy(fd: int, spath: str = spath) -> None:
                # os.write may write less than asked; a closefd=False file object loops until all is written.
                with open(spath, "rb") as fh, open(fd, "wb", closefd=False) as out:
                    shutil.copyfileobj(fh, out, 1 << 20)

            try:
                changes.keep(dest, existed, rel)
                try:
                    # Staging lives inside the root, so a rename is the atomic promotion ...
                    os.replace(spath, dest)
                    fsync_dir(os.path.dirname(dest))
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    # ... unless a mount point lies in between: then copy to a temp file and rename that.
                    write_file_atomic(dest, copy, mode, mtime_ns)
            except OSError as exc:
                raise StorageError(f"files restore: cannot write {rel}: {exc.strerror}") from None
            report.counts["overwritten" if existed else "created"] += 1
            progress("files", i, written)
        for rel in doomed:
            path = _safe_join(root, rel)
            try:
                if not os.path.lexists(path):
                    continue
                changes.keep(path, True, rel)
                os.unlink(path)
                fsync_dir(os.path.dirname(path))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"files restore: cannot delete {rel}: {exc.strerror}") from None
            report.counts["deleted"] = report.counts.get("deleted", 0) + 1
    except BaseException as exc:
        if changes.roll_back() and isinstance(exc, StatekitError):
            exc.target_unchanged = True  # the error then says that the undo archive is not needed
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


class _Changes:
    """What a files restore changed in its target, so that a failure part way (a name the file system refuses,
    a full disk, an I/O error, an interrupt) puts it back: each replaced or deleted file is first hard-linked
    (or, across a mount point, copied) into the staging folder, which keeps its content, mode and mtime; each
    created file is removed again; each created folder, then the target itself if the restore made it, is
    removed when empty. The target's files never lack a version while this runs: a link, then a rename."""

    def __init__(self) -> None:
        self.dirs: list[str] = []  # created, in creation order
        self.files: list[tuple[str, str | None]] = []  # (path, its kept old version, or None if it was created)
        self.staging: str | None = None

    def keep(self, path: str, existed: bool, rel: str) -> None:
        """Record `path` before it is replaced (existed) or created; keep its old version."""
        if not existed:
            self.files.append((path, None))
            return
        assert self.staging is not None
        backup = os.path.join(self.staging, f"old-{len(self.files):08d}")
        try:
            try:
                os.link(path, backup, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copy2(path, backup, follow_symlinks=False)
        except OSError as exc:
            raise StorageError(f"files restore: cannot keep the old version of {rel}: {exc.strerror}") from None
        self.files.append((path, backup))

    def roll_back(self) -> bool:
        """Undo every recorded change, newest first (each step is tried whatever the others did); True when
        every one succeeded, so the target is as it was."""
        complete = True
        for path, backup in reversed(self.files):
            try:
                if backup is None:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        continue  # recorded, but the failure came before it was written
                else:
                    try:
                        os.replace(backup, path)
                    except OSError as exc:
                        if exc.errno != errno.EXDEV:
                            raise
                        st = os.stat(backup)

                        def copy(fd: int, backup: str = backup) -> None:
                            with open(backup, "rb") as fh, open(fd, "wb", closefd=False) as out:
                                shutil.copyfileobj(fh, out, 1 << 20)

                        write_file_atomic(path, copy, st.st_mode, st.st_mtime_ns)
                fsync_dir(os.path.dirname(path))
            except OSError:
                complete = False
        if self.staging is not None:  # inside the root: gone before the folders the restore created
            shutil.rmtree(self.staging, ignore_errors=True)
        for directory in reversed(self.dirs):
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError:
                complete = False
        self.files.clear()
        self.dirs.clear()
        return complete


def _restored_mode(mode: int, rel: str, warn: Warn) -> int:
    """The permission bits to give a restored file: at most 0600, the owner's read/write bits of the archived
    mode (docs/SECURITY.md); execute, group, other, setuid, setgid and sticky bits are never restored."""
    if mode & 0o7000:
        warn(f"files restore: {rel}: dropped setuid/setgid/sticky bits from mode {mode & 0o7777:04o}")
    return mode & _FILE_MODE_BITS


def _mtime_ns(entry: object, mtime: float) -> int:
    """The exact mtime recorded at snapshot time (manifest meta), else the tar header's (µs precision)."""
    meta = entry.get("meta") if isinstance(entry, dict) else None
    value = meta.get("mtime_ns") if isinstance(meta, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < 1 << 63:
        return value
    ns = int(mtime * 1_000_000) * 1000
    # A time the file system cannot hold (the tar header allows any number) becomes the epoch, never a crash.
    return ns if -(1 << 63) <= ns < 1 << 63 else 0


def make_parents(root: str, directory: str, what: str = "files restore", created: list[str] | None = None) -> None:
    """Create the folders from `root` down to `directory` (0700), refusing to write through a symlink; each
    folder created is appended to `created`."""
    rel = os.path.relpath(directory, root)
    if rel == ".":
        return
    current = root
    for part in rel.split(os.sep):
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise StorageError(f"{what}: {current} is a symlink; refusing to write through it")
        if not os.path.isdir(current):
            mkdir_exact(current)
            if created is not None:
                created.append(current)


def mkdir_exact(path: str, mode: int = _DIR_MODE) -> None:
    """Create one directory with exactly `mode` (the umask can neither widen nor narrow it)."""
    os.mkdir(path, mode)
    os.chmod(path, mode)


def _make_dirs(path: str, created: list[str]) -> None:
    """Like os.makedirs(path, exist_ok=True), each new directory created with _DIR_MODE exactly and appended
    to `created`."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _make_dirs(parent, created)
    try:
        mkdir_exact(path)
        created.append(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def _save_undo(root: str, rels: list[str], undo: UndoSink) -> None:
    """Save the files the restore will overwrite or delete, and list the ones it will create (absent now),
    so that restoring the undo archive puts the folder back as it was."""
    import json

    summary = TierSummary("files", started_at=time.time())
    n = 0
    absent = []
    for rel in rels:
        path = os.path.join(root, rel)
        if not os.path.lexists(path):
            absent.append(rel)
            continue
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        fd = open_for_reading(path)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            undo.sink.add(
                PREFIX + rel,
                fh,
                size=st.st_size,
                mode=st.st_mode & 0o7777,
                mtime=st.st_mtime,
                meta={"files": 1, "mtime_ns": st.st_mtime_ns},
            )
        n += 1
    if absent:
        undo.sink.add(ABSENT_MEMBER, json.dumps({"absent": absent}).encode(), meta={"absent": len(absent)})
    summary.finished_at = time.time()
    summary.counts = {"files": n, "absent": len(absent)}
    summary.details = {"root": root}
    undo.seal(summary)
