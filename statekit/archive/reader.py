"""Reading a statekit archive, never trusting it: only regular files with safe relative names, each listed
in MANIFEST.json with the size, sha256 and mode it really has; the end of every layer is checked. The layout
is documented in docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from statekit.archive.format import (
    FORMAT_MEMBER,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_MEMBER,
    READ_BLOCK,
    SNAPSHOT_MEMBER,
    TAR_BLOCK,
    bound_json_values,
    check_head,
    check_member_name,
    head_mismatch,
    load_json,
    tar_padding,
)
from statekit.archive.layers import Plaintext, open_layers
from statekit.errors import CorruptArchive, StorageError, UnsupportedFormat, UsageError
from statekit.fsio import ATOMIC_TEMP_NAME
from statekit.model import Member

if TYPE_CHECKING:
    from statekit.archive.keys import Identity

_MAX_PAX = 1 << 20


class _HashingReader(io.RawIOBase):
    """Reads one member's content, hashing every byte that passes."""

    def __init__(self, src: Plaintext, size: int) -> None:
        self._src = src
        self.remaining = size
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        # The plaintext layer decompresses straight into `buf` (a BufferedReader's result): no copy on the way.
        if self.remaining <= 0:
            return 0
        view = memoryview(buf).cast("B")
        if len(view) > self.remaining:
            view = view[: self.remaining]
        n = self._src.readinto(view)
        if not n:
            raise CorruptArchive("archive ends in the middle of a member (truncated)")
        self.digest.update(view[:n])
        self.remaining -= n
        return n

    def drain(self) -> None:
        """Hash the rest of the member without copying it anywhere (the verifying pass reads mostly this way)."""
        while self.remaining > 0:
            data = self._src.read(min(self.remaining, READ_BLOCK))
            if not data:
                raise CorruptArchive("archive ends in the middle of a member (truncated)")
            self.digest.update(data)
            self.remaining -= len(data)


class _TarStream:
    """A minimal, strict reader for the pax tar stream statekit writes (regular files plus pax headers)."""

    def __init__(self, src: Plaintext) -> None:
        self._src = src

    def _read_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            data = self._src.read(n)
            if not data:
                raise CorruptArchive("archive ends in the middle of a member (truncated)")
            chunks.append(data)
            n -= len(data)
        return b"".join(chunks)

    def next_header(self) -> tarfile.TarInfo | None:
        """Return the next regular-file header, or None at the end-of-archive marker."""
        pax: dict[str, str] = {}
        while True:
            block = self._read_exact(TAR_BLOCK)
            if block == b"\0" * TAR_BLOCK:
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise CorruptArchive(f"archive holds a damaged tar header: {exc}") from None
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
                # statekit's pax headers are a few hundred bytes; a huge one is an attempt to exhaust memory.
                if info.size > _MAX_PAX:
                    raise CorruptArchive(f"archive holds an implausibly large pax header ({info.size} bytes)")
                data = self._read_exact(info.size + len(tar_padding(info.size)))[: info.size]
                if info.type == tarfile.XHDTYPE:
                    pax.update(_parse_pax(data))
                continue
            if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                kind = {
                    tarfile.SYMTYPE: "a symlink",
                    tarfile.LNKTYPE: "a hard link",
                    tarfile.CHRTYPE: "a character device",
                    tarfile.BLKTYPE: "a block device",
                    tarfile.DIRTYPE: "a directory",
                    tarfile.FIFOTYPE: "a fifo",
                }.get(info.type, f"type {info.type!r}")
                raise CorruptArchive(f"archive member {info.name!r} is {kind}; only regular files are allowed")
            if "path" in pax:
                info.name = pax["path"]
            if "size" in pax:
                try:
                    info.size = int(pax["size"])
                except ValueError:
                    raise CorruptArchive("archive holds a damaged pax size record") from None
            if "mtime" in pax:
                try:
                    info.mtime = float(pax["mtime"])
                except ValueError:
                    raise CorruptArchive("archive holds a damaged pax mtime record") from None
            if info.size < 0:
                raise CorruptArchive(f"archive member {info.name!r} has a negative size")
            if not math.isfinite(info.mtime):
                raise CorruptArchive(f"archive member {info.name!r} has an invalid mtime")
            return info

    def content(self, size: int) -> _HashingReader:
        return _HashingReader(self._src, size)

    def skip_padding(self, size: int) -> None:
        pad = len(tar_padding(size))
        if pad:
            self._read_exact(pad)


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    binary = False
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise CorruptArchive("archive holds a damaged pax header")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise CorruptArchive("archive holds a damaged pax header") from None
        if length <= 0 or pos + length > len(data):
            raise CorruptArchive("archive holds a damaged pax header")
        record = data[space + 1 : pos + length - 1]
        key, eq, value = record.partition(b"=")
        if not eq:
            raise CorruptArchive("archive holds a damaged pax header")
        if key == b"hdrcharset" and value == b"BINARY":
            binary = True
        out[key.decode("utf-8", "surrogateescape")] = value.decode(
            "utf-8", "surrogateescape" if binary or key == b"path" else "replace"
        )
        pos += length
    return out


@dataclass
class ArchiveIndex:
    """What a full verifying pass learned: format.json, snapshot.json and MANIFEST.json."""

    format: dict[str, Any]
    snapshot: dict[str, Any]
    manifest: dict[str, Any]
    compressed_size: int = 0

    def entries(self) -> dict[str, dict[str, Any]]:
        """Manifest members by name."""
        return {m["name"]: m for m in self.manifest.get("members", [])}


class ArchiveReader:
    """One sequential pass over an archive. Iterate `members()` once; at its end everything has been
    checked against MANIFEST.json (else CorruptArchive was raised)."""

    def __init__(self, src: IO[bytes], identities: Sequence[Identity]) -> None:
        self._tar = _TarStream(open_layers(src, identities))
        self._plain = self._tar._src
        self.format: dict[str, Any] = {}
        self.snapshot: dict[str, Any] = {}
        self.manifest: dict[str, Any] = {}
        self._seen: dict[str, tuple[int, str]] = {}
        self._modes: dict[str, int] = {}
        self._read_format()

    def _read_format(self) -> None:
        try:
            info = self._tar.next_header()
        except CorruptArchive as exc:
            raise CorruptArchive(f"not a statekit archive or damaged at the start: {exc}") from None
        if info is None or info.name != FORMAT_MEMBER or info.size > 65536:
            raise CorruptArchive("not a statekit archive (format.json is not the first member)")
        body = self._consume(info)
        doc = load_json(body, FORMAT_MEMBER)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise CorruptArchive("not a statekit archive (format.json names another format)")
        version = doc.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise CorruptArchive("archive format.json has no valid format_version")
        if version > FORMAT_VERSION:
            raise UnsupportedFormat(
                f"archive format version {version} is newer than this statekit supports "
                f"({FORMAT_VERSION}); upgrade statekit to read it"
            )
        wrong = check_head(doc)
        if wrong:
            raise CorruptArchive(f"archive format.json is damaged ({wrong})")
        self.format = doc

    def _consume(self, info: tarfile.TarInfo) -> bytes:
        self._register(info)
        reader = self._tar.content(info.size)
        body = reader.read()
        self._tar.skip_padding(info.size)
        self._seen[info.name] = (info.size, reader.digest.hexdigest())
        self._modes[info.name] = info.mode & 0o7777
        return body

    def _register(self, info: tarfile.TarInfo) -> None:
        check_member_name(info.name)
        if info.name in self._seen:
            raise CorruptArchive(f"archive holds member {info.name!r} twice")

    def members(self, prefix: str | None = None) -> Iterator[Member]:
        """Yield data members in archive order (those under `prefix` only, if given); the others are read
        and hashed but not yielded. Raises CorruptArchive at the end on any disagreement with the manifest."""
        while True:
            info = self._tar.next_header()
            if info is None:
                raise CorruptArchive("archive ends without MANIFEST.json (truncated or not finished)")
            if info.name == MANIFEST_MEMBER:
                self._finish(info)
                return
            if info.name == SNAPSHOT_MEMBER:
                if info.size > _MAX_SNAPSHOT:
                    raise CorruptArchive("archive snapshot.json is implausibly large")
                body = self._consume(info)
                # a few objects per tier (db: one for all its tables' row counts): bounded like MANIFEST.json
                bound_json_values(body, SNAPSHOT_MEMBER, containers=len(body) // 32 + 256, commas=len(body) // 8 + 256)
                self.snapshot = _check_snapshot(load_json(body, SNAPSHOT_MEMBER))
                continue
            self._register(info)
            reader = self._tar.content(info.size)
            if prefix is None or info.name.startswith(prefix):
                yield Member(
                    info.name,
                    info.size,
                    info.mode,
                    info.mtime,
                    io.BufferedReader(reader, READ_BLOCK),
                )
            reader.drain()
            self._tar.skip_padding(info.size)
            self._seen[info.name] = (info.size, reader.digest.hexdigest())
            self._modes[info.name] = info.mode & 0o7777

    def _finish(self, info: tarfile.TarInfo) -> None:
        # MANIFEST.json lists exactly the members read before it: what it may cost to parse follows from them.
        count = len(self._seen)
        if info.size > min(_MANIFEST_MAX, _MANIFEST_BASE + sum(_MANIFEST_PER_MEMBER + 8 * len(n) for n in self._seen)):
            raise CorruptArchive(f"archive MANIFEST.json is implausibly large ({info.size} bytes for {count} members)")
        self._register(info)
        reader = self._tar.content(info.size)
        body = reader.read()
        self._tar.skip_padding(info.size)
        # An entry is an object with a meta object and at most ~20 commas, plus what its name holds of `{[,`.
        names = "".join(self._seen)
        bound_json_values(
            body,
            MANIFEST_MEMBER,
            containers=2 * count + 8 + names.count("{") + names.count("["),
            commas=24 * count + 64 + names.count(","),
        )
        manifest = load_json(body, MANIFEST_MEMBER)
        wrong = _manifest_fault(manifest)
        if wrong:
            raise CorruptArchive(f"archive MANIFEST.json is damaged ({wrong})")
        listed = {m["name"]: m for m in manifest["members"]}
        if self._tar.next_header() is not None:
            raise CorruptArchive("archive holds members after MANIFEST.json")
        # Read to the real end so the encryption layer checks its final chunk (truncation, trailing data).
        while True:
            rest = self._plain.read(READ_BLOCK)
            if not rest:
                break
            if rest.strip(b"\0"):
                raise CorruptArchive("archive holds data after the end of the tar stream")
        for name, (size, digest) in self._seen.items():
            entry = listed.get(name)
            if entry is None:
                raise CorruptArchive(f"archive member {name!r} is not listed in MANIFEST.json")
            if entry.get("size") != size:
                raise CorruptArchive(f"archive member {name!r} is {size} bytes, MANIFEST.json says {entry.get('size')}")
            if entry.get("sha256") != digest:
                raise CorruptArchive(f"archive member {name!r} does not match its sha256 in MANIFEST.json")
            # The tar header's mode is what a restore applies, so it must be the one the manifest records.
            if entry.get("mode") != f"{self._modes[name]:04o}":
                raise CorruptArchive(
                    f"archive member {name!r} has mode {self._modes[name]:04o}, MANIFEST.json says {entry.get('mode')}"
                )
        missing = sorted(set(listed) - set(self._seen))
        if missing:
            raise CorruptArchive(f"archive lacks {len(missing)} member(s) listed in MANIFEST.json: {missing[0]!r}")
        # What format.json said before any member (a consumer may have acted on it: an undo archive's target)
        # must be what the verified snapshot.json says.
        wrong = head_mismatch(self.format, self.snapshot)
        if wrong:
            raise CorruptArchive(f"archive format.json and snapshot.json disagree on {wrong}")
        self.manifest = manifest


# snapshot.json describes sources and tiers in a few KiB; a member this big is an attempt to exhaust memory.
_MAX_SNAPSHOT = 16 << 20

# MANIFEST.json: an entry as the writer indents it is about 300 bytes plus its name (a db segment's meta adds
# its table name, at most twice the member name; a name is JSON-escaped in at most 6 bytes a character), so
# 1 KiB plus 8 bytes a name character per member read, plus the document's head and totals, bound a real one;
# 256 MiB (about a million members) bounds any.
_MANIFEST_PER_MEMBER = 1024
_MANIFEST_BASE = 64 << 10
_MANIFEST_MAX = 256 << 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MODE_OCTAL = re.compile(r"[0-7]{4}")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _manifest_fault(doc: Any) -> str | None:
    """What is wrong with the shape of MANIFEST.json (None when every entry has the fields the writer gives it:
    a name, a non-negative integer size, a hex sha256, a 4-digit octal mode, a finite mtime, scalar meta)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("members"), list):
        return "members must be a list"
    names: set[str] = set()
    for i, m in enumerate(doc["members"]):
        if not isinstance(m, dict):
            return f"entry {i} is not an object"
        name = m.get("name")
        if not isinstance(name, str) or name in names:
            return f"entry {i} has no name or a name listed twice"
        names.add(name)
        if not _count(m.get("size")):
            return f"entry {i} has no valid size"
        sha, mode, mtime = m.get("sha256"), m.get("mode"), m.get("mtime")
        if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
            return f"entry {i} has no valid sha256"
        if not isinstance(mode, str) or not _MODE_OCTAL.fullmatch(mode):
            return f"entry {i} has no valid mode"
        if not isinstance(mtime, (int, float)) or isinstance(mtime, bool) or not math.isfinite(mtime):
            return f"entry {i} has no valid mtime"
        meta = m.get("meta", {})
        if not isinstance(meta, dict) or any(isinstance(v, (dict, list)) for v in meta.values()):
            return f"entry {i} has a meta that is not an object of plain values"
    totals = doc.get("totals", {})
    if not isinstance(totals, dict) or not all(_count(v) for v in totals.values()):
        return "totals must be an object of counts"
    return None


def _check_snapshot(doc: Any) -> dict[str, Any]:
    """snapshot.json must have the shape docs/FORMAT.md gives it, field by field where a reader uses the field:
    checked once here so that no command (inspect, verify, diff, restore) trips over a forged one."""
    if not isinstance(doc, dict):
        raise CorruptArchive("archive snapshot.json is not a JSON object")
    wrong = _snapshot_fault(doc)
    if wrong:
        raise CorruptArchive(f"archive snapshot.json is damaged ({wrong})")
    return doc


# Text fields of snapshot.json and of its tiers[] entries (each may be absent).
_SNAPSHOT_TEXT = ("kind", "format", "snapshot_id", "statekit_version", "created_at", "finished_at", "host")
_TIER_TEXT = ("tier", "started_at", "finished_at")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _snapshot_fault(doc: dict[str, Any]) -> str | None:
    """What is wrong with snapshot.json's fields (None when each present one has its documented type)."""
    for key in _SNAPSHOT_TEXT:
        if key in doc and not isinstance(doc[key], str):
            return f"{key} must be text"
    if doc.get("tier_window_s") is not None and not _number(doc["tier_window_s"]):
        return "tier_window_s must be a number"
    options = doc.get("options", {})
    if not isinstance(options, dict):
        return "options must be an object"
    if options.get("encryption") is not None and not isinstance(options["encryption"], dict):
        return "options.encryption must be an object"
    if "compression" in options and not isinstance(options["compression"], str):
        return "options.compression must be text"
    for key in ("undo_of", "restore_target"):
        if key in doc and not isinstance(doc[key], (dict, str) if key == "undo_of" else dict):
            return f"{key} is malformed"
    tiers = doc.get("tiers", [])
    if not isinstance(tiers, list) or not all(isinstance(t, dict) for t in tiers):
        return "tiers must be a list of objects"
    for t in tiers:
        if not all(isinstance(t.get(k, ""), str) for k in _TIER_TEXT):
            return "a tier's name and times must be text"
        counts, details, warnings = t.get("counts", {}), t.get("details", {}), t.get("warnings", [])
        if not isinstance(counts, dict) or not all(_number(v) for v in counts.values()):
            return "a tier's counts must be an object of numbers"
        if not isinstance(details, dict):
            return "a tier's details must be an object"
        if "duration_s" in t and not _number(t["duration_s"]):
            return "a tier's duration_s must be a number"
        if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
            return "a tier's warnings must be a list of text"
    return None


def _open_path(path: str | Path) -> IO[bytes]:
    if ATOMIC_TEMP_NAME.match(Path(path).name):
        # A run killed after its last fsync but before the rename leaves a complete-looking file under this
        # name; it never became an archive, so it is never read as one.
        raise CorruptArchive(f"{path}: an unfinished temporary file of an interrupted run, not an archive")
    try:
        return open(path, "rb", buffering=1 << 20)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such archive") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not an archive") from None
    except OSError as exc:
        raise StorageError(f"{path}: cannot read: {exc.strerror}") from None


class Archive:
    """An archive on disk opened for reading: `head()` reads format.json alone; `index()` does one full
    verifying pass; `members()` starts a new pass each time it is called (each re-verified against the manifest
    at its end; the first one read to its end stands for index())."""

    def __init__(self, path: str | Path, identities: Sequence[Identity] = ()) -> None:
        self.path = Path(path)
        self.identities = list(identities)
        self._index: ArchiveIndex | None = None
        self._head: dict[str, Any] | None = None

    def head(self) -> dict[str, Any]:
        """format.json, the first member, read without a verifying pass (only the start of the file is read):
        what the archive says it is before any member — `kind`, `tiers` and an undo archive's `restore_target`
        when it was written with them (HEAD_FIELDS). Not verified yet: every pass checks that it finds this same
        format.json, listed in MANIFEST.json with its sha256 and agreeing with snapshot.json, or raises
        CorruptArchive at its end."""
        if self._head is None:
            if self._index is not None:
                self._head = self._index.format
            else:
                with _open_path(self.path) as fh:
                    self._head = ArchiveReader(fh, self.identities).format
        return self._head

    def index(self) -> ArchiveIndex:
        """format.json, snapshot.json and MANIFEST.json, after checking every member's hash."""
        if self._index is None:
            with _open_path(self.path) as fh:
                reader = ArchiveReader(fh, self.identities)
                for _ in reader.members(prefix="\0"):
                    pass
                self._same_head(reader)
                self._index = ArchiveIndex(
                    reader.format, reader.snapshot, reader.manifest, os.fstat(fh.fileno()).st_size
                )
                self._head = reader.format
        return self._index

    @property
    def verified(self) -> bool:
        """Whether a whole pass has verified the archive (index(), or members() read to its end)."""
        return self._index is not None

    @property
    def snapshot(self) -> dict[str, Any]:
        """snapshot.json (runs the verifying pass if it has not run yet)."""
        return self.index().snapshot

    @property
    def manifest(self) -> dict[str, Any]:
        """MANIFEST.json (runs the verifying pass if it has not run yet)."""
        return self.index().manifest

    def members(self, prefix: str | None = None) -> Iterator[Member]:
        """A new pass over the data members (filtered by prefix). If `index()` or `head()` ran before, the pass
        must find the same format.json and MANIFEST.json: a consumer planned on those, and the file may have
        been swapped since."""
        with _open_path(self.path) as fh:
            reader = ArchiveReader(fh, self.identities)
            yield from reader.members(prefix)
            self._same_head(reader)
            if self._index is not None and reader.manifest != self._index.manifest:
                raise CorruptArchive(f"{self.path}: the archive changed while it was being read")
            if self._index is None:  # a pass read to its end verifies as much as index() does
                self._index = ArchiveIndex(
                    reader.format, reader.snapshot, reader.manifest, os.fstat(fh.fileno()).st_size
                )

    def _same_head(self, reader: ArchiveReader) -> None:
        # At the end of the pass, like the manifest check: a consumer commits only after the pass ended.
        if self._head is not None and reader.format != self._head:
            raise CorruptArchive(f"{self.path}: the archive changed while it was being read")
