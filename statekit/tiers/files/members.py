"""The files tier's member decoder: `files/<relative path>` members as (path, content) records."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from statekit.errors import CorruptArchive
from statekit.model import Member
from statekit.tiers.files.paths import MAX_FILE_BYTES, MAX_FILE_TEXT, PREFIX


@dataclass(frozen=True)
class FileRecord:
    """One archived file: its path relative to the root, and its content."""

    rel: str
    data: bytes


class FilesDecoder:
    """Decodes `files/` members (see statekit.tiers.base.MemberDecoder)."""

    prefix = PREFIX

    def feed(self, member: Member) -> Iterator[FileRecord]:
        if member.name.startswith(PREFIX):
            if member.size > MAX_FILE_BYTES:  # read whole into memory: bounded first (docs/SECURITY.md)
                raise CorruptArchive(
                    f"archive member {member.name} is {member.size} bytes, more than the {MAX_FILE_TEXT} a key "
                    "file may hold"
                )
            yield FileRecord(member.name[len(PREFIX) :], member.stream.read(MAX_FILE_BYTES + 1))

    def finish(self) -> Iterator[FileRecord]:
        return iter(())
