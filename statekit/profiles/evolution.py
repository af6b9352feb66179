"""Name transforms of the evolution-api profile (Evolution API's own file naming)."""

from __future__ import annotations


def fix_file_name(key: str) -> str:
    """Evolution's fixFileName: `/` becomes `__`, then `:` becomes `-` (idempotent)."""
    return key.replace("/", "__").replace(":", "-")


def _fix_file_names(keys: list[str]) -> list[str]:
    """fix_file_name over a whole list: the names joined by NUL, replaced and split again (a list where a
    name holds a NUL itself takes the per-name path)."""
    joined = "\0".join(keys)
    if not keys or joined.count("\0") != len(keys) - 1:
        return [fix_file_name(k) for k in keys]
    return joined.replace("/", "__").replace(":", "-").split("\0")


fix_file_name.many = _fix_file_names  # type: ignore[attr-defined]


def unfix_file_name(name: str) -> str:
    """Best-effort inverse of fix_file_name for keys created from files: `--` was `::` (sender keys), `__`
    was `/` (base64 key ids). A single `-` stays a `-` (Baileys key names use it far more than `:`)."""
    return name.replace("--", "::").replace("__", "/")
