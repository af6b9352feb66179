"""Opening an archive for a consumer that verifies it in the same pass that uses it.

`Archive.index()` reads the whole archive once to check it before anything uses it. A consumer that applies
changes inside a transaction it can roll back (the db tier's restore) does not need that extra pass: it
reads the members once, in order, and commits only after that pass ended with every member checked
against MANIFEST.json. What it needs up front is only the head of the archive: that the identities open it
and that format.json names a format this statekit reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statekit.archive.format import Archive, ArchiveReader, _open_path

if TYPE_CHECKING:
    from statekit.archive.keys import Identity


def read_format(archive: Archive) -> dict[str, Any]:
    """format.json, read from the first bytes of the archive (raises DecryptionError when no identity opens
    it, CorruptArchive or UnsupportedFormat when it is not an archive this statekit reads)."""
    with _open_path(archive.path) as fh:
        return ArchiveReader(fh, archive.identities).format


def open_archive(path: str | Path, identities: Sequence[Identity]) -> Archive:
    """An Archive whose head has been checked and whose verifying pass is left to its consumer."""
    archive = Archive(path, identities)
    read_format(archive)
    return archive


def snapshot_id(archive: Archive) -> str | None:
    """The archive's snapshot id (format.json carries the one snapshot.json has), without a full pass."""
    value = read_format(archive).get("snapshot_id")
    return str(value) if value is not None else None
