"""The statekit archive container: a pax tar stream, compressed as zstd frames, encrypted with age.

What the writer (statekit.archive.writer) and the reader (statekit.archive.reader) share: member names, the
format version, the tar block and member-name rules, and how JSON members are encoded. The layout is
documented in docs/FORMAT.md.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from statekit.errors import CorruptArchive

FORMAT_NAME = "statekit-archive"
FORMAT_VERSION = 1
FORMAT_MEMBER = "format.json"
README_MEMBER = "README.txt"
SNAPSHOT_MEMBER = "snapshot.json"
MANIFEST_MEMBER = "MANIFEST.json"
RESERVED_MEMBERS = (FORMAT_MEMBER, README_MEMBER, SNAPSHOT_MEMBER, MANIFEST_MEMBER)
# Member meta keys that MANIFEST.json's "totals" sums over all members.
COUNT_KEYS = ("rows", "keys", "files", "tables")

# Fields format.json may carry besides its own, so that a reader learns them from the head of the archive,
# before any member: `kind` ("snapshot" or "undo"), `tiers` (the tier names in snapshot.json's order) and, for
# an undo archive whose target is complete when it starts, `restore_target`. Each equals snapshot.json's.
HEAD_FIELDS = ("kind", "tiers", "restore_target")

AGE_MAGIC = b"age-encryption.org/v1\n"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

TAR_BLOCK = 512
# Reads from a member's source or from the archive stream go in blocks of this size.
READ_BLOCK = 1 << 20


def tar_padding(size: int) -> bytes:
    """The zero bytes that fill a member of `size` bytes up to a whole tar block."""
    rem = size % TAR_BLOCK
    return b"\0" * (TAR_BLOCK - rem) if rem else b""


def json_bytes(doc: Any) -> bytes:
    """A JSON member's bytes: indented UTF-8, lone surrogates as \\udcXX escapes."""
    # Names read from a non-UTF-8 file system hold lone surrogates (surrogateescape); "backslashreplace" turns
    # each into a JSON \udcXX escape, which json.loads turns back into the same surrogate. Everything else
    # stays readable UTF-8.
    return (json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def check_member_name(name: str) -> None:
    """Refuse names that could escape a target directory or confuse a reader."""
    if not name or "\0" in name or name.startswith("/") or "\\" in name:
        raise CorruptArchive(f"unsafe archive member name {name!r}")
    norm = posixpath.normpath(name)
    if norm != name or norm.startswith("../") or norm == ".." or norm == ".":
        raise CorruptArchive(f"unsafe archive member name {name!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise CorruptArchive(f"unsafe archive member name {name!r}")


def load_json(body: bytes, name: str) -> Any:
    """Parse a JSON member of the archive; anything that is not plain JSON (including nesting deep enough to
    exhaust the parser) is a CorruptArchive naming the member."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise CorruptArchive(f"archive {name} is not valid JSON (or nested too deeply)") from None


# A JSON string (any escapes), an object or array opening, or a comma: what bound_json_values counts.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{\[,]', re.S)


def bound_json_values(body: bytes, name: str, *, containers: int, commas: int) -> None:
    """Refuse a JSON member with more objects/arrays or more commas (so more values) than `containers` and
    `commas`, before json.loads builds them: `[{},{},...]` costs about 25 bytes of memory per byte of JSON,
    so the byte size of a member alone does not bound what parsing it costs."""
    if body.count(b"{") + body.count(b"[") <= containers and body.count(b",") <= commas:
        return
    # Those counts include brackets and commas inside strings: count again outside them, one token at a time
    # (no list of them is built) and only up to the bound.
    n_containers = n_commas = 0
    for m in _JSON_TOKEN.finditer(body):
        first = body[m.start()]
        if first == 0x2C:  # ,
            n_commas += 1
        elif first != 0x22:  # { or [
            n_containers += 1
        if n_containers > containers or n_commas > commas:
            raise CorruptArchive(f"archive {name} holds more JSON values than statekit writes for it")


def check_head(head: Mapping[str, Any]) -> str | None:
    """What is wrong with the head fields of format.json (None when they are well-formed or absent)."""
    if "kind" in head and not isinstance(head["kind"], str):
        return "kind must be text"
    tiers = head.get("tiers", [])
    if not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers):
        return "tiers must be a list of tier names"
    if "restore_target" in head and not isinstance(head["restore_target"], dict):
        return "restore_target must be an object"
    return None


def head_mismatch(head: Mapping[str, Any], snapshot: Mapping[str, Any]) -> str | None:
    """The first head field of format.json that snapshot.json contradicts (None when they agree)."""
    if "kind" in head and snapshot.get("kind") != head["kind"]:
        return "kind"
    if "tiers" in head:
        tiers = snapshot.get("tiers")
        if not isinstance(tiers, list) or [t.get("tier") if isinstance(t, dict) else t for t in tiers] != head["tiers"]:
            return "tiers"
    if "restore_target" in head and snapshot.get("restore_target") != head["restore_target"]:
        return "restore_target"
    return None
