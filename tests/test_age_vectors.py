"""The C2SP CCTV age test vectors, every file of tests/vectors/age, against statekit.archive.age and pyrage.

Each vector is a text header (``expect``, ``payload``, ``identity``/``passphrase`` (repeatable),
``armored``, ``compressed``, ``file key``, ``comment``), an empty line, then the age file. For each one we
assert the exact outcome class and that the plaintext released before a failure hashes to ``payload``.

Skip rules (each one named, nothing else is skipped):

- ``armored: yes`` — ASCII armor is not implemented: statekit writes and reads binary age.
- post-quantum hybrid — the header has an ``mlkem768x25519`` stanza, or every identity of the vector is an
  ``AGE-SECRET-KEY-PQ-`` key. A vector that merely *also* lists a PQ identity but has no mlkem768x25519
  stanza (``hybrid_x25519_arg``) is run with its X25519 identities: a PQ identity can only open an
  mlkem768x25519 stanza, so leaving it out cannot change the outcome.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from statekit.archive.age import (
    AgeHeaderError,
    AgeHmacError,
    AgeNoMatch,
    AgePayloadError,
    Decryptor,
)
from statekit.archive.age_header import HeaderSource, parse_header
from statekit.archive.keys import Identity, ScryptIdentity, X25519Identity
from statekit.errors import CorruptArchive, DecryptionError

VECTORS = Path(__file__).resolve().parent / "vectors" / "age"

ARMOR_REASON = "ASCII armor is not implemented: statekit writes binary age"
HYBRID_REASON = "post-quantum hybrid recipients are not implemented"

OUTCOMES: dict[str, type[Exception] | None] = {
    "success": None,
    "no match": AgeNoMatch,
    "HMAC failure": AgeHmacError,
    "header failure": AgeHeaderError,
    "payload failure": AgePayloadError,
}


@dataclass
class Vector:
    name: str
    expect: str
    payload: str | None = None
    identities: list[str] = field(default_factory=list)
    passphrases: list[str] = field(default_factory=list)
    armored: bool = False
    compressed: str | None = None
    file_key: str | None = None
    comments: list[str] = field(default_factory=list)
    body: bytes = b""

    def age_file(self) -> bytes:
        if self.compressed is None:
            return self.body
        assert self.compressed == "zlib", f"{self.name}: unknown compression {self.compressed!r}"
        return zlib.decompress(self.body)


def parse_vector(path: Path) -> Vector:
    raw = path.read_bytes()
    head, sep, body = raw.partition(b"\n\n")
    assert sep, f"{path.name}: no blank line after the vector header"
    vec = Vector(name=path.name, expect="")
    for line in head.decode("utf-8").split("\n"):
        key, colon, value = line.partition(": ")
        assert colon, f"{path.name}: malformed vector header line {line!r}"
        if key == "expect":
            vec.expect = value
        elif key == "payload":
            vec.payload = value
        elif key == "identity":
            vec.identities.append(value)
        elif key == "passphrase":
            vec.passphrases.append(value)
        elif key == "armored":
            vec.armored = value == "yes"
        elif key == "compressed":
            vec.compressed = value
        elif key == "file key":
            vec.file_key = value
        elif key == "comment":
            vec.comments.append(value)
        else:
            raise AssertionError(f"{path.name}: unknown vector header key {key!r}")
    assert vec.expect, f"{path.name}: no expect line"
    vec.body = body
    return vec


def _vector_files() -> list[Path]:
    if not VECTORS.is_dir():
        return []
    return sorted(p for p in VECTORS.iterdir() if p.is_file() and not p.name.startswith("."))


def test_vectors_folder_present() -> None:
    """The vectors are part of the contract: a missing folder is a failure, never a silent skip."""
    assert VECTORS.is_dir(), (
        f"age test vectors not found at {VECTORS}: the checkout is incomplete (see tests/vectors/README.md)"
    )
    assert len(_vector_files()) > 100, f"only {len(_vector_files())} vectors in {VECTORS}: incomplete copy?"


def _skip_reason(vec: Vector, age_file: bytes) -> str | None:
    if vec.armored:
        return ARMOR_REASON
    header = age_file.split(b"\n---", 1)[0]
    if b"\n-> mlkem768x25519 " in header:
        return HYBRID_REASON
    keys = vec.identities + vec.passphrases
    if keys and all(k.startswith("AGE-SECRET-KEY-PQ-") for k in keys):
        return HYBRID_REASON
    return None


def _identities(vec: Vector) -> list[Identity]:
    ids: list[Identity] = [
        X25519Identity.from_string(s) for s in vec.identities if not s.startswith("AGE-SECRET-KEY-PQ-")
    ]
    ids += [ScryptIdentity(p.encode("utf-8")) for p in vec.passphrases]
    return ids


Reader = Callable[[Decryptor, list[bytes]], None]


def _read_all(dec: Decryptor, out: list[bytes]) -> None:
    out.append(dec.read())


def _read_sized(size: int) -> Reader:
    def reader(dec: Decryptor, out: list[bytes]) -> None:
        while chunk := dec.read(size):
            out.append(chunk)

    return reader


def _read1(dec: Decryptor, out: list[bytes]) -> None:
    while chunk := dec.read1(7000):
        out.append(chunk)


def _readinto(dec: Decryptor, out: list[bytes]) -> None:
    buf = bytearray(4099)
    while n := dec.readinto(buf):
        out.append(bytes(buf[:n]))


# read() (everything at once) raises without releasing a partial result, so only the streaming readers
# are held to the "released plaintext hashes to payload" rule.
READERS: dict[str, tuple[Reader, bool]] = {
    "read-all": (_read_all, False),
    "read-1000": (_read_sized(1000), True),
    "read-65536": (_read_sized(65536), True),
    "read-200000": (_read_sized(200_000), True),
    "read1": (_read1, True),
    "readinto": (_readinto, True),
}


class _TrickleReader(io.RawIOBase):
    """A source that returns at most 1000 bytes per read, like a pipe, to exercise short reads."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), 1000, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def _run(vec: Vector, age_file: bytes, reader: Reader, exact: bool, trickle: bool = False) -> None:
    expected = OUTCOMES.get(vec.expect)
    assert vec.expect in OUTCOMES, f"{vec.name}: unknown expectation {vec.expect!r}"
    released: list[bytes] = []
    src: io.RawIOBase | io.BytesIO = _TrickleReader(age_file) if trickle else io.BytesIO(age_file)
    try:
        with Decryptor(src, _identities(vec)) as dec:  # type: ignore[arg-type]
            reader(dec, released)
    except (CorruptArchive, DecryptionError) as exc:
        context = f"{vec.name} ({'; '.join(vec.comments) or 'no comment'})"
        assert expected is not None, f"{context}: expected success, got {type(exc).__name__}: {exc}"
        assert type(exc) is expected, f"{context}: expected {expected.__name__}, got {type(exc).__name__}: {exc}"
        assert "\n" not in str(exc), "error messages are one line"
        if expected is AgePayloadError and exact and vec.payload is not None:
            digest = hashlib.sha256(b"".join(released)).hexdigest()
            assert digest == vec.payload, f"{vec.name}: plaintext released before the failure differs"
        return
    assert expected is None, f"{vec.name}: expected {vec.expect}, but decryption succeeded"
    if vec.payload is not None:
        assert hashlib.sha256(b"".join(released)).hexdigest() == vec.payload, f"{vec.name}: wrong plaintext"


VECTOR_PATHS = _vector_files()


@pytest.mark.parametrize("reader_name", sorted(READERS))
@pytest.mark.parametrize("path", VECTOR_PATHS, ids=[p.name for p in VECTOR_PATHS])
def test_vector(path: Path, reader_name: str) -> None:
    vec = parse_vector(path)
    age_file = vec.age_file()
    reason = _skip_reason(vec, age_file)
    if reason is not None:
        pytest.skip(reason)
    reader, exact = READERS[reader_name]
    _run(vec, age_file, reader, exact)


@pytest.mark.parametrize("path", VECTOR_PATHS, ids=[p.name for p in VECTOR_PATHS])
def test_vector_short_reads_from_source(path: Path) -> None:
    """The same outcome when the source answers in dribbles (pipes): the header parser must not care."""
    vec = parse_vector(path)
    age_file = vec.age_file()
    reason = _skip_reason(vec, age_file)
    if reason is not None:
        pytest.skip(reason)
    _run(vec, age_file, _read_sized(1000), True, trickle=True)


def test_every_expectation_is_covered() -> None:
    """Guard against a vector set where, say, all payload failures were skipped by a too-broad rule."""
    seen: dict[str, int] = {}
    for path in VECTOR_PATHS:
        vec = parse_vector(path)
        if _skip_reason(vec, vec.age_file()) is None:
            seen[vec.expect] = seen.get(vec.expect, 0) + 1
    assert set(seen) == set(OUTCOMES), seen


# -- the same vectors through pyrage (Rust rage), the independent implementation every machine has ---------------

# rage accepts these two files, which the spec (and statekit) reject: a header with a stanza that lacks its
# body line or its short final line.
RAGE_LENIENT = {"stanza_missing_body", "stanza_missing_final_line"}


def _scrypt_work_factor(age_file: bytes) -> int | None:
    """The work factor of the header's scrypt stanza, if the header parses and has one."""
    try:
        stanzas = parse_header(HeaderSource(io.BytesIO(age_file))).stanzas
    except AgeHeaderError:
        return None
    for stanza in stanzas:
        if stanza.type == "scrypt" and len(stanza.args) == 2 and stanza.args[1].isdigit():
            return int(stanza.args[1])
    return None


@pytest.mark.parametrize("path", VECTOR_PATHS, ids=[p.name for p in VECTOR_PATHS])
def test_vector_pyrage(path: Path) -> None:
    """rage agrees with the vector (and so with statekit) on success, plaintext and failure."""
    import pyrage

    vec = parse_vector(path)
    age_file = vec.age_file()
    reason = _skip_reason(vec, age_file)
    if reason is not None:
        pytest.skip(reason)
    work_factor = _scrypt_work_factor(age_file) if vec.passphrases else None
    if work_factor is not None and ScryptIdentity(b"").max_work_factor < work_factor < 64:
        # rage's passphrase API sets no cap below 64: a work factor of 23 costs it 8 GiB of memory and most of a
        # minute. statekit refuses the file before deriving anything (test_vector above).
        pytest.skip(f"scrypt work factor {work_factor}: above statekit's cap, and rage would derive it regardless")
    try:
        if vec.passphrases:
            plain = pyrage.passphrase.decrypt(age_file, vec.passphrases[0])
        else:
            keys = [pyrage.x25519.Identity.from_str(s) for s in vec.identities if not s.startswith("AGE-SECRET-KEY-PQ")]
            plain = pyrage.decrypt(age_file, keys)
    except (pyrage.DecryptError, pyrage.IdentityError) as exc:
        assert vec.expect != "success", f"{vec.name}: rage failed on a success vector: {exc}"
        return
    if vec.expect != "success":
        assert vec.name in RAGE_LENIENT, f"{vec.name}: expected {vec.expect}, but rage decrypted it"
        return
    assert hashlib.sha256(plain).hexdigest() == vec.payload, f"{vec.name}: rage gives another plaintext"
