"""age v1 (age-encryption.org/v1) streaming encryption and decryption on the `cryptography` package.

`Encryptor` is a writable binary stream and `Decryptor` a readable one, so they slot between a file and
zstandard/tarfile. Memory does not depend on the file size: the Encryptor buffers at most one 64 KiB
chunk; the Decryptor reuses one ciphertext and one plaintext chunk buffer, plus (for a `read(n)` that
spans chunks, n ≤ 1 MiB) one n-byte assembly buffer.

The format (c2sp.org/age), in short: a text header (version line, one stanza per recipient carrying the
16-byte file key wrapped for it, an HMAC over the header), a 16-byte nonce, then the STREAM payload:
64 KiB ChaCha20-Poly1305 chunks whose nonce is an 11-byte big-endian counter plus a "last chunk" byte.
Parsing is strict, as the spec and its test vectors (C2SP CCTV) require: a file has exactly one valid
byte representation, and every way to truncate or extend it is detected.

Errors map onto the project hierarchy:

- `AgeHeaderError` (CorruptArchive): the header violates the format;
- `AgeHmacError` (CorruptArchive): the header was changed after it was written;
- `AgePayloadError` (CorruptArchive): a chunk does not verify, or the stream is truncated or extended;
- `AgeNoMatch` (DecryptionError): none of the given identities or passphrases opens the file (including
  a wrong passphrase: the spec treats a failed scrypt unwrap like any other non-matching stanza).
"""

from __future__ import annotations

import hmac
import io
import os
from collections.abc import Sequence
from types import TracebackType
from typing import IO, TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from statekit.archive.age_header import (
    INTRO,
    AgeHeaderError,
    AgeNoMatch,
    HeaderSource,
    encode_stanza,
    header_error,
    header_mac,
    parse_header,
    unwrap_file_key,
)
from statekit.archive.encoding import b64_encode_unpadded
from statekit.archive.keys import FILE_KEY_SIZE, Identity, Recipient, hkdf_sha256
from statekit.errors import CorruptArchive, UsageError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "CHUNK_SIZE",
    "INTRO",
    "AgeHeaderError",
    "AgeHmacError",
    "AgeNoMatch",
    "AgePayloadError",
    "Decryptor",
    "Encryptor",
    "decrypt_bytes",
    "encrypt_bytes",
    "is_age_file",
]

CHUNK_SIZE = 64 * 1024
_TAG_SIZE = 16
_ENC_CHUNK_SIZE = CHUNK_SIZE + _TAG_SIZE
_NONCE_SIZE = 16
# The counter is 11 bytes; reaching 2**88 chunks (16 YiB) is impossible, but never let it wrap.
_MAX_CHUNKS = 1 << 88
_SCRATCH_MAX = 1 << 20


class AgeHmacError(CorruptArchive):
    """The header MAC does not verify: the header was modified."""


class AgePayloadError(CorruptArchive):
    """A payload chunk does not verify, or the payload is truncated or has trailing data."""

    def __init__(self, message: str, chunk: int = 0) -> None:
        super().__init__(message)
        self.chunk = chunk


def is_age_file(first_bytes: bytes) -> bool:
    """True if `first_bytes` (the start of a file, at least 22 bytes) begins with the age v1 intro line."""
    return bytes(first_bytes[: len(INTRO)]) == INTRO


def _chunk_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


# ------------------------------------------------------------------------------------------------ writing


class Encryptor(io.BufferedIOBase):
    """A writable binary stream that age-encrypts what is written into `out`.

    The header is written at construction. `close()` writes the final chunk and flushes `out` but does
    not close it. Used as a context manager, an exception inside the block *aborts* instead: the final
    chunk is not written, so the output can never pass for a complete file. An Encryptor that is garbage
    collected without `close()` also aborts.
    """

    def __init__(self, out: IO[bytes], recipients: Sequence[Recipient]) -> None:
        super().__init__()
        self._finished = False  # no chunk may be written any more: closed, aborted or a write failed
        self._out = out
        self._buf = bytearray()
        self._counter = 0
        if not recipients:
            raise UsageError("no recipient given: refusing to write an unencrypted archive")
        file_key = os.urandom(FILE_KEY_SIZE)
        stanzas = [stanza for recipient in recipients for stanza in recipient.wrap(file_key)]
        if not stanzas:
            raise UsageError("the recipients produced no stanza")
        if len(stanzas) > 1 and any(s.type == "scrypt" for s in stanzas):
            # Spec rule: a passphrase-encrypted file must be openable by the passphrase alone, so that
            # knowing the passphrase implies the file was made by someone who knew it.
            raise UsageError("a passphrase cannot be combined with other recipients in one archive")
        header = INTRO + b"".join(encode_stanza(s) for s in stanzas) + b"---"
        mac = header_mac(file_key, header)
        nonce = os.urandom(_NONCE_SIZE)
        self._aead = ChaCha20Poly1305(hkdf_sha256(file_key, nonce, b"payload"))
        out.write(header + b" " + b64_encode_unpadded(mac).encode("ascii") + b"\n" + nonce)

    def writable(self) -> bool:
        """Always True."""
        return True

    def _seal(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        if self._counter >= _MAX_CHUNKS:
            raise OverflowError("age STREAM chunk counter exhausted")
        self._out.write(self._aead.encrypt(_chunk_nonce(self._counter, last), data, None))
        self._counter += 1

    def write(self, b: ReadableBuffer, /) -> int:
        """Encrypt `b`; full chunks are written to `out` as soon as it is known they are not the last."""
        if self.closed:
            raise ValueError("write to a closed Encryptor")
        if self._finished:
            raise ValueError("write to an Encryptor after a failed write")
        try:
            return self._write(b)
        except BaseException:
            # Part of `b` may be lost or half-written to `out`: the stream must never be finalised now,
            # or a later close() would produce a complete-looking file with a hole in it.
            self._finished = True
            raise

    def _write(self, b: ReadableBuffer) -> int:
        with memoryview(b) as whole, whole.cast("B") as view:
            size = len(view)
            data = view
            buf = self._buf
            if buf:
                take = min(CHUNK_SIZE - len(buf), len(data))
                buf += data[:take]
                data = data[take:]
                if not data:
                    return size
                # The buffer is full and more follows, so it is not the final chunk.
                self._seal(buf, last=False)
                buf.clear()
            # Encrypt straight from the caller's buffer while it holds more than a chunk: no copies.
            # A full chunk at the very end stays buffered, since it may turn out to be the final one.
            offset = 0
            while len(data) - offset > CHUNK_SIZE:
                self._seal(data[offset : offset + CHUNK_SIZE], last=False)
                offset += CHUNK_SIZE
            buf += data[offset:]
            return size

    def flush(self) -> None:
        """Flush `out`. The partial chunk stays buffered: STREAM chunks cannot be cut short."""
        # Not after finishing: abort() must not touch a destination that may just have failed.
        if not self.closed and not self._finished:
            self._out.flush()

    def close(self) -> None:
        """Write the final chunk and flush `out` (which stays open). Idempotent.

        After a failed `write` (or `abort`) no final chunk is written: the output stays detectably
        truncated rather than complete-looking with data missing.
        """
        if self.closed:
            return
        try:
            if not self._finished:
                # Empty only if nothing was ever written: the one case where an empty final chunk is legal.
                self._seal(self._buf, last=True)
                self._out.flush()
        finally:
            self._buf = bytearray()
            self._finished = True  # never seal twice, even if flushing failed
            super().close()

    def abort(self) -> None:
        """Close without writing the final chunk: readers will report the output as truncated."""
        self._finished = True
        self._buf = bytearray()
        super().close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # io.IOBase's finalizer would call close() and seal a possibly incomplete stream as final.
        try:
            if not self.closed:
                self.abort()
        except Exception:
            pass


# ------------------------------------------------------------------------------------------------ reading


class Decryptor(io.BufferedIOBase):
    """A readable binary stream of the plaintext of the age file read from `src`.

    The header is read, the file key unwrapped and the header MAC verified at construction, which
    raises `AgeHeaderError`, `AgeNoMatch` or `AgeHmacError`. Reading releases plaintext one verified
    chunk at a time; a bad chunk, truncation or trailing data raises `AgePayloadError`. ``read(n)`` and
    ``readinto`` return everything verified before a failure first (a short read) and raise on the next
    call, so a consumer sees exactly the authentic prefix; ``read()`` with no size raises at once.
    End of file is only reported after the final chunk verified and nothing follows it.
    `close()` does not close `src`.
    """

    def __init__(self, src: IO[bytes], identities: Sequence[Identity]) -> None:
        super().__init__()
        self._src = HeaderSource(src)
        # One ciphertext and one plaintext buffer, reused for every chunk: besides bounding memory, this
        # avoids allocating (and, with glibc, often page-faulting in) two fresh 64 KiB objects per chunk.
        self._cipher = memoryview(bytearray(_ENC_CHUNK_SIZE))
        self._plain = memoryview(bytearray(CHUNK_SIZE))
        self._scratch = bytearray()  # read() assembly buffer for requests spanning chunks (≤ 1 MiB)
        self._plen = 0  # verified plaintext bytes in _plain
        self._pos = 0  # of which this many were handed out
        self._counter = 0
        self._final_seen = False
        self._eof = False
        self._error: AgePayloadError | None = None

        header = parse_header(self._src)
        file_key = unwrap_file_key(header.stanzas, identities)
        if not hmac.compare_digest(header_mac(file_key, header.mac_input), header.mac):
            raise AgeHmacError("archive header MAC does not verify (tampered or wrong passphrase)")
        nonce = self._src.read(_NONCE_SIZE)
        if len(nonce) != _NONCE_SIZE:
            raise header_error("the payload nonce is missing or truncated")
        self._aead = ChaCha20Poly1305(hkdf_sha256(file_key, nonce, b"payload"))

    def readable(self) -> bool:
        """Always True."""
        return True

    # -- chunk machinery

    def _fail(self, detail: str) -> AgePayloadError:
        err = AgePayloadError(
            f"archive payload is corrupt or truncated at chunk {self._counter}: {detail}", self._counter
        )
        self._error = err
        # decrypt_into may have left unverified bytes in the buffer: make sure none is ever handed out.
        self._plen = self._pos = 0
        return err

    def _open(self, n: int, last: bool) -> bool:
        try:
            self._aead.decrypt_into(
                _chunk_nonce(self._counter, last), self._cipher[:n], None, self._plain[: n - _TAG_SIZE]
            )
        except InvalidTag:
            return False
        return True

    def _next_chunk(self) -> bool:
        """Load the next verified chunk; False at a verified end of file."""
        if self._error is not None:
            raise self._error
        if self._eof:
            return False
        self._plen = self._pos = 0
        if self._final_seen:
            # The final chunk was released; the file must end right there.
            if self._src.read(1):
                raise self._fail("unexpected data after the final chunk")
            self._eof = True
            return False
        if self._counter >= _MAX_CHUNKS:
            raise self._fail("too many chunks")
        n = self._src.fill(self._cipher)
        if n == _ENC_CHUNK_SIZE:
            # A full chunk is usually followed by more, but the final chunk may be full too: try both,
            # the likely one first. The tag decides; a tag can only verify under one of the two nonces.
            if self._open(n, last=False):
                last = False
            elif self._open(n, last=True):
                last = True
            else:
                raise self._fail("authentication failed")
        elif n == 0:
            raise self._fail("the file ends without a final chunk (truncated)")
        elif n < _TAG_SIZE:
            raise self._fail("the chunk is shorter than its tag (truncated)")
        elif self._open(n, last=True):  # a short chunk can only be the final one
            last = True
        else:
            raise self._fail("authentication failed (corrupt or truncated)")
        if last and n == _TAG_SIZE and self._counter > 0:
            raise self._fail("the final chunk is empty, which only an empty file may have")
        self._counter += 1
        self._final_seen = last
        self._plen = n - _TAG_SIZE
        return True

    def _advance(self, have_data: bool) -> bool:
        """Like _next_chunk, but if this call already gathered data, defer the error to the next call."""
        try:
            return self._next_chunk()
        except AgePayloadError:
            if have_data:
                return False
            raise

    def _take(self, limit: int) -> bytes:
        """Up to `limit` bytes (all with -1) of the current chunk, copied out of the reused buffer."""
        end = self._plen if limit < 0 else min(self._plen, self._pos + limit)
        piece = self._plain[self._pos : end].tobytes()
        self._pos = end
        return piece

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("read from a closed Decryptor")

    # -- the io API

    def read(self, size: int | None = -1, /) -> bytes:
        """Up to `size` bytes (all of them with -1/None); fewer only at end of file or before an error."""
        self._check_open()
        if size is None or size < 0:
            return self.readall()
        if 0 < size <= self._plen - self._pos:
            return self._take(size)  # the common case: within the current chunk, one copy
        if size <= _SCRATCH_MAX:
            # Spanning chunks (zstandard asks for 131075 bytes at a time): gather into one reused buffer
            # and allocate only the result. Joining fresh per-chunk pieces instead made glibc's malloc
            # map and unmap memory on every call, which halved throughput at these sizes.
            if len(self._scratch) < size:
                self._scratch = bytearray(size)
            with memoryview(self._scratch) as scratch:
                filled = self._readinto(scratch[:size], one_chunk=False)
                return scratch[:filled].tobytes()
        parts: list[bytes] = []
        want = size
        while want > 0:
            if self._pos >= self._plen:
                if not self._advance(have_data=bool(parts)):
                    break
                continue
            piece = self._take(want)
            want -= len(piece)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readall(self) -> bytes:
        """The rest of the plaintext; raises on any failure (nothing partial is returned)."""
        self._check_open()
        parts: list[bytes] = []
        while True:
            if self._pos < self._plen:
                parts.append(self._take(-1))
            if not self._next_chunk():
                return b"".join(parts)

    def read1(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes from the current chunk, loading at most one new chunk."""
        self._check_open()
        if size == 0:
            return b""
        while self._pos >= self._plen:
            if not self._next_chunk():
                return b""
        return self._take(size)

    def _readinto(self, buffer: WriteableBuffer, one_chunk: bool) -> int:
        self._check_open()
        with memoryview(buffer) as whole, whole.cast("B") as out:
            filled = 0
            while filled < len(out):
                avail = self._plen - self._pos
                if avail <= 0:
                    if one_chunk and filled:
                        break
                    if not self._advance(have_data=filled > 0):
                        break
                    continue
                n = min(avail, len(out) - filled)
                out[filled : filled + n] = self._plain[self._pos : self._pos + n]
                self._pos += n
                filled += n
            return filled

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Fill `buffer`; a short count only at end of file or before an error."""
        return self._readinto(buffer, one_chunk=False)

    def readinto1(self, buffer: WriteableBuffer, /) -> int:
        """Fill `buffer` from at most one chunk."""
        return self._readinto(buffer, one_chunk=True)

    def close(self) -> None:
        """Stop reading; `src` stays open."""
        self._plen = self._pos = 0
        self._scratch = bytearray()
        super().close()


# -------------------------------------------------------------------------------------------- one-shots


def encrypt_bytes(data: bytes, recipients: Sequence[Recipient]) -> bytes:
    """Encrypt a small in-memory value (tests, key material); use `Encryptor` for anything big."""
    out = io.BytesIO()
    with Encryptor(out, recipients) as enc:
        enc.write(data)
    return out.getvalue()


def decrypt_bytes(data: bytes, identities: Sequence[Identity]) -> bytes:
    """Decrypt a small in-memory age file; use `Decryptor` for anything big."""
    with Decryptor(io.BytesIO(data), identities) as dec:
        return dec.read()
