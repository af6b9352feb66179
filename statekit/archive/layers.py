"""The outer layers of an archive, opened for reading: age decryption when the file starts with the age
intro, then zstd decompression across frames, with a stream that stops inside a frame reported as truncated.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

import zstandard

from statekit.archive.format import AGE_MAGIC, ZSTD_MAGIC
from statekit.errors import CorruptArchive

if TYPE_CHECKING:
    from statekit.archive.keys import Identity


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

    def readinto(self, buf: Any) -> int:
        """Decompress into `buf` (up to its size; fewer is not the end): 0 only at a verified end of the
        compressed stream. A member's content goes from zstd into the buffer its reader hands out, uncopied."""
        try:
            n: int = self._reader.readinto(buf)
        except zstandard.ZstdError as exc:
            raise CorruptArchive(f"archive compression layer is damaged: {exc}") from None
        if not n and len(buf):
            self._walked.walker.finish()
        return n


class Plaintext(Protocol):
    """The plaintext tar stream of an archive: read (a bytes object) or readinto (a buffer of the caller's)."""

    def read(self, size: int) -> bytes: ...

    def readinto(self, buf: Any) -> int: ...


def open_layers(src: IO[bytes], identities: Sequence[Identity]) -> Plaintext:
    """The plaintext tar stream of the archive read from `src` (decrypted with `identities` if it is encrypted)."""
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
    return _Decompressed(decrypted)


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
