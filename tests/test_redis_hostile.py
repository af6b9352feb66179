"""Hostile redis records that used to get past the checks before the first write, or cost far more than their
size: an LZF string in a DUMP payload newer than the target that expands without bound, big-key chunks the
rebuilding commands refuse (a score Python's float() takes but Redis does not, a stream entry without fields
or with a bad id, ...), an expiry beyond what Redis can set once --ttl relative shifts it, "X" records
(which delete keys) in an archive that is no undo archive, and a truncated payload read by `statekit diff
--raw`. Every one is refused with exit 3 and one line, before the target changes."""

from __future__ import annotations

import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from statekit.archive.writer import ArchiveWriter
from statekit.fsio import atomic_output
from statekit.tiers.redis import portable
from statekit.tiers.redis.checks import is_score
from statekit.tiers.redis.records import TYPE_HASH, TYPE_LIST, TYPE_STREAM, TYPE_STRING, TYPE_ZSET, RecordWriter
from tests.test_restore_hostile import IDENTITY, STATEKIT, _good_dump, _payload, _restore, _state, peak_rss_mib

Write = Callable[[RecordWriter], Any]


def _archive(path: Path, write: Write, *, kind: str | None = "snapshot", taken_at_ms: int | None = None) -> Path:
    """An archive of 1,000 good string keys, then what `write` adds (so a restore that wrote before checking
    would change the target); snapshot.json's `kind` as given (None: none)."""
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=[IDENTITY.recipient()])
        taken = int(time.time() * 1000) if taken_at_ms is None else taken_at_ms
        rw = RecordWriter(w, 0, "7.0.15", taken)
        for i in range(1000):
            rw.add_dump(b"good:%d" % i, portable.encode(portable.TYPE_STRING, b"new-%d" % i, 9), -1)
        write(rw)
        rw.flush()
        doc: dict[str, Any] = {"tiers": [{"tier": "redis", "counts": {"keys": 1001}}]}
        if kind is not None:
            doc["kind"] = kind
        w.finish(doc)
    return path


def _target(client: redis.Redis) -> dict[bytes, Any]:
    for i in range(0, 1000, 7):
        client.set(b"good:%d" % i, b"old-%d" % i)
    client.set(b"important:1", b"keep")
    return _state(client)


def _refused(archive: Path, identity: Path, url: str, client: redis.Redis, *extra: str) -> str:
    """Dry run and real restore both exit 3 with one line naming the member; the target stays as it was."""
    before = _target(client)
    err = ""
    for more in (["--dry-run"], []):
        code, err = _restore(archive, identity, "--tier", "redis", "--target-url", url, *extra, *more)
        assert code == 3, err
        assert err.startswith("Error: ") and err.count("\n") == 1, err
        assert "redis/db0.000000.rec" in err, err
        assert _state(client) == before
    assert not list(Path().glob("undo-*.statekit"))
    return err


def _rdb(client: redis.Redis) -> int:
    good = _good_dump(client)
    return good[-10] | (good[-9] << 8)


def _lzf_string(lzf: bytes, declared: int, rdb: int) -> bytes:
    """A string DUMP payload holding one LZF-compressed string that declares `declared` bytes."""
    return _payload(b"\x00\xc3\x80" + len(lzf).to_bytes(4, "big") + b"\x81" + declared.to_bytes(8, "big") + lzf, rdb)


# 1 literal byte, then back references of 264 bytes each at distance 1: 3 bytes of input per 264 of output
_BOMB = b"\x00A" + b"\xe0\xff\x00" * 700_000


@pytest.mark.parametrize("declared", [5, 1 << 40])
def test_an_lzf_bomb_is_refused_at_its_declared_length(
    declared: int, tmp_path: Path, identity_file: Path, redis_url: str
) -> None:
    """A payload newer than the target is decoded by statekit: its LZF output stops at the length it declares
    (itself at most 512 MiB), so a few KiB of archive cannot cost seconds and hundreds of MiB."""
    client = redis.Redis.from_url(redis_url)
    payload = _lzf_string(_BOMB, declared, _rdb(client) + 1)
    archive = _archive(tmp_path / "bomb.statekit", lambda rw: rw.add_dump(b"bomb", payload, -1))
    assert archive.stat().st_size < 64 << 10
    err = _refused(archive, identity_file, redis_url, client)
    assert "bomb" in err and "LZF" in err, err
    code, rss, err = peak_rss_mib(["restore", str(archive), "-i", str(identity_file), "--tier", "redis",
                                   "--target-url", redis_url, "--dry-run"])  # fmt: skip
    assert code == 3, err
    assert rss < 150, f"peak RSS {rss:.0f} MiB"  # was 255 MiB (184 MB of output) before the bound


def test_lzf_output_is_bounded_and_copied_in_slices() -> None:
    with pytest.raises(portable.Malformed, match="longer than its declared length"):
        portable.lzf_decompress(_BOMB, 5)
    with pytest.raises(portable.Malformed, match="more than any Redis string"):
        portable.lzf_decompress(_BOMB, portable.MAX_VALUE + 1)
    with pytest.raises(portable.Malformed, match="shorter than its declared length"):
        portable.lzf_decompress(b"\x02abc", 4)
    with pytest.raises(portable.Malformed, match="before its start"):
        portable.lzf_decompress(b"\x00a" + bytes([1 << 5, 5]), 4)
    # overlapping references repeat the last bytes, as liblzf's byte-by-byte copy does
    assert portable.lzf_decompress(b"\x01ab" + bytes([(7 << 5), 3, 1]), 14) == b"ab" * 7
    data = b"\x00A" + b"\xe0\xff\x00" * 20_000
    started = time.monotonic()
    assert portable.lzf_decompress(data, 1 + 264 * 20_000) == b"A" * (1 + 264 * 20_000)
    assert time.monotonic() - started < 5


def test_a_truncated_or_overrunning_payload_is_malformed_not_an_index_error() -> None:
    for body in (b"\x01\x05\x01a", b"\x00\x45", b"\x0b\x09" + struct.pack("<II", 2, 1 << 30), b"\x03\x01\x01a\x05"):
        with pytest.raises(portable.Malformed):
            portable.decode(_payload(body, 9))
    with pytest.raises(portable.Malformed):
        portable.comparable(_payload(b"\x15\x01", 11))


def _big(type_: int, *chunks: list[bytes]) -> Write:
    def write(rw: RecordWriter) -> None:
        rw.begin_big(b"big", type_, -1)
        for items in chunks:
            rw.add_chunk(b"big", type_, items)
        rw.end_big(b"big", type_, len(chunks))

    return write


_META = [b"M", b"5-0", b"2", b"0-0"]
_ENTRIES = [b"E", b"1-1", b"2", b"f", b"v", b"2-0", b"2", b"g", b"w"]
BAD_BIG_KEYS: dict[str, Write] = {
    "zset-score-with-underscore": _big(TYPE_ZSET, [b"m1", b"1", b"m2", b"1_0"]),
    "zset-score-with-space": _big(TYPE_ZSET, [b"m1", b" 1"]),
    "zset-score-nan": _big(TYPE_ZSET, [b"m1", b"nan"]),
    "zset-score-overflows": _big(TYPE_ZSET, [b"m1", b"1e400"]),
    "zset-score-underflows": _big(TYPE_ZSET, [b"m1", b"1e-400"]),
    "zset-score-is-a-flag": _big(TYPE_ZSET, [b"m1", b"NX"]),
    "zset-without-members": _big(TYPE_ZSET, []),
    "hash-without-fields": _big(TYPE_HASH, []),
    "list-without-elements": _big(TYPE_LIST, [], []),
    "stream-entry-without-fields": _big(TYPE_STREAM, [b"E", b"1-1", b"0"], _META),
    "stream-entry-bad-id": _big(TYPE_STREAM, [b"E", b"not-an-id", b"2", b"f", b"v"], _META),
    "stream-entry-id-0-0": _big(TYPE_STREAM, [b"E", b"0-0", b"2", b"f", b"v"], _META),
    "stream-entry-id-over-64-bits": _big(TYPE_STREAM, [b"E", b"18446744073709551616-0", b"2", b"f", b"v"]),
    "stream-entry-id-is-an-option": _big(TYPE_STREAM, [b"E", b"MAXLEN", b"2", b"f", b"v"]),
    "stream-entries-not-increasing": _big(
        TYPE_STREAM, [b"E", b"2-0", b"2", b"f", b"v"], [b"E", b"1-0", b"2", b"f", b"v"]
    ),
    "stream-entries-after-metadata": _big(TYPE_STREAM, _ENTRIES, _META, [b"E", b"9-0", b"2", b"f", b"v"]),
    "stream-last-id-below-entries": _big(TYPE_STREAM, _ENTRIES, [b"M", b"1-0", b"2", b""]),
    "stream-entries-added-below-length": _big(TYPE_STREAM, _ENTRIES, [b"M", b"5-0", b"1", b""]),
    "stream-max-deleted-above-last": _big(TYPE_STREAM, _ENTRIES, [b"M", b"5-0", b"2", b"6-0"]),
    "stream-group-before-metadata": _big(TYPE_STREAM, [b"G", b"grp", b"0-0", b""]),
    "stream-group-twice": _big(TYPE_STREAM, _ENTRIES, _META, [b"G", b"g", b"0-0", b""], [b"G", b"g", b"0-0", b""]),
    "stream-group-bad-id": _big(TYPE_STREAM, _ENTRIES, _META, [b"G", b"grp", b"1-x", b""]),
    "stream-pending-of-unknown-group": _big(TYPE_STREAM, _ENTRIES, _META, [b"P", b"grp", b"1-1", b"c", b"1", b"1"]),
    "stream-pending-bad-count": _big(
        TYPE_STREAM, _ENTRIES, _META, [b"G", b"grp", b"0-0", b""], [b"P", b"grp", b"1-1", b"c", b"1", b"x1"]
    ),
    "stream-without-entries-or-metadata": _big(TYPE_STREAM),
}


@pytest.mark.parametrize("case", list(BAD_BIG_KEYS))
def test_a_big_key_the_rebuild_would_refuse_is_refused_before_any_write(
    case: str, tmp_path: Path, identity_file: Path, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    archive = _archive(tmp_path / f"{case}.statekit", BAD_BIG_KEYS[case])
    err = _refused(archive, identity_file, redis_url, client)
    assert "key big:" in err, err


def test_big_keys_at_the_edges_of_what_redis_takes_restore(tmp_path: Path, identity_file: Path, redis_url: str) -> None:
    """The controls: every chunk shape the checks accept is one the rebuilding commands accept."""
    client = redis.Redis.from_url(redis_url)
    scores = [b"inf", b"-inf", b"+inf", b"1.5e3", b".5", b"1.", b"-0", b"0e-999", b"1e-310", b"17"]
    members = [b"m%d" % i for i in range(len(scores))]

    def write(rw: RecordWriter) -> None:
        _big(TYPE_ZSET, [x for pair in zip(members, scores) for x in pair])(rw)
        rw.begin_big(b"stream", TYPE_STREAM, -1)
        for items in (
            _ENTRIES,
            _META,
            [b"G", b"grp", b"1-1", b"1", b"alice"],
            [b"P", b"grp", b"1-1", b"alice", b"5", b"2"],
        ):
            rw.add_chunk(b"stream", TYPE_STREAM, items)
        rw.end_big(b"stream", TYPE_STREAM, 4)
        rw.begin_big(b"empty-stream", TYPE_STREAM, -1)
        rw.add_chunk(b"empty-stream", TYPE_STREAM, [b"M", b"7-0", b"", b""])
        rw.end_big(b"empty-stream", TYPE_STREAM, 1)
        rw.begin_big(b"s", TYPE_STRING, -1)  # an empty string: no chunk at all
        rw.end_big(b"s", TYPE_STRING, 0)

    archive = _archive(tmp_path / "ok.statekit", write)
    code, err = _restore(archive, identity_file, "--tier", "redis", "--target-url", redis_url, "--no-undo")
    assert code == 0, err
    assert client.zcard(b"big") == len(scores) and client.zscore(b"big", b"m0") == float("inf")
    assert client.xlen(b"stream") == 2 and client.xpending(b"stream", "grp")["pending"] == 1
    assert client.exists(b"empty-stream") and client.get(b"s") == b""


@pytest.mark.parametrize(
    "text", [b"1", b"-1.5", b"+2e10", b".5", b"5.", b"inf", b"-Infinity", b"0", b"0.000", b"1e-310", b"1E5"]
)
def test_scores_redis_takes(text: bytes) -> None:
    assert is_score(text)


@pytest.mark.parametrize(
    "text", [b"", b"1_0", b" 1", b"1 ", b"nan", b"-nan", b"1e400", b"-1e400", b"1e-400", b"0x10", b"1e", b".", b"NX"]
)
def test_scores_redis_refuses(text: bytes) -> None:
    assert not is_score(text)


def _value(key: bytes, value: bytes, expire_at: int) -> Write:
    head = struct.pack("<BBHqII", 0x56, 0, 0, expire_at, len(key), len(value))
    return lambda rw: rw.add_raw([head, key, value], 20 + len(key) + len(value), 1)


@pytest.mark.parametrize("record", ["string", "big-key"])
def test_an_expiry_beyond_what_redis_sets_under_ttl_relative_is_refused(
    record: str, tmp_path: Path, identity_file: Path, redis_url: str
) -> None:
    """A member taken at 0 ms with an expiry near the end of time: --ttl relative would send a PXAT /
    PEXPIREAT past LLONG_MAX, which Redis refuses in the writing pass."""
    client = redis.Redis.from_url(redis_url)
    end = (1 << 63) - 1
    if record == "string":
        write = _value(b"ttl:max", b"x", end)
    else:

        def write(rw: RecordWriter) -> None:
            rw.begin_big(b"ttl:max", TYPE_LIST, end)
            rw.add_chunk(b"ttl:max", TYPE_LIST, [b"a"])
            rw.end_big(b"ttl:max", TYPE_LIST, 1)

    archive = _archive(tmp_path / "ttl.statekit", write, taken_at_ms=0)
    err = _refused(archive, identity_file, redis_url, client, "--ttl", "relative")
    assert "ttl:max" in err and "expiry" in err, err


@pytest.mark.parametrize("kind", ["snapshot", None])
def test_deleting_records_outside_an_undo_archive_are_refused(
    kind: str | None, tmp_path: Path, identity_file: Path, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    archive = _archive(tmp_path / "absent.statekit", lambda rw: rw.add_absent(b"important:1"), kind=kind)
    err = _refused(archive, identity_file, redis_url, client)
    assert "important:1" in err and "undo archive" in err, err
    assert client.get(b"important:1") == b"keep"


def test_deleting_records_of_an_undo_archive_still_delete(tmp_path: Path, identity_file: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    archive = _archive(tmp_path / "undo.statekit", lambda rw: rw.add_absent(b"important:1"), kind="undo")
    _target(client)
    code, err = _restore(archive, identity_file, "--tier", "redis", "--target-url", redis_url, "--no-undo")
    assert code == 0, err
    assert client.get(b"important:1") is None and client.get(b"good:7") == b"new-7"


def _diff(a: Path, b: Path, identity: Path) -> tuple[int, str]:
    proc = subprocess.run([STATEKIT, "diff", "--raw", str(a), str(b), "-i", str(identity)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("case", ["truncated", "lzf-bomb", "truncated-stream"])
def test_diff_raw_of_a_malformed_payload_is_a_corrupt_archive(
    case: str, tmp_path: Path, identity_file: Path, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    good = _good_dump(client)
    payload = {
        "truncated": _payload(b"\x01\x05", 9),
        "lzf-bomb": _lzf_string(_BOMB, 5, 9),
        "truncated-stream": _payload(b"\x15\x01", 11),
    }[case]
    a = _archive(tmp_path / "a.statekit", lambda rw: rw.add_dump(b"odd", good, -1))
    b = _archive(tmp_path / "b.statekit", lambda rw: rw.add_dump(b"odd", payload, -1))
    code, err = _diff(a, b, identity_file)
    assert code == 3, err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "malformed" in err and "key odd" in err, err
    assert _diff(a, a, identity_file)[0] == 0
