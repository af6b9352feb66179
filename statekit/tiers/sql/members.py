"""The db tier's member decoder: `db/schema.json` first, then each table's data segments
(`<member>.<NNNNNN>.copy` or `.jsonl`, docs/FORMAT.md "db members") with the schema entry of their table."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

from statekit.errors import CorruptArchive
from statekit.model import Member
from statekit.tiers.sql.schema import SCHEMA_MAX_BYTES, load_schema_json

PREFIX = "db/"
SCHEMA = "db/schema.json"


@dataclass
class TableSegment:
    """One data segment of one table. `stream` is valid only while the decoder is on this member."""

    schema: Mapping[str, Any]  # the whole db/schema.json
    table: Mapping[str, Any]  # its entry for this segment's table
    member: str
    encoding: str  # "copy" / "pgbinary" (PostgreSQL COPY text / binary) or "jsonl"
    stream: IO[bytes]

    @property
    def key(self) -> str:
        """`schema.table` (or `table` when the dialect has no schemas), as the manifest's `table` names it."""
        schema = self.table.get("schema")
        return f"{schema}.{self.table.get('name')}" if schema else str(self.table.get("name"))

    @property
    def columns(self) -> list[str]:
        """The columns a row holds (generated columns are not archived)."""
        return [c["name"] for c in self.table.get("columns", []) if not c.get("generated")]

    def rows(self) -> Iterator[list[Any]]:
        """The segment's rows, one value per column (None for NULL; COPY values as the strings COPY text
        gives, binary ones decoded to them)."""
        from statekit.tiers.sql.pgbinary import iter_text_rows
        from statekit.tiers.sql.values import iter_jsonl, split_copy_line

        if self.encoding == "copy":
            return (split_copy_line(line.rstrip(b"\n")) for line in self.stream)
        if self.encoding == "pgbinary":
            wire = self.table.get("wire")
            return iter_text_rows(self.stream, wire if isinstance(wire, list) else [], self.member)
        return iter_jsonl(self.stream, len(self.columns))

    def lines(self) -> list[bytes]:
        """The segment's rows as lines: as archived, binary COPY ones as COPY text."""
        if self.encoding == "pgbinary":
            from statekit.tiers.sql.pgbinary import copy_text_line

            return [copy_text_line(r)[:-1] for r in self.rows()]
        return self.stream.read().splitlines()


class DbDecoder:
    """Decodes `db/` members (see statekit.tiers.base.MemberDecoder): a segment of a table schema.json does
    not describe is not yielded."""

    prefix = PREFIX

    def __init__(self) -> None:
        self.schema: dict[str, Any] = {}
        self._tables: dict[str, Mapping[str, Any]] = {}

    def feed(self, member: Member) -> Iterator[TableSegment]:
        name = member.name
        if name == SCHEMA:
            if member.size > SCHEMA_MAX_BYTES:  # refused before a byte of it is read
                raise CorruptArchive(f"archive member {SCHEMA} is implausibly large ({member.size} bytes)")
            try:
                self.schema = load_schema_json(member.read_all())
                self._tables = {t["member"]: t for t in self.schema.get("tables", [])}
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                raise CorruptArchive(f"archive member {SCHEMA} is not a db schema") from None
            return
        if not name.startswith(PREFIX):
            return
        table = self._tables.get(name.rpartition(".")[0].rpartition(".")[0])
        if table is not None:
            yield TableSegment(self.schema, table, name, name.rpartition(".")[2], member.stream)

    def finish(self) -> Iterator[TableSegment]:
        return iter(())
