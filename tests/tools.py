"""Optional command-line tools the tests call (the Go `age` CLI, `zstd`, `tar`, `redis-server`, ...).

A test that needs a tool which is not on PATH is skipped with the reason, so `make test` passes on a fresh
machine with nothing but Python. Under ``STATEKIT_REQUIRE_TOOLS=1`` (CI sets it) a missing tool is a failure
instead, so CI never skips such a test silently.

The variable is read once, when this module is imported: the tests' autouse fixture clears every
``STATEKIT_*`` variable of the environment before each test runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REQUIRE_TOOLS = os.environ.get("STATEKIT_REQUIRE_TOOLS", "") not in ("", "0")

# What each tool adds to the suite, and where it comes from (the skip message says both).
PURPOSE: dict[str, str] = {
    "age": "interop with the Go age CLI (Debian/Ubuntu: apt-get install age)",
    "age-keygen": "interop with the Go age CLI (Debian/Ubuntu: apt-get install age)",
    "zstd": "reading archives with the standard zstd CLI (apt-get install zstd)",
    "tar": "reading archives with the standard tar CLI (apt-get install tar)",
    "redis-server": "a local Redis Cluster of redis-server processes (apt-get install redis-server)",
    "redis-cli": "a local Redis Cluster of redis-server processes (apt-get install redis-server)",
}


def require_tool(*names: str) -> dict[str, str]:
    """Paths of the named tools on PATH; skip the test when one is missing (fail under STATEKIT_REQUIRE_TOOLS=1)."""
    found: dict[str, str] = {}
    for name in names:
        path = shutil.which(name)
        if path is None:
            why = PURPOSE.get(name, "this test")
            if REQUIRE_TOOLS:
                pytest.fail(f"`{name}` is not on PATH and STATEKIT_REQUIRE_TOOLS=1: needed for {why}")
            pytest.skip(f"`{name}` is not on PATH: needed for {why}")
        found[name] = path
    return found


def age_decrypt(archive: Path, identity: Path) -> bytes:
    """Decrypt an age file without statekit: the Go `age` CLI when installed, else pyrage (Rust rage)."""
    age = shutil.which("age")
    if age is None and REQUIRE_TOOLS:
        require_tool("age")
    if age is not None:
        return subprocess.run([age, "-d", "-i", str(identity), str(archive)], capture_output=True, check=True).stdout
    import pyrage

    keys = [
        pyrage.x25519.Identity.from_str(line.strip())
        for line in identity.read_text().splitlines()
        if line.strip().startswith("AGE-SECRET-KEY-")
    ]
    return bytes(pyrage.decrypt(archive.read_bytes(), keys))


def zstd_decompress(data: bytes) -> bytes:
    """Decompress zstd frames without statekit: the `zstd` CLI when installed, else python-zstandard."""
    zstd = shutil.which("zstd")
    if zstd is None and REQUIRE_TOOLS:
        require_tool("zstd")
    if zstd is not None:
        return subprocess.run([zstd, "-d", "-c"], input=data, capture_output=True, check=True).stdout
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()


def tar_extract(tar: Path, dest: Path) -> None:
    """Unpack a tar file without statekit: the `tar` CLI when installed, else Python's tarfile, with its `data`
    filter where the Python has it (3.11.4 and later; Debian 12's python3 is 3.11.2)."""
    cli = shutil.which("tar")
    if cli is None and REQUIRE_TOOLS:
        require_tool("tar")
    if cli is not None:
        subprocess.run([cli, "-xf", str(tar), "-C", str(dest)], capture_output=True, check=True)
        return
    import tarfile

    with tarfile.open(tar) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, filter="data")
            return
        for m in tf.getmembers():  # what the data filter refuses first: a path that leaves dest
            if m.name.startswith("/") or ".." in m.name.split("/") or not (m.isfile() or m.isdir()):
                raise ValueError(f"refusing to extract {m.name!r}")
        tf.extractall(dest)  # names checked above
