"""The files tier: one root directory of key files, snapshotted and restored with mode and mtime.

Modules: snapshot (the walk that never follows a symlink), restore (staged, atomically promoted files),
members (the member decoder), rehearse, paths (member names and path globs). Archive layout: docs/FORMAT.md.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from statekit.model import MemberSink, Progress, RestoreOptions, RestoreReport, TierSummary, UndoSink, Warn
from statekit.tiers.base import Tier

if TYPE_CHECKING:
    from statekit.archive.reader import Archive
    from statekit.config import Config
    from statekit.tiers.files.members import FilesDecoder
    from statekit.tiers.rehearsal import RehearsalReport


class FilesTier(Tier):
    """The files tier's adapter (see statekit.tiers.base.Tier)."""

    name = "files"
    section = "files"
    title = "files"
    url_target = False

    def target(self, cfg: Config) -> str | None:
        return cfg.files.root

    def describe_target(self, target: str | None) -> dict[str, Any]:
        return {"tier": self.name, "root": os.path.abspath(target) if target else None}

    def show_target(self, target: str | None) -> str:
        return os.path.abspath(target) if target else "(no target)"

    def snapshot(
        self, cfg: Config, writer: MemberSink, *, jobs: int | None, progress: Progress, warn: Warn
    ) -> TierSummary:
        from statekit.tiers.files.snapshot import snapshot_files

        return snapshot_files(cfg.files, writer, progress=progress, warn=warn)

    def plan_restore(self, archive: Archive, opts: RestoreOptions, cfg: Config) -> RestoreReport:
        from statekit.tiers.files.restore import plan_files_restore

        return plan_files_restore(archive, opts, cfg.files)

    def restore(
        self,
        archive: Archive,
        opts: RestoreOptions,
        cfg: Config,
        *,
        undo: UndoSink | None,
        progress: Progress,
        warn: Warn,
    ) -> RestoreReport:
        from statekit.tiers.files.restore import restore_files

        return restore_files(archive, opts, cfg.files, undo=undo, progress=progress, warn=warn)

    def decoder(self) -> FilesDecoder:
        from statekit.tiers.files.members import FilesDecoder

        return FilesDecoder()

    def rehearse(self, archive: Archive, report: RehearsalReport, *, trusted: bool, warn: Warn) -> None:
        from statekit.tiers.files.rehearse import rehearse_files

        rehearse_files(archive, report, warn=warn)


__all__ = ["FilesTier"]
