"""atomic_output: the kernel starts writing a big file out while it is written, so the fsync at the end waits
for the last stretch only; the file is the same either way."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from statekit import fsio
from statekit.fsio import WRITE_BEHIND, atomic_output

needs_fadvise = pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this platform")


def _chunks(total: int) -> list[bytes]:
    # uneven sizes, some bigger than the buffer, some far smaller, so writes do not line up with WRITE_BEHIND
    sizes = [1, 4095, 3 << 20, 65537, 1 << 20, 7, 5 << 20]
    out: list[bytes] = []
    n = 0
    i = 0
    while n < total:
        size = min(sizes[i % len(sizes)], total - n)
        out.append(os.urandom(size))
        n += size
        i += 1
    return out


@needs_fadvise
def test_writeback_starts_while_the_file_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.posix_fadvise
    calls: list[tuple[int, int, int, bool]] = []
    closed = threading.Event()

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((offset, length, advice, closed.is_set()))
        real(fd, offset, length, advice)  # the real call: the kernel starts the writeback

    monkeypatch.setattr(os, "posix_fadvise", spy)
    chunks = _chunks(3 * WRITE_BEHIND + 12345)
    path = tmp_path / "big.bin"
    with atomic_output(path) as fh:
        for c in chunks:
            fh.write(c)
    closed.set()
    data = b"".join(chunks)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(calls) >= 2
    expected = 0
    for offset, length, advice, after in calls:
        assert advice == os.POSIX_FADV_DONTNEED
        assert offset == expected  # ranges follow each other from the start of the file, none twice
        assert length >= WRITE_BEHIND
        assert not after  # all while the file was being written, before the final fsync
        expected = offset + length
    assert len(data) - WRITE_BEHIND - max(map(len, chunks)) < expected <= len(data)  # the fsync does the rest


@needs_fadvise
def test_small_files_are_left_to_the_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda *a: calls.append(a))
    path = tmp_path / "small.json"
    with atomic_output(path) as fh:
        fh.write(b"{}" * 1000)
    assert path.read_bytes() == b"{}" * 1000
    assert calls == []


def test_without_posix_fadvise_the_file_is_written_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fsio, "_FADVISE", False)
    chunks = _chunks(WRITE_BEHIND + 1)
    path = tmp_path / "plain.bin"
    with atomic_output(path) as fh:
        for c in chunks:
            fh.write(c)
    assert path.read_bytes() == b"".join(chunks)


@needs_fadvise
def test_advice_the_kernel_refuses_is_ignored() -> None:
    # posix_fadvise on a pipe fails with ESPIPE: the write still goes through, nothing is raised
    r, w = os.pipe()
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(r, 1 << 20):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    data = os.urandom(WRITE_BEHIND + 100)
    try:
        with fsio._WriteBehind(w) as f:
            view = memoryview(data)
            while view:
                n = f.write(view)
                view = view[n:]
    finally:
        reader.join(timeout=30)
        os.close(r)
    assert bytes(received) == data
