"""age keys: X25519 identities and recipients, scrypt passphrases, key files.

The encodings follow the age v1 specification (c2sp.org/age) so that keys are interchangeable with the
`age` and `age-keygen` tools:

- an X25519 identity is 32 random bytes, Bech32 with HRP ``AGE-SECRET-KEY-`` (always upper case);
- its recipient is the X25519 public key, Bech32 with HRP ``age`` (always lower case);
- identity files hold one ``AGE-SECRET-KEY-1…`` per line, ``#`` comments and blank lines are ignored.

Identities and recipients speak in `Stanza` objects; the header format itself (parsing, MAC, payload)
lives in `statekit.archive.age_header` and `statekit.archive.age`; the text encodings (Bech32, base64) in
`statekit.archive.encoding`. Nothing here ever puts secret key material into an error message.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from statekit.archive.encoding import (
    Bech32Error,
    b64_decode_canonical,
    b64_encode_unpadded,
    bech32_decode,
    bech32_encode,
)
from statekit.errors import KeyFileError, Refused, StorageError, UsageError

__all__ = [
    "FILE_KEY_SIZE",
    "IDENTITY_HRP",
    "RECIPIENT_HRP",
    "Identity",
    "MalformedStanza",
    "Recipient",
    "ScryptIdentity",
    "ScryptRecipient",
    "Stanza",
    "X25519Identity",
    "X25519Recipient",
    "generate_identity",
    "hkdf_sha256",
    "parse_identities",
    "parse_recipient",
    "read_identity_file",
    "read_recipients_file",
    "write_identity_file",
    "write_key_file",
]

FILE_KEY_SIZE = 16
IDENTITY_HRP = "AGE-SECRET-KEY-"
RECIPIENT_HRP = "age"

_X25519_LABEL = b"age-encryption.org/v1/X25519"
_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
_ZERO_NONCE = bytes(12)
_WRAPPED_KEY_SIZE = FILE_KEY_SIZE + 16  # file key + Poly1305 tag

# A key file is a few hundred bytes; refusing big files avoids slurping a wrong path (a disk image, a log).
_MAX_KEY_FILE = 1 << 20


# ------------------------------------------------------------------------------------------------- KDF


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA-256 with a 32-byte output, the only KDF shape age uses."""
    # An empty salt and no salt are the same in HKDF (HMAC zero-pads keys), so `None` is exact here.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt or None, info=info).derive(ikm)


# ------------------------------------------------------------------------------------- stanza/protocols


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza of an age header: a type, further arguments, and a binary body."""

    type: str
    args: tuple[str, ...]
    body: bytes


class MalformedStanza(ValueError):
    """A stanza of a type the identity implements violates the spec (a header failure, not a mismatch)."""


@runtime_checkable
class Recipient(Protocol):
    """Something that can wrap a file key into stanzas: a public key or a passphrase."""

    def wrap(self, file_key: bytes) -> list[Stanza]:
        """Return the stanzas that carry `file_key` for this recipient."""
        ...


@runtime_checkable
class Identity(Protocol):
    """Something that can unwrap a file key from a stanza: a secret key or a passphrase."""

    def unwrap(self, stanza: Stanza) -> bytes | None:
        """Return the 16-byte file key, or None if the stanza is not addressed to this identity.

        Raises `MalformedStanza` when the stanza has this identity's type but violates the spec.
        """
        ...


def _aead_unwrap(wrap_key: bytes, body: bytes) -> bytes | None:
    try:
        return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, body, None)
    except InvalidTag:
        return None


# ------------------------------------------------------------------------------------------------ X25519


class X25519Recipient:
    """An ``age1…`` public key."""

    __slots__ = ("_key", "_raw")

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != 32:
            raise KeyFileError("an X25519 recipient must be 32 bytes")
        self._raw = bytes(public_key)
        self._key = X25519PublicKey.from_public_bytes(self._raw)

    @classmethod
    def from_string(cls, s: str) -> X25519Recipient:
        """Parse an ``age1…`` recipient (lower case only, as age writes and requires it)."""
        try:
            hrp, data = bech32_decode(s)
        except Bech32Error as exc:
            raise KeyFileError(f"malformed age recipient: {exc}") from None
        if hrp != RECIPIENT_HRP:
            if hrp.lower() == RECIPIENT_HRP:
                raise KeyFileError("malformed age recipient: recipients must be lower case")
            raise KeyFileError(f"not an X25519 age recipient (type {hrp!r} is not supported)")
        if len(data) != 32:
            raise KeyFileError("malformed age recipient: wrong key length")
        return cls(data)

    def to_string(self) -> str:
        """The ``age1…`` form."""
        return bech32_encode(RECIPIENT_HRP, self._raw)

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte X25519 public key."""
        return self._raw

    def wrap(self, file_key: bytes) -> list[Stanza]:
        """Wrap the file key to this public key with a fresh ephemeral X25519 key."""
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        try:
            shared = ephemeral.exchange(self._key)
        except ValueError:
            # cryptography refuses an all-zero shared secret: the recipient is a low-order point.
            raise KeyFileError("invalid age recipient: low-order X25519 point") from None
        wrap_key = hkdf_sha256(shared, share + self._raw, _X25519_LABEL)
        body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza("X25519", (b64_encode_unpadded(share),), body)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X25519Recipient) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"X25519Recipient({self.to_string()!r})"

    def __str__(self) -> str:
        return self.to_string()


class X25519Identity:
    """An ``AGE-SECRET-KEY-1…`` secret key. Its repr shows only the public key."""

    __slots__ = ("_key", "_public", "_secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise KeyFileError("an X25519 identity must be 32 bytes")
        self._secret = bytes(secret)
        self._key = X25519PrivateKey.from_private_bytes(self._secret)
        self._public = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> X25519Identity:
        """A fresh random identity."""
        return cls(os.urandom(32))

    @classmethod
    def from_string(cls, s: str) -> X25519Identity:
        """Parse an ``AGE-SECRET-KEY-1…`` string (upper case only, as age requires)."""
        # Messages never quote `s`: it is (meant to be) a secret.
        try:
            hrp, data = bech32_decode(s)
        except Bech32Error as exc:
            raise KeyFileError(f"malformed age secret key: {exc}") from None
        if hrp != IDENTITY_HRP:
            if hrp.upper() == IDENTITY_HRP:
                raise KeyFileError("malformed age secret key: secret keys must be upper case")
            if hrp.upper() == "AGE-SECRET-KEY-PQ-":
                raise KeyFileError("post-quantum (AGE-SECRET-KEY-PQ-) identities are not supported")
            raise KeyFileError("not an X25519 age secret key")
        if len(data) != 32:
            raise KeyFileError("malformed age secret key: wrong key length")
        return cls(data)

    def to_string(self) -> str:
        """The ``AGE-SECRET-KEY-1…`` form (secret!)."""
        return bech32_encode(IDENTITY_HRP, self._secret).upper()

    def recipient(self) -> X25519Recipient:
        """The matching public key."""
        return X25519Recipient(self._public)

    def unwrap(self, stanza: Stanza) -> bytes | None:
        """Unwrap an ``X25519`` stanza; None for other types or another recipient's stanza."""
        if stanza.type != "X25519":
            return None
        if len(stanza.args) != 1:
            raise MalformedStanza("an X25519 stanza must have exactly one argument")
        try:
            share = b64_decode_canonical(stanza.args[0])
        except ValueError:
            raise MalformedStanza("the X25519 share is not canonical base64") from None
        if len(share) != 32:
            raise MalformedStanza("the X25519 share is not 32 bytes")
        # Checked before decrypting, as the spec requires, to avoid partitioning-oracle attacks.
        if len(stanza.body) != _WRAPPED_KEY_SIZE:
            raise MalformedStanza("the X25519 stanza body is not 32 bytes")
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:
            # cryptography raises on an all-zero shared secret (a low-order share); the spec says abort.
            raise MalformedStanza("the X25519 share is a low-order point") from None
        if shared == bytes(32):  # belt and braces: never derive a key from the all-zero secret
            raise MalformedStanza("the X25519 share is a low-order point")
        return _aead_unwrap(hkdf_sha256(shared, share + self._public, _X25519_LABEL), stanza.body)

    def __repr__(self) -> str:
        return f"X25519Identity(recipient={self.recipient().to_string()!r})"


def generate_identity() -> X25519Identity:
    """A fresh random X25519 identity (what ``age-keygen`` makes)."""
    return X25519Identity.generate()


# ------------------------------------------------------------------------------------------------ scrypt


_WORK_FACTOR_RE = re.compile(r"[1-9][0-9]*", re.ASCII)
_MAX_ENCRYPT_WORK_FACTOR = 30  # 2**30 * 1 KiB = 1 TiB of memory to decrypt: beyond any sane setting


class ScryptRecipient:
    """Encrypt to a passphrase. It must be the only recipient of a file (spec rule)."""

    __slots__ = ("_passphrase", "work_factor")

    def __init__(self, passphrase: bytes, work_factor: int = 18) -> None:
        if not passphrase:
            raise UsageError("the passphrase must not be empty")
        if not 1 <= work_factor <= _MAX_ENCRYPT_WORK_FACTOR:
            raise UsageError(f"scrypt work factor must be 1..{_MAX_ENCRYPT_WORK_FACTOR}, not {work_factor}")
        self._passphrase = bytes(passphrase)
        self.work_factor = work_factor

    def wrap(self, file_key: bytes) -> list[Stanza]:
        """Wrap the file key under a key derived from the passphrase with a fresh salt."""
        salt = os.urandom(16)
        wrap_key = _scrypt(self._passphrase, salt, self.work_factor)
        body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza("scrypt", (b64_encode_unpadded(salt), str(self.work_factor)), body)]

    def __repr__(self) -> str:
        return f"ScryptRecipient(work_factor={self.work_factor})"


_DERIVED_KEPT = 16  # archives one process reads with one passphrase: a restore reads two (archive and undo)


class ScryptIdentity:
    """Decrypt with a passphrase; refuses work factors above `max_work_factor` (a CPU/memory bomb)."""

    __slots__ = ("_derived", "_passphrase", "max_work_factor")

    def __init__(self, passphrase: bytes, max_work_factor: int = 22) -> None:
        self._passphrase = bytes(passphrase)
        self.max_work_factor = max_work_factor
        # scrypt output by (salt, work factor): every pass over one archive (its head, the load, a rehearsal)
        # opens it anew, and the derivation is the slow part of opening it, by design.
        self._derived: dict[tuple[bytes, int], bytes] = {}

    @property
    def passphrase(self) -> bytes:
        """The passphrase (needed to encrypt an undo archive for the same reader)."""
        return self._passphrase

    def unwrap(self, stanza: Stanza) -> bytes | None:
        """Unwrap an ``scrypt`` stanza; None for other types or a wrong passphrase."""
        if stanza.type != "scrypt":
            return None
        if len(stanza.args) != 2:
            raise MalformedStanza("an scrypt stanza must have exactly two arguments")
        try:
            salt = b64_decode_canonical(stanza.args[0])
        except ValueError:
            raise MalformedStanza("the scrypt salt is not canonical base64") from None
        if len(salt) != 16:
            raise MalformedStanza("the scrypt salt is not 16 bytes")
        text = stanza.args[1]
        if not _WORK_FACTOR_RE.fullmatch(text):
            raise MalformedStanza("the scrypt work factor is not a plain decimal number")
        # Length check first: int() of a thousand-digit string is wasted work (and may raise).
        if len(text) > 2 or int(text) > self.max_work_factor:
            shown = text if len(text) <= 6 else "of " + str(len(text)) + " digits"
            raise MalformedStanza(f"the scrypt work factor {shown} exceeds the allowed maximum {self.max_work_factor}")
        if len(stanza.body) != _WRAPPED_KEY_SIZE:
            raise MalformedStanza("the scrypt stanza body is not 32 bytes")
        work_factor = int(text)
        derived = self._derived.get((salt, work_factor))
        if derived is None:
            derived = _scrypt(self._passphrase, salt, work_factor)
            if len(self._derived) >= _DERIVED_KEPT:
                self._derived.clear()
            self._derived[(salt, work_factor)] = derived
        return _aead_unwrap(derived, stanza.body)

    def __repr__(self) -> str:
        return f"ScryptIdentity(max_work_factor={self.max_work_factor})"


def _scrypt(passphrase: bytes, salt: bytes, work_factor: int) -> bytes:
    return Scrypt(salt=_SCRYPT_LABEL + salt, length=32, n=1 << work_factor, r=8, p=1).derive(passphrase)


# --------------------------------------------------------------------------------------------- key files


def parse_recipient(s: str) -> X25519Recipient:
    """Parse one recipient as given on a command line or in a recipients file (``age1…``)."""
    s = s.strip()
    if s.upper().startswith("AGE-SECRET-KEY-"):
        raise KeyFileError("that is a secret key (AGE-SECRET-KEY-…), not a recipient: give its age1… public key")
    if s.startswith(("ssh-", "ecdsa-", "sk-")):
        raise KeyFileError("SSH recipients are not supported: use an age1… X25519 recipient")
    if s.startswith("age1pq1"):
        raise KeyFileError("post-quantum (age1pq1…) recipients are not supported")
    if s.startswith("age1") and s.rfind("1") > 3:
        raise KeyFileError("plugin and tagged recipients (age1<name>1…) are not supported")
    if not s.lower().startswith("age1"):
        raise KeyFileError("not an age recipient: expected age1…")
    return X25519Recipient.from_string(s)


def parse_identities(text: str, origin: str) -> list[X25519Identity]:
    """Parse an identity file's text: one ``AGE-SECRET-KEY-1…`` per line, ``#`` comments, blank lines.

    `origin` names the source in error messages (a path, "stdin"). Errors give line numbers, never content.
    """
    if text.startswith("age-encryption.org/"):
        raise KeyFileError(
            f"{origin} is an encrypted identity file, which statekit does not read: decrypt it with age first"
        )
    identities: list[X25519Identity] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("AGE-SECRET-KEY-PQ-"):
            raise KeyFileError(f"{origin}, line {lineno}: post-quantum identities are not supported")
        if line.startswith("AGE-PLUGIN-"):
            raise KeyFileError(f"{origin}, line {lineno}: plugin identities are not supported")
        if line.startswith("-----BEGIN"):
            raise KeyFileError(f"{origin}, line {lineno}: SSH keys are not supported as identities")
        try:
            identities.append(X25519Identity.from_string(line))
        except KeyFileError as exc:
            raise KeyFileError(f"{origin}, line {lineno}: {exc.message}") from None
    if not identities:
        raise KeyFileError(f"{origin} holds no age secret key (AGE-SECRET-KEY-1…)")
    return identities


def _read_key_file(path: Path, what: str) -> tuple[str, os.stat_result]:
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise KeyFileError(f"{what} {path} is a directory") from None
    except PermissionError:
        raise KeyFileError(f"cannot read {what} {path}: permission denied") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"{what} {path} is too large to be a key file")
    try:
        return data.decode("utf-8-sig"), st  # -sig: tolerate a BOM from Windows editors
    except UnicodeDecodeError:
        raise KeyFileError(f"{what} {path} is not a text file") from None


def read_identity_file(path: str | os.PathLike[str], warn: Callable[[str], None] | None = None) -> list[X25519Identity]:
    """Read an age identity file (e.g. from ``age-keygen``).

    If the file is a regular file that group or others may access, `warn` is called with a one-line
    message (default: `warnings.warn`); the keys are still returned, like ssh's advisory for key files.
    """
    p = Path(path)
    text, st = _read_key_file(p, "identity file")
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        message = (
            f"identity file {p} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {p}"
        )
        if warn is None:
            warnings.warn(message, stacklevel=2)
        else:
            warn(message)
    return parse_identities(text, str(p))


def read_recipients_file(path: str | os.PathLike[str]) -> list[X25519Recipient]:
    """Read a recipients file: one ``age1…`` per line, ``#`` comments and blank lines ignored."""
    p = Path(path)
    text, _ = _read_key_file(p, "recipients file")
    recipients: list[X25519Recipient] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            recipients.append(parse_recipient(line))
        except KeyFileError as exc:
            raise KeyFileError(f"recipients file {p}, line {lineno}: {exc.message}") from None
    if not recipients:
        raise KeyFileError(f"recipients file {p} holds no recipient (age1…)")
    return recipients


def _rfc3339_now() -> str:
    now = _dt.datetime.now().astimezone().replace(microsecond=0)
    text = now.isoformat()
    # age-keygen (Go's RFC 3339) writes UTC as "Z"; match it so files look the same.
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def write_identity_file(path: str | os.PathLike[str], identity: X25519Identity, *, force: bool = False) -> None:
    """Write `identity` in age-keygen's format, mode 0600, never leaving a half-written key behind; without
    `force` an existing file is never touched (it could be the only key to existing backups)."""
    content = (
        f"# created: {_rfc3339_now()}\n# public key: {identity.recipient().to_string()}\n{identity.to_string()}\n"
    ).encode("ascii")
    write_key_file(path, content, force=force, what="identity file")


def write_key_file(path: str | os.PathLike[str], content: bytes, *, force: bool, what: str) -> None:
    """Write a secret key file: mode 0600, under a temporary name, fsynced, then renamed (`force`) or linked
    into place, so a key appears whole or not at all and, without `force`, never replaces an existing file
    (link() fails if the name appeared meanwhile)."""
    from statekit.fsio import fsync_dir

    p = Path(path)
    if not force and os.path.lexists(p):
        raise Refused(f"{p} already exists; refusing to overwrite {_article(what)} {what} (use --force)")
    tmp = p.with_name(f".{p.name}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot create {what} {p}: {exc.strerror or exc}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask filters O_CREAT's mode; be exact
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, p)
        else:
            os.link(tmp, p)
            os.unlink(tmp)
        fsync_dir(p.parent)
    except FileExistsError:
        _unlink_quietly(tmp)
        raise Refused(f"{p} already exists; refusing to overwrite {_article(what)} {what} (use --force)") from None
    except OSError as exc:
        _unlink_quietly(tmp)
        raise StorageError(f"cannot write {what} {p}: {exc.strerror or exc}") from None


def _article(noun: str) -> str:
    return "an" if noun[:1] in "aeiou" else "a"


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
