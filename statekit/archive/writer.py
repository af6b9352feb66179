"""Writing a statekit archive: members streamed into a pax tar stream, compressed as zstd frames, encrypted
with age, with bounded memory. MANIFEST.json, written last, lists every member with its size and sha256. The
layout is documented in docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import tarfile
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import zstandard

from statekit import __version__
from statekit.archive.format import (
    COUNT_KEYS,
    FORMAT_MEMBER,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEAD_FIELDS,
    MANIFEST_MEMBER,
    READ_BLOCK,
    README_MEMBER,
    RESERVED_MEMBERS,
    SNAPSHOT_MEMBER,
    TAR_BLOCK,
    check_head,
    check_member_name,
    head_mismatch,
    json_bytes,
    tar_padding,
)
from statekit.errors import StorageError
from statekit.model import usable_cores

if TYPE_CHECKING:
    from statekit.archive.keys import Recipient

# Small members share a zstd frame until it holds this much input; a member at least this big gets frames
# of its own, so it can be located without decompressing its neighbours.
_FRAME_TARGET = 1 << 20
# Inside a big member, start a new frame at least this often.
_MAX_FRAME = 64 << 20


def _compress_threads() -> int:
    """zstd worker threads for a big member's frames: one per usable core, at most 4 (0: compress in the
    calling thread). While a table is read, the server, the reader and the compressor share the cores; with
    workers of its own, zstd uses whatever core is idle at the moment and the last segment compresses in
    parallel instead of one core finishing it alone (a 2M-row table's snapshot on two cores: a median of 3.34 s
    with 0 workers, 2.97 s with 2). The frames are ordinary zstd frames either way."""
    cores = usable_cores()
    return cores if cores > 1 else 0


README_TEXT = """\
This is a statekit archive: application state from a SQL database, Redis and key files.

Layers, outermost first: age v1 encryption (https://age-encryption.org/v1), zstd frames, a POSIX pax tar
stream. Without statekit:

    age -d -i identity.txt ARCHIVE | zstd -d | tar -x

(For an archive written with --no-encryption, drop the age step.)

Members:
  format.json       format name and version
  README.txt        this text
  db/...            per table: <schema>.<table>.schema.json and data segments
  redis/...         per database: key records with type, absolute expiry and value
  files/...         the key files, relative to the files root, with mode and mtime
  snapshot.json     when and from what the snapshot was taken (passwords redacted), per-tier times
  MANIFEST.json     last: every member with size and sha256, counts and totals

Check the extracted files against MANIFEST.json with `sha256sum`. The full description is in statekit's
docs/FORMAT.md.
"""


def _tar_header(name: str, size: int, mode: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode & 0o7777
    info.mtime = mtime
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@dataclass
class ManifestEntry:
    """One member's line in MANIFEST.json."""

    name: str
    size: int
    sha256: str
    mode: int
    mtime: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The member as it appears in MANIFEST.json."""
        doc: dict[str, Any] = {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "mode": f"{self.mode & 0o7777:04o}",
            "mtime": self.mtime,
        }
        if self.meta:
            doc["meta"] = self.meta
        return doc


class _PlainSink:
    """Stand-in for an age Encryptor when the user asked for an unencrypted archive."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._out.write(data)

    def close(self) -> None:
        pass


class ArchiveWriter:
    """Writes one archive to `out` (which it does not close). Implements the MemberSink protocol.

    Use `finish(snapshot)` once every tier has written its members; it appends snapshot.json and MANIFEST.json
    and closes the compression and encryption layers. `head` (the HEAD_FIELDS an archive knows when it starts)
    goes into format.json, the first member, so that a reader learns them without reading to the end; `finish`
    refuses a snapshot.json that contradicts them.
    """

    def __init__(
        self,
        out: IO[bytes],
        *,
        recipients: Sequence[Recipient] | None,
        level: int = 1,
        snapshot_id: str | None = None,
        created_at: float | None = None,
        head: Mapping[str, Any] | None = None,
    ) -> None:
        if recipients:
            from statekit.archive.age import Encryptor

            self._crypt: Any = Encryptor(out, list(recipients))
        else:
            self._crypt = _PlainSink(out)
        self.level = level
        self.snapshot_id = snapshot_id or str(uuid.uuid4())
        self.created_at = created_at
        self._lock = threading.Lock()
        self._cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._frame: Any = None
        self._frame_in = 0
        self._names: set[str] = set()
        self.entries: list[ManifestEntry] = []
        self.compressed_bytes = 0
        self.plain_bytes = 0
        self._finished = False
        self._local = threading.local()
        self.head = dict(head or {})
        if set(self.head) - set(HEAD_FIELDS) or check_head(self.head):
            raise ValueError(f"format.json cannot carry {self.head!r}")
        fmt = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "snapshot_id": self.snapshot_id, **self.head}
        self._add_internal(FORMAT_MEMBER, json_bytes(fmt), None)
        self._add_internal(README_MEMBER, README_TEXT.encode(), None)

    # -- MemberSink -------------------------------------------------------------------------------------
    def add(
        self,
        name: str,
        data: bytes | bytearray | memoryview | IO[bytes],
        *,
        size: int | None = None,
        mode: int = 0o600,
        mtime: float | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one member. Bytes of 1 MiB or more are compressed in the calling thread, so several threads
        adding big members compress in parallel; a file object is streamed (its `size` must be given). A
        bytes-like `data` (bytes, bytearray, memoryview) is read in place, not copied: it is consumed before
        `add` returns."""
        check_member_name(name)
        if name in RESERVED_MEMBERS:
            raise ValueError(f"member name {name!r} is reserved")
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._add_bytes(name, memoryview(data).cast("B"), mode, mtime, meta)
        else:
            if size is None:
                raise ValueError("size is required when adding a member from a file object")
            self._add_stream(name, data, size, mode, mtime, meta)

    def _claim(self, name: str) -> None:
        if self._finished:
            raise RuntimeError("archive already finished")
        if name in self._names:
            raise ValueError(f"duplicate archive member {name!r}")
        self._names.add(name)

    def _mtime(self, mtime: float | None) -> float:
        if mtime is not None:
            return mtime
        return float(int(self.created_at)) if self.created_at else 0.0

    def _add_internal(self, name: str, data: bytes, meta: Mapping[str, Any] | None) -> None:
        self._add_bytes(name, memoryview(data), 0o600, None, meta)

    def _add_bytes(
        self, name: str, view: memoryview, mode: int, mtime: float | None, meta: Mapping[str, Any] | None
    ) -> None:
        mt = self._mtime(mtime)
        size = view.nbytes
        header = _tar_header(name, size, mode, mt)
        entry = ManifestEntry(name, size, hashlib.sha256(view).hexdigest(), mode, mt, dict(meta or {}))
        if size >= _FRAME_TARGET:
            # Compress outside the lock: zstd releases the GIL, so parallel tier workers overlap here.
            cctx = self._thread_cctx()
            frames = []
            for off in range(0, size, _MAX_FRAME):
                # The header rides in the member's first frame, the padding in its last one.
                frame = cctx.compressobj()
                parts = [frame.compress(header)] if off == 0 else []
                parts.append(frame.compress(view[off : off + _MAX_FRAME]))
                if off + _MAX_FRAME >= size:
                    parts.append(frame.compress(tar_padding(size)))
                parts.append(frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
                frames.append(b"".join(parts))
            with self._lock:
                self._claim(name)
                self._close_frame()
                for fr in frames:
                    self._emit(fr)
                self.plain_bytes += len(header) + size + len(tar_padding(size))
                self.entries.append(entry)
            return
        with self._lock:
            self._claim(name)
            self._feed(header)
            self._feed(view)
            self._feed(tar_padding(size))
            self.entries.append(entry)
            if self._frame_in >= _FRAME_TARGET:
                self._close_frame()

    def _add_stream(
        self,
        name: str,
        src: IO[bytes],
        size: int,
        mode: int,
        mtime: float | None,
        meta: Mapping[str, Any] | None,
    ) -> None:
        mt = self._mtime(mtime)
        digest = hashlib.sha256()
        with self._lock:
            self._claim(name)
            self._close_frame()
            self._feed(_tar_header(name, size, mode, mt))
            remaining = size
            while remaining:
                block = src.read(min(READ_BLOCK, remaining))
                if not block:
                    raise StorageError(f"{name}: source shrank while it was being archived")
                digest.update(block)
                self._feed(block)
                remaining -= len(block)
                if self._frame_in >= _MAX_FRAME:
                    self._close_frame()
            if src.read(1):
                raise StorageError(f"{name}: source grew while it was being archived")
            self._feed(tar_padding(size))
            self._close_frame()
            self.entries.append(ManifestEntry(name, size, digest.hexdigest(), mode, mt, dict(meta or {})))

    # -- frames -----------------------------------------------------------------------------------------
    def _thread_cctx(self) -> zstandard.ZstdCompressor:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = zstandard.ZstdCompressor(level=self.level, write_checksum=True, threads=_compress_threads())
            self._local.cctx = cctx
        return cctx

    def _feed(self, data: bytes | memoryview) -> None:
        if not data:
            return
        if self._frame is None:
            self._frame = self._cctx.compressobj()
            self._frame_in = 0
        out = self._frame.compress(data)
        self._frame_in += len(data)
        self.plain_bytes += len(data)
        if out:
            self._emit(out)

    def _close_frame(self) -> None:
        if self._frame is not None:
            self._emit(self._frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
            self._frame = None
            self._frame_in = 0

    def _emit(self, data: bytes) -> None:
        if data:
            self._crypt.write(data)
            self.compressed_bytes += len(data)

    # -- end --------------------------------------------------------------------------------------------
    def finish(self, snapshot: Mapping[str, Any]) -> dict[str, Any]:
        """Append snapshot.json and MANIFEST.json, end the tar stream and close compression and encryption.

        Returns the manifest document."""
        doc = dict(snapshot)
        doc.setdefault("format", FORMAT_NAME)
        doc.setdefault("format_version", FORMAT_VERSION)
        doc.setdefault("snapshot_id", self.snapshot_id)
        doc.setdefault("statekit_version", __version__)
        wrong = head_mismatch(self.head, doc)
        if wrong:
            raise ValueError(f"snapshot.json's {wrong} differs from what format.json said at the start")
        self._add_internal(SNAPSHOT_MEMBER, json_bytes(doc), None)
        with self._lock:
            members = [e.to_json() for e in self.entries]
            totals: dict[str, int] = {"members": len(members) + 1, "bytes": sum(e.size for e in self.entries)}
            for e in self.entries:
                for key, val in e.meta.items():
                    # Only counts add up; other integers in meta (mtime_ns, a Redis db number) do not.
                    if key in COUNT_KEYS and isinstance(val, int) and not isinstance(val, bool):
                        totals[key] = totals.get(key, 0) + val
            manifest = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "snapshot_id": self.snapshot_id,
                "members": members,
                "totals": totals,
            }
            body = json_bytes(manifest)
            self._finished = False
        self._add_internal(MANIFEST_MEMBER, body, None)
        with self._lock:
            self._finished = True
            self._feed(b"\0" * (2 * TAR_BLOCK))
            self._close_frame()
            self._crypt.close()
        return manifest
