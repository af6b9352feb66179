"""The planning pass over a db restore's data segments: every segment that would be loaded is read and checked
before the first change, so a damaged or crafted one is refused (exit 3, naming the member) instead of being
found half-way through the load.

- COPY text (`.copy`): valid UTF-8, every line ends with a newline and holds exactly one field per column
  (a tab inside a value is always escaped, so raw tabs are the separators), as many lines as the manifest
  says. Counted with bytes methods, in 1 MiB blocks, at memory speed.
- JSON lines (`.jsonl`): every line a JSON array of one value per column (nesting deep enough to exhaust
  the parser included), as many lines as the manifest says.

The values' types are checked by the target inside the restore's one transaction.
"""

from __future__ import annotations

import codecs
import json
from itertools import repeat
from typing import IO, Any

from statekit.errors import CorruptArchive
from statekit.tiers.sql.schema import SCHEMA_MEMBER

_BLOCK = 1 << 20
# A JSON line holds one row; bigger than this is not a row statekit wrote (a value of at most 1 GiB, encoded).
_MAX_LINE = (1 << 30) + (1 << 20)


def check_segments(archive: Any, by_member: dict[str, Any]) -> int:
    """Check every data segment of the planned tables (`by_member`: plan by member prefix, as
    RestoreContext.by_member() gives); returns the rows found. Raises CorruptArchive on the first bad one."""
    sizes = {m["name"]: m for m in archive.manifest.get("members", [])}
    rows = 0
    for m in archive.members("db/"):
        if m.name == SCHEMA_MEMBER:
            continue
        prefix, _, ext = m.name.rpartition(".")
        plan = by_member.get(prefix.rpartition(".")[0])
        if plan is None:
            continue
        width = len(plan.src.data_columns)
        if ext == "copy":
            found = _copy_rows(m.stream, width, m.name)
        elif ext == "jsonl":
            found = _jsonl_rows(m.stream, width, m.name)
        else:
            raise CorruptArchive(f"archive member {m.name}: unknown db segment encoding {ext!r}")
        meta = sizes.get(m.name, {}).get("meta") or {}
        said = meta.get("rows")
        if isinstance(said, int) and said != found:
            raise CorruptArchive(f"archive member {m.name}: holds {found} rows, MANIFEST.json says {said}")
        rows += found
    return rows


def _copy_rows(stream: IO[bytes], width: int, name: str) -> int:
    decoder = codecs.getincrementaldecoder("utf-8")()
    tabs = width - 1
    rows = 0
    open_tabs = 0  # separators seen so far in a line that continues in the next block
    open_line = False
    while True:
        block = stream.read(_BLOCK)
        if not block:
            break
        try:
            decoder.decode(block)
        except UnicodeDecodeError:
            raise CorruptArchive(f"archive member {name}: COPY data is not valid UTF-8") from None
        lines = block.split(b"\n")
        last = lines.pop()
        if lines:
            counts = list(map(bytes.count, lines, repeat(b"\t")))
            counts[0] += open_tabs
            if any(n != tabs for n in counts):
                raise CorruptArchive(f"archive member {name}: a COPY row does not have {width} fields")
            rows += len(lines)
            open_tabs, open_line = last.count(b"\t"), bool(last)
        else:
            open_tabs += last.count(b"\t")
            open_line = open_line or bool(last)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise CorruptArchive(f"archive member {name}: COPY data is not valid UTF-8") from None
    if open_line:
        raise CorruptArchive(f"archive member {name}: COPY data does not end with a newline (cut short)")
    return rows


def _jsonl_rows(stream: IO[bytes], width: int, name: str) -> int:
    rows = 0
    parts: list[bytes] = []  # a line that continues in the next block
    held = 0
    while True:
        block = stream.read(_BLOCK)
        if not block:
            break
        lines = block.split(b"\n")
        last = lines.pop()
        if lines:
            lines[0] = b"".join([*parts, lines[0]])
            for line in lines:
                if line.strip():
                    _json_row(line, width, name)
                    rows += 1
            parts, held = [last], len(last)
        else:
            parts.append(last)
            held += len(last)
        if held > _MAX_LINE:
            raise CorruptArchive(f"archive member {name}: a JSON line longer than any row")
    tail = b"".join(parts)
    if tail.strip():
        _json_row(tail, width, name)
        rows += 1
    return rows


def _json_row(line: bytes, width: int, name: str) -> None:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        raise CorruptArchive(f"archive member {name}: a line that is not JSON (or nested too deeply)") from None
    if not isinstance(row, list) or len(row) != width:
        raise CorruptArchive(f"archive member {name}: a row that is not a list of {width} values")
