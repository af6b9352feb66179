"""The text encodings of age keys and headers: Bech32 (BIP 173, without its length limit, as age uses it)
and unpadded canonical base64.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence


class Bech32Error(ValueError):
    """A string is not valid Bech32 (BIP 173, without the 90-character limit, as age uses it)."""


_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(_CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Sequence[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ v
        for i, g in enumerate(_GENERATOR):
            if (top >> i) & 1:
                chk ^= g
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: Sequence[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & maxv):
        # Decoding: more than 4 bits of padding, or non-zero padding bits, means a non-canonical string.
        raise Bech32Error("invalid padding in the data part")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """Encode `data` under the human-readable part `hrp`; the result is lower case.

    Callers that need the upper-case form (age secret keys) upper-case the whole result, which is valid
    Bech32 because the checksum is defined over the lower-case string.
    """
    hrp = hrp.lower()
    if not hrp or any(not 33 <= ord(c) <= 126 for c in hrp):
        raise Bech32Error("invalid human-readable part")
    values = _convert_bits(data, 8, 5, pad=True)
    polymod = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> (5 * (5 - i))) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values + checksum)


def bech32_decode(s: str) -> tuple[str, bytes]:
    """Decode a Bech32 string into (human-readable part, data bytes), verifying the checksum.

    The human-readable part is returned in the case it was written in, so callers can enforce age's rule
    that secret keys are upper case and recipients lower case. Mixed case is always rejected.
    """
    if any(not 33 <= ord(c) <= 126 for c in s):
        raise Bech32Error("invalid character")
    lower = s.lower()
    if lower != s and s.upper() != s:
        raise Bech32Error("mixed upper and lower case")
    pos = lower.rfind("1")
    if pos < 1:
        raise Bech32Error("missing separator or empty human-readable part")
    if len(lower) - pos - 1 < 6:
        raise Bech32Error("too short for a checksum")
    try:
        values = [_CHARSET_REV[c] for c in lower[pos + 1 :]]
    except KeyError:
        raise Bech32Error("invalid character in the data part") from None
    if _polymod(_hrp_expand(lower[:pos]) + values) != 1:
        raise Bech32Error("checksum does not verify (a typo?)")
    return s[:pos], bytes(_convert_bits(values[:-6], 5, 8, pad=False))


# ------------------------------------------------------------------------------------------------ base64


_B64_ALPHABET = re.compile(rb"[A-Za-z0-9+/]*")


def b64_encode_unpadded(data: bytes) -> str:
    """Standard base64 without ``=`` padding, as used everywhere in the age header."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64_decode_canonical(text: str | bytes) -> bytes:
    """Decode unpadded standard base64, rejecting padding, foreign characters and non-canonical forms.

    The age spec requires rejecting non-canonical encodings (non-zero trailing bits) so that a header has
    exactly one byte representation: otherwise the header MAC would not bind the ciphertext uniquely.
    """
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if not _B64_ALPHABET.fullmatch(raw) or len(raw) % 4 == 1:
        raise ValueError("not unpadded base64")
    try:
        decoded = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("not unpadded base64") from exc
    if base64.b64encode(decoded).rstrip(b"=") != raw:
        raise ValueError("non-canonical base64")
    return decoded
