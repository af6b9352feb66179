"""The files snapshot walks with directory descriptors: a directory swapped for a symlink while the walk runs
is never followed, whether it is swapped before the walk enters it or while it is reading its files. The swap
happens from the progress callback, at a known point of the walk (no timing)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from statekit.archive.reader import Archive
from statekit.archive.writer import ArchiveWriter
from statekit.config import FilesConfig
from statekit.fsio import atomic_output
from statekit.tiers.files.snapshot import snapshot_files


def _snapshot(root: Path, out: Path, on_progress: Any) -> dict[str, bytes]:
    warnings: list[str] = []
    with atomic_output(out) as fh:
        w = ArchiveWriter(fh, recipients=None)
        summary = snapshot_files(FilesConfig(root=str(root)), w, progress=on_progress, warn=warnings.append)
        w.finish({"tiers": [summary.to_json()]})
    return {m.name: m.read_all() for m in Archive(out).members("files/")}


def _layout(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    for rel in names:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"mine:{rel}")
    outside.mkdir()
    (outside / "passwd").write_text("secret")
    (outside / "0.json").write_text("secret")
    return root, outside


def _swap(root: Path, outside: Path, tmp_path: Path) -> None:
    os.rename(root / "sub", tmp_path / "moved")
    os.symlink(outside, root / "sub")


def test_directory_swapped_before_the_walk_enters_it(tmp_path: Path) -> None:
    root, outside = _layout(tmp_path, ["a.json", "sub/passwd"])
    done: list[int] = []

    def progress(tier: str, items: int, nbytes: int) -> None:
        if items == 1 and not done:  # a.json is archived; sub/ has not been opened yet
            done.append(1)
            _swap(root, outside, tmp_path)

    got = _snapshot(root, tmp_path / "a.statekit", progress)
    assert done
    assert b"secret" not in got.values()
    assert sorted(got) == ["files/a.json"]


def test_directory_swapped_while_the_walk_reads_it(tmp_path: Path) -> None:
    root, outside = _layout(tmp_path, ["sub/0.json", "sub/passwd"])
    done: list[int] = []

    def progress(tier: str, items: int, nbytes: int) -> None:
        if items == 1 and not done:  # sub/0.json is archived; sub/passwd is listed but not yet opened
            done.append(1)
            _swap(root, outside, tmp_path)

    got = _snapshot(root, tmp_path / "a.statekit", progress)
    assert done
    assert b"secret" not in got.values()
    # the directory the walk opened is the one it reads, wherever it was moved to
    assert got == {"files/sub/0.json": b"mine:sub/0.json", "files/sub/passwd": b"mine:sub/passwd"}
