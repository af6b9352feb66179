"""How numbers look in text output, the same in every command: counts `1,530,000`, sizes `12.3 MiB`,
durations `4.2s`. The CLI, the audit report and the progress line all use these. `printable` makes text read
from an archive (names, paths, keys, fields) safe to show on a terminal."""

from __future__ import annotations

# What a terminal would act on rather than show: C0 controls and DEL (ASCII); beyond ASCII the C1 controls
# (category Cc: CSI, OSC, ...), format characters (Cf: the bidirectional marks, embeddings, overrides and isolates
# U+200E-F, U+202A-E, U+2066-9, zero-width characters), the line and paragraph separators (Zl, Zp) and lone
# surrogates (Cs, from undecodable bytes).
_ASCII_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def printable(text: str) -> str:
    """`text` with every character a terminal would act on replaced by a visible escape (`\\x1b`, `\\x9b`,
    `\\u202e`): what an archive holds can be shown, never move the cursor, erase, hide or reorder the text around
    it. Every name, path, key or field read from an archive passes here before a person sees it. JSON output
    needs none of this (JSON escapes control characters itself)."""
    out = text.translate(_ASCII_ESCAPES)
    if out.isascii():
        return out
    import unicodedata

    return "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in out)


def _escape(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def count(n: int | float) -> str:
    """A count with thousands separators: 1530000 → `1,530,000`."""
    return f"{round(n):,}"


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`1 finding`, `2 findings`, `1,530,000 keys`: the number and the noun in agreement."""
    return f"{count(n)} {noun if n == 1 else (plural or noun + 's')}"


def size(n: float) -> str:
    """Bytes in binary units: `812 B`, `19.9 KiB`, `1.2 GiB`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def duration(seconds: float) -> str:
    """A run's duration: `0.4s`, `12.3s`, `4m05s`, `1h02m`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 60}m{whole % 60:02d}s"
