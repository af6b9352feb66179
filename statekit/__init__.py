"""statekit: back up, audit and repair application state across a SQL database, Redis and key files."""

from __future__ import annotations

import os

__version__ = "0.1.0"

_IA32CAP = "OPENSSL_ia32cap"


def _steady_clock() -> None:
    """Keep OpenSSL off its AVX-512 code paths (x86-64), unless OPENSSL_ia32cap is already set.

    On many Intel server cores (Skylake-SP, Cascade Lake) an AVX-512 instruction drops the core to a lower
    clock for a couple of milliseconds afterwards. The archive layer encrypts and decrypts 64 KiB chunks between
    batches of Python work, so with AVX-512 ChaCha20 every Python instruction ran at the lower clock: a
    Redis restore took 1.20 instead of 0.76 µs of CPU per key, a snapshot 1.35 instead of 0.99 (on a host
    that let the cores run at full clock; about a tenth more, not a third, when it did not). The AVX2
    code paths encrypt at gigabytes per second, far above what statekit moves. OpenSSL reads the variable
    once, when it is first loaded (the first import of cryptography, ssl or hashlib's OpenSSL), so this runs
    on import of the package; child processes (pg_dump, age) inherit it, harmlessly.
    """
    uname = getattr(os, "uname", None)
    if uname is not None and uname().machine in ("x86_64", "amd64"):
        # logical vector 1 (CPUID 7 EBX): clear AVX512 F, DQ, IFMA, CD, BW, VL. OpenSSL spells the name so.
        os.environ.setdefault(_IA32CAP, ":~0xd0230000")


_steady_clock()
