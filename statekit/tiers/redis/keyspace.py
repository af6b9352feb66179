"""Key names: Redis glob patterns matched client-side, and Redis Cluster hash slots."""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, urlsplit

SLOTS = 16384


def key_slot(key: bytes) -> int:
    """The Redis Cluster hash slot of a key: CRC16 (XMODEM) of the key, or of its {hash tag}, mod 16384."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    # binascii.crc_hqx is CRC-CCITT with the XMODEM parameters Redis uses, and it runs in C.
    return binascii.crc_hqx(key, 0) & (SLOTS - 1)


def glob_to_regex(pattern: bytes) -> bytes:
    """Translate a Redis glob (`*`, `?`, `[abc]`, `[^a-z]`, `\\x`) to a bytes regex anchored at the end
    (use with re.match and re.DOTALL)."""
    out: list[bytes] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i : i + 1]
        i += 1
        if c == b"*":
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"\\" and i < n:
            out.append(re.escape(pattern[i : i + 1]))
            i += 1
        elif c == b"[":
            j = i
            negate = j < n and pattern[j : j + 1] == b"^"
            if negate:
                j += 1
            body: list[bytes] = []
            while j < n and pattern[j : j + 1] != b"]":
                ch = pattern[j : j + 1]
                if ch == b"\\" and j + 1 < n:
                    body.append(re.escape(pattern[j + 1 : j + 2]))
                    j += 2
                    continue
                if ch == b"-" and body and j + 1 < n and pattern[j + 1 : j + 2] != b"]":
                    body.append(b"-")
                else:
                    body.append(re.escape(ch))
                j += 1
            if j >= n:  # no closing bracket: Redis treats the rest literally enough for our purpose
                out.append(re.escape(b"["))
                continue
            i = j + 1
            out.append(b"[" + (b"^" if negate else b"") + b"".join(body) + b"]")
        else:
            out.append(re.escape(c))
    out.append(b"\\Z")
    return b"".join(out)


def compile_match(patterns: Sequence[str | bytes]) -> Callable[[bytes], bool] | None:
    """A predicate for keys matching any of the globs; None when everything matches (no pattern or `*`)."""
    pats = [p.encode("utf-8", "surrogateescape") if isinstance(p, str) else p for p in patterns]
    if not pats or b"*" in pats:
        return None
    regex = re.compile(b"|".join(b"(?:" + glob_to_regex(p) + b")" for p in pats), re.DOTALL)
    match = regex.match
    return lambda key: match(key) is not None


def tag_for_slot(slot: int, _cache: dict[int, bytes] | None = None) -> bytes:
    """A short hash tag whose slot is `slot`, so a temporary key lands on the same node as a real one."""
    cache = _TAGS if _cache is None else _cache
    if not cache:
        i = 0
        while len(cache) < SLOTS:
            tag = b"%x" % i
            cache.setdefault(binascii.crc_hqx(tag, 0) & (SLOTS - 1), tag)
            i += 1
    return cache[slot]


_TAGS: dict[int, bytes] = {}


def url_db(url: str | None) -> int | None:
    """The database a Redis URL names explicitly (`redis://h/3`, `unix:///s.sock?db=3`), or None when it names
    none (then every non-empty database is meant)."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    text = None
    if parts.scheme in ("redis", "rediss") and parts.path.strip("/"):
        text = parts.path.strip("/")
    elif "db" in parse_qs(parts.query):
        text = parse_qs(parts.query)["db"][0]
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None
