"""statekit's age against pyrage (the Rust `rage` implementation), in both directions, on every machine.

pyrage is a dev dependency, so these tests never skip: they are the interop proof on a fresh clone without
the Go `age` CLI (test_age_interop.py adds that one where it is installed). Covered: X25519 with one and several
recipients, scrypt passphrases, key strings both ways, payload sizes around the 64 KiB chunk boundary, and a
whole statekit archive decrypted by rage and read with zstandard + tarfile.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pyrage
import pytest
import zstandard

from statekit.archive.age import AgeNoMatch, decrypt_bytes, encrypt_bytes
from statekit.archive.keys import (
    ScryptIdentity,
    ScryptRecipient,
    X25519Identity,
    generate_identity,
    parse_recipient,
    read_identity_file,
    write_identity_file,
)
from statekit.cli import run

SIZES = [0, 1, 65535, 65536, 65537, 3 * 65536 + 5]
PASSPHRASE = "correct horse battery staple"


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + size).randbytes(size)


@pytest.mark.parametrize("size", SIZES)
def test_statekit_encrypts_rage_decrypts(size: int) -> None:
    data = _data(size)
    ours = [generate_identity() for _ in range(3)]
    blob = encrypt_bytes(data, [i.recipient() for i in ours])
    for ident in ours:
        assert bytes(pyrage.decrypt(blob, [pyrage.x25519.Identity.from_str(ident.to_string())])) == data
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(blob, [pyrage.x25519.Identity.generate()])


@pytest.mark.parametrize("size", SIZES)
def test_rage_encrypts_statekit_decrypts(size: int) -> None:
    data = _data(size, seed=1)
    theirs = [pyrage.x25519.Identity.generate() for _ in range(2)]
    blob = pyrage.encrypt(data, [t.to_public() for t in theirs])
    for t in theirs:
        ident = X25519Identity.from_string(str(t))
        assert ident.recipient().to_string() == str(t.to_public())
        assert decrypt_bytes(blob, [ident]) == data
    with pytest.raises(AgeNoMatch):
        decrypt_bytes(blob, [generate_identity()])


def test_key_strings_both_ways(tmp_path: Path) -> None:
    """A statekit identity file's key is a rage identity; a rage recipient string is a statekit recipient."""
    ours = generate_identity()
    key = tmp_path / "id.txt"
    write_identity_file(key, ours)
    [line] = [x for x in key.read_text().splitlines() if x.startswith("AGE-SECRET-KEY-1")]
    assert str(pyrage.x25519.Identity.from_str(line).to_public()) == ours.recipient().to_string()
    theirs = pyrage.x25519.Identity.generate()
    assert parse_recipient(str(theirs.to_public())).to_string() == str(theirs.to_public())


def test_scrypt_both_ways() -> None:
    data = _data(65537, seed=2)
    blob = encrypt_bytes(data, [ScryptRecipient(PASSPHRASE.encode(), work_factor=12)])
    assert bytes(pyrage.passphrase.decrypt(blob, PASSPHRASE)) == data
    with pytest.raises(pyrage.DecryptError):
        pyrage.passphrase.decrypt(blob, "not it")
    blob = pyrage.passphrase.encrypt(data, PASSPHRASE)
    assert b"\n-> scrypt " in bytes(blob[:200])
    assert decrypt_bytes(bytes(blob), [ScryptIdentity(PASSPHRASE.encode())]) == data
    with pytest.raises(AgeNoMatch, match="wrong passphrase"):
        decrypt_bytes(bytes(blob), [ScryptIdentity(b"not it")])


def test_statekit_archive_opens_with_rage_zstandard_tarfile(tmp_path: Path) -> None:
    """A snapshot read without statekit's reader: rage decrypts, zstandard and tarfile do the rest."""
    keys = tmp_path / "keys" / "instances" / "a"
    keys.mkdir(parents=True)
    (keys / "creds.json").write_text(json.dumps({"noiseKey": "00" * 32}))
    assert run(["keygen", "-o", str(tmp_path / "id.txt")]) == 0
    recipient = read_identity_file(tmp_path / "id.txt")[0].recipient().to_string()
    archive = tmp_path / "a.statekit"
    code = run(["snapshot", "--files-root", str(tmp_path / "keys"), "--to", str(archive), "-r", recipient, "-q"])
    assert code == 0
    [secret] = [x for x in (tmp_path / "id.txt").read_text().splitlines() if x.startswith("AGE-SECRET-KEY-1")]
    plain = bytes(pyrage.decrypt(archive.read_bytes(), [pyrage.x25519.Identity.from_str(secret)]))
    tar_bytes = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(plain), read_across_frames=True).read()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        names = tar.getnames()
        member = tar.extractfile("files/instances/a/creds.json")
        assert member is not None and json.loads(member.read()) == {"noiseKey": "00" * 32}
    assert "MANIFEST.json" in names
