"""Value codecs: how a tier stores a value, and how two stored values are compared.

Every codec maps its stored bytes to a *logical* form with `peel` (cheap: no re-encoding of objects) and back
with `wrap`. Two values are equal when their peeled bytes are equal; only when they differ is the logical
form canonicalised (JSON parsed, keys sorted, whitespace dropped), so most equal values never pay for a JSON
parse. `json-string` is JSON stored as a JSON string literal (Evolution's double encoding).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CODEC_NAMES = ("raw", "json", "json-string", "base64")
_MAX_PATHS = 20


class CodecError(ValueError):
    """A stored value does not decode with its codec."""


@dataclass(frozen=True)
class Codec:
    """One codec: `peel` stored → logical bytes, `wrap` logical → stored bytes; `is_json` when the logical
    form is JSON text (compared canonically)."""

    name: str
    peel: Callable[[bytes], bytes]
    wrap: Callable[[bytes], bytes]
    is_json: bool


def _identity(data: bytes) -> bytes:
    return data


def _peel_json_string(data: bytes) -> bytes:
    try:
        text = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"not a JSON string literal: {exc}") from None
    if not isinstance(text, str):
        raise CodecError(f"a JSON {type(text).__name__}, not a JSON string literal")
    return text.encode("utf-8", "surrogatepass")


def _wrap_json_string(data: bytes) -> bytes:
    return json.dumps(data.decode("utf-8", "surrogatepass"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def _peel_base64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CodecError(f"not base64: {exc}") from None


def _wrap_base64(data: bytes) -> bytes:
    return base64.b64encode(data)


CODECS: dict[str, Codec] = {
    "raw": Codec("raw", _identity, _identity, False),
    "json": Codec("json", _identity, _identity, True),
    "json-string": Codec("json-string", _peel_json_string, _wrap_json_string, True),
    "base64": Codec("base64", _peel_base64, _wrap_base64, False),
}


def get_codec(name: str) -> Codec:
    """The codec called `name`; KeyError when unknown."""
    return CODECS[name]


def load_json(logical: bytes) -> Any:
    """Parse logical JSON bytes; CodecError when they are not JSON."""
    try:
        return json.loads(logical)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"not JSON: {exc}") from None


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8; equal objects give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def canonical(codec: Codec, stored: bytes) -> bytes:
    """The canonical bytes of a stored value (what two values are finally compared on)."""
    logical = codec.peel(stored)
    return canonical_json(load_json(logical)) if codec.is_json else logical


def convert(stored: bytes, source: Codec, target: Codec) -> bytes:
    """A stored value re-encoded from one codec to another (the bytes are copied when the codecs agree)."""
    if source.name == target.name:
        return stored
    logical = source.peel(stored)
    if target.is_json and not source.is_json:
        # Bytes going into a JSON slot: keep them only if they are JSON text already.
        load_json(logical)
    return target.wrap(logical)


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing two stored values: equal, or the JSON paths that differ."""

    equal: bool
    paths: tuple[str, ...] = ()


def compare(a: bytes, codec_a: Codec, b: bytes, codec_b: Codec) -> Comparison:
    """Compare two stored values through their codecs: bytes first, canonical form only when they differ.
    Raises CodecError when either value does not decode (the caller reports it as unparseable)."""
    if codec_a.name == codec_b.name and a == b:
        return Comparison(True)
    la, lb = codec_a.peel(a), codec_b.peel(b)
    if la == lb:
        return Comparison(True)
    if not (codec_a.is_json and codec_b.is_json):
        return Comparison(False, ("$",))
    oa, ob = load_json(la), load_json(lb)
    if canonical_json(oa) == canonical_json(ob):
        return Comparison(True)
    paths: list[str] = []
    json_diff_paths(oa, ob, "$", paths)
    return Comparison(False, tuple(paths) or ("$",))


def json_diff_paths(a: Any, b: Any, path: str, out: list[str]) -> None:
    """Append the JSON paths where `a` and `b` differ (at most a few dozen)."""
    if len(out) >= _MAX_PATHS:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if _plain_key(key) else f"{path}[{json.dumps(key)}]"
            if key not in a or key not in b:
                out.append(sub)
            else:
                json_diff_paths(a[key], b[key], sub, out)
            if len(out) >= _MAX_PATHS:
                return
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            json_diff_paths(x, y, f"{path}[{i}]", out)
        return
    if a != b or type(a) is not type(b):
        out.append(path)


def _plain_key(key: str) -> bool:
    return key.isidentifier()
