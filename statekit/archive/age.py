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
import re
from collections.abc import Sequence
from types import TracebackType
from typing import IO, TYPE_CHECKING, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from statekit.archive.keys import (
    FILE_KEY_SIZE,
    Identity,
    MalformedStanza,
    Recipient,
    ScryptIdentity,
    Stanza,
    b64_decode_canonical,
    b64_encode_unpadded,
    hkdf_sha256,
)
from statekit.errors import CorruptArchive, DecryptionError, UsageError

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

INTRO = b"age-encryption.org/v1\n"
_VERSION_PREFIX = b"age-encryption.org/"
CHUNK_SIZE = 64 * 1024
_TAG_SIZE = 16
_ENC_CHUNK_SIZE = CHUNK_SIZE + _TAG_SIZE
_NONCE_SIZE = 16
_MAC_B64_LEN = 43  # 32-byte HMAC-SHA-256, unpadded base64
_BODY_COLUMNS = 64
# The counter is 11 bytes; reaching 2**88 chunks (16 YiB) is impossible, but never let it wrap.
_MAX_CHUNKS = 1 << 88
# A header is a few hundred bytes (a few KiB for many or post-quantum recipients); cap what we buffer
# so a garbage or hostile file cannot make us read it all into memory looking for the header's end.
_MAX_HEADER = 4 << 20
_HEADER_READ = 16 * 1024
_SCRATCH_MAX = 1 << 20

_ARG_RE = re.compile(rb"[\x21-\x7e]+")
_B64_LINE_RE = re.compile(rb"[A-Za-z0-9+/]*")


class AgeHeaderError(CorruptArchive):
    """The age header is malformed (or this is not an age file at all)."""


class AgeHmacError(CorruptArchive):
    """The header MAC does not verify: the header was modified."""


class AgePayloadError(CorruptArchive):
    """A payload chunk does not verify, or the payload is truncated or has trailing data."""

    def __init__(self, message: str, chunk: int = 0) -> None:
        super().__init__(message)
        self.chunk = chunk


class AgeNoMatch(DecryptionError):
    """No given identity or passphrase opens this file."""


def _header_error(detail: str) -> AgeHeaderError:
    return AgeHeaderError(f"archive header is malformed: {detail}")


def is_age_file(first_bytes: bytes) -> bool:
    """True if `first_bytes` (the start of a file, at least 22 bytes) begins with the age v1 intro line."""
    return bytes(first_bytes[: len(INTRO)]) == INTRO


def _chunk_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _header_mac(file_key: bytes, header_up_to_dashes: bytes) -> bytes:
    return hmac.new(hkdf_sha256(file_key, b"", b"header"), header_up_to_dashes, "sha256").digest()


# ------------------------------------------------------------------------------------------------ writing


def _encode_stanza(stanza: Stanza) -> bytes:
    args = (stanza.type, *stanza.args)
    encoded: list[bytes] = []
    for arg in args:
        raw = arg.encode("ascii", "replace")
        if not _ARG_RE.fullmatch(raw):
            raise ValueError(f"invalid stanza argument {arg!r}: must be non-empty printable ASCII")
        encoded.append(raw)
    body = b64_encode_unpadded(stanza.body).encode("ascii")
    lines = [body[i : i + _BODY_COLUMNS] for i in range(0, len(body), _BODY_COLUMNS)]
    # A stanza always ends with a line shorter than 64 columns, empty if the body filled the last one.
    if not lines or len(lines[-1]) == _BODY_COLUMNS:
        lines.append(b"")
    return b"-> " + b" ".join(encoded) + b"\n" + b"\n".join(lines) + b"\n"


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
        header = INTRO + b"".join(_encode_stanza(s) for s in stanzas) + b"---"
        mac = _header_mac(file_key, header)
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


class _Source:
    """The caller's stream plus the look-ahead left over from reading the header line by line."""

    __slots__ = ("_pending", "_src", "consumed")

    def __init__(self, src: IO[bytes]) -> None:
        self._src = src
        self._pending = bytearray()
        self.consumed = 0  # header bytes handed out by readline, to bound the header size

    def readline(self, limit: int = _MAX_HEADER) -> bytes:
        """The next line including its LF; at EOF whatever is left (possibly without LF, possibly b"").

        With no LF within `limit` bytes, returns those bytes without LF (the caller reports it malformed).
        """
        budget = _MAX_HEADER - self.consumed
        cap = min(limit, budget)
        scanned = 0
        while True:
            i = self._pending.find(b"\n", scanned, cap)
            if i >= 0:
                line = bytes(self._pending[: i + 1])
                del self._pending[: i + 1]
                self.consumed += len(line)
                return line
            if len(self._pending) >= cap:
                if cap == budget:
                    raise _header_error("the header is implausibly large (over 4 MiB)")
                line = bytes(self._pending[:cap])
                del self._pending[:cap]
                self.consumed += len(line)
                return line
            scanned = len(self._pending)
            more = self._src.read(_HEADER_READ)
            if not more:
                line = bytes(self._pending)
                self._pending.clear()
                self.consumed += len(line)
                return line
            self._pending += more

    def fill(self, view: memoryview) -> int:
        """Fill `view` completely, or partly only at end of file; return how many bytes were stored."""
        n = 0
        pending = self._pending
        if pending:
            n = min(len(pending), len(view))
            view[:n] = pending[:n]
            del pending[:n]
        # readinto straight into our reusable buffer: no per-chunk allocation (see Decryptor).
        readinto = getattr(self._src, "readinto", None)
        while n < len(view):
            if readinto is not None:
                got = readinto(view[n:])
            else:
                more = self._src.read(len(view) - n)
                got = len(more)
                view[n : n + got] = more
            if not got:
                break
            n += got
        return n

    def read(self, n: int) -> bytes:
        """Exactly `n` bytes, or fewer only at end of file."""
        pending = self._pending
        if pending:
            if len(pending) >= n:
                out = bytes(pending[:n])
                del pending[:n]
                return out
            parts = [bytes(pending)]
            have = len(pending)
            pending.clear()
        else:
            parts = []
            have = 0
        while have < n:
            more = self._src.read(n - have)
            if not more:
                break
            parts.append(more)
            have += len(more)
        # Files usually answer a read in one piece: return it as is, without a copy.
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _Header(NamedTuple):
    stanzas: list[Stanza]
    mac_input: bytes  # everything up to and including "---"
    mac: bytes


def _parse_header(src: _Source) -> _Header:
    raw: list[bytes] = []
    # The version line is short: do not scan megabytes of some other file type looking for its end.
    line = src.readline(limit=256)
    if not line:
        raise AgeHeaderError("archive is empty (not an age file)")
    if not line.startswith(_VERSION_PREFIX):
        raise AgeHeaderError("not an age-encrypted archive (no age-encryption.org header)")
    if line == INTRO[:-1] + b"\r\n":
        raise _header_error("lines end with CRLF: the file was converted to text somewhere on its way")
    if line != INTRO:
        version = line[len(_VERSION_PREFIX) :].rstrip(b"\n")[:32].decode("ascii", "replace")
        raise _header_error(f"unsupported age format version {version!r} (statekit reads v1)")
    raw.append(line)

    stanzas: list[Stanza] = []
    while True:
        line = src.readline()
        if not line.endswith(b"\n"):
            raise _header_error("the header is truncated")
        if line.startswith(b"-> "):
            raw.append(line)
            args = line[3:-1].split(b" ")
            for arg in args:
                if not _ARG_RE.fullmatch(arg):
                    raise _header_error("a stanza argument is empty or has invalid characters")
            body_lines: list[bytes] = []
            while True:
                body_line = src.readline()
                if not body_line.endswith(b"\n"):
                    raise _header_error("the header is truncated inside a stanza")
                raw.append(body_line)
                text = body_line[:-1]
                if text.startswith((b"-> ", b"---")):
                    raise _header_error("a stanza has no final body line (every stanza ends with a short one)")
                if len(text) > _BODY_COLUMNS:
                    raise _header_error("a stanza body line is longer than 64 columns")
                if not _B64_LINE_RE.fullmatch(text):
                    raise _header_error("a stanza body has invalid base64 characters")
                body_lines.append(text)
                if len(text) < _BODY_COLUMNS:
                    break
            try:
                body = b64_decode_canonical(b"".join(body_lines))
            except ValueError:
                raise _header_error("a stanza body is not canonical base64") from None
            type_, *rest = (a.decode("ascii") for a in args)
            stanzas.append(Stanza(type_, tuple(rest), body))
        elif line.startswith(b"---"):
            if not stanzas:
                raise _header_error("the header has no recipient stanza")
            mac_input = b"".join(raw) + b"---"
            encoded = line[3:-1]
            if not encoded.startswith(b" ") or len(encoded) != 1 + _MAC_B64_LEN:
                raise _header_error("the MAC line is not '--- ' followed by 43 base64 characters")
            try:
                mac = b64_decode_canonical(encoded[1:])
            except ValueError:
                raise _header_error("the header MAC is not canonical base64") from None
            break
        else:
            raise _header_error("expected a stanza ('-> ') or the MAC line ('---')")

    if len(stanzas) > 1 and any(s.type == "scrypt" for s in stanzas):
        raise _header_error("a passphrase (scrypt) stanza must be the only stanza in the header")
    return _Header(stanzas, mac_input, mac)


def _no_match(stanzas: Sequence[Stanza], identities: Sequence[Identity]) -> AgeNoMatch:
    passphrase_file = any(s.type == "scrypt" for s in stanzas)
    have_passphrase = any(isinstance(i, ScryptIdentity) for i in identities)
    only_passphrases = bool(identities) and all(isinstance(i, ScryptIdentity) for i in identities)
    if not identities:
        return AgeNoMatch("no identity or passphrase given to open the archive")
    if passphrase_file and have_passphrase:
        return AgeNoMatch("wrong passphrase: it does not open this archive")
    if passphrase_file:
        return AgeNoMatch("this archive is protected by a passphrase, but no passphrase was given")
    if only_passphrases:
        return AgeNoMatch("this archive is not passphrase-protected: give an identity (AGE-SECRET-KEY-1…) instead")
    return AgeNoMatch("no identity matches this archive (it was encrypted to other recipients)")


def _unwrap_file_key(stanzas: Sequence[Stanza], identities: Sequence[Identity]) -> bytes:
    for identity in identities:
        for stanza in stanzas:
            try:
                file_key = identity.unwrap(stanza)
            except MalformedStanza as exc:
                raise _header_error(str(exc)) from None
            if file_key is not None:
                if len(file_key) != FILE_KEY_SIZE:
                    raise _header_error("the unwrapped file key is not 16 bytes")
                return file_key
    raise _no_match(stanzas, identities)


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
        self._src = _Source(src)
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

        header = _parse_header(self._src)
        file_key = _unwrap_file_key(header.stanzas, identities)
        if not hmac.compare_digest(_header_mac(file_key, header.mac_input), header.mac):
            raise AgeHmacError("archive header MAC does not verify (tampered or wrong passphrase)")
        nonce = self._src.read(_NONCE_SIZE)
        if len(nonce) != _NONCE_SIZE:
            raise _header_error("the payload nonce is missing or truncated")
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
