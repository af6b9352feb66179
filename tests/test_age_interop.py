"""statekit.archive.age/keys against the real `age` CLI, plus streaming, memory, property and tamper tests.

Interop peer: the Go `age` and `age-keygen` binaries (Debian package `age`; CI installs it). When they are not
on PATH the interop tests skip with that reason, except under STATEKIT_REQUIRE_TOOLS=1 (CI), where they fail.
The interop with pyrage (Rust rage), which every dev install has, is in test_age_pyrage.py and always runs.

Passphrases: the age CLI (1.1.1 here) reads a passphrase only from a terminal (/dev/tty, or stdin when it
is a terminal); it has no environment variable or flag for it. The tests give it one: they run `age`
under a pseudo-terminal (`pty.fork`) and type the passphrase at its prompts. So both scrypt directions are
tested: statekit → `age -d`, and `age -p` → statekit. What cannot be tested that way: nothing of the
format; only platforms without ptys (Windows) could not run these tests at all.

Memory: a 300 MB stream goes through Encryptor → pipe → Decryptor in a fresh subprocess, and the peak
RSS (`resource.getrusage`) may grow by less than 60 MB over the warmed-up baseline.
"""

from __future__ import annotations

import gc
import io
import itertools
import json
import os
import pty
import random
import select
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit.archive.age import (
    CHUNK_SIZE,
    AgeHeaderError,
    AgeHmacError,
    AgeNoMatch,
    AgePayloadError,
    Decryptor,
    Encryptor,
    decrypt_bytes,
    encrypt_bytes,
    is_age_file,
)
from statekit.archive.encoding import Bech32Error, bech32_decode, bech32_encode
from statekit.archive.keys import (
    Identity,
    ScryptIdentity,
    ScryptRecipient,
    X25519Identity,
    X25519Recipient,
    generate_identity,
    parse_identities,
    parse_recipient,
    read_identity_file,
    read_recipients_file,
    write_identity_file,
)
from statekit.errors import CorruptArchive, DecryptionError, KeyFileError, Refused, UsageError
from tests.tools import require_tool

REPO = Path(__file__).resolve().parents[1]
ENC_CHUNK = CHUNK_SIZE + 16
SIZES = [0, 1, 65535, 65536, 65537, 3 * 65536 + 5]
PASSPHRASE = "correct horse battery staple"


# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def age_bin() -> str:
    return require_tool("age")["age"]


@pytest.fixture(scope="module")
def age_keygen_bin() -> str:
    return require_tool("age-keygen")["age-keygen"]


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + size).randbytes(size)


def _run(argv: list[str], stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
    return proc.stdout


def _run_on_tty(argv: list[str], passphrase: str, timeout: float = 120.0) -> tuple[int, str]:
    """Run `argv` with a pseudo-terminal as its controlling terminal, typing `passphrase` at each prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # child: become the program; never return into pytest
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    transcript = b""
    answered = 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"{argv} timed out on the terminal; transcript: {transcript!r}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal (exited)
                break
            if not data:
                break
            transcript += data
            # age prompts "Enter passphrase…:" and, when encrypting, "Confirm passphrase:".
            while transcript.count(b"passphrase") > answered:
                os.write(fd, passphrase.encode() + b"\n")
                answered += 1
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), transcript.decode(errors="replace")


def _encrypt(data: bytes, recipients: list[X25519Recipient] | list[ScryptRecipient], pieces: int = 3) -> bytes:
    out = io.BytesIO()
    with Encryptor(out, recipients) as enc:
        step = max(1, len(data) // pieces)
        for i in range(0, len(data), step):
            enc.write(data[i : i + step])
    return out.getvalue()


def _released(blob: bytes, identities: list[Identity], size: int = 1000) -> tuple[bytes, Exception | None]:
    """Read with small reads; return the plaintext released and the error that stopped it, if any."""
    got: list[bytes] = []
    try:
        with Decryptor(io.BytesIO(blob), identities) as dec:
            while chunk := dec.read(size):
                got.append(chunk)
    except (CorruptArchive, DecryptionError) as exc:
        return b"".join(got), exc
    return b"".join(got), None


@pytest.fixture(scope="module")
def idents() -> list[X25519Identity]:
    return [generate_identity() for _ in range(3)]


# ------------------------------------------------------------------------------------- X25519 interop


@pytest.mark.parametrize("size", SIZES)
def test_statekit_encrypts_cli_decrypts(size: int, tmp_path: Path, age_bin: str, idents: list[X25519Identity]) -> None:
    """A file for several recipients opens with `age -d -i` and each one's statekit-written identity file."""
    data = _data(size)
    blob = _encrypt(data, [i.recipient() for i in idents])
    (tmp_path / "f.age").write_bytes(blob)
    for n, ident in enumerate(idents):
        key = tmp_path / f"key{n}.txt"
        write_identity_file(key, ident)
        assert _run([age_bin, "-d", "-i", str(key), str(tmp_path / "f.age")]) == data


@pytest.mark.parametrize("size", SIZES)
def test_cli_encrypts_statekit_decrypts(size: int, tmp_path: Path, age_bin: str, age_keygen_bin: str) -> None:
    """`age -r` and `age -e -i` output, with an `age-keygen` identity, opens with statekit."""
    data = _data(size, seed=1)
    key = tmp_path / "key.txt"
    _run([age_keygen_bin, "-o", str(key)])
    recipient = _run([age_keygen_bin, "-y", str(key)]).decode().strip()
    (tmp_path / "plain").write_bytes(data)
    identities = read_identity_file(key, warn=lambda m: pytest.fail(f"unexpected warning: {m}"))
    assert identities[0].recipient().to_string() == recipient
    for flags in (["-r", recipient], ["-e", "-i", str(key)]):
        out = tmp_path / "f.age"
        _run([age_bin, *flags, "-o", str(out), str(tmp_path / "plain")])
        assert is_age_file(out.read_bytes()[:32])
        with out.open("rb") as fh, Decryptor(fh, identities) as dec:
            assert dec.read() == data
        released, err = _released(out.read_bytes(), list(identities))
        assert err is None and released == data


def test_cli_multiple_recipients_each_statekit_identity(
    tmp_path: Path, age_bin: str, idents: list[X25519Identity]
) -> None:
    data = _data(3 * 65536 + 5, seed=2)
    (tmp_path / "plain").write_bytes(data)
    argv = [age_bin]
    for ident in idents:
        argv += ["-r", ident.recipient().to_string()]
    _run([*argv, "-o", str(tmp_path / "f.age"), str(tmp_path / "plain")])
    blob = (tmp_path / "f.age").read_bytes()
    for ident in idents:
        assert decrypt_bytes(blob, [ident]) == data
    with pytest.raises(AgeNoMatch):
        decrypt_bytes(blob, [generate_identity()])


def test_recipients_file_both_ways(
    tmp_path: Path, age_bin: str, age_keygen_bin: str, idents: list[X25519Identity]
) -> None:
    """A recipients file statekit reads is one age reads, and `age-keygen -y` output is a recipients file."""
    rfile = tmp_path / "recipients.txt"
    rfile.write_text("# backup keys\n\n" + "".join(f"{i.recipient()}\n" for i in idents))
    parsed = read_recipients_file(rfile)
    assert parsed == [i.recipient() for i in idents]
    data = _data(70000, seed=3)
    (tmp_path / "plain").write_bytes(data)
    _run([age_bin, "-R", str(rfile), "-o", str(tmp_path / "f.age"), str(tmp_path / "plain")])
    assert decrypt_bytes((tmp_path / "f.age").read_bytes(), [idents[2]]) == data

    key = tmp_path / "k.txt"
    _run([age_keygen_bin, "-o", str(key)])
    (tmp_path / "k.pub").write_bytes(_run([age_keygen_bin, "-y", str(key)]))
    [recipient] = read_recipients_file(tmp_path / "k.pub")
    assert recipient == read_identity_file(key)[0].recipient()


def test_statekit_identity_file_is_age_keygen_format(tmp_path: Path, age_keygen_bin: str, age_bin: str) -> None:
    ident = generate_identity()
    key = tmp_path / "id.txt"
    old = os.umask(0)
    try:
        write_identity_file(key, ident)
    finally:
        os.umask(old)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    lines = key.read_text().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("# created: 20")
    assert lines[1] == f"# public key: {ident.recipient().to_string()}"
    assert lines[2] == ident.to_string() and lines[2].startswith("AGE-SECRET-KEY-1")
    assert _run([age_keygen_bin, "-y", str(key)]).decode().strip() == ident.recipient().to_string()
    # The CLI encrypts to our recipient and decrypts with our identity file.
    (tmp_path / "plain").write_bytes(b"hello")
    _run([age_bin, "-r", ident.recipient().to_string(), "-o", str(tmp_path / "f.age"), str(tmp_path / "plain")])
    assert _run([age_bin, "-d", "-i", str(key), str(tmp_path / "f.age")]) == b"hello"

    with pytest.raises(Refused):
        write_identity_file(key, generate_identity())
    assert key.read_text().splitlines()[2] == ident.to_string(), "a refused write must not touch the file"
    other = generate_identity()
    write_identity_file(key, other, force=True)
    assert read_identity_file(key)[0].to_string() == other.to_string()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.age", "id.txt", "plain"], "no temp file left"


def test_identity_file_permission_warning(tmp_path: Path, age_keygen_bin: str) -> None:
    key = tmp_path / "key.txt"
    _run([age_keygen_bin, "-o", str(key)])
    warnings: list[str] = []
    read_identity_file(key, warn=warnings.append)
    assert warnings == []
    key.chmod(0o644)
    read_identity_file(key, warn=warnings.append)
    assert len(warnings) == 1 and "chmod 600" in warnings[0] and "\n" not in warnings[0]
    with pytest.warns(UserWarning, match="group or others"):
        read_identity_file(key)


# ------------------------------------------------------------------------------------- scrypt interop


def test_scrypt_statekit_encrypts_cli_decrypts(tmp_path: Path, age_bin: str) -> None:
    data = _data(65537, seed=4)
    (tmp_path / "f.age").write_bytes(_encrypt(data, [ScryptRecipient(PASSPHRASE.encode(), work_factor=12)]))
    out = tmp_path / "out"
    code, transcript = _run_on_tty([age_bin, "-d", "-o", str(out), str(tmp_path / "f.age")], PASSPHRASE)
    assert code == 0, transcript
    assert out.read_bytes() == data
    # And the CLI rejects a wrong passphrase for it, as statekit does.
    code, transcript = _run_on_tty([age_bin, "-d", "-o", str(tmp_path / "x"), str(tmp_path / "f.age")], "nope")
    assert code != 0


def test_scrypt_cli_encrypts_statekit_decrypts(tmp_path: Path, age_bin: str) -> None:
    data = _data(3 * 65536 + 5, seed=5)
    (tmp_path / "plain").write_bytes(data)
    out = tmp_path / "f.age"
    code, transcript = _run_on_tty([age_bin, "-p", "-o", str(out), str(tmp_path / "plain")], PASSPHRASE)
    assert code == 0, transcript
    blob = out.read_bytes()
    assert b"\n-> scrypt " in blob[:200]
    assert decrypt_bytes(blob, [ScryptIdentity(PASSPHRASE.encode())]) == data
    with pytest.raises(AgeNoMatch, match="wrong passphrase") as info:
        decrypt_bytes(blob, [ScryptIdentity(b"not it")])
    assert isinstance(info.value, DecryptionError) and not isinstance(info.value, CorruptArchive)
    # A work-factor cap below the file's (age -p uses 18) refuses to run scrypt at all.
    with pytest.raises(AgeHeaderError, match="work factor"):
        decrypt_bytes(blob, [ScryptIdentity(PASSPHRASE.encode(), max_work_factor=17)])


# ---------------------------------------------------------------------------------- streaming / memory


def test_feeds_zstandard_and_tarfile(idents: list[X25519Identity]) -> None:
    """Decryptor is a proper stream: tar → zstd → age, and back through zstd's stream_reader and tarfile r|."""
    zstandard = pytest.importorskip("zstandard")  # a declared dependency; present in every venv
    members = {"a.txt": b"alpha" * 1000, "big.bin": _data(300_000, seed=6), "empty": b""}
    out = io.BytesIO()
    with (
        Encryptor(out, [idents[0].recipient()]) as enc,
        zstandard.ZstdCompressor().stream_writer(enc, closefd=False) as zw,
        tarfile.open(fileobj=zw, mode="w|") as tar,
    ):
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    out.seek(0)
    got: dict[str, bytes] = {}
    with Decryptor(out, [idents[0]]) as dec:
        reader = zstandard.ZstdDecompressor().stream_reader(dec, read_across_frames=True)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                fh = tar.extractfile(member)
                assert fh is not None
                got[member.name] = fh.read()
    assert got == members


MEMORY_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, resource, sys, threading
    from statekit.archive.age import Decryptor, Encryptor, decrypt_bytes, encrypt_bytes
    from statekit.archive.keys import generate_identity

    TOTAL = 300 * 1000 * 1000
    ident = generate_identity()
    block = os.urandom(1 << 20)
    # Warm up: imports, OpenSSL contexts, a small round trip; the baseline is taken after this.
    small = block[:100_000]
    assert decrypt_bytes(encrypt_bytes(small, [ident.recipient()]), [ident]) == small

    def source():
        # Odd piece sizes so writes straddle chunk boundaries; slices of one block, so nothing piles up.
        view = memoryview(block)
        sent, i = 0, 0
        sizes = (1, 100_003, 65536, 700_001, 3)
        while sent < TOTAL:
            n = min(sizes[i % len(sizes)], TOTAL - sent, len(block))
            yield view[:n]
            sent += n
            i += 1

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r, w = os.pipe()
    src_hash = hashlib.sha256()

    def produce():
        with os.fdopen(w, "wb") as out, Encryptor(out, [ident.recipient()]) as enc:
            for piece in source():
                src_hash.update(piece)
                enc.write(piece)

    t = threading.Thread(target=produce)
    t.start()
    got = hashlib.sha256()
    total = 0
    with os.fdopen(r, "rb") as inp, Decryptor(inp, [ident]) as dec:
        while piece := dec.read(1 << 20):
            got.update(piece)
            total += len(piece)
    t.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Probe: prove the meter moves (and its unit is KiB) by touching 100 MB on purpose.
    probe = bytearray(100 * 1000 * 1000)
    probe[::4096] = b"x" * len(probe[::4096])
    probed = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    json.dump({"baseline_kb": baseline, "peak_kb": peak, "probe_kb": probed, "total": total,
               "same": got.digest() == src_hash.digest()}, sys.stdout)
    """
)


def test_memory_is_independent_of_size() -> None:
    # Started through a forking /bin/sh on purpose: subprocess spawns with vfork, and Linux carries the
    # *parent's* (pytest's, often hundreds of MB) RSS high-water mark into ru_maxrss across exec. A child
    # that sh fork()s starts with its own clean mark. The 100 MB probe in the script guards the meter.
    proc = subprocess.run(
        ["/bin/sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, MEMORY_SCRIPT],
        cwd=REPO,
        capture_output=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    result = json.loads(proc.stdout)
    assert result["same"] and result["total"] == 300 * 1000 * 1000, result
    growth_mb = (result["peak_kb"] - result["baseline_kb"]) / 1024  # ru_maxrss is KiB on Linux
    assert (result["probe_kb"] - result["peak_kb"]) / 1024 > 50, f"RSS meter did not see a 100 MB probe: {result}"
    assert growth_mb < 60, f"peak RSS grew by {growth_mb:.1f} MB while streaming 300 MB"


# ------------------------------------------------------------------------------------------ properties


_PROPERTY_ID = generate_identity()


@settings(max_examples=50, deadline=None)
@given(
    size=st.one_of(
        st.sampled_from([0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE + 5]),
        st.integers(0, 3 * CHUNK_SIZE + 100),
    ),
    cuts=st.lists(st.integers(0, 3 * CHUNK_SIZE + 100), max_size=12),
    read_size=st.integers(1, 3 * CHUNK_SIZE),
    seed=st.integers(0, 2**32),
)
def test_round_trip_any_chunking(size: int, cuts: list[int], read_size: int, seed: int) -> None:
    data = random.Random(seed).randbytes(size)
    out = io.BytesIO()
    with Encryptor(out, [_PROPERTY_ID.recipient()]) as enc:
        bounds = sorted({0, size, *(c for c in cuts if c <= size)})
        for a, b in itertools.pairwise(bounds):
            assert enc.write(memoryview(data)[a:b]) == b - a
    blob = out.getvalue()
    # Exactly the chunk layout age prescribes: ceil(size / 64 KiB) chunks, at least one.
    chunks = max(1, -(-size // CHUNK_SIZE))
    header_end = blob.index(b"\n", blob.index(b"\n--- ") + 1) + 1
    assert len(blob) == header_end + 16 + size + 16 * chunks
    released, err = _released(blob, [_PROPERTY_ID], read_size)
    assert err is None and released == data


# -------------------------------------------------------------------------------------------- tampering


@pytest.fixture(scope="module")
def sample(idents: list[X25519Identity]) -> tuple[bytes, bytes, int]:
    """(plaintext of 3 full chunks + 5 bytes, its age file, offset of the first payload chunk)."""
    data = _data(3 * CHUNK_SIZE + 5, seed=7)
    blob = _encrypt(data, [idents[0].recipient()])
    header_end = blob.index(b"\n", blob.index(b"\n--- ") + 1) + 1
    return data, blob, header_end + 16


def _flip(blob: bytes, pos: int, mask: int = 0x01) -> bytes:
    b = bytearray(blob)
    b[pos] ^= mask
    return bytes(b)


def test_every_header_bit_flip_is_detected(sample: tuple[bytes, bytes, int], idents: list[X25519Identity]) -> None:
    _, blob, payload_start = sample
    for pos in range(payload_start):
        released, err = _released(_flip(blob, pos), [idents[0]])
        assert err is not None, f"flip at header byte {pos} went unnoticed"
        assert isinstance(err, (AgeHeaderError, AgeHmacError, AgeNoMatch, AgePayloadError)), (pos, err)
        if pos >= payload_start - 16:  # the nonce: a different payload key, so chunk 0 fails
            assert isinstance(err, AgePayloadError) and released == b""


def test_header_tampering_classes(sample: tuple[bytes, bytes, int], idents: list[X25519Identity]) -> None:
    _, blob, payload_start = sample
    ident = [idents[0]]
    with pytest.raises(AgeHeaderError, match="version"):
        decrypt_bytes(blob.replace(b"age-encryption.org/v1", b"age-encryption.org/v2", 1), ident)
    with pytest.raises(AgeHeaderError, match="not an age"):
        decrypt_bytes(b"garbage" + blob, ident)
    with pytest.raises(AgeHeaderError, match="implausibly large"):  # bounded look-ahead, no slurping
        decrypt_bytes(b"age-encryption.org/v1\n-> X25519 " + b"A" * (5 << 20), ident)
    with pytest.raises(AgeNoMatch):  # the only stanza becomes an unknown type
        decrypt_bytes(blob.replace(b"-> X25519 ", b"-> X25518 ", 1), ident)
    mac_at = blob.index(b"\n--- ") + 5
    swapped = b"B" if blob[mac_at : mac_at + 1] != b"B" else b"C"
    with pytest.raises(AgeHmacError, match="MAC does not verify"):
        decrypt_bytes(blob[:mac_at] + swapped + blob[mac_at + 1 :], ident)
    grease = b"-> grease-stanza x\nAAAA\n"
    at = blob.index(b"---")
    with pytest.raises(AgeHmacError):  # a stanza added after the fact: the MAC covers every stanza
        decrypt_bytes(blob[:at] + grease + blob[at:], ident)
    nonce_at = payload_start - 16
    with pytest.raises(AgePayloadError, match="chunk 0"):
        decrypt_bytes(_flip(blob, nonce_at + 3), ident)


@pytest.mark.parametrize("chunk", [0, 1, 3], ids=["first", "middle", "last"])
def test_flipped_chunk_byte(sample: tuple[bytes, bytes, int], idents: list[X25519Identity], chunk: int) -> None:
    data, blob, payload_start = sample
    pos = payload_start + chunk * ENC_CHUNK + 2
    released, err = _released(_flip(blob, pos, 0x80), [idents[0]])
    assert isinstance(err, AgePayloadError) and err.chunk == chunk
    assert f"chunk {chunk}" in str(err)
    assert released == data[: chunk * CHUNK_SIZE], "exactly the chunks before the bad one are released"


def test_truncation_at_and_between_chunk_boundaries(
    sample: tuple[bytes, bytes, int], idents: list[X25519Identity]
) -> None:
    data, blob, payload_start = sample
    cuts = {payload_start + k * ENC_CHUNK + d for k in range(4) for d in (0, 1, 15, 16, 17, ENC_CHUNK // 2)}
    cuts |= {len(blob) - 1, len(blob) - 16, len(blob) - 21}
    for cut in sorted(c for c in cuts if c < len(blob)):
        released, err = _released(blob[:cut], [idents[0]])
        assert isinstance(err, AgePayloadError), f"truncation at {cut} gave {err!r}"
        assert data.startswith(released) and len(released) % CHUNK_SIZE == 0
    for cut in (payload_start - 1, payload_start - 16, 10, 0):
        with pytest.raises(AgeHeaderError):
            decrypt_bytes(blob[:cut], [idents[0]])


def test_trailing_data_after_final_chunk(sample: tuple[bytes, bytes, int], idents: list[X25519Identity]) -> None:
    data, blob, _ = sample
    # A short final chunk swallows the extra byte, so the final chunk itself no longer verifies.
    released, err = _released(blob + b"\0", [idents[0]])
    assert isinstance(err, AgePayloadError) and err.chunk == 3
    assert released == data[: 3 * CHUNK_SIZE]
    # A full final chunk verifies; what follows it is the error, after its authentic plaintext.
    full = _data(2 * CHUNK_SIZE, seed=9)
    released, err = _released(_encrypt(full, [idents[0].recipient()]) + b"\0", [idents[0]])
    assert isinstance(err, AgePayloadError) and "after the final chunk" in str(err)
    assert released == full


def test_full_final_chunk_then_truncated_extension(idents: list[X25519Identity]) -> None:
    """A file of exactly two chunks: the second is full *and* final; dropping it must fail, not succeed."""
    data = _data(2 * CHUNK_SIZE, seed=8)
    blob = _encrypt(data, [idents[0].recipient()])
    assert decrypt_bytes(blob, [idents[0]]) == data
    released, err = _released(blob[: len(blob) - ENC_CHUNK], [idents[0]])
    assert isinstance(err, AgePayloadError) and released == data[:CHUNK_SIZE]


def test_wrong_identity_and_wrong_passphrase(sample: tuple[bytes, bytes, int]) -> None:
    _, blob, _ = sample
    with pytest.raises(AgeNoMatch, match="no identity matches") as info:
        decrypt_bytes(blob, [generate_identity(), generate_identity()])
    assert isinstance(info.value, DecryptionError) and info.value.exit_code == DecryptionError.exit_code
    with pytest.raises(AgeNoMatch, match="not passphrase-protected"):
        decrypt_bytes(blob, [ScryptIdentity(b"pw")])
    with pytest.raises(AgeNoMatch, match="no identity or passphrase"):
        decrypt_bytes(blob, [])

    pw_blob = encrypt_bytes(b"secret", [ScryptRecipient(b"right", work_factor=10)])
    with pytest.raises(AgeNoMatch, match="wrong passphrase") as info:
        decrypt_bytes(pw_blob, [ScryptIdentity(b"wrong")])
    assert isinstance(info.value, DecryptionError) and not isinstance(info.value, CorruptArchive)
    with pytest.raises(AgeNoMatch, match="protected by a passphrase"):
        decrypt_bytes(pw_blob, [generate_identity()])
    assert decrypt_bytes(pw_blob, [generate_identity(), ScryptIdentity(b"right")]) == b"secret"


def test_encryptor_refusals_and_abort(idents: list[X25519Identity]) -> None:
    with pytest.raises(UsageError, match="no recipient"):
        Encryptor(io.BytesIO(), [])
    with pytest.raises(UsageError, match="passphrase cannot be combined"):
        Encryptor(io.BytesIO(), [ScryptRecipient(b"pw", 10), idents[0].recipient()])
    with pytest.raises(UsageError):
        ScryptRecipient(b"")

    # An exception inside the with-block aborts: no final chunk, so the output reads as truncated.
    out = io.BytesIO()
    with pytest.raises(RuntimeError), Encryptor(out, [idents[0].recipient()]) as enc:
        enc.write(b"partial data")
        raise RuntimeError("boom")
    assert enc.closed and not out.closed
    _, err = _released(out.getvalue(), [idents[0]])
    assert isinstance(err, AgePayloadError)

    # Garbage-collected without close(): also aborted, never silently finalised.
    out = io.BytesIO()
    enc = Encryptor(out, [idents[0].recipient()])
    enc.write(b"x" * 100)
    del enc
    gc.collect()
    _, err = _released(out.getvalue(), [idents[0]])
    assert isinstance(err, AgePayloadError)

    # A failed write (here: the destination breaks) latches: close() then never seals the stream.
    class Flaky(io.BytesIO):
        fail = False

        def write(self, b: object) -> int:
            if self.fail:
                raise OSError(28, "No space left on device")
            return super().write(b)  # type: ignore[arg-type]

    flaky = Flaky()
    enc = Encryptor(flaky, [idents[0].recipient()])
    enc.write(b"a" * CHUNK_SIZE)
    flaky.fail = True
    with pytest.raises(OSError):
        enc.write(b"b" * 10)
    flaky.fail = False
    with pytest.raises(ValueError):
        enc.write(b"c")
    enc.close()
    _, err = _released(flaky.getvalue(), [idents[0]])
    assert isinstance(err, AgePayloadError)

    # close() does not close the destination and is idempotent.
    out = io.BytesIO()
    enc = Encryptor(out, [idents[0].recipient()])
    enc.close()
    enc.close()
    assert not out.closed and decrypt_bytes(out.getvalue(), [idents[0]]) == b""
    with pytest.raises(ValueError):
        enc.write(b"late")


def test_error_is_sticky_and_reads_are_typed(sample: tuple[bytes, bytes, int], idents: list[X25519Identity]) -> None:
    data, blob, payload_start = sample
    bad = _flip(blob, payload_start + ENC_CHUNK + 5)
    dec = Decryptor(io.BytesIO(bad), [idents[0]])
    assert dec.read(CHUNK_SIZE + 10) == data[:CHUNK_SIZE]  # short read: what verified before the failure
    for _ in range(2):
        with pytest.raises(AgePayloadError):
            dec.read(10)
    dec.close()
    with pytest.raises(ValueError):
        dec.read(1)
    dec = Decryptor(io.BytesIO(blob), [idents[0]])
    assert dec.readable() and not dec.writable() and not dec.seekable()
    assert dec.read(0) == b""
    assert dec.read1() == data[:CHUNK_SIZE]
    buf = bytearray(10)
    assert dec.readinto1(buf) == 10 and bytes(buf) == data[CHUNK_SIZE : CHUNK_SIZE + 10]
    assert dec.read() == data[CHUNK_SIZE + 10 :]
    assert dec.read() == b"" and dec.read(5) == b"" and dec.read1(5) == b""


# ------------------------------------------------------------------------------------------------- keys

SPEC_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"


def test_spec_key_pair() -> None:
    ident = X25519Identity.from_string(SPEC_IDENTITY)
    assert ident.to_string() == SPEC_IDENTITY
    assert ident.recipient().to_string() == SPEC_RECIPIENT
    assert parse_recipient(SPEC_RECIPIENT) == ident.recipient()
    assert SPEC_IDENTITY not in repr(ident) and SPEC_RECIPIENT in repr(ident)


@pytest.mark.parametrize(
    "valid",
    [
        "A12UEL5L",
        "a12uel5l",
        "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
        "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
        "11" + "q" * 82 + "c8247j",
        "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
        "?1ezyfcl",
    ],
)
def test_bech32_bip173_valid(valid: str) -> None:
    hrp, data = bech32_decode(valid)
    assert bech32_encode(hrp, data) == valid.lower()


@pytest.mark.parametrize(
    "invalid",
    [
        "\x201nwldj5",  # HRP character out of range
        "\x7f1axkwrx",
        "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx",
        "pzry9x0s0muk",  # no separator
        "1pzry9x0s0muk",  # empty HRP
        "x1b4n0q5v",  # invalid data character
        "li1dgmt3",  # too short checksum
        "de1lg7wt\xff",  # invalid character in checksum
        "A1G7SGD8",  # checksum calculated with upper-case HRP
        "10a06t8",  # empty HRP
        "1qzzfhee",  # empty HRP
        "a12UEL5L",  # mixed case
    ],
)
def test_bech32_bip173_invalid(invalid: str) -> None:
    # The one BIP 173 "invalid" string we accept is the 91-character one: age lifts the 90-character limit
    # (post-quantum keys are far longer), so only its length was wrong and it decodes.
    if invalid.startswith("an84"):
        assert bech32_decode(invalid) == (invalid[:84], b"")
        return
    with pytest.raises(Bech32Error):
        bech32_decode(invalid)


def test_key_case_rules_and_typos() -> None:
    with pytest.raises(KeyFileError, match="upper case"):
        X25519Identity.from_string(SPEC_IDENTITY.lower())
    with pytest.raises(KeyFileError, match="lower case"):
        X25519Recipient.from_string(SPEC_RECIPIENT.upper())
    typo = SPEC_RECIPIENT[:10] + ("q" if SPEC_RECIPIENT[10] != "q" else "p") + SPEC_RECIPIENT[11:]
    with pytest.raises(KeyFileError, match="checksum"):
        parse_recipient(typo)
    with pytest.raises(KeyFileError, match="secret key") as info:
        parse_recipient(SPEC_IDENTITY)
    assert SPEC_IDENTITY not in str(info.value)
    with pytest.raises(KeyFileError, match="SSH"):
        parse_recipient("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN")
    with pytest.raises(KeyFileError, match="post-quantum"):
        parse_recipient("age1pq1" + "q" * 60)


def test_parse_identities_rules() -> None:
    a, b = generate_identity(), generate_identity()
    text = f"# created: now\r\n# public key: {a.recipient()}\r\n{a.to_string()}\r\n\n   \n{b.to_string()}\n"
    assert [i.to_string() for i in parse_identities(text, "keys.txt")] == [a.to_string(), b.to_string()]
    broken = a.to_string()[:-1] + ("Q" if a.to_string()[-1] != "Q" else "P")
    with pytest.raises(KeyFileError, match=r"keys\.txt, line 2") as info:
        parse_identities(f"# c\n{broken}\n", "keys.txt")
    assert broken not in str(info.value), "a secret never goes into an error message"
    with pytest.raises(KeyFileError, match="no age secret key"):
        parse_identities("# only comments\n\n", "empty.txt")
    with pytest.raises(KeyFileError, match="post-quantum"):
        parse_identities("AGE-SECRET-KEY-PQ-1HZLGZUPT4ETPKDEV8HSGFDCYZ4E522W0A7PU2LHT8EH9W6YLNC3SW78XKG\n", "pq")
    with pytest.raises(KeyFileError, match="encrypted identity file"):
        parse_identities("age-encryption.org/v1\n-> scrypt x 18\n", "enc")
    with pytest.raises(KeyFileError, match="does not exist"):
        read_identity_file(Path("/nonexistent/statekit/key.txt"))


def test_is_age_file(sample: tuple[bytes, bytes, int]) -> None:
    _, blob, _ = sample
    assert is_age_file(blob[:64]) and is_age_file(blob[:22])
    assert not is_age_file(b"age-encryption.org/v2\n") and not is_age_file(b"\x28\xb5\x2f\xfd")
