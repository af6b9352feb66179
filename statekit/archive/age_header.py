"""The age v1 header: encoding recipient stanzas, and parsing a header strictly (c2sp.org/age) to unwrap the
file key with the given identities. `statekit.archive.age` streams the payload that follows it.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from typing import IO, NamedTuple

from statekit.archive.encoding import b64_decode_canonical, b64_encode_unpadded
from statekit.archive.keys import FILE_KEY_SIZE, Identity, MalformedStanza, ScryptIdentity, Stanza, hkdf_sha256
from statekit.errors import CorruptArchive, DecryptionError

INTRO = b"age-encryption.org/v1\n"
_VERSION_PREFIX = b"age-encryption.org/"
_MAC_B64_LEN = 43  # 32-byte HMAC-SHA-256, unpadded base64
_BODY_COLUMNS = 64
# A header is a few hundred bytes (a few KiB for many or post-quantum recipients); cap what we buffer
# so a garbage or hostile file cannot make us read it all into memory looking for the header's end.
_MAX_HEADER = 4 << 20
_HEADER_READ = 16 * 1024

_ARG_RE = re.compile(rb"[\x21-\x7e]+")
_B64_LINE_RE = re.compile(rb"[A-Za-z0-9+/]*")


class AgeHeaderError(CorruptArchive):
    """The age header is malformed (or this is not an age file at all)."""


class AgeNoMatch(DecryptionError):
    """No given identity or passphrase opens this file."""


def header_error(detail: str) -> AgeHeaderError:
    """The error for a header that violates the format in the way `detail` says."""
    return AgeHeaderError(f"archive header is malformed: {detail}")


def header_mac(file_key: bytes, header_up_to_dashes: bytes) -> bytes:
    """The header MAC: HMAC-SHA-256 under a key derived from the file key, over the header up to `---`."""
    return hmac.new(hkdf_sha256(file_key, b"", b"header"), header_up_to_dashes, "sha256").digest()


def encode_stanza(stanza: Stanza) -> bytes:
    """One stanza as it appears in the header: the argument line, then the body in 64-column base64 lines."""
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


class HeaderSource:
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
                    raise header_error("the header is implausibly large (over 4 MiB)")
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


class Header(NamedTuple):
    stanzas: list[Stanza]
    mac_input: bytes  # everything up to and including "---"
    mac: bytes


def parse_header(src: HeaderSource) -> Header:
    raw: list[bytes] = []
    # The version line is short: do not scan megabytes of some other file type looking for its end.
    line = src.readline(limit=256)
    if not line:
        raise AgeHeaderError("archive is empty (not an age file)")
    if not line.startswith(_VERSION_PREFIX):
        raise AgeHeaderError("not an age-encrypted archive (no age-encryption.org header)")
    if line == INTRO[:-1] + b"\r\n":
        raise header_error("lines end with CRLF: the file was converted to text somewhere on its way")
    if line != INTRO:
        version = line[len(_VERSION_PREFIX) :].rstrip(b"\n")[:32].decode("ascii", "replace")
        raise header_error(f"unsupported age format version {version!r} (statekit reads v1)")
    raw.append(line)

    stanzas: list[Stanza] = []
    while True:
        line = src.readline()
        if not line.endswith(b"\n"):
            raise header_error("the header is truncated")
        if line.startswith(b"-> "):
            raw.append(line)
            args = line[3:-1].split(b" ")
            for arg in args:
                if not _ARG_RE.fullmatch(arg):
                    raise header_error("a stanza argument is empty or has invalid characters")
            body_lines: list[bytes] = []
            while True:
                body_line = src.readline()
                if not body_line.endswith(b"\n"):
                    raise header_error("the header is truncated inside a stanza")
                raw.append(body_line)
                text = body_line[:-1]
                if text.startswith((b"-> ", b"---")):
                    raise header_error("a stanza has no final body line (every stanza ends with a short one)")
                if len(text) > _BODY_COLUMNS:
                    raise header_error("a stanza body line is longer than 64 columns")
                if not _B64_LINE_RE.fullmatch(text):
                    raise header_error("a stanza body has invalid base64 characters")
                body_lines.append(text)
                if len(text) < _BODY_COLUMNS:
                    break
            try:
                body = b64_decode_canonical(b"".join(body_lines))
            except ValueError:
                raise header_error("a stanza body is not canonical base64") from None
            type_, *rest = (a.decode("ascii") for a in args)
            stanzas.append(Stanza(type_, tuple(rest), body))
        elif line.startswith(b"---"):
            if not stanzas:
                raise header_error("the header has no recipient stanza")
            mac_input = b"".join(raw) + b"---"
            encoded = line[3:-1]
            if not encoded.startswith(b" ") or len(encoded) != 1 + _MAC_B64_LEN:
                raise header_error("the MAC line is not '--- ' followed by 43 base64 characters")
            try:
                mac = b64_decode_canonical(encoded[1:])
            except ValueError:
                raise header_error("the header MAC is not canonical base64") from None
            break
        else:
            raise header_error("expected a stanza ('-> ') or the MAC line ('---')")

    if len(stanzas) > 1 and any(s.type == "scrypt" for s in stanzas):
        raise header_error("a passphrase (scrypt) stanza must be the only stanza in the header")
    return Header(stanzas, mac_input, mac)


def no_match(stanzas: Sequence[Stanza], identities: Sequence[Identity]) -> AgeNoMatch:
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


def unwrap_file_key(stanzas: Sequence[Stanza], identities: Sequence[Identity]) -> bytes:
    for identity in identities:
        for stanza in stanzas:
            try:
                file_key = identity.unwrap(stanza)
            except MalformedStanza as exc:
                raise header_error(str(exc)) from None
            if file_key is not None:
                if len(file_key) != FILE_KEY_SIZE:
                    raise header_error("the unwrapped file key is not 16 bytes")
                return file_key
    raise no_match(stanzas, identities)
