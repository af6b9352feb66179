"""The statekit archive container: a pax tar stream, compressed as zstd frames, encrypted with age.

Writing streams member by member with bounded memory; reading never trusts the archive: only regular files
with safe relative names, each listed in MANIFEST.json with the size and sha256 it really has. The layout is
documented in docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import posixpath
import tarfile
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import zstandard

from statekit import __version__
from statekit.errors import CorruptArchive, StorageError, UnsupportedFormat, UsageError
from statekit.fsio import ATOMIC_TEMP_NAME
from statekit.model import Member

if TYPE_CHECKING:
    from statekit.archive.keys import Identity, Recipient

FORMAT_NAME = "statekit-archive"
FORMAT_VERSION = 1
FORMAT_MEMBER = "format.json"
README_MEMBER = "README.txt"
SNAPSHOT_MEMBER = "snapshot.json"
MANIFEST_MEMBER = "MANIFEST.json"
RESERVED_MEMBERS = (FORMAT_MEMBER, README_MEMBER, SNAPSHOT_MEMBER, MANIFEST_MEMBER)
# Member meta keys that MANIFEST.json's "totals" sums over all members.
COUNT_KEYS = ("rows", "keys", "files", "tables")

AGE_MAGIC = b"age-encryption.org/v1\n"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_BLOCK = 512
# Small members share a zstd frame until it holds this much input; a member at least this big gets frames
# of its own, so it can be located without decompressing its neighbours.
_FRAME_TARGET = 1 << 20
# Inside a big member, start a new frame at least this often.
_MAX_FRAME = 64 << 20
_READ_BLOCK = 1 << 20
_MAX_PAX = 1 << 20

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


def _padding(size: int) -> bytes:
    rem = size % _BLOCK
    return b"\0" * (_BLOCK - rem) if rem else b""


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
    and closes the compression and encryption layers.
    """

    def __init__(
        self,
        out: IO[bytes],
        *,
        recipients: Sequence[Recipient] | None,
        level: int = 1,
        snapshot_id: str | None = None,
        created_at: float | None = None,
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
        fmt = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "snapshot_id": self.snapshot_id}
        self._add_internal(FORMAT_MEMBER, _json_bytes(fmt), None)
        self._add_internal(README_MEMBER, README_TEXT.encode(), None)

    # -- MemberSink -------------------------------------------------------------------------------------
    def add(
        self,
        name: str,
        data: bytes | IO[bytes],
        *,
        size: int | None = None,
        mode: int = 0o600,
        mtime: float | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one member. Bytes of 1 MiB or more are compressed in the calling thread, so several threads
        adding big members compress in parallel; a file object is streamed (its `size` must be given)."""
        check_member_name(name)
        if name in RESERVED_MEMBERS:
            raise ValueError(f"member name {name!r} is reserved")
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._add_bytes(name, bytes(data), mode, mtime, meta)
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
        self._add_bytes(name, data, 0o600, None, meta)

    def _add_bytes(
        self, name: str, data: bytes, mode: int, mtime: float | None, meta: Mapping[str, Any] | None
    ) -> None:
        mt = self._mtime(mtime)
        header = _tar_header(name, len(data), mode, mt)
        entry = ManifestEntry(name, len(data), hashlib.sha256(data).hexdigest(), mode, mt, dict(meta or {}))
        if len(data) >= _FRAME_TARGET:
            # Compress outside the lock: zstd releases the GIL, so parallel tier workers overlap here.
            cctx = self._thread_cctx()
            view = memoryview(data)
            frames = []
            for off in range(0, len(data), _MAX_FRAME):
                # The header rides in the member's first frame, the padding in its last one.
                frame = cctx.compressobj()
                parts = [frame.compress(header)] if off == 0 else []
                parts.append(frame.compress(view[off : off + _MAX_FRAME]))
                if off + _MAX_FRAME >= len(data):
                    parts.append(frame.compress(_padding(len(data))))
                parts.append(frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
                frames.append(b"".join(parts))
            with self._lock:
                self._claim(name)
                self._close_frame()
                for fr in frames:
                    self._emit(fr)
                self.plain_bytes += len(header) + len(data) + len(_padding(len(data)))
                self.entries.append(entry)
            return
        with self._lock:
            self._claim(name)
            self._feed(header)
            self._feed(data)
            self._feed(_padding(len(data)))
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
                block = src.read(min(_READ_BLOCK, remaining))
                if not block:
                    raise StorageError(f"{name}: source shrank while it was being archived")
                digest.update(block)
                self._feed(block)
                remaining -= len(block)
                if self._frame_in >= _MAX_FRAME:
                    self._close_frame()
            if src.read(1):
                raise StorageError(f"{name}: source grew while it was being archived")
            self._feed(_padding(size))
            self._close_frame()
            self.entries.append(ManifestEntry(name, size, digest.hexdigest(), mode, mt, dict(meta or {})))

    # -- frames -----------------------------------------------------------------------------------------
    def _thread_cctx(self) -> zstandard.ZstdCompressor:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = zstandard.ZstdCompressor(level=self.level, write_checksum=True)
            self._local.cctx = cctx
        return cctx

    def _feed(self, data: bytes) -> None:
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
        self._add_internal(SNAPSHOT_MEMBER, _json_bytes(doc), None)
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
            body = _json_bytes(manifest)
            self._finished = False
        self._add_internal(MANIFEST_MEMBER, body, None)
        with self._lock:
            self._finished = True
            self._feed(b"\0" * (2 * _BLOCK))
            self._close_frame()
            self._crypt.close()
        return manifest


def _json_bytes(doc: Any) -> bytes:
    # Names read from a non-UTF-8 file system hold lone surrogates (surrogateescape); "backslashreplace" turns
    # each into a JSON \udcXX escape, which json.loads turns back into the same surrogate. Everything else
    # stays readable UTF-8.
    return (json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def check_member_name(name: str) -> None:
    """Refuse names that could escape a target directory or confuse a reader."""
    if not name or "\0" in name or name.startswith("/") or "\\" in name:
        raise CorruptArchive(f"unsafe archive member name {name!r}")
    norm = posixpath.normpath(name)
    if norm != name or norm.startswith("../") or norm == ".." or norm == ".":
        raise CorruptArchive(f"unsafe archive member name {name!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise CorruptArchive(f"unsafe archive member name {name!r}")


# -- reading --------------------------------------------------------------------------------------------


class _HashingReader(io.RawIOBase):
    """Reads one member's content, hashing every byte that passes."""

    def __init__(self, src: IO[bytes], size: int) -> None:
        self._src = src
        self.remaining = size
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self.remaining <= 0:
            return 0
        want = min(len(buf), self.remaining)
        data = self._src.read(want)
        if not data:
            raise CorruptArchive("archive ends in the middle of a member (truncated)")
        n = len(data)
        buf[:n] = data
        self.digest.update(data)
        self.remaining -= n
        return n

    def drain(self) -> None:
        """Hash the rest of the member without copying it anywhere (the verifying pass reads mostly this way)."""
        while self.remaining > 0:
            data = self._src.read(min(self.remaining, _READ_BLOCK))
            if not data:
                raise CorruptArchive("archive ends in the middle of a member (truncated)")
            self.digest.update(data)
            self.remaining -= len(data)


class _TarStream:
    """A minimal, strict reader for the pax tar stream statekit writes (regular files plus pax headers)."""

    def __init__(self, src: IO[bytes]) -> None:
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
            block = self._read_exact(_BLOCK)
            if block == b"\0" * _BLOCK:
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise CorruptArchive(f"archive holds a damaged tar header: {exc}") from None
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
                # statekit's pax headers are a few hundred bytes; a huge one is an attempt to exhaust memory.
                if info.size > _MAX_PAX:
                    raise CorruptArchive(f"archive holds an implausibly large pax header ({info.size} bytes)")
                data = self._read_exact(info.size + len(_padding(info.size)))[: info.size]
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
        pad = len(_padding(size))
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


_ZSTD_FRAME_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50


class _FrameWalker:
    """Follows the zstd frame structure (RFC 8878, section 3.1) of the compressed bytes as they pass, without
    decompressing: python-zstandard's stream_reader reports a stream that stops inside a frame (an unencrypted
    archive cut short) as a clean end of data, so the end must be checked here."""

    def __init__(self) -> None:
        self._pending = bytearray()  # bytes of a header being assembled
        self._need = 4  # bytes of the current header still to assemble
        self._state = "magic"  # magic | descriptor | frame-header | block-header | skip
        self._skip = 0  # bytes of block content, checksum or skippable frame still to pass
        self._after_skip = "magic"
        self._checksum = 0  # whether the current frame ends with a 4-byte content checksum

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._state == "skip":
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                if not self._skip:
                    self._state = self._after_skip
                    self._need = 4 if self._state == "magic" else 3
                continue
            take = min(self._need, end - pos)
            self._pending += data[pos : pos + take]
            pos += take
            self._need -= take
            if not self._need:
                header = bytes(self._pending)
                self._pending.clear()
                self._step(header)

    def _step(self, header: bytes) -> None:
        if self._state == "magic":
            magic = int.from_bytes(header, "little")
            if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                self._state, self._need = "skippable-size", 4
            elif magic == _ZSTD_FRAME_MAGIC:
                self._state, self._need = "descriptor", 1
            else:
                raise CorruptArchive("archive compression layer is damaged: not a zstd frame")
        elif self._state == "skippable-size":
            self._go_skip(int.from_bytes(header, "little"), "magic")
        elif self._state == "descriptor":
            fhd = header[0]
            fcs_flag, single, checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
            if fhd & 0x08:
                raise CorruptArchive("archive compression layer is damaged: reserved frame header bit set")
            self._checksum = checksum
            rest = (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + ((1 if single else 0), 2, 4, 8)[fcs_flag]
            if rest:
                self._state, self._need = "frame-header", rest
            else:
                self._state, self._need = "block-header", 3
        elif self._state == "frame-header":
            self._state, self._need = "block-header", 3
        elif self._state == "block-header":
            value = int.from_bytes(header, "little")
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                raise CorruptArchive("archive compression layer is damaged: reserved block type")
            content = 1 if kind == 1 else size
            if last:
                self._go_skip(content + (4 if self._checksum else 0), "magic")
            else:
                self._go_skip(content, "block-header")

    def _go_skip(self, n: int, then: str) -> None:
        self._state, self._skip, self._after_skip = "skip", n, then
        self._need = 4 if then == "magic" else 3
        if not n:
            self._state = then

    def finish(self) -> None:
        """Raise CorruptArchive unless the data ended exactly between two frames."""
        if self._state != "magic" or self._pending:
            raise CorruptArchive("archive ends in the middle of a compressed frame (truncated)")


class _WalkedSource(io.RawIOBase):
    """Passes compressed bytes through to the decompressor while a _FrameWalker follows their framing."""

    def __init__(self, src: IO[bytes]) -> None:
        self._src = src
        self.walker = _FrameWalker()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._src.read(size)
        if data:
            self.walker.feed(data)
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class _Decompressed:
    """zstd decompression across frames with damaged or truncated data reported as CorruptArchive.

    Deliberately not an io.BufferedReader: `read` hands zstd's output bytes straight to the tar reader, since
    every extra copy costs as much as hashing on a small machine."""

    def __init__(self, src: IO[bytes]) -> None:
        self._walked = _WalkedSource(src)
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], self._walked), read_across_frames=True, read_size=1 << 17
        )

    def read(self, size: int) -> bytes:
        """Up to `size` bytes (fewer is not the end); b"" only at a verified end of the compressed stream."""
        try:
            data: bytes = self._reader.read(size)
        except zstandard.ZstdError as exc:
            raise CorruptArchive(f"archive compression layer is damaged: {exc}") from None
        if not data and size:
            self._walked.walker.finish()
        return data


def _open_layers(src: IO[bytes], identities: Sequence[Identity]) -> IO[bytes]:
    head = src.read(len(AGE_MAGIC))
    rest: IO[bytes]
    if head.startswith(AGE_MAGIC):
        from statekit.archive.age import Decryptor

        rest = cast(IO[bytes], _Prefixed(head, src))
        decrypted: IO[bytes] = io.BufferedReader(Decryptor(rest, list(identities)), 1 << 16)
    elif head.startswith(ZSTD_MAGIC):
        decrypted = cast(IO[bytes], _Prefixed(head, src))
    elif not head:
        raise CorruptArchive("file is empty: not a statekit archive")
    else:
        raise CorruptArchive("not a statekit archive (neither age-encrypted nor zstd)")
    return cast(IO[bytes], _Decompressed(decrypted))


class _Prefixed(io.RawIOBase):
    """Puts already-read bytes back in front of a stream."""

    def __init__(self, head: bytes, src: IO[bytes]) -> None:
        self._head = head
        self._src = src

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._src.read(len(buf))
        n = len(data)
        buf[:n] = data
        return n


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
        self._tar = _TarStream(_open_layers(src, identities))
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
                self.snapshot = _check_snapshot(load_json(self._consume(info), SNAPSHOT_MEMBER))
                continue
            self._register(info)
            reader = self._tar.content(info.size)
            if prefix is None or info.name.startswith(prefix):
                yield Member(
                    info.name,
                    info.size,
                    info.mode,
                    info.mtime,
                    io.BufferedReader(reader, _READ_BLOCK),
                )
            reader.drain()
            self._tar.skip_padding(info.size)
            self._seen[info.name] = (info.size, reader.digest.hexdigest())
            self._modes[info.name] = info.mode & 0o7777

    def _finish(self, info: tarfile.TarInfo) -> None:
        if info.size > 256 << 20:
            raise CorruptArchive("archive MANIFEST.json is implausibly large")
        self._register(info)
        reader = self._tar.content(info.size)
        body = reader.read()
        self._tar.skip_padding(info.size)
        manifest = load_json(body, MANIFEST_MEMBER)
        try:
            listed = {m["name"]: m for m in manifest["members"]}
            if not all(isinstance(m, dict) for m in listed.values()) or len(listed) != len(manifest["members"]):
                raise ValueError("members must be distinct objects")
            if not all(isinstance(m.get("meta", {}), dict) for m in listed.values()):
                raise ValueError("a member's meta must be an object")
            if not isinstance(manifest.get("totals", {}), dict):
                raise ValueError("totals must be an object")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CorruptArchive("archive MANIFEST.json is damaged") from None
        if self._tar.next_header() is not None:
            raise CorruptArchive("archive holds members after MANIFEST.json")
        # Read to the real end so the encryption layer checks its final chunk (truncation, trailing data).
        while True:
            rest = self._plain.read(_READ_BLOCK)
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
        self.manifest = manifest


# snapshot.json describes sources and tiers in a few KiB; a member this big is an attempt to exhaust memory.
_MAX_SNAPSHOT = 16 << 20


def load_json(body: bytes, name: str) -> Any:
    """Parse a JSON member of the archive; anything that is not plain JSON (including nesting deep enough to
    exhaust the parser) is a CorruptArchive naming the member."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise CorruptArchive(f"archive {name} is not valid JSON (or nested too deeply)") from None


def _check_snapshot(doc: Any) -> dict[str, Any]:
    """snapshot.json must be an object whose `tiers` (when present) is a list of objects: readers rely on it."""
    if not isinstance(doc, dict):
        raise CorruptArchive("archive snapshot.json is not a JSON object")
    tiers = doc.get("tiers", [])
    if not isinstance(tiers, list) or not all(isinstance(t, dict) for t in tiers):
        raise CorruptArchive("archive snapshot.json is damaged (tiers must be a list of objects)")
    for t in tiers:
        if not isinstance(t.get("tier", ""), str) or not all(
            isinstance(t.get(k, {}), dict) for k in ("counts", "details")
        ):
            raise CorruptArchive("archive snapshot.json is damaged (a tier with a malformed name, counts or details)")
    return doc


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
    """An archive on disk opened for reading: `index()` does one full verifying pass; `members()` starts a
    new pass each time it is called (each re-verified against the manifest at its end)."""

    def __init__(self, path: str | Path, identities: Sequence[Identity] = ()) -> None:
        self.path = Path(path)
        self.identities = list(identities)
        self._index: ArchiveIndex | None = None

    def index(self) -> ArchiveIndex:
        """format.json, snapshot.json and MANIFEST.json, after checking every member's hash."""
        if self._index is None:
            with _open_path(self.path) as fh:
                reader = ArchiveReader(fh, self.identities)
                for _ in reader.members(prefix="\0"):
                    pass
                self._index = ArchiveIndex(
                    reader.format, reader.snapshot, reader.manifest, os.fstat(fh.fileno()).st_size
                )
        return self._index

    @property
    def snapshot(self) -> dict[str, Any]:
        """snapshot.json (runs the verifying pass if it has not run yet)."""
        return self.index().snapshot

    @property
    def manifest(self) -> dict[str, Any]:
        """MANIFEST.json (runs the verifying pass if it has not run yet)."""
        return self.index().manifest

    def members(self, prefix: str | None = None) -> Iterator[Member]:
        """A new pass over the data members (filtered by prefix). If `index()` ran before, the pass must find
        the same MANIFEST.json: a consumer planned on that one, and the file may have been swapped since."""
        with _open_path(self.path) as fh:
            reader = ArchiveReader(fh, self.identities)
            yield from reader.members(prefix)
            if self._index is not None and reader.manifest != self._index.manifest:
                raise CorruptArchive(f"{self.path}: the archive changed while it was being read")
