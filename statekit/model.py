"""Plain values shared by the engines and the tier adapters (no I/O, no project imports above this)."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, runtime_checkable

# Callbacks the engines take instead of UI objects.
Warn = Callable[[str], None]


class Progress(Protocol):
    """A progress callback: called as a tier's work advances with (tier, items done, bytes done). Any function
    of three positional arguments is one."""

    def __call__(self, tier: str, items: int, nbytes: int, /) -> None: ...


@runtime_checkable
class ProgressWithTotals(Progress, Protocol):
    """A progress callback that also wants to know how many items a tier expects (to show an ETA)."""

    def set_total(self, tier: str, total: int, /) -> None: ...


def no_progress(tier: str, items: int, nbytes: int) -> None:
    """A progress callback that ignores its arguments."""


def no_warn(message: str) -> None:
    """A warning callback that ignores its argument."""


def wants_totals(progress: Progress) -> bool:
    """True when `progress` takes totals (worth counting them only then)."""
    return isinstance(progress, ProgressWithTotals)


def announce_total(progress: Progress, tier: str, total: int) -> None:
    """Tell a progress display how many items a tier expects; a plain progress function is left alone."""
    if isinstance(progress, ProgressWithTotals):
        progress.set_total(tier, total)


def now_ms() -> int:
    """Wall-clock time in integer milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class MemberSink(Protocol):
    """Where a tier writes archive members. `add` is safe to call from several threads at once.

    `meta` is recorded for the member in MANIFEST.json (e.g. {"rows": 10}); it must be JSON-serialisable
    and must never hold secrets.
    """

    def add(
        self,
        name: str,
        data: bytes | bytearray | memoryview | IO[bytes],
        *,
        size: int | None = None,
        mode: int = 0o600,
        mtime: float | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None: ...


@dataclass
class Member:
    """One archive member as a reader sees it. `stream` is valid only until the next member is requested."""

    name: str
    size: int
    mode: int
    mtime: float
    stream: IO[bytes]

    def read_all(self) -> bytes:
        """Read the whole member (only for members known to be small)."""
        return self.stream.read()


class MemberSource(Protocol):
    """An archive opened for reading: `snapshot` (snapshot.json) is known up front; `members()` streams the
    rest in archive order and raises CorruptArchive at the end if anything disagrees with MANIFEST.json, so a
    consumer that applies changes must only commit after the iteration has finished."""

    @property
    def snapshot(self) -> dict[str, Any]: ...

    def members(self, prefix: str | None = None) -> Iterator[Member]: ...


@dataclass
class TierSummary:
    """What one tier put into a snapshot: times, counts and non-secret details for snapshot.json."""

    tier: str
    started_at: float = 0.0
    finished_at: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The tier's entry in snapshot.json."""
        return {
            "tier": self.tier,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration_s": round(self.finished_at - self.started_at, 6),
            "counts": dict(self.counts),
            "details": self.details,
            "warnings": list(self.warnings),
        }


@dataclass
class RestoreReport:
    """What a restore did (or, with dry_run, would do) to one tier."""

    tier: str
    dry_run: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    plan: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    undo_archive: str | None = None
    target: str | None = None  # where the restore writes, as shown to a person (no password)
    target_note: str | None = None  # why that target (an undo archive's own, or another chosen by flag)
    undo_command: str | None = None  # the command that puts the target back from undo_archive

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return {
            "tier": self.tier,
            "dry_run": self.dry_run,
            "target": self.target,
            "target_note": self.target_note,
            "counts": dict(self.counts),
            "plan": self.plan,
            "problems": list(self.problems),
            "undo_archive": self.undo_archive,
            "undo_command": self.undo_command,
        }


def _iso(ts: float) -> str:
    if not ts:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1_000_000):06d}Z"


def utc_stamp(ts: float | None = None) -> str:
    """A compact UTC timestamp for archive names: 20261127T175200Z."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if ts is None else ts))


@dataclass
class RestoreOptions:
    """What the user asked a restore to do. Each tier reads the fields that concern it."""

    tier: str
    target: str | None = None  # db/redis: target URL; files: target directory
    dry_run: bool = False
    undo: bool = True
    # db
    tables: list[str] = field(default_factory=list)
    mode: str = "replace"  # replace | merge | append
    trust_archive_sql: bool = False  # apply the archive's SQL expressions (a trusted signature or the flag)
    jobs: int = 1  # PostgreSQL replace: connections loading staged tables (statekit.tiers.sql.pgstage)
    # redis
    match: list[str] = field(default_factory=list)
    db_map: dict[int, int] = field(default_factory=dict)
    conflict: str = "replace"  # replace | skip | fail
    ttl: str = "absolute"  # absolute | relative
    flush: bool = False
    skip_uncarriable: bool = False  # restore the other keys when some cannot be loaded by the target


class UndoSink(Protocol):
    """Where a restore saves what it is about to replace, in the tier's own snapshot format, so that
    `statekit restore` of the resulting archive puts the target back. The tier writes its members into
    `sink`, then calls `seal()` (which finishes and fsyncs the undo archive) before its first change."""

    sink: MemberSink

    def seal(self, tier_summary: TierSummary) -> str: ...


def tune_gc() -> None:
    """Fewer cyclic-GC passes for a bulk-data process. The tiers' data (rows, keys, file names) is held in
    millions of small acyclic objects; with the default thresholds every few thousand allocations start a
    collection, and the full ones walk everything already held, which made GC a third of an audit's time.
    Reference counting still frees all of it at once; only cycles wait for the larger threshold."""
    gc.freeze()  # what the imports created is never garbage: keep it out of every later collection
    gc.set_threshold(100_000, 50, 100)


def usable_cores(limit: int = 4) -> int:
    """The cores this process may run on (its CPU affinity, which a container's cpuset or `taskset` narrows;
    os.cpu_count() counts the whole host), at most `limit`: how many workers a parallel step starts."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity call (macOS, Windows)
        cores = os.cpu_count() or 1
    return max(1, min(cores, limit))


# glibc's mallopt parameters (malloc.h) and the limit statekit gives both.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
STREAM_BUFFER_LIMIT = 16 << 20


def is_glibc() -> bool:
    """Whether this process runs on glibc (as `os.confstr` names its C library; musl, macOS and Windows do not)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def tune_malloc() -> bool:
    """Let glibc's malloc reuse the buffers a stream passes through (a 1 MiB chunk of an archive member, a
    4 MiB table segment, zstd's output) instead of mapping fresh memory for each one.

    By default glibc serves an allocation of 128 KiB or more with an mmap of its own and unmaps it when it is
    freed, and gives back the free top of a heap past 128 KiB: every 1 MiB buffer then costs 256 page faults
    and the kernel zeroing its pages again. Reading a 221 MB table's segments out of an archive (decrypt,
    decompress, hash) took 0.50-0.57 s of CPU; with both limits at STREAM_BUFFER_LIMIT 0.37-0.43 s, the same
    peak RSS (a restore or snapshot keeps a few such buffers in flight, so memory does not grow with the data
    either way). Either limit alone changed nothing measurable.
    Only on glibc; True when both limits were set."""
    if not is_glibc():
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # the mmap limit first: setting it turns off glibc's moving limits, the trim limit then holds
    return bool(mallopt(_M_MMAP_THRESHOLD, STREAM_BUFFER_LIMIT)) and bool(
        mallopt(_M_TRIM_THRESHOLD, STREAM_BUFFER_LIMIT)
    )


OPENSSL_IA32CAP = "OPENSSL_ia32cap"


def steady_clock() -> None:
    """Keep OpenSSL off its AVX-512 code paths (x86-64), unless OPENSSL_ia32cap is already set.

    On many Intel server cores (Skylake-SP, Cascade Lake) an AVX-512 instruction drops the core to a lower
    clock for a couple of milliseconds afterwards. The archive layer encrypts and decrypts 64 KiB chunks between
    batches of Python work, so with AVX-512 ChaCha20 every Python instruction ran at the lower clock: a
    Redis restore took 1.20 instead of 0.76 µs of CPU per key, a snapshot 1.35 instead of 0.99 (on a host
    that let the cores run at full clock; about a tenth more, not a third, when it did not). The AVX2
    code paths encrypt at gigabytes per second, far above what statekit moves. OpenSSL reads the variable
    once, when it is first loaded (the first import of cryptography, ssl or hashlib's OpenSSL), so the
    statekit command calls this first thing, before anything loads OpenSSL; a program that uses statekit as a
    library calls it itself if it wants the same. Child processes (pg_dump, age) inherit it, harmlessly.
    """
    uname = getattr(os, "uname", None)
    if uname is not None and uname().machine in ("x86_64", "amd64"):
        # logical vector 1 (CPUID 7 EBX): clear AVX512 F, DQ, IFMA, CD, BW, VL. OpenSSL spells the name so.
        os.environ.setdefault(OPENSSL_IA32CAP, ":~0xd0230000")
