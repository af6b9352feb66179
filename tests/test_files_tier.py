"""The files tier through the CLI: modes, mtimes, symlinks, special and unreadable files, dry runs, targets."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from statekit.archive.keys import generate_identity
from statekit.archive.reader import Archive
from statekit.cli import run

IDENTITY = generate_identity()
RECIPIENT = IDENTITY.recipient().to_string()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def make_keys(root: Path) -> None:
    """An Evolution-like key folder with distinct modes and nanosecond mtimes."""
    inst = root / "instances" / "0b7c5a8e-1f2d-4c3b-9a8e-7d6c5b4a3f21"
    inst.mkdir(parents=True)
    files = {
        "creds.json": (b'{"noiseKey": "x"}', 0o600, 1_700_000_000_123_456_789),
        "pre-key-1.json": (b'{"keyId": 1}', 0o640, 1_700_000_001_000_000_001),
        "session-5511999999999.0.json": (b"{}", 0o600, 1_600_000_000_999_999_999),
    }
    for name, (data, mode, mtime_ns) in files.items():
        p = inst / name
        p.write_bytes(data)
        p.chmod(mode)
        os.utime(p, ns=(mtime_ns, mtime_ns))


def snapshot(capsys: pytest.CaptureFixture[str], root: Path, dest: Path, *extra: str) -> tuple[int, str, str]:
    return cli(capsys, "snapshot", "--files-root", str(root), "--to", str(dest), "-r", RECIPIENT, *extra)


def test_modes_and_mtimes_round_trip(tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "keys"
    make_keys(src)
    code, _, err = snapshot(capsys, src, tmp_path / "a.statekit")
    assert code == 0, err
    assert (tmp_path / "a.statekit").stat().st_mode & 0o777 == 0o600
    code, _, err = cli(
        capsys, "restore", str(tmp_path / "a.statekit"), "-i", str(identity_file), "--tier", "files",
        "--target", str(tmp_path / "out"), "--yes",
    )  # fmt: skip
    assert code == 0, err
    for p in src.rglob("*"):
        if p.is_file():
            q = tmp_path / "out" / p.relative_to(src)
            assert q.read_bytes() == p.read_bytes()
            # at most 0600: the owner's read/write bits of the archived mode (docs/SECURITY.md)
            assert q.stat().st_mode & 0o7777 == p.stat().st_mode & 0o600
            assert q.stat().st_mtime_ns == p.stat().st_mtime_ns


def test_symlinks_are_not_followed_and_special_files_skipped(
    tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "keys"
    make_keys(src)
    secret = tmp_path / "outside-secret"
    secret.write_text("must not be archived")
    (src / "link.json").symlink_to(secret)
    (src / "dirlink").symlink_to(tmp_path)
    os.mkfifo(src / "pipe")
    code, out, err = snapshot(capsys, src, tmp_path / "a.statekit", "--json")
    assert code == 0, err
    doc = json.loads(out)
    warnings = "\n".join(doc["tiers"][0]["warnings"])
    assert "link.json is a symlink" in warnings and "dirlink is a symlink" in warnings
    assert "pipe is a special file" in warnings
    counts = doc["tiers"][0]["counts"]
    assert counts["files"] == 3 and counts["skipped_symlinks"] == 2 and counts["skipped_special"] == 1
    names = [m["name"] for m in Archive(tmp_path / "a.statekit", [IDENTITY]).manifest["members"]]
    assert not any("link" in n or "pipe" in n for n in names)


def _unreadable_as_nobody(tmp: Path, skip: bool) -> tuple[int, str]:
    """Snapshot a folder holding a chmod-000 file as an unprivileged user (root reads it anyway).

    The interpreter lives where that user cannot go, so the test forks after every module is imported and
    drops to uid/gid 65534 in the child; the child runs the CLI entry point and reports its exit code."""
    import statekit.archive.age
    import statekit.snapshot
    import statekit.tiers.files.paths
    import statekit.tiers.files.snapshot  # noqa: F401 - loaded before the child loses access to the interpreter's files

    root = tmp / "keys"
    make_keys(root)
    bad = root / "instances" / "locked.json"
    bad.write_text("{}")
    bad.chmod(0o000)
    for p in [tmp, root, *root.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755)
        elif p != bad:
            p.chmod(0o644)
    out = tmp / "out"
    out.mkdir()
    out.chmod(0o777)
    args = ["snapshot", "--files-root", str(root), "--to", str(out), "-r", RECIPIENT, "-v"]
    if skip:
        os.environ["STATEKIT_FILES_SKIP_UNREADABLE"] = "true"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 99
        try:
            os.close(read_fd)
            stream = os.fdopen(write_fd, "w", buffering=1)
            sys.stdout = sys.stderr = stream
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            code = run(args)
            stream.flush()
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        text = fh.read()
    _, status = os.waitpid(pid, 0)
    os.environ.pop("STATEKIT_FILES_SKIP_UNREADABLE", None)
    return os.waitstatus_to_exitcode(status), text


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    # tmp_path lives under a 0700 directory the unprivileged user cannot enter.
    path = Path(tempfile.mkdtemp(prefix="statekit-test-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unreadable_file_is_an_error_naming_it(world_tmp: Path) -> None:
    code, err = _unreadable_as_nobody(world_tmp, skip=False)
    assert code == 6, err
    assert "locked.json" in err and "skip_unreadable" in err
    assert err.startswith("Error: ") and err.count("\n") == 1
    # No archive and no temporary file left (the repository's lock directory may remain).
    assert [p.name for p in (world_tmp / "out").iterdir() if p.name != "locks"] == []


def test_unreadable_file_skipped_with_skip_unreadable(world_tmp: Path) -> None:
    code, err = _unreadable_as_nobody(world_tmp, skip=True)
    assert code == 0, err
    assert "cannot read instances/locked.json" in err and "skipped" in err
    assert len(list((world_tmp / "out").glob("*.statekit"))) == 1


@pytest.fixture
def archive_and_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, Path]:
    src = tmp_path / "keys"
    make_keys(src)
    code, _, err = snapshot(capsys, src, tmp_path / "a.statekit")
    assert code == 0, err
    target = tmp_path / "target"
    shutil.copytree(src, target)
    inst = next((target / "instances").iterdir())
    (inst / "creds.json").write_text("changed")
    (inst / "pre-key-1.json").unlink()
    return tmp_path / "a.statekit", src, target


def _snapshot_tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_dry_run_lists_actions_and_writes_nothing(
    archive_and_target: tuple[Path, Path, Path], identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, _, target = archive_and_target
    before = _snapshot_tree(target)
    cwd_before = sorted(os.listdir("."))
    code, out, err = cli(
        capsys, "restore", str(archive), "-i", str(identity_file), "--tier", "files", "--target", str(target),
        "--dry-run", "--json",
    )  # fmt: skip
    assert code == 0, err
    actions = {Path(p["path"]).name: p["action"] for p in json.loads(out)["plan"]}
    assert actions == {
        "creds.json": "overwrite",
        "pre-key-1.json": "create",
        "session-5511999999999.0.json": "unchanged",
    }
    assert _snapshot_tree(target) == before
    assert sorted(os.listdir(".")) == cwd_before  # no undo archive either
    code, out, _ = cli(
        capsys, "restore", str(archive), "-i", str(identity_file), "--tier", "files", "--target", str(target),
        "--dry-run",
    )  # fmt: skip
    assert "overwrite" in out and "create" in out and "unchanged" in out


def test_restore_into_target_overwrites_and_keeps_undo(
    archive_and_target: tuple[Path, Path, Path], identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, src, target = archive_and_target
    code, _out, err = cli(
        capsys, "restore", str(archive), "-i", str(identity_file), "--tier", "files", "--target", str(target), "--yes"
    )
    assert code == 0, err
    assert {k: v[0] for k, v in _snapshot_tree(target).items()} == {k: v[0] for k, v in _snapshot_tree(src).items()}
    assert not [p for p in target.rglob("*") if ".statekit-" in p.name]
    undo = list(Path(".").glob("undo-files-*.statekit"))
    assert len(undo) == 1
    # The undo archive holds the overwritten version.
    members = {m.name: m.read_all() for m in Archive(undo[0], [IDENTITY]).members("files/")}
    assert b"changed" in members.values()


def test_restoring_the_undo_archive_puts_the_folder_back(
    archive_and_target: tuple[Path, Path, Path], identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The undo archive holds what was overwritten and lists what was created, so restoring it brings back
    the overwritten file and deletes the created one: the folder is as it was before the restore."""
    archive, _src, target = archive_and_target
    before = {k: v[:2] for k, v in _snapshot_tree(target).items()}
    code, _out, err = cli(
        capsys, "restore", str(archive), "-i", str(identity_file), "--tier", "files", "--target", str(target), "--yes"
    )
    assert code == 0, err
    assert {k: v[:2] for k, v in _snapshot_tree(target).items()} != before
    (undo,) = Path(".").glob("undo-files-*.statekit")
    code, out, err = cli(
        capsys, "restore", str(undo), "-i", str(identity_file), "--tier", "files", "--target", str(target),
        "--dry-run", "--json",
    )  # fmt: skip
    assert code == 0, err
    actions = {Path(p["path"]).name: p["action"] for p in json.loads(out)["plan"]}
    assert actions == {"creds.json": "overwrite", "pre-key-1.json": "delete"}
    code, out, err = cli(
        capsys, "restore", str(undo), "-i", str(identity_file), "--tier", "files", "--target", str(target),
        "--yes", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["counts"]["deleted"] == 1
    assert {k: v[:2] for k, v in _snapshot_tree(target).items()} == before


def test_symlinked_parent_in_target_is_refused(
    tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "keys"
    make_keys(src)
    code, _, err = snapshot(capsys, src, tmp_path / "a.statekit")
    assert code == 0, err
    target = tmp_path / "target"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target.mkdir()
    (target / "instances").symlink_to(elsewhere)
    code, _, err = cli(
        capsys, "restore", str(tmp_path / "a.statekit"), "-i", str(identity_file), "--tier", "files",
        "--target", str(target), "--yes",
    )  # fmt: skip
    assert code == 8, err
    assert "symlink" in err
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in target.iterdir()) == ["instances"]
    assert not list(Path(".").glob("undo-*"))


def test_symlink_at_target_file_is_refused(
    tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "keys"
    make_keys(src)
    code, _, err = snapshot(capsys, src, tmp_path / "a.statekit")
    assert code == 0, err
    target = tmp_path / "target"
    shutil.copytree(src, target)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    creds = next((target / "instances").iterdir()) / "creds.json"
    creds.unlink()
    creds.symlink_to(victim)
    code, _, err = cli(
        capsys, "restore", str(tmp_path / "a.statekit"), "-i", str(identity_file), "--tier", "files",
        "--target", str(target), "--yes",
    )  # fmt: skip
    assert code == 8, err
    assert victim.read_text() == "keep" and creds.is_symlink()


def test_match_restores_only_selected_paths(
    tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "keys"
    make_keys(src)
    assert snapshot(capsys, src, tmp_path / "a.statekit")[0] == 0
    code, _, err = cli(
        capsys, "restore", str(tmp_path / "a.statekit"), "-i", str(identity_file), "--tier", "files",
        "--target", "t", "--match", "**/creds.json", "--yes",
    )  # fmt: skip
    assert code == 0, err
    assert [p.name for p in Path("t").rglob("*") if p.is_file()] == ["creds.json"]


def _stale_atimes(root: Path) -> dict[Path, int]:
    """Set every file's atime before its mtime (so a relatime mount would stamp it on the next read)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            st = p.stat()
            os.utime(p, ns=(st.st_mtime_ns - 10**11, st.st_mtime_ns))
            out[p] = p.stat().st_atime_ns
    return out


def test_reading_leaves_access_times_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A backup and an audit read every file; they must not turn that into one inode write per file.
    control = tmp_path / "control"
    control.write_bytes(b"x")
    _stale_atimes(tmp_path)
    before = control.stat().st_atime_ns
    control.read_bytes()
    if control.stat().st_atime_ns == before:
        pytest.skip("this filesystem does not update access times on read (noatime mount)")
    src = tmp_path / "keys"
    make_keys(src)
    stamps = _stale_atimes(src)
    code, _, err = snapshot(capsys, src, tmp_path / "a.statekit")
    assert code == 0, err
    code, out, err = cli(capsys, "audit", "--profile", "evolution-api", "--files-root", str(src / "instances"),
                         "--json", "--recheck-rounds", "0")  # fmt: skip
    assert code in (0, 1), err
    assert json.loads(out)["values_compared"] > 0
    assert {p: p.stat().st_atime_ns for p in stamps} == stamps
