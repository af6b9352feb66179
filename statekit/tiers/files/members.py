"""The files tier's member decoder: `files/<relative path>` members as (path, content) records."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from statekit.model import Member
from statekit.tiers.files.paths import PREFIX


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
            yield FileRecord(member.name[len(PREFIX) :], member.read_all())

    def finish(self) -> Iterator[FileRecord]:
        return iter(())
