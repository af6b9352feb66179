"""Hostile archives for the files tier: a key file over the documented bound (MAX_FILE_BYTES), path components no file
system can hold, modes wider than 0600, deletion records in an archive that is not an undo archive. Each is
refused (exit 3, one line naming the member) before the first change, or restored within the documented
bounds; and a restore that fails while it promotes its files puts back everything it already changed."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from statekit.archive.keys import generate_identity
from statekit.archive.writer import ArchiveWriter
from statekit.errors import CorruptArchive
from statekit.fsio import atomic_output
from statekit.model import Member
from statekit.tiers.files.members import FilesDecoder
from statekit.tiers.files.paths import MAX_FILE_BYTES, MAX_FILE_TEXT

IDENTITY = generate_identity()
STATEKIT = os.environ.get("STATEKIT_TEST_BIN") or str(Path(sys.executable).parent / "statekit")


def files_archive(path: Path, members: list[tuple[str, bytes, int]], kind: str = "snapshot") -> Path:
    """A validly encrypted archive, with a truthful manifest, holding these (name, data, mode) members."""
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=[IDENTITY.recipient()], head={"kind": kind, "tiers": ["files"]})
        for name, data, mode in members:
            w.add(name, data, mode=mode, meta={"files": 1} if name.startswith("files/") else {"absent": 1})
        w.finish({"kind": kind, "tiers": [{"tier": "files", "counts": {"files": len(members)}}]})
    return path


def restore(archive: Path, identity: Path, target: Path, *extra: str, prefix: tuple[str, ...] = ()) -> tuple[int, str]:
    proc = subprocess.run(
        [*prefix, STATEKIT, "restore", str(archive), "-i", str(identity), "--tier", "files", "--target", str(target),
         *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc.returncode, proc.stderr


def tree(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path under root with its mode, mtime and content: what "unchanged" means."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return out


@pytest.fixture
def target(tmp_path: Path) -> Path:
    root = tmp_path / "target"
    (root / "sub").mkdir(parents=True)
    (root / "a.json").write_bytes(b"old a")
    (root / "sub" / "b.json").write_bytes(b"old b")
    return root


def refused_unchanged(archive: Path, identity: Path, target: Path, *needles: str) -> None:
    before = tree(target)
    for extra in (["--dry-run"], ["--yes"], ["--yes", "--no-undo"]):
        code, err = restore(archive, identity, target, *extra)
        assert code == 3, f"{extra}: {err}"
        assert err.startswith("Error: ") and err.count("\n") == 1, err
        for needle in needles:
            assert needle in err, err
        assert tree(target) == before, extra


# -- 1. size bound ---------------------------------------------------------------------------------------------


def test_a_key_file_over_the_bound_is_refused_before_writing(tmp_path: Path, identity_file: Path, target: Path) -> None:
    archive = files_archive(
        tmp_path / "big.statekit",
        [("files/a.json", b"NEW", 0o600), ("files/z/big.bin", bytes(MAX_FILE_BYTES + 1), 0o600)],
    )
    assert archive.stat().st_size < 64 * 1024  # zeros: a small archive, a big file
    refused_unchanged(archive, identity_file, target, "files/z/big.bin", MAX_FILE_TEXT)


def test_a_key_file_of_exactly_the_bound_restores(tmp_path: Path, identity_file: Path, target: Path) -> None:
    archive = files_archive(tmp_path / "max.statekit", [("files/max.bin", bytes(MAX_FILE_BYTES), 0o600)])
    code, err = restore(archive, identity_file, target, "--yes")
    assert code == 0, err
    assert (target / "max.bin").stat().st_size == MAX_FILE_BYTES


def test_snapshot_stops_at_a_key_file_over_the_bound(tmp_path: Path, identity_file: Path) -> None:
    """The snapshot never writes an archive that its own restore would refuse."""
    root = tmp_path / "keys"
    (root / "inst").mkdir(parents=True)
    (root / "inst" / "creds.json").write_bytes(b"{}")
    (root / "inst" / "exactly.bin").write_bytes(bytes(MAX_FILE_BYTES))
    repo = tmp_path / "repo"
    repo.mkdir()
    args = [STATEKIT, "snapshot", "--files-root", str(root), "-r", IDENTITY.recipient().to_string()]
    ok = subprocess.run([*args, "--to", str(repo / "ok.statekit")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    (root / "inst" / "huge.log").write_bytes(bytes(MAX_FILE_BYTES + 1))
    proc = subprocess.run([*args, "--to", str(repo / "big.statekit")], capture_output=True, text=True)
    assert proc.returncode == 6, proc.stderr
    assert "inst/huge.log" in proc.stderr and MAX_FILE_TEXT in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (repo / "big.statekit").exists()
    excluded = subprocess.run(
        [*args, "--to", str(repo / "ex.statekit"), "--config", str(_config(tmp_path, root))], capture_output=True,
        text=True,
    )  # fmt: skip
    assert excluded.returncode == 0, excluded.stderr


def _config(tmp_path: Path, root: Path) -> Path:
    cfg = tmp_path / "statekit.toml"
    cfg.write_text(f'[files]\nroot = "{root}"\nexclude = ["**/*.log"]\n')
    cfg.chmod(0o600)
    return cfg


def test_a_target_file_too_big_for_the_undo_archive_is_refused_unless_no_undo(
    tmp_path: Path, identity_file: Path, target: Path
) -> None:
    """The undo archive is restored like any archive: it may not hold a file its restore would refuse."""
    (target / "a.json").write_bytes(bytes(MAX_FILE_BYTES + 1))
    archive = files_archive(tmp_path / "a.statekit", [("files/a.json", b"NEW", 0o600)])
    before = tree(target)
    code, err = restore(archive, identity_file, target, "--yes")
    assert code == 8 and "a.json" in err and "--no-undo" in err, err
    assert tree(target) == before
    code, err = restore(archive, identity_file, target, "--yes", "--no-undo")
    assert code == 0, err
    assert (target / "a.json").read_bytes() == b"NEW"


# -- 2. path components, and a failure while promoting ---------------------------------------------------------------

BAD_PATHS = {
    "component-over-255-bytes": "z/" + "n" * 256,
    "component-over-255-bytes-utf8": "z/" + "é" * 128,  # 128 characters, 256 bytes
    "path-over-4096-bytes": "/".join(["d" * 250] * 17) + "/k.json",
}


@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_a_path_no_file_system_can_hold_is_refused_before_any_write(
    case: str, tmp_path: Path, identity_file: Path, target: Path
) -> None:
    rel = BAD_PATHS[case]
    archive = files_archive(
        tmp_path / "p.statekit", [("files/a.json", b"OVERWRITTEN", 0o600), (f"files/{rel}", b"x", 0o600)]
    )
    refused_unchanged(archive, identity_file, target, "files/" + rel[:40])


def test_a_component_of_255_bytes_and_a_non_utf8_name_restore(
    tmp_path: Path, identity_file: Path, target: Path
) -> None:
    """The bounds are the file system's, not narrower: statekit's snapshot archives such names."""
    long_name = "z/" + "n" * 255
    raw_name = "k" + b"\xff\xfe".decode("utf-8", "surrogateescape") + ".json"
    archive = files_archive(
        tmp_path / "ok.statekit", [(f"files/{long_name}", b"1", 0o600), (f"files/{raw_name}", b"2", 0o600)]
    )
    code, err = restore(archive, identity_file, target, "--yes")
    assert code == 0, err
    assert (target / long_name).read_bytes() == b"1"
    assert (target / raw_name).read_bytes() == b"2"


NO_DAC = ("setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search", "--")


def test_a_failure_while_promoting_puts_back_what_was_already_changed(
    tmp_path: Path, identity_file: Path, target: Path
) -> None:
    """a.json is replaced and newdir/c.json created before ro/b.json cannot be written (a folder without write
    permission, for a process without CAP_DAC_OVERRIDE): the restore fails and the target is as it was — a.json
    its old version (content, mode, mtime), no newdir, no staging folder."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE")
    ro = target / "ro"
    ro.mkdir()
    (ro / "b.json").write_bytes(b"old ro b")
    (target / "a.json").chmod(0o400)
    os.utime(target / "a.json", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    ro.chmod(0o500)
    probe = subprocess.run([*NO_DAC, "touch", str(ro / "probe")], capture_output=True)
    if probe.returncode == 0:
        os.unlink(ro / "probe")
        pytest.skip("cannot make a folder unwritable here (capabilities not droppable)")
    archive = files_archive(
        tmp_path / "f.statekit",
        [
            ("files/a.json", b"NEW a", 0o600),
            ("files/newdir/deeper/c.json", b"NEW c", 0o600),
            ("files/ro/b.json", b"NEW b", 0o600),
        ],
    )
    before = tree(target)
    inode = (target / "a.json").stat().st_ino
    try:
        for extra in (["--no-undo"], []):
            code, err = restore(archive, identity_file, target, "--yes", *extra, prefix=NO_DAC)
            assert code == 9, err
            last = err.splitlines()[-1]
            assert last.startswith("Error: ") and "ro/b.json" in last, err
            if extra:
                assert err.count("\n") == 1, err
            else:  # the undo archive was sealed before the first change: the error says it is not needed
                assert "nothing was changed (rolled back)" in last and "partly" not in err, err
            assert tree(target) == before, extra
            assert (target / "a.json").stat().st_ino == inode
    finally:
        ro.chmod(0o700)


# -- 3. modes --------------------------------------------------------------------------------------------------------


def test_restored_key_files_are_at_most_0600_and_folders_0700(
    tmp_path: Path, identity_file: Path, target: Path
) -> None:
    archive = files_archive(
        tmp_path / "m.statekit",
        [("files/a.json", b"A", 0o6777), ("files/new/b.json", b"B", 0o755), ("files/ro.json", b"R", 0o444),
         ("files/g.json", b"G", 0o640)],
    )  # fmt: skip
    code, err = restore(archive, identity_file, target, "--yes")
    assert code == 0, err
    assert "setuid" in err
    modes = {
        rel: (target / rel).stat().st_mode & 0o7777 for rel in ("a.json", "new/b.json", "ro.json", "g.json", "new")
    }
    assert modes == {"a.json": 0o600, "new/b.json": 0o600, "ro.json": 0o400, "g.json": 0o600, "new": 0o700}


# -- 4. deletion records -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["snapshot", None])
def test_deletion_records_in_an_archive_that_is_not_an_undo_archive_are_refused(
    kind: str | None, tmp_path: Path, identity_file: Path, target: Path
) -> None:
    absent = json.dumps({"absent": ["a.json", "sub/b.json"]}).encode()
    path = tmp_path / "absent.statekit"
    members: list[tuple[str, bytes, int]] = [
        ("files/new.json", b"{}", 0o600),
        ("undo/files-absent.json", absent, 0o600),
    ]
    if kind is None:  # no kind at all (archives from before it was recorded)
        with atomic_output(path) as fh:
            w = ArchiveWriter(fh, recipients=[IDENTITY.recipient()])
            for name, data, mode in members:
                w.add(name, data, mode=mode)
            w.finish({"tiers": [{"tier": "files"}]})
    else:
        files_archive(path, members, kind=kind)
    refused_unchanged(path, identity_file, target, "undo/files-absent.json", "undo archive")


def test_the_audit_decoder_refuses_a_key_file_over_the_bound_before_reading_it() -> None:
    member = Member("files/big.bin", MAX_FILE_BYTES + 1, 0o600, 0.0, io.BytesIO(bytes(MAX_FILE_BYTES + 1)))
    with pytest.raises(CorruptArchive, match=r"files/big\.bin"):
        list(FilesDecoder().feed(member))
    assert member.stream.tell() == 0
    ok = Member("files/ok.bin", MAX_FILE_BYTES, 0o600, 0.0, io.BytesIO(bytes(MAX_FILE_BYTES)))
    assert [len(r.data) for r in FilesDecoder().feed(ok)] == [MAX_FILE_BYTES]
