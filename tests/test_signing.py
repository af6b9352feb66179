"""Authenticity: Ed25519 signing keys, detached `<archive>.sig` files, and `--signer` refusing anything but a valid
signature by a trusted key (exit 11)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from statekit.archive.signing import (
    generate_signing_key,
    parse_public_key,
    read_signing_key,
    sign_archive,
    signature_path,
    verify_signature,
    write_signing_key,
)
from statekit.errors import KeyFileError, Refused, SignatureError

STATEKIT = str(Path(sys.executable).parent / "statekit")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `statekit` as a user would; a traceback in the output is always a failure."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_") or k.startswith("STATEKIT_TEST")}
    full_env.update(env or {})
    proc = subprocess.run([STATEKIT, *args], capture_output=True, text=True, env=full_env, timeout=120)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    """An age identity and a signing key made with `statekit keygen`."""
    ident = tmp_path / "identity.txt"
    proc = run_cli("keygen", "-o", str(ident), "--json")
    assert proc.returncode == 0, proc.stderr
    recipient = json.loads(proc.stdout)["recipient"]
    sign = tmp_path / "sign.key"
    proc = run_cli("keygen", "--sign", "-o", str(sign), "--json")
    assert proc.returncode == 0, proc.stderr
    public = json.loads(proc.stdout)["public_key"]
    return {"identity": str(ident), "recipient": recipient, "sign_key": str(sign), "public": public}


@pytest.fixture
def archive(tmp_path: Path, keys: dict[str, str]) -> Path:
    """A small encrypted files-tier archive."""
    root = tmp_path / "root"
    (root / "inst").mkdir(parents=True)
    (root / "inst" / "creds.json").write_text('{"k": 1}')
    out = tmp_path / "a.statekit"
    proc = run_cli("snapshot", "--files-root", str(root), "--to", str(out), "-r", keys["recipient"])
    assert proc.returncode == 0, proc.stderr
    return out


# -- keys -------------------------------------------------------------------------------------------------------


def test_key_text_forms_round_trip(tmp_path: Path) -> None:
    key = generate_signing_key()
    public = key.public_string()
    assert public.startswith("statekit-sign1")
    assert parse_public_key(public) == key.public_key()
    path = tmp_path / "k"
    write_signing_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_signing_key(path).public_string() == public
    assert key.secret_string() not in repr(key)


def test_write_signing_key_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k"
    first = generate_signing_key()
    write_signing_key(path, first)
    with pytest.raises(Refused):
        write_signing_key(path, generate_signing_key())
    assert read_signing_key(path).public_string() == first.public_string()
    second = generate_signing_key()
    write_signing_key(path, second, force=True)
    assert read_signing_key(path).public_string() == second.public_string()
    assert [p.name for p in tmp_path.iterdir()] == ["k"]  # no temporary file left


@pytest.mark.parametrize(
    "text",
    [
        "",
        "age1qqqq",
        "statekit-sign1qqqqqq",
        "STATEKIT-SIGN1" + "Q" * 58,
        "statekit-sign1a2wqn49zhaa43n464j8q8u7vc0zlhxzgqnrjf7498v40pvxtgk2s5ks0gb",  # checksum typo
    ],
)
def test_parse_public_key_rejects(text: str) -> None:
    with pytest.raises(KeyFileError):
        parse_public_key(text)


def test_parse_public_key_refuses_a_secret_without_echoing_it() -> None:
    secret = generate_signing_key().secret_string()
    with pytest.raises(KeyFileError) as err:
        parse_public_key(secret)
    assert secret not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"# only a comment\n", b"garbage\n", b"\xff\xfe", b"AGE-SECRET-KEY-1QQQQ\n"])
def test_read_signing_key_rejects_bad_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=str(path)):
        read_signing_key(path)


def test_loose_key_file_draws_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_signing_key(path, generate_signing_key())
    path.chmod(0o644)
    heard: list[str] = []
    read_signing_key(path, warn=heard.append)
    assert heard and "chmod 600" in heard[0]


# -- signatures (library) ---------------------------------------------------------------------------------------


def test_sign_and_verify(tmp_path: Path) -> None:
    key = generate_signing_key()
    target = tmp_path / "x.statekit"
    target.write_bytes(os.urandom(3 << 20))
    sig = sign_archive(target, key)
    assert sig == signature_path(target)
    assert stat.S_IMODE(sig.stat().st_mode) == 0o600
    info = verify_signature(target, [key.public_string()])
    assert info.public_key == key.public_string()
    assert info.archive_size == 3 << 20
    # Name-independent: a renamed copy with its renamed signature still verifies.
    moved = tmp_path / "renamed.statekit"
    target.rename(moved)
    sig.rename(signature_path(moved))
    verify_signature(moved, [key.public_key()])


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _tamper_signature_field(sig: Path, field: str, value: object) -> None:
    doc = json.loads(sig.read_text())
    doc[field] = value
    sig.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "damage",
    [
        "missing",
        "wrong-key",
        "archive-modified",
        "archive-truncated",
        "archive-extended",
        "signature-bytes",
        "signature-not-json",
        "signature-empty",
        "signed-hash-replaced",
        "signed-time-changed",
        "signer-swapped",
        "future-version",
        "wrong-type",
    ],
)
def test_verify_refuses(tmp_path: Path, damage: str) -> None:
    key = generate_signing_key()
    other = generate_signing_key()
    target = tmp_path / "x.statekit"
    target.write_bytes(os.urandom(200_000))
    sig = sign_archive(target, key)
    trusted = [key.public_string()]
    if damage == "missing":
        sig.unlink()
    elif damage == "wrong-key":
        trusted = [other.public_string()]
    elif damage == "archive-modified":
        _flip(target, 100_000)
    elif damage == "archive-truncated":
        target.write_bytes(target.read_bytes()[:-1])
    elif damage == "archive-extended":
        with open(target, "ab") as fh:
            fh.write(b"\0")
    elif damage == "signature-bytes":
        doc = json.loads(sig.read_text())
        raw = bytearray(__import__("base64").b64decode(doc["signature"]))
        raw[0] ^= 1
        _tamper_signature_field(sig, "signature", __import__("base64").b64encode(bytes(raw)).decode())
    elif damage == "signature-not-json":
        sig.write_bytes(b"\x00not json")
    elif damage == "signature-empty":
        sig.write_bytes(b"")
    elif damage == "signed-hash-replaced":
        _tamper_signature_field(sig, "archive_sha256", "0" * 64)
    elif damage == "signed-time-changed":
        _tamper_signature_field(sig, "signed_at", "2000-01-01T00:00:00Z")
    elif damage == "signer-swapped":
        # An attacker re-signs the modified archive with their own key: the signer is not trusted.
        _flip(target, 10)
        sign_archive(target, other)
    elif damage == "future-version":
        _tamper_signature_field(sig, "version", 2)
    elif damage == "wrong-type":
        _tamper_signature_field(sig, "archive_size", "200000")
    with pytest.raises(SignatureError) as err:
        verify_signature(target, trusted)
    assert err.value.exit_code == 11


def test_verify_needs_a_trusted_key(tmp_path: Path) -> None:
    target = tmp_path / "x"
    target.write_bytes(b"x")
    sign_archive(target, generate_signing_key())
    with pytest.raises(SignatureError):
        verify_signature(target, [])


# -- the CLI ----------------------------------------------------------------------------------------------------


def test_keygen_sign_writes_a_private_key_file(tmp_path: Path) -> None:
    path = tmp_path / "sign.key"
    proc = run_cli("keygen", "--sign", "-o", str(path))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_signing_key(path)
    assert key.public_string() in proc.stdout
    assert key.secret_string() not in proc.stdout + proc.stderr
    again = run_cli("keygen", "--sign", "-o", str(path))
    assert again.returncode == Refused.exit_code
    assert read_signing_key(path).public_string() == key.public_string()
    assert run_cli("keygen", "--sign").returncode == 2  # never printed to stdout


def test_snapshot_sign_key_then_verify_and_restore_signer(tmp_path: Path, keys: dict[str, str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "k.json").write_text("v1")
    out = tmp_path / "s.statekit"
    proc = run_cli("snapshot", "--files-root", str(root), "--to", str(out), "-r", keys["recipient"],
                   "--sign-key", keys["sign_key"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert signature_path(out).is_file()
    ok = run_cli("verify", str(out), "-i", keys["identity"], "--signer", keys["public"])
    assert ok.returncode == 0, ok.stderr
    target = tmp_path / "restored"
    proc = run_cli("restore", str(out), "--tier", "files", "--target", str(target), "-i", keys["identity"],
                   "--signer", keys["public"], "--yes", "--no-undo")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (target / "k.json").read_text() == "v1"


@pytest.mark.parametrize("damage", ["missing", "wrong-key", "archive-modified", "signature-modified"])
def test_cli_signer_refuses(tmp_path: Path, keys: dict[str, str], archive: Path, damage: str) -> None:
    key = read_signing_key(keys["sign_key"])
    trusted = keys["public"]
    if damage != "missing":
        sign_archive(archive, key)
    if damage == "wrong-key":
        trusted = generate_signing_key().public_string()
    elif damage == "archive-modified":
        _flip(archive, archive.stat().st_size // 2)
    elif damage == "signature-modified":
        _tamper_signature_field(signature_path(archive), "signed_at", "1999-01-01T00:00:00Z")
    proc = run_cli("verify", str(archive), "-i", keys["identity"], "--signer", trusted)
    assert proc.returncode == 11, proc.stderr
    assert proc.stderr.startswith("Error: ") and len(proc.stderr.strip().splitlines()) == 1
    target = tmp_path / "restored"
    proc = run_cli("restore", str(archive), "--tier", "files", "--target", str(target), "-i", keys["identity"],
                   "--signer", trusted, "--yes", "--no-undo")  # fmt: skip
    assert proc.returncode == 11, proc.stderr
    assert not target.exists()


def test_cli_signer_accepts_any_of_several(keys: dict[str, str], archive: Path) -> None:
    sign_archive(archive, read_signing_key(keys["sign_key"]))
    other = generate_signing_key().public_string()
    proc = run_cli("verify", str(archive), "-i", keys["identity"], "--signer", other, "--signer", keys["public"])
    assert proc.returncode == 0, proc.stderr


def test_unsigned_verify_still_works_without_signer(keys: dict[str, str], archive: Path) -> None:
    proc = run_cli("verify", str(archive), "-i", keys["identity"])
    assert proc.returncode == 0, proc.stderr
