"""The checks of a db restore's data segments, made as the bytes go by: a damaged or crafted segment is refused
(CorruptArchive, exit 3, naming the member) and the restore's transaction rolls back, so the target is left as
it was. The load runs them on every segment it reads (`CheckedSegment`), before the bytes reach the database;
a dry run runs them over every segment it would load (`check_segments`).

- COPY text (`.copy`): valid UTF-8, every line ends with a newline and holds exactly one field per column
  (a tab inside a value is always escaped, so raw tabs are the separators). Counted with bytes methods, in
  blocks, at memory speed.
- Binary COPY (`.pgbinary`): whole tuples, each with one field per column and every field length -1 (NULL) or
  0 … 1 GiB. A PostgreSQL target counts the rows itself as it loads them (the values go to its binary input
  functions, which check them), so the load pass does not walk the tuples; a dry run and a restore into
  another dialect do.
- JSON lines (`.jsonl`): every line a JSON array of one value per column (nesting deep enough to exhaust
  the parser included).
- Rows: as many lines as MANIFEST.json says.

The values' types are checked by the target inside the restore's one transaction.
"""

from __future__ import annotations

import codecs
import io
import json
import struct
from typing import IO, Any

from statekit.errors import CorruptArchive
from statekit.tiers.sql.pgbinary import MAX_FIELD, iter_text_rows
from statekit.tiers.sql.schema import SCHEMA_MEMBER

_BLOCK = 1 << 20
# Every byte but tab and newline: what bytes.translate deletes to leave a segment's field and row marks.
_NOT_MARKS = bytes(b for b in range(256) if b not in (9, 10))
# A JSON line holds one row; bigger than this is not a row statekit wrote (a value of at most 1 GiB, encoded).
_MAX_LINE = (1 << 30) + (1 << 20)
_COUNT = struct.Struct(">h").unpack_from
_LENGTH = struct.Struct(">i").unpack_from


class SegmentCheck:
    """Checks one segment fed in blocks of any size; `end()` returns its rows or raises CorruptArchive."""

    def __init__(self, name: str, width: int) -> None:
        self.name = name
        self.width = width
        self.rows = 0

    def feed(self, block: bytes) -> None:
        raise NotImplementedError

    def end(self) -> int | None:
        """The rows found, or None when the consumer counts them."""
        raise NotImplementedError


class CopyCheck(SegmentCheck):
    """COPY text: UTF-8, one field per column on every line, a newline at the end.

    Fields are counted without splitting lines: all bytes but tab and newline are deleted (bytes.translate),
    and what is left must be the line pattern (width-1 tabs, a newline) repeated, the open line of the block
    before included. ASCII blocks skip the UTF-8 decoder."""

    def __init__(self, name: str, width: int) -> None:
        super().__init__(name, width)
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._unit = b"\t" * (width - 1) + b"\n"
        self._open_tabs = 0  # separators seen so far in a line that continues in the next block
        self._open_line = False

    def feed(self, block: bytes) -> None:
        if not block:
            return
        if not block.isascii() or self._decoder.getstate()[0]:
            try:
                self._decoder.decode(block)
            except UnicodeDecodeError:
                raise CorruptArchive(f"archive member {self.name}: COPY data is not valid UTF-8") from None
        marks = b"\t" * self._open_tabs + block.translate(None, _NOT_MARKS)
        lines = marks.count(b"\n")
        whole = lines * len(self._unit)
        tail = marks[whole:]
        if marks[:whole] != self._unit * lines or len(tail) >= self.width or tail.count(b"\n"):
            raise CorruptArchive(f"archive member {self.name}: a COPY row does not have {self.width} fields")
        self.rows += lines
        self._open_tabs = len(tail)
        self._open_line = not block.endswith(b"\n")

    def end(self) -> int:
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise CorruptArchive(f"archive member {self.name}: COPY data is not valid UTF-8") from None
        if self._open_line:
            raise CorruptArchive(f"archive member {self.name}: COPY data does not end with a newline (cut short)")
        return self.rows


class BinaryCheck(SegmentCheck):
    """Binary COPY tuples, walked field by field: a count equal to the width, then per field its length and
    bytes; the segment ends where a tuple does. Nothing is buffered beyond the 4 bytes of a cut length."""

    def __init__(self, name: str, width: int) -> None:
        super().__init__(name, width)
        self._pending = b""  # the start of a count or length cut by the end of a block
        self._skip = 0  # bytes of the current field still to come
        self._left = 0  # fields of the current tuple still to come; 0: a tuple's count comes next

    def feed(self, block: bytes) -> None:
        data = self._pending + block if self._pending else block
        end = len(data)
        pos, skip, left, width = 0, self._skip, self._left, self.width
        while True:
            if skip:
                step = min(skip, end - pos)
                pos += step
                skip -= step
                if skip:
                    break
            if not left:
                if end - pos < 2:
                    break
                if _COUNT(data, pos)[0] != width:
                    raise CorruptArchive(f"archive member {self.name}: a binary COPY tuple without {width} fields")
                pos += 2
                left = width
                self.rows += 1
                continue
            if end - pos < 4:
                break
            length = _LENGTH(data, pos)[0]
            pos += 4
            left -= 1
            if length == -1:
                continue
            if not 0 <= length <= MAX_FIELD:
                raise CorruptArchive(f"archive member {self.name}: a binary COPY field of length {length}")
            skip = length
        self._pending = bytes(data[pos:])
        self._skip, self._left = skip, left

    def end(self) -> int:
        if self._pending or self._skip or self._left:
            raise CorruptArchive(f"archive member {self.name}: binary COPY data ends inside a tuple (cut short)")
        return self.rows


class ServerCounted(SegmentCheck):
    """A binary COPY segment loaded as it is into PostgreSQL: the server checks the tuples and counts them
    (pgload.check_server_counts holds the count against MANIFEST.json)."""

    def feed(self, block: bytes) -> None:
        pass

    def end(self) -> None:
        return None


class JsonlCheck(SegmentCheck):
    """JSON lines: every non-blank line a JSON array of one value per column."""

    def __init__(self, name: str, width: int) -> None:
        super().__init__(name, width)
        self._parts: list[bytes] = []  # a line that continues in the next block
        self._held = 0

    def feed(self, block: bytes) -> None:
        lines = block.split(b"\n")
        last = lines.pop()
        if lines:
            lines[0] = b"".join([*self._parts, lines[0]])
            for line in lines:
                if line.strip():
                    _json_row(line, self.width, self.name)
                    self.rows += 1
            self._parts, self._held = [last], len(last)
        else:
            self._parts.append(last)
            self._held += len(last)
        if self._held > _MAX_LINE:
            raise CorruptArchive(f"archive member {self.name}: a JSON line longer than any row")

    def end(self) -> int:
        tail = b"".join(self._parts)
        self._parts = []
        if tail.strip():
            _json_row(tail, self.width, self.name)
            self.rows += 1
        return self.rows


def segment_check(name: str, ext: str, width: int, *, server_counts: bool = False) -> SegmentCheck:
    """The check for a segment of encoding `ext` (its member name's extension); CorruptArchive for another.
    `server_counts`: binary segments go to a PostgreSQL COPY, which checks and counts them."""
    if ext == "copy":
        return CopyCheck(name, width)
    if ext == "pgbinary":
        return ServerCounted(name, width) if server_counts else BinaryCheck(name, width)
    if ext == "jsonl":
        return JsonlCheck(name, width)
    raise CorruptArchive(f"archive member {name}: unknown db segment encoding {ext!r}")


class CheckedSegment(io.RawIOBase):
    """A segment's stream that checks every block it hands on, and at its end the rows against `rows` (what
    MANIFEST.json says; None if it says nothing or is not known yet), recording them in `found` (member name →
    rows) for `check_rows`. A check that fails raises before the block is handed on."""

    def __init__(self, stream: IO[bytes], check: SegmentCheck, rows: int | None, found: dict[str, int]) -> None:
        self._src = stream
        self._check = check
        self._rows = rows
        self._found = found
        self._ended = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        block = self._src.read(size if size and size > 0 else _BLOCK)
        if block:
            self._check.feed(block)
        elif not self._ended:
            self._ended = True
            rows = self._check.end()
            if rows is not None:
                self._found[self._check.name] = rows
                _same_rows(self._check.name, rows, self._rows)
        return block

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def manifest_rows(manifest: dict[str, Any]) -> dict[str, int]:
    """Rows by member name, as MANIFEST.json gives them."""
    out: dict[str, int] = {}
    for m in manifest.get("members", []):
        rows = (m.get("meta") or {}).get("rows") if isinstance(m, dict) else None
        if isinstance(rows, int):
            out[str(m.get("name"))] = rows
    return out


def check_rows(manifest: dict[str, Any], found: dict[str, int]) -> None:
    """Every segment in `found` (member name → rows) holds the rows MANIFEST.json gives it."""
    said = manifest_rows(manifest)
    for name, rows in found.items():
        _same_rows(name, rows, said.get(name))


def _same_rows(name: str, found: int, said: int | None) -> None:
    if said is not None and said != found:
        raise CorruptArchive(f"archive member {name}: holds {found} rows, MANIFEST.json says {said}")


def check_segments(archive: Any, by_member: dict[str, Any]) -> int:
    """Check every data segment of the planned tables (`by_member`: plan by member prefix, as
    RestoreContext.by_member() gives); returns the rows found. Raises CorruptArchive on the first bad one. The
    rows are checked against the manifest as each segment ends when the archive was verified before, else at
    the end of this pass (which verifies it)."""
    said = manifest_rows(archive.manifest) if archive.verified else None
    found: dict[str, int] = {}
    for m in archive.members("db/"):
        if m.name == SCHEMA_MEMBER:
            continue
        prefix, _, ext = m.name.rpartition(".")
        plan = by_member.get(prefix.rpartition(".")[0])
        if plan is None:
            continue
        if ext == "pgbinary" and plan.src.encoding == ext:  # every value decoded: its length and content checked
            found[m.name] = sum(1 for _ in iter_text_rows(m.stream, plan.src.wire, m.name))
        else:
            check = segment_check(m.name, ext, len(plan.src.data_columns))
            while block := m.stream.read(_BLOCK):
                check.feed(block)
            found[m.name] = int(check.end() or 0)
        if said is not None:
            _same_rows(m.name, found[m.name], said.get(m.name))
    if said is None:
        check_rows(archive.manifest, found)
    return sum(found.values())


def _json_row(line: bytes, width: int, name: str) -> None:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        raise CorruptArchive(f"archive member {name}: a line that is not JSON (or nested too deeply)") from None
    if not isinstance(row, list) or len(row) != width:
        raise CorruptArchive(f"archive member {name}: a row that is not a list of {width} values")
