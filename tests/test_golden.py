"""Golden archives: an archive written by format v1 keeps reading, with the same members, modes and mtimes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from statekit.archive.format import Archive
from statekit.archive.keys import read_identity_file
from statekit.cli import run
from tests.tools import require_tool

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "fixtures" / "golden"
KEYS = REPO / "fixtures" / "keys"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


@pytest.fixture
def identity_file(tmp_path: Path) -> Path:
    # git checks the committed test identity out 0644; a private copy avoids the permissions warning.
    path = tmp_path / "identity.txt"
    shutil.copyfile(GOLDEN / "identity.txt", path)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("name", ["v1-files.statekit", "v1-files-plain.statekit"])
def test_golden_archive_reads_with_expected_manifest(name: str, identity_file: Path) -> None:
    archive = Archive(GOLDEN / name, read_identity_file(identity_file))
    index = archive.index()
    assert index.format["format_version"] == 1
    assert index.snapshot["snapshot_id"] == EXPECTED["snapshot_id"]
    got = {m["name"]: m for m in index.manifest["members"] if m["name"].startswith("files/")}
    want = {m["name"]: m for m in EXPECTED["members"] if m["name"].startswith("files/")}
    assert got == want
    contents = {m.name: m.read_all() for m in archive.members("files/")}
    for member, data in contents.items():
        assert data == (KEYS / member.removeprefix("files/")).read_bytes()
    assert index.manifest["totals"]["files"] == 4


def test_golden_archive_restores_modes_and_mtimes(identity_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["restore", str(GOLDEN / "v1-files.statekit"), "-i", str(identity_file), "--tier", "files",
                "--target", "out", "--yes"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    for m in EXPECTED["members"]:
        if not m["name"].startswith("files/"):
            continue
        path = Path("out") / m["name"].removeprefix("files/")
        assert path.read_bytes() == (KEYS / m["name"].removeprefix("files/")).read_bytes()
        assert f"{path.stat().st_mode & 0o7777:04o}" == m["mode"] == "0600"
        assert path.stat().st_mtime_ns == m["meta"]["mtime_ns"]


def test_golden_archive_reads_with_standard_tools(identity_file: Path, tmp_path: Path) -> None:
    require_tool("age", "zstd", "tar")
    listing = subprocess.run(
        f"age -d -i {identity_file} {GOLDEN / 'v1-files.statekit'} | zstd -d | tar -t",
        shell=True, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert listing == [m["name"] for m in EXPECTED["members"]] + ["MANIFEST.json"]
