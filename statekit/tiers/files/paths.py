"""Member names and path selection shared by the files tier's snapshot and restore."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

PREFIX = "files/"
# In undo archives: the paths a restore created, which restoring the undo archive deletes again.
ABSENT_MEMBER = "undo/files-absent.json"
# The most bytes a key file may hold (docs/SECURITY.md, "Resource bounds"): a snapshot stops at a bigger file,
# and a restore refuses an archive member bigger than this before it writes anything. Key files are small, but
# not all of them: Baileys' app-state-sync-version-*.json keeps an entry (about 140 bytes of JSON) per synced
# chat and contact setting, past 1 MiB for an account with thousands of them. The bound is what the audit's
# decoder holds in memory per file; snapshot and restore stream files of STREAM_BYTES and more.
MAX_FILE_BYTES = 64 << 20
MAX_FILE_TEXT = f"{MAX_FILE_BYTES >> 20} MiB"
STREAM_BYTES = 4 << 20


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a path glob: `**` spans directories, `*` and `?` stay within one path segment."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def path_selected(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """True when a relative path matches an include glob and no exclude glob."""
    if not any(_glob_regex(p).match(rel) for p in include):
        return False
    return not any(_glob_regex(p).match(rel) for p in exclude)
