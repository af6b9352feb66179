"""Ed25519 signatures for archives: who wrote this archive, and is it exactly what they wrote?

age encryption gives confidentiality only: anyone who knows a recipient (a public key) can write an archive
that decrypts fine. A detached signature, made with a key that only the backup host holds, lets a restore
refuse archives that someone else wrote or changed.

Key formats (Bech32, as age uses for its keys, so a typo is caught by the checksum):

- public key: ``statekit-sign1…`` — human-readable part ``statekit-sign``, data the 32-byte Ed25519 public key;
- secret key file: comment lines, then ``STATEKIT-SIGN-SECRET-KEY-1…`` — upper case, data the 32-byte seed.

Signature file ``<archive>.sig`` (UTF-8 JSON, documented in docs/SECURITY.md)::

    {"format": "statekit-signature", "version": 1, "public_key": "statekit-sign1…",
     "archive_sha256": "<hex>", "archive_size": N, "signed_at": "2026-11-27T18:00:00Z",
     "signature": "<base64 of the 64-byte Ed25519 signature>"}

The signed message is ``statekit-signature/v1\\n`` followed by the canonical JSON (sorted keys, no spaces) of
every field except ``signature``. The archive's file name is not part of it, so renaming or copying an archive
keeps it verifiable; any change to its bytes does not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from statekit.archive.encoding import Bech32Error, bech32_decode, bech32_encode
from statekit.archive.keys import write_key_file
from statekit.errors import KeyFileError, SignatureError, StorageError

PUBLIC_HRP = "statekit-sign"
SECRET_HRP = "STATEKIT-SIGN-SECRET-KEY-"
SIGNATURE_SUFFIX = ".sig"
SIGNATURE_FORMAT = "statekit-signature"
SIGNATURE_VERSION = 1
_DOMAIN = b"statekit-signature/v1\n"
_MAX_KEY_FILE = 64 * 1024
_MAX_SIG_FILE = 64 * 1024
_HASH_BLOCK = 1 << 20
_SIGNED_FIELDS = ("format", "version", "public_key", "archive_sha256", "archive_size", "signed_at")


class SigningPublicKey:
    """An Ed25519 public key that verifies archive signatures (``statekit-sign1…``)."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise KeyFileError("a statekit signing public key must be 32 bytes")
        self.raw = bytes(raw)
        self._key = Ed25519PublicKey.from_public_bytes(self.raw)

    def to_string(self) -> str:
        """The compact text form, ``statekit-sign1…``."""
        return bech32_encode(PUBLIC_HRP, self.raw)

    def verifies(self, signature: bytes, message: bytes) -> bool:
        """True when `signature` is this key's signature of `message`."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningPublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"SigningPublicKey({self.to_string()!r})"

    def __str__(self) -> str:
        return self.to_string()


class SigningKey:
    """An Ed25519 secret key that signs archives. Its repr shows only the public key."""

    __slots__ = ("_key", "_seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise KeyFileError("a statekit signing key must be 32 bytes")
        self._seed = bytes(seed)
        self._key = Ed25519PrivateKey.from_private_bytes(self._seed)

    def public_key(self) -> SigningPublicKey:
        """The matching public key."""
        return SigningPublicKey(self._key.public_key().public_bytes_raw())

    def public_string(self) -> str:
        """The public key as ``statekit-sign1…`` (what `verify --signer` takes)."""
        return self.public_key().to_string()

    def secret_string(self) -> str:
        """The secret key as ``STATEKIT-SIGN-SECRET-KEY-1…`` (only for writing the key file)."""
        return bech32_encode(SECRET_HRP, self._seed).upper()

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message`."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public_string()!r})"


def generate_signing_key() -> SigningKey:
    """A fresh random signing key."""
    return SigningKey(os.urandom(32))


def parse_public_key(text: str) -> SigningPublicKey:
    """Parse a ``statekit-sign1…`` public key (as given to --signer)."""
    s = text.strip()
    if s.upper().startswith(SECRET_HRP):
        raise KeyFileError("that is a secret signing key; give its statekit-sign1… public key")
    if not s.lower().startswith(PUBLIC_HRP + "1"):
        raise KeyFileError("not a statekit signing public key: expected statekit-sign1…")
    try:
        hrp, data = bech32_decode(s)
    except Bech32Error as exc:
        raise KeyFileError(f"malformed signing public key: {exc}") from None
    if hrp != PUBLIC_HRP:
        raise KeyFileError("malformed signing public key: public keys are lower case")
    if len(data) != 32:
        raise KeyFileError("malformed signing public key: wrong key length")
    return SigningPublicKey(data)


def _parse_secret(line: str, origin: str) -> SigningKey:
    # Messages never quote the line: it is (meant to be) a secret.
    try:
        hrp, data = bech32_decode(line)
    except Bech32Error as exc:
        raise KeyFileError(f"{origin}: malformed signing key: {exc}") from None
    if hrp != SECRET_HRP:
        raise KeyFileError(f"{origin}: not a statekit signing key (expected STATEKIT-SIGN-SECRET-KEY-1…)")
    if len(data) != 32:
        raise KeyFileError(f"{origin}: malformed signing key: wrong key length")
    return SigningKey(data)


def read_signing_key(path: str | os.PathLike[str], warn: Callable[[str], None] | None = None) -> SigningKey:
    """Read a signing key file written by `statekit keygen --sign`; `warn` hears about loose permissions."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise KeyFileError(f"signing key {p} does not exist") from None
    except IsADirectoryError:
        raise KeyFileError(f"signing key {p} is a directory") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read signing key {p}: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"signing key {p} is too large to be a key file")
    if warn is not None and stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        warn(f"signing key {p} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
             f"run: chmod 600 {p}")  # fmt: skip
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"signing key {p} is not a text file") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if len(keys) != 1:
        raise KeyFileError(f"signing key {p} must hold exactly one STATEKIT-SIGN-SECRET-KEY-1… line")
    return _parse_secret(keys[0], f"signing key {p}")


def write_signing_key(path: str | os.PathLike[str], key: SigningKey, *, force: bool = False) -> None:
    """Write `key` to `path` with mode 0600. Without `force` an existing file is never touched (it may be the
    only copy of a key); the file is written under a temporary name, fsynced and renamed either way."""
    p = Path(path)
    content = (
        "# statekit signing key (Ed25519): keep it secret, on the backup host only\n"
        f"# created: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        f"# public key: {key.public_string()}\n"
        f"{key.secret_string()}\n"
    ).encode("ascii")
    write_key_file(p, content, force=force, what="signing key")


# -- signatures ---------------------------------------------------------------------------------------------


def signature_path(archive_path: str | os.PathLike[str]) -> Path:
    """Where an archive's detached signature lives: ``<archive>.sig``."""
    p = Path(archive_path)
    return p.with_name(p.name + SIGNATURE_SUFFIX)


def _hash_file(path: Path, what: type[Exception]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb", buffering=0) as fh:
            while block := fh.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
    except FileNotFoundError:
        raise what(f"{path}: no such archive") from None
    except OSError as exc:
        raise what(f"{path}: cannot read: {exc.strerror or exc}") from None
    return digest.hexdigest(), size


def _message(fields: dict[str, Any]) -> bytes:
    body = {k: fields[k] for k in _SIGNED_FIELDS}
    return _DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_archive(archive_path: str | os.PathLike[str], key: SigningKey) -> Path:
    """Write the detached signature ``<archive>.sig`` (0600, atomic) and return its path.

    The archive is hashed from disk, so the signature covers exactly the bytes that were stored."""
    from statekit.fsio import atomic_output

    path = Path(archive_path)
    sha, size = _hash_file(path, StorageError)
    fields: dict[str, Any] = {
        "format": SIGNATURE_FORMAT,
        "version": SIGNATURE_VERSION,
        "public_key": key.public_string(),
        "archive_sha256": sha,
        "archive_size": size,
        "signed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    doc = {**fields, "signature": base64.b64encode(key.sign(_message(fields))).decode("ascii")}
    out = signature_path(path)
    with atomic_output(out, overwrite=True) as fh:
        fh.write((json.dumps(doc, indent=2) + "\n").encode())
    return out


@dataclass
class SignatureInfo:
    """A signature that verified: who signed, when, and what."""

    public_key: str
    signed_at: str
    archive_sha256: str
    archive_size: int


def _load_signature(sig_path: Path) -> dict[str, Any]:
    try:
        with open(sig_path, "rb") as fh:
            data = fh.read(_MAX_SIG_FILE + 1)
    except FileNotFoundError:
        raise SignatureError(f"archive is not signed: {sig_path} does not exist") from None
    except OSError as exc:
        raise SignatureError(f"cannot read signature {sig_path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_SIG_FILE:
        raise SignatureError(f"signature {sig_path} is malformed (too large)")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SignatureError(f"signature {sig_path} is malformed (not JSON)") from None
    if not isinstance(doc, dict):
        raise SignatureError(f"signature {sig_path} is malformed (not a JSON object)")
    if doc.get("format") != SIGNATURE_FORMAT:
        raise SignatureError(f"signature {sig_path} is malformed (not a statekit signature)")
    if doc.get("version") != SIGNATURE_VERSION:
        raise SignatureError(f"signature {sig_path} has unsupported version {doc.get('version')!r}")
    types = {"public_key": str, "archive_sha256": str, "archive_size": int, "signed_at": str, "signature": str}
    for name, tp in types.items():
        value = doc.get(name)
        if not isinstance(value, tp) or isinstance(value, bool):
            raise SignatureError(f"signature {sig_path} is malformed (field {name!r} missing or wrong type)")
    return doc


def verify_signature(
    archive_path: str | os.PathLike[str],
    public_keys: Iterable[SigningPublicKey | str],
    *,
    sig_path: str | os.PathLike[str] | None = None,
) -> SignatureInfo:
    """Check ``<archive>.sig`` (or `sig_path`) against the archive and the trusted `public_keys`.

    Raises SignatureError when the signature is missing, malformed, made by an untrusted key, does not verify,
    or the archive's bytes are not the ones that were signed."""
    trusted: dict[bytes, SigningPublicKey] = {}
    for k in public_keys:
        pk = k if isinstance(k, SigningPublicKey) else parse_public_key(k)
        trusted[pk.raw] = pk
    if not trusted:
        raise SignatureError("no trusted signing key given")
    archive = Path(archive_path)
    sp = Path(sig_path) if sig_path is not None else signature_path(archive)
    doc = _load_signature(sp)
    try:
        signer = parse_public_key(doc["public_key"])
    except KeyFileError as exc:
        raise SignatureError(f"signature {sp} is malformed: {exc.message}") from None
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"signature {sp} is malformed (signature is not base64)") from None
    if len(signature) != 64:
        raise SignatureError(f"signature {sp} is malformed (signature is not 64 bytes)")
    if signer.raw not in trusted:
        raise SignatureError(f"archive {archive} is signed by {signer.to_string()}, which is not a trusted signer")
    if not signer.verifies(signature, _message(doc)):
        raise SignatureError(f"signature {sp} does not verify (the signature file was altered or forged)")
    sha, size = _hash_file(archive, SignatureError)
    if size != doc["archive_size"] or not _same_hex(sha, doc["archive_sha256"]):
        raise SignatureError(f"archive {archive} does not match its signature (the archive was modified)")
    return SignatureInfo(signer.to_string(), doc["signed_at"], sha, size)


def _same_hex(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.lower().encode())


# -- small entry points the CLI calls ------------------------------------------------------------------------


def sign_with_key_file(
    archive_path: str | os.PathLike[str], key_file: str, warn: Callable[[str], None] | None = None
) -> Path:
    """Read the signing key at `key_file` and sign the archive (for `snapshot --sign-key FILE`)."""
    return sign_archive(archive_path, read_signing_key(key_file, warn=warn))
