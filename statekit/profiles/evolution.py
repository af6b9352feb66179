"""Name transforms of the evolution-api profile (Evolution API's own file naming)."""

from __future__ import annotations


def fix_file_name(key: str) -> str:
    """Evolution's fixFileName: `/` becomes `__`, then `:` becomes `-` (idempotent)."""
    return key.replace("/", "__").replace(":", "-")


def unfix_file_name(name: str) -> str:
    """Best-effort inverse of fix_file_name for keys created from files: `--` was `::` (sender keys), `__`
    was `/` (base64 key ids). A single `-` stays a `-` (Baileys key names use it far more than `:`)."""
    return name.replace("--", "::").replace("__", "/")
