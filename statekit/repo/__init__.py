"""Archive repositories: where snapshots are kept (a local directory or s3://bucket/prefix), their lock and
retention. Storage only: nothing here knows about tiers or engines.

`open_repository` chooses the backend from a location; the interface is in `repo.base`, the backends in
`repo.local` and `repo.s3`.
"""

from __future__ import annotations

from pathlib import Path

from statekit.errors import UsageError
from statekit.repo.base import ARCHIVE_SUFFIX, Repository
from statekit.repo.local import LocalRepository


def is_s3_url(text: str | None) -> bool:
    """True for `s3://bucket[/prefix]`."""
    return bool(text) and str(text).startswith("s3://")


def open_repository(location: str) -> Repository:
    """The repository at `location`: `s3://bucket/prefix` or a local directory path."""
    if is_s3_url(location):
        from statekit.repo.s3 import S3Repository

        return S3Repository.from_url(location)
    if "://" in location:
        raise UsageError(f"{location}: unsupported repository URL (use a directory or s3://bucket/prefix)")
    return LocalRepository(Path(location))


def is_archive_path(location: str) -> bool:
    """True when a local `--to` names one archive file (`….statekit`) rather than a repository directory."""
    return location.endswith(ARCHIVE_SUFFIX) and not Path(location).is_dir()


def split_archive_url(location: str) -> tuple[Repository, str]:
    """(repository, archive name) for an archive address: a local path or `s3://bucket/prefix/archive`."""
    if is_s3_url(location):
        base, _, key = location.rstrip("/").rpartition("/")
        if base in ("s3:/", "s3:") or not key:
            raise UsageError(f"{location}: expected s3://bucket/[prefix/]ARCHIVE")
        return open_repository(base), key
    path = Path(location)
    return LocalRepository(path.parent), path.name


__all__ = [
    "LocalRepository",
    "Repository",
    "is_archive_path",
    "is_s3_url",
    "open_repository",
    "split_archive_url",
]
