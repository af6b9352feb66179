"""The files tier's rehearsal: the archive restored into a private temporary directory, every file's sha256
compared with MANIFEST.json, and the number of files on disk with the number archived."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from statekit.config import FilesConfig
from statekit.fsio import sha256_file
from statekit.model import RestoreOptions, Warn, no_warn
from statekit.tiers.files.paths import PREFIX
from statekit.tiers.rehearsal import Check, RehearsalReport

if TYPE_CHECKING:
    from statekit.archive.reader import Archive


def rehearse_files(archive: Archive, report: RehearsalReport, *, warn: Warn = no_warn) -> None:
    """Restore the files tier into a temporary directory (removed afterwards) and compare."""
    from statekit.tiers.files.restore import restore_files

    workdir = Path(tempfile.mkdtemp(prefix="statekit-rehearse-"))
    try:
        target = workdir / "files"
        target.mkdir(mode=0o700)
        opts = RestoreOptions(tier="files", target=str(target), undo=False)
        restore_files(archive, opts, FilesConfig(root=str(target)), undo=None, warn=warn)
        expected = {
            m["name"][len(PREFIX) :]: m for m in archive.manifest.get("members", []) if m["name"].startswith(PREFIX)
        }
        for rel, entry in sorted(expected.items()):
            path = target / rel
            actual = sha256_file(path) if path.is_file() else None
            report.checks.append(Check("files", rel, "sha256", entry["sha256"], actual))
        on_disk = sum(len(files) for _, _, files in os.walk(target))
        report.checks.append(Check("files", "*", "files", len(expected), on_disk))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
