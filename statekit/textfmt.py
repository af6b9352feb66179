"""How numbers look in text output, the same in every command: counts `1,530,000`, sizes `12.3 MiB`,
durations `4.2s`. The CLI, the audit report and the progress line all use these."""

from __future__ import annotations


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
