"""The archive container: round trips, frames, tampering, truncation and wrong keys, on real files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit.archive.format import READ_BLOCK
from statekit.archive.keys import ScryptIdentity, ScryptRecipient, X25519Identity, generate_identity
from statekit.archive.reader import Archive
from statekit.archive.writer import ArchiveWriter
from statekit.cli import run
from statekit.errors import CorruptArchive, DecryptionError, StatekitError

CHUNK = 64 * 1024 + 16  # one age STREAM chunk on disk
IDENTITY = generate_identity()
OTHER = generate_identity()


def write_archive(path: Path, members: list[tuple[str, bytes | Any, int | None]], recipients: list[Any]) -> None:
    """Write an archive of (name, bytes or file object, size) members."""
    with open(path, "wb") as fh:
        writer = ArchiveWriter(fh, recipients=recipients, level=1)
        for name, data, size in members:
            writer.add(name, data, size=size)
        writer.finish({"kind": "test"})


def read_back(path: Path, identities: list[Any]) -> dict[str, bytes]:
    """Every data member of an archive (reserved members excluded), after the full verifying pass."""
    return {m.name: m.read_all() for m in Archive(path, identities).members() if m.name != "README.txt"}


def frames(plain: bytes) -> list[int]:
    """Decompressed sizes of the zstd frames in `plain`, in order."""
    sizes = []
    rest = plain
    while rest:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        sizes.append(len(dobj.decompress(rest)))
        rest = dobj.unused_data
    return sizes


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run statekit in-process as a user would, returning (exit code, stdout, stderr)."""
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- round trips -----------------------------------------------------------------------------------------

_SEGMENT = st.text(alphabet=st.characters(codec="utf-8", blacklist_characters="/\\\0"), min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)
_BINARY_SEGMENT = st.binary(min_size=1, max_size=8).filter(
    lambda b: b"/" not in b and b"\0" not in b and b"\\" not in b
)
_NAME = st.one_of(
    st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join),
    _BINARY_SEGMENT.map(lambda b: "bin/" + b.decode("utf-8", "surrogateescape")).filter(
        lambda s: s.split("/")[1] not in (".", "..")
    ),
).filter(lambda n: n not in ("format.json", "README.txt", "snapshot.json", "MANIFEST.json"))
_SIZE = st.one_of(st.sampled_from([0, 1, 65535, 65536, 65537]), st.integers(0, 3000))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    members=st.dictionaries(_NAME, st.tuples(_SIZE, st.integers(0, 2**32), st.booleans()), min_size=0, max_size=6),
    crypto=st.sampled_from(["x25519", "scrypt", "none"]),
)
def test_round_trip(tmp_path: Path, members: dict[str, tuple[int, int, bool]], crypto: str) -> None:
    keys: dict[str, tuple[list[Any], list[Any]]] = {
        "x25519": ([IDENTITY.recipient()], [IDENTITY]),
        "scrypt": ([ScryptRecipient(b"pw", 2)], [ScryptIdentity(b"pw")]),
        "none": ([], []),
    }
    recipients, identities = keys[crypto]
    expected = {name: random.Random(seed).randbytes(size) for name, (size, seed, _) in members.items()}
    specs = [
        (name, io.BytesIO(expected[name]) if as_stream else expected[name], size if as_stream else None)
        for name, (size, _, as_stream) in members.items()
    ]
    path = tmp_path / f"a-{crypto}.statekit"
    path.unlink(missing_ok=True)
    write_archive(path, specs, recipients)
    assert read_back(path, identities) == expected
    manifest = Archive(path, identities).manifest
    listed = {m["name"]: m for m in manifest["members"]}
    for name, data in expected.items():
        assert listed[name]["size"] == len(data)
        assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("block", [READ_BLOCK, 3 * READ_BLOCK // 2, 65543])
def test_big_members_read_in_blocks_stop_at_their_end(tmp_path: Path, block: int) -> None:
    # zstd decompresses straight into the buffer a member's stream hands out: a read never runs past the member
    # (into the next one's bytes or its tar padding), whatever the read size, and every byte is hashed
    sizes = [READ_BLOCK - 1, READ_BLOCK, READ_BLOCK + 1, 2 * READ_BLOCK + 12345, 7, 3 * READ_BLOCK]
    expected = {f"m{i}": random.Random(i).randbytes(n) for i, n in enumerate(sizes)}
    path = tmp_path / "blocks.statekit"
    write_archive(path, [(name, data, None) for name, data in expected.items()], [IDENTITY.recipient()])
    got: dict[str, bytes] = {}
    for member in Archive(path, [IDENTITY]).members("m"):
        parts = []
        while chunk := member.stream.read(block):
            parts.append(chunk)
        got[member.name] = b"".join(parts)
    assert got == expected


def test_small_members_share_a_frame_big_ones_get_their_own(tmp_path: Path) -> None:
    path = tmp_path / "plain.statekit"
    big = random.Random(1).randbytes(1_500_000)
    write_archive(path, [("a", b"x" * 100, None), ("b", b"y" * 100, None), ("big", big, None)], [])
    sizes = frames(path.read_bytes())
    # format.json, README, a, b share the first frame; the big member's frame holds its header, data, padding.
    assert len(sizes) == 3
    assert sizes[1] == 512 * 2 + 1_500_000 + (-1_500_000 % 512) or sizes[1] >= 1_500_000
    assert read_back(path, [])["big"] == big


@pytest.mark.parametrize("threads", [2, 4])
def test_big_members_are_the_same_frames_with_or_without_zstd_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """A big member is compressed by zstd worker threads where there are cores for them: the archive has the
    same frames as without workers (one per big member, holding its header, data and padding), readable by any
    zstd decoder."""
    from statekit.archive import writer as writer_module

    rng = random.Random(threads)
    # 6 MiB, half compressible: several of zstd's jobs, so the workers really split the member
    big = b"".join(rng.randbytes(4096) + b"row %d\n" % i * 512 for i in range(768))
    layouts = []
    for n in (0, threads):
        monkeypatch.setattr(writer_module, "_compress_threads", lambda n=n: n)
        path = tmp_path / f"mt{n}.statekit"
        write_archive(path, [("a", b"x" * 100, None), ("segment", big, None), ("b", b"y" * 100, None)], [])
        layouts.append(frames(path.read_bytes()))
        assert read_back(path, [])["segment"] == big
        assert zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())  # a plain zstd stream
    assert layouts[0] == layouts[1]
    assert len(layouts[0]) == 3 and 0 < layouts[0][1] - len(big) < 4096


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 2), (3, 3), (8, 4), (64, 4)])
def test_zstd_workers_follow_the_usable_cores(monkeypatch: pytest.MonkeyPatch, cores: int, workers: int) -> None:
    """One zstd worker per core the process may run on (its affinity, not the host's count), at most 4; on a
    single core none at all (the calling thread compresses)."""
    from statekit.archive.writer import _compress_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 256)
    assert _compress_threads() == workers


def test_usable_cores_without_an_affinity_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the platform has no affinity call (macOS), the host's count stands in; an unknown count is 1."""
    from statekit.model import usable_cores

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores() == 4 and usable_cores(limit=8) == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cores() == 1


class _Pattern(io.RawIOBase):
    """A stream of `size` cheap, compressible bytes that never sits in memory all at once."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.left)
        block = (b"statekit" * (n // 8 + 1))[:n]
        buf[:n] = block
        self.digest.update(block)
        self.left -= n
        return n


def test_member_over_64_mib_is_split_into_frames(tmp_path: Path) -> None:
    size = (64 << 20) + 12345
    src = _Pattern(size)
    path = tmp_path / "big.statekit"
    write_archive(path, [("huge", io.BufferedReader(src), size)], [IDENTITY.recipient()])
    seen = hashlib.sha256()
    got = 0
    for m in Archive(path, [IDENTITY]).members("huge"):
        while block := m.stream.read(1 << 20):
            seen.update(block)
            got += len(block)
    assert got == size
    assert seen.hexdigest() == src.digest.hexdigest()


def test_binary_and_unicode_names_survive_manifest(tmp_path: Path) -> None:
    name_bin = "files/" + b"k\xff\xfe.json".decode("utf-8", "surrogateescape")
    name_uni = "files/Ünïcødé/键.json"
    path = tmp_path / "n.statekit"
    write_archive(path, [(name_bin, b"1", None), (name_uni, b"2", None)], [IDENTITY.recipient()])
    assert read_back(path, [IDENTITY]) == {name_bin: b"1", name_uni: b"2"}


def test_writer_refuses_unsafe_and_duplicate_names(tmp_path: Path) -> None:
    with open(tmp_path / "x", "wb") as fh:
        writer = ArchiveWriter(fh, recipients=[])
        for bad in ("../x", "/abs", "a/../b", "a//b", "", "MANIFEST.json"):
            with pytest.raises((CorruptArchive, ValueError)):
                writer.add(bad, b"")
        writer.add("ok", b"")
        with pytest.raises(ValueError):
            writer.add("ok", b"")


# -- damage ----------------------------------------------------------------------------------------------


@pytest.fixture
def key_folder(tmp_path: Path) -> Path:
    """A key folder with ~250 KiB of incompressible content, so the archive spans several age chunks."""
    root = tmp_path / "keys"
    rng = random.Random(7)
    for i in range(5):
        d = root / "instances" / f"inst-{i}"
        d.mkdir(parents=True)
        (d / "creds.json").write_bytes(rng.randbytes(50_000))
        (d / "pre-key-1.json").write_text(json.dumps({"i": i}))
    return root


@pytest.fixture
def identity_file(tmp_path: Path) -> Path:
    path = tmp_path / "id.txt"
    path.write_text(f"# public key: {IDENTITY.recipient().to_string()}\n{IDENTITY.to_string()}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def archive(tmp_path: Path, key_folder: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, _, err = cli(
        capsys, "snapshot", "--files-root", str(key_folder), "--to", str(tmp_path / "a.statekit"),
        "-r", IDENTITY.recipient().to_string(),
    )  # fmt: skip
    assert code == 0, err
    return tmp_path / "a.statekit"


def payload_offset(data: bytes) -> int:
    """Where the age payload starts: after the header's MAC line and the 16-byte nonce."""
    return data.index(b"\n", data.index(b"\n---")) + 1 + 16


def assert_refused_without_writes(
    capsys: pytest.CaptureFixture[str], path: Path, identity_file: Path, tmp_path: Path, code_expected: int
) -> str:
    """verify fails with `code_expected`; restore fails the same way and leaves the target untouched."""
    code, _, err = cli(capsys, "verify", str(path), "-i", str(identity_file))
    assert code == code_expected, err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err
    target = tmp_path / "target"
    target.mkdir(exist_ok=True)
    (target / "keep.json").write_text("old")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err2 = cli(
        capsys, "restore", str(path), "-i", str(identity_file), "--tier", "files", "--target", str(target), "--yes"
    )
    assert code == code_expected, err2
    assert sorted(p.name for p in target.iterdir()) == ["keep.json"]
    assert (target / "keep.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no undo archive, nothing beside the target
    return err


def flip(path: Path, offset: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    out = path.with_name(f"flipped-{offset}.statekit")
    out.write_bytes(bytes(data))
    return out


def test_intact_archive_verifies(archive: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "verify", str(archive), "-i", str(identity_file))
    assert code == 0 and out.startswith("ok:")


@pytest.mark.parametrize("where", ["intro", "mac", "nonce", "first", "middle", "last", "final-byte"])
def test_flipped_byte_is_corruption(
    where: str, archive: Path, identity_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = archive.read_bytes()
    start = payload_offset(data)
    chunks = (len(data) - start + CHUNK - 1) // CHUNK
    assert chunks >= 4
    offset = {
        "intro": 3,
        "mac": data.index(b"\n---") + 6,
        "nonce": start - 5,
        "first": start + 100,
        "middle": start + (chunks // 2) * CHUNK + 500,
        "last": start + (chunks - 1) * CHUNK + 10,  # the manifest lives in the last chunk
        "final-byte": len(data) - 1,
    }[where]
    err = assert_refused_without_writes(capsys, flip(archive, offset), identity_file, tmp_path, 3)
    assert "corrupt" in err or "not a statekit archive" in err or "MAC" in err


@pytest.mark.parametrize("delta", [0, 1, 100, -1, -16])
def test_truncation_at_and_between_chunk_boundaries(
    delta: int, archive: Path, identity_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = archive.read_bytes()
    start = payload_offset(data)
    chunks = (len(data) - start + CHUNK - 1) // CHUNK
    for k in range(chunks):
        cut = start + k * CHUNK + delta
        if not 0 < cut < len(data):
            continue
        path = tmp_path / f"cut-{k}.statekit"
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptArchive):
            Archive(path, [IDENTITY]).index()
    path = tmp_path / "cut.statekit"
    path.write_bytes(data[: start + CHUNK + delta])
    assert_refused_without_writes(capsys, path, identity_file, tmp_path, 3)


def test_truncated_unencrypted_archive(tmp_path: Path) -> None:
    path = tmp_path / "p.statekit"
    write_archive(path, [("a", random.Random(2).randbytes(300_000), None)], [])
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptArchive):
            Archive(path).index()


def test_wrong_identity_is_a_key_error_not_corruption(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(DecryptionError):
        Archive(archive, [OTHER]).index()
    other = tmp_path / "other.txt"
    other.write_text(OTHER.to_string() + "\n")
    other.chmod(0o600)
    assert_refused_without_writes(capsys, archive, other, tmp_path, 4)


def test_a_passphrase_is_stretched_once_per_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pass opens the archive anew (its head, the verifying pass, the load): scrypt runs only for the
    first; another archive (another salt) and a wrong passphrase are derived on their own."""
    from statekit.archive import keys

    calls: list[int] = []
    real = keys._scrypt

    def counting(passphrase: bytes, salt: bytes, work_factor: int) -> bytes:
        calls.append(work_factor)
        return real(passphrase, salt, work_factor)

    monkeypatch.setattr(keys, "_scrypt", counting)
    first, second = tmp_path / "1.statekit", tmp_path / "2.statekit"
    write_archive(first, [("a", b"one", None)], [ScryptRecipient(b"pw", 2)])
    write_archive(second, [("a", b"two", None)], [ScryptRecipient(b"pw", 2)])
    calls.clear()  # writing stretches too (one per archive)
    identity = ScryptIdentity(b"pw")
    archive = Archive(first, [identity])
    archive.head()
    archive.index()
    assert {m.name: m.read_all() for m in archive.members() if m.name == "a"} == {"a": b"one"}
    assert len(calls) == 1
    assert read_back(second, [identity]) == {"a": b"two"}
    assert len(calls) == 2
    with pytest.raises(DecryptionError):
        Archive(first, [ScryptIdentity(b"wrong")]).index()
    assert len(calls) == 3


def test_wrong_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pw.statekit"
    write_archive(path, [("a", b"secret", None)], [ScryptRecipient(b"right", 2)])
    assert read_back(path, [ScryptIdentity(b"right")]) == {"a": b"secret"}
    with pytest.raises(DecryptionError):
        Archive(path, [ScryptIdentity(b"wrong")]).index()
    with pytest.raises(DecryptionError):
        Archive(path, [X25519Identity.generate()]).index()
    monkeypatch.setenv("STATEKIT_PASSPHRASE", "wrong")
    code, _, err = cli(capsys, "verify", str(path))
    assert code == 4 and "passphrase" in err
    monkeypatch.setenv("STATEKIT_PASSPHRASE", "right")
    code, _, err = cli(capsys, "verify", str(path))
    assert code == 0, err


def test_scrypt_snapshot_through_the_cli(
    tmp_path: Path, key_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STATEKIT_PASSPHRASE", "correct horse")
    code, _, err = cli(capsys, "snapshot", "--files-root", str(key_folder), "--to", str(tmp_path / "s.statekit"))
    assert code == 0, err
    code, _, err = cli(capsys, "restore", str(tmp_path / "s.statekit"), "--tier", "files", "--target", "out", "--yes")
    assert code == 0, err
    assert (Path("out") / "instances/inst-3/creds.json").read_bytes() == (
        key_folder / "instances/inst-3/creds.json"
    ).read_bytes()


def test_errors_are_statekit_errors_with_codes() -> None:
    assert issubclass(CorruptArchive, StatekitError) and CorruptArchive.exit_code == 3
    assert DecryptionError.exit_code == 4
    assert os.sep == "/"
