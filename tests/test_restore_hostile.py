"""Hostile archives for restore: validly encrypted, with a correct manifest, but holding records that cannot
be applied (malformed DUMP payloads, big-key chunks out of order, a member header that contradicts its name,
file/directory conflicts, JSON nested to exhaust the parser, a 1 GiB member). Every one is refused with exit 3
and a one-line error naming the member, before the first change: the target is exactly as it was."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import zstandard

from statekit.archive.age import Encryptor
from statekit.archive.keys import generate_identity
from statekit.archive.reader import Archive
from statekit.archive.writer import ArchiveWriter
from statekit.fsio import atomic_output
from statekit.tiers.redis import portable
from statekit.tiers.redis.records import TYPE_ZSET, RecordWriter

IDENTITY = generate_identity()
STATEKIT = os.environ.get("STATEKIT_TEST_BIN") or str(Path(sys.executable).parent / "statekit")


def _payload(body: bytes, rdb: int) -> bytes:
    """A DUMP payload around `body` (type byte first) with a correct RDB version footer and CRC64."""
    head = body + struct.pack("<H", rdb)
    return head + struct.pack("<Q", portable.crc64(head))


def _list_claiming(n: int, items: list[bytes], rdb: int) -> bytes:
    body = bytes([1, n]) + b"".join(bytes([len(i)]) + i for i in items)
    return _payload(body, rdb)


def _intset(count: int, rdb: int) -> bytes:
    blob = struct.pack("<II", 2, count) + struct.pack("<hh", 1, 2)
    return _payload(bytes([11, len(blob)]) + blob, rdb)


def _good_dump(client: redis.Redis) -> bytes:
    client.rpush("tmp:list", "a", "b", "c")
    payload = client.dump("tmp:list")
    client.delete("tmp:list")
    assert payload
    return bytes(payload)


def _redis_archive(path: Path, write: Any) -> Path:
    """An archive whose redis member is written by `write(RecordWriter)`; 1,000 good keys come first, so a
    restore that did not check before writing would change the target."""
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=[IDENTITY.recipient()])
        rw = RecordWriter(w, 0, "7.0.15", int(time.time() * 1000))
        for i in range(1000):
            rw.add_dump(b"good:%d" % i, portable.encode(portable.TYPE_STRING, b"new-%d" % i, 9), -1)
        write(rw)
        rw.flush()
        w.finish({"tiers": [{"tier": "redis", "counts": {"keys": 1001}}]})
    return path


def _state(client: redis.Redis) -> dict[bytes, Any]:
    return {k: client.dump(k) for k in client.scan_iter(count=1000)}


def _restore(archive: Path, identity: Path, *extra: str) -> tuple[int, str]:
    proc = subprocess.run([STATEKIT, "restore", str(archive), "-i", str(identity), "--yes", *extra],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc.returncode, proc.stderr


def _zset_bad_score(rw: RecordWriter) -> None:
    rw.begin_big(b"bad", TYPE_ZSET, -1)
    rw.add_chunk(b"bad", TYPE_ZSET, [b"m", b"x1"])
    rw.end_big(b"bad", TYPE_ZSET, 1)


def _cases(client: redis.Redis) -> dict[str, Any]:
    good = _good_dump(client)
    good_rdb = good[-10] | (good[-9] << 8)
    return {
        "list-claims-5-elements": lambda rw: rw.add_dump(b"bad", _list_claiming(5, [b"a", b"b"], good_rdb), -1),
        "intset-huge-count": lambda rw: rw.add_dump(b"bad", _intset(1 << 30, good_rdb), -1),
        "newer-rdb-list-claims-5": lambda rw: rw.add_dump(b"bad", _list_claiming(5, [b"a", b"b"], 12), -1),
        "newer-rdb-intset-huge-count": lambda rw: rw.add_dump(b"bad", _intset(1 << 30, 12), -1),
        "rdb-version-no-redis-writes": lambda rw: rw.add_dump(b"bad", _payload(good[:-10], 99), -1),
        "truncated-payload": lambda rw: rw.add_dump(b"bad", _payload(good[: len(good) // 2], good_rdb), -1),
        "garbage-payload": lambda rw: rw.add_dump(b"bad", _payload(b"\x0e" + os.urandom(40), good_rdb), -1),
        "bad-crc": lambda rw: rw.add_dump(b"bad", good[:-1] + bytes([good[-1] ^ 1]), -1),
        "chunk-outside-big-key": lambda rw: rw.add_chunk(b"bad", TYPE_ZSET, [b"m", b"1"]),
        "zset-chunk-score-not-a-number": _zset_bad_score,
        "big-key-never-ends": lambda rw: (rw.begin_big(b"bad", TYPE_ZSET, -1), rw.add_chunk(b"bad", TYPE_ZSET, [])),
    }


CASES = [
    "list-claims-5-elements", "intset-huge-count", "newer-rdb-list-claims-5", "newer-rdb-intset-huge-count",
    "rdb-version-no-redis-writes", "truncated-payload", "garbage-payload", "bad-crc", "chunk-outside-big-key",
    "zset-chunk-score-not-a-number", "big-key-never-ends",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_malformed_redis_record_is_refused_before_any_write(
    case: str, tmp_path: Path, identity_file: Path, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    archive = _redis_archive(tmp_path / f"{case}.statekit", _cases(client)[case])
    for i in range(0, 1000, 7):
        client.set(b"good:%d" % i, b"old-%d" % i)
    client.hset("other", "f", "v")
    before = _state(client)
    for extra in ([], ["--dry-run"]):
        code, err = _restore(archive, identity_file, "--tier", "redis", "--target-url", redis_url, *extra)
        assert code == 3, f"{case}: {err}"
        assert err.startswith("Error: ") and err.count("\n") == 1, err
        assert "redis/db0.000000.rec" in err and "bad" in err, err
        assert _state(client) == before
    assert not list(Path().glob("undo-*.statekit")), "refused before the undo archive was even started"


def test_a_good_payload_next_to_them_restores(tmp_path: Path, identity_file: Path, redis_url: str) -> None:
    """The builder is sound: with a well-formed record in place of the bad one the same archive restores."""
    client = redis.Redis.from_url(redis_url)
    good = _good_dump(client)
    archive = _redis_archive(tmp_path / "ok.statekit", lambda rw: rw.add_dump(b"fine", good, -1))
    code, err = _restore(archive, identity_file, "--tier", "redis", "--target-url", redis_url, "--no-undo")
    assert code == 0, err
    assert client.lrange("fine", 0, -1) == [b"a", b"b", b"c"]
    assert client.dbsize() == 1001


def test_member_header_contradicting_its_name_is_refused(tmp_path: Path, identity_file: Path, redis_url: str) -> None:
    path = tmp_path / "mismatch.statekit"
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=[IDENTITY.recipient()])
        rw = RecordWriter(w, 7, "7.0.15", int(time.time() * 1000))
        rw.add_dump(b"k", portable.encode(portable.TYPE_STRING, b"v", 9), -1)
        body = b"".join([rw._header, *rw._parts])
        w.add("redis/db0.000000.rec", body, meta={"keys": 1})  # the header says db 7
        w.finish({"tiers": [{"tier": "redis"}]})
    client = redis.Redis.from_url(redis_url)
    client.set("keep", "1")
    code, err = _restore(path, identity_file, "--tier", "redis", "--target-url", redis_url)
    assert code == 3, err
    assert "redis/db0.000000.rec" in err and "database 7" in err
    assert _state(client) == {b"keep": client.dump("keep")}


# -- hand-built containers ---------------------------------------------------------------------------------


def _container(path: Path, members: list[tuple[str, bytes]], *, snapshot: bytes | None = None,
               fmt: bytes | None = None, manifest: bytes | None = None) -> Path:  # fmt: skip
    """A validly encrypted archive with these members and a truthful manifest (unless given)."""
    fmt = fmt or json.dumps({"format": "statekit-archive", "format_version": 1}).encode()
    tiers = sorted({name.split("/")[0] for name, _ in members if "/" in name})
    snapshot = snapshot or json.dumps({"snapshot_id": "x", "tiers": [{"tier": t} for t in tiers]}).encode()
    listed = [("format.json", fmt), *members, ("snapshot.json", snapshot)]
    entries = [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest(), "mode": "0600", "mtime": 0}
               for n, d in listed]  # fmt: skip
    manifest = manifest or json.dumps({"format": "statekit-archive", "format_version": 1, "members": entries}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [*listed, ("MANIFEST.json", manifest)]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    with open(path, "wb") as fh, Encryptor(fh, [IDENTITY.recipient()]) as enc:
        enc.write(zstandard.ZstdCompressor().compress(buf.getvalue()))
    return path


def _tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes() if p.is_file() else None)
            for p in root.rglob("*")}  # fmt: skip


@pytest.mark.parametrize("order", ["file-first", "dir-first"])
def test_file_and_directory_of_the_same_name_are_refused(order: str, tmp_path: Path, identity_file: Path) -> None:
    members = [("files/a.json", b"{}"), ("files/newdir", b"file"), ("files/newdir/sub.json", b"{}")]
    if order == "dir-first":
        members = [members[0], members[2], members[1]]
    archive = _container(tmp_path / "conflict.statekit", members)
    target = tmp_path / "target"
    target.mkdir()
    (target / "a.json").write_text("old")
    before = _tree(target)
    for extra in ([], ["--dry-run"]):
        code, err = _restore(archive, identity_file, "--tier", "files", "--target", str(target), *extra)
        assert code == 3, err
        assert "files/newdir" in err and err.count("\n") == 1, err
        assert _tree(target) == before


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("where", ["format.json", "snapshot.json", "MANIFEST.json", "undo-absent-list"])
def test_deeply_nested_json_is_corrupt_not_an_internal_error(where: str, tmp_path: Path, identity_file: Path) -> None:
    members = [("files/a.json", b"{}")]
    kw: dict[str, bytes] = {}
    if where == "format.json":
        kw["fmt"] = b'{"format": "statekit-archive", "format_version": 1, "x": ' + _nested(10000) + b"}"
    elif where == "snapshot.json":
        kw["snapshot"] = b'{"tiers": [{"tier": "files"}], "x": ' + _nested(200000) + b"}"
    elif where == "MANIFEST.json":
        kw["manifest"] = _nested(200000)
    else:
        members.append(("undo/files-absent.json", b'{"absent": ' + b"[" * 200000 + b"]" * 200000 + b"}"))
        kw["snapshot"] = json.dumps({"kind": "undo", "tiers": [{"tier": "files"}]}).encode()  # only there is it read
    archive = _container(tmp_path / "deep.statekit", members, **kw)
    target = tmp_path / "target"
    target.mkdir()
    (target / "a.json").write_text("old")
    for cmd in (["restore", str(archive), "--tier", "files", "--target", str(target), "--yes"],
                ["restore", str(archive), "--tier", "files", "--target", str(target), "--dry-run"],
                ["verify", str(archive)], ["inspect", str(archive)]):  # fmt: skip
        proc = subprocess.run([STATEKIT, *cmd, "-i", str(identity_file)], capture_output=True, text=True, timeout=120)
        if where == "undo-absent-list" and cmd[0] in ("verify", "inspect"):
            assert proc.returncode == 0, proc.stderr  # well-formed as a container; only restore reads it
            continue
        assert proc.returncode == 3, f"{where} {cmd[0]}: {proc.stderr}"
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert (target / "a.json").read_text() == "old"


# -- memory ------------------------------------------------------------------------------------------------


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.left)
        buf[:n] = bytes(n)
        self.left -= n
        return n


def huge_member_archive(path: Path, name: str, size: int, head: bytes = b"") -> Path:
    """A small archive (zeros compress to nothing) with one member of `size` bytes: `head`, then zeros."""
    digest = hashlib.sha256(head)
    zero = bytes(1 << 20)
    left = size - len(head)
    while left:
        digest.update(zero[: min(left, len(zero))])
        left -= min(left, len(zero))
    tier = name.split("/")[0]
    fmt = json.dumps({"format": "statekit-archive", "format_version": 1}).encode()
    snap = json.dumps({"snapshot_id": "x", "tiers": [{"tier": tier}]}).encode()
    small = [("format.json", fmt), ("snapshot.json", snap)]
    entries = [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest(), "mode": "0600", "mtime": 0}
               for n, d in small]  # fmt: skip
    entries.append({"name": name, "size": size, "sha256": digest.hexdigest(), "mode": "0600", "mtime": 0})
    manifest = json.dumps({"format": "statekit-archive", "format_version": 1, "members": entries}).encode()
    cctx = zstandard.ZstdCompressor()
    with (
        open(path, "wb") as fh,
        Encryptor(fh, [IDENTITY.recipient()]) as enc,
        cctx.stream_writer(enc, closefd=False) as z,  # type: ignore[arg-type]
        tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for n, d in small[:1]:
            info = tarfile.TarInfo(n)
            info.size, info.mode = len(d), 0o600
            tar.addfile(info, io.BytesIO(d))
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, 0o600

        class _Src(io.RawIOBase):
            def __init__(self) -> None:
                self.head, self.zeros = head, _Zeros(size - len(head))

            def readable(self) -> bool:
                return True

            def readinto(self, buf: Any) -> int:
                if self.head:
                    n = min(len(buf), len(self.head))
                    buf[:n] = self.head[:n]
                    self.head = self.head[n:]
                    return n
                return self.zeros.readinto(buf)

        tar.addfile(info, io.BufferedReader(_Src()))
        for n, d in [small[1], ("MANIFEST.json", manifest)]:
            info = tarfile.TarInfo(n)
            info.size, info.mode = len(d), 0o600
            tar.addfile(info, io.BytesIO(d))
    return path


_MEASURE = """
import os, subprocess, sys
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
sys.stderr.buffer.write(proc.stderr)
print(proc.returncode, __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mib(args: list[str]) -> tuple[int, float, str]:
    """Run statekit in a child process: (exit code, its peak RSS in MiB, stderr). A small Python process
    starts it, because a child forked straight from the test process (hundreds of MiB by then) would count
    those pages in its own peak before it execs."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, STATEKIT, *args], capture_output=True, text=True)
    code, kib = proc.stdout.split()
    return int(code), int(kib) / 1024, proc.stderr


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("redis/db0.000000.rec", b""),  # zeros: not even a member header
        # a well-formed header, then a record claiming a 1 GiB value
        ("redis/db0.000001.rec", b"SKREDIS1" + struct.pack("<HQB", 0, 0, 6) + b"7.0.15"
         + struct.pack("<BBHqII", 0x56, 0, 0, -1, 1, (1 << 30) - 64) + b"k"),
        ("files/big.bin", b""),
    ],
)  # fmt: skip
def test_a_1gib_member_does_not_become_an_allocation(
    name: str, head: bytes, tmp_path: Path, identity_file: Path, redis_url: str
) -> None:
    archive = huge_member_archive(tmp_path / "huge.statekit", name, 1 << 30, head)
    assert archive.stat().st_size < 2 << 20
    tier = name.split("/")[0]
    target = ["--target-url", redis_url] if tier == "redis" else ["--target", str(tmp_path / "t")]
    code, rss, err = peak_rss_mib(["restore", str(archive), "-i", str(identity_file), "--tier", tier, "--dry-run",
                                   *target])  # fmt: skip
    print(f"{name}: restore --dry-run of a {archive.stat().st_size // 1024} KiB archive holding a 1 GiB member: "
          f"exit {code}, peak RSS {rss:.0f} MiB")  # fmt: skip
    assert "Traceback" not in err
    assert code == 3, err  # files: over the 64 MiB a key file may hold, refused from the manifest
    assert rss < 256, f"peak RSS {rss:.0f} MiB"


# -- db segments ---------------------------------------------------------------------------------------------------


def rewrite(src: Path, dst: Path, change: Any, *, head: bool = False) -> Path:
    """A copy of archive `src`, validly re-encrypted with a truthful manifest, each data member passed through
    `change(name, data) -> data`; with `head`, its head names its kind and tiers (as statekit writes them),
    else it has none (as archives written before head fields existed)."""

    archive = Archive(src, [IDENTITY])
    metas = {m["name"]: m.get("meta") for m in archive.manifest["members"]}
    snapshot = archive.snapshot
    with atomic_output(dst) as fh:
        fields: dict[str, Any] = {k: archive.head()[k] for k in ("kind", "tiers") if head and k in archive.head()}
        w = ArchiveWriter(fh, recipients=[IDENTITY.recipient()], head=fields)
        for m in archive.members():
            if m.name == "README.txt":
                continue
            w.add(m.name, change(m.name, m.read_all()), mode=m.mode, meta=metas.get(m.name))
        w.finish(snapshot)
    return dst


def _sqlite_rows(path: Path) -> list[Any]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM t ORDER BY id").fetchall()


def _tuple_end(d: bytes) -> int:
    """Where the first binary COPY tuple of an (int, text) table ends."""
    return 2 + 4 + 4 + 4 + int.from_bytes(d[10:14], "big")


DB_CASES: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "copy-row-too-wide": (".copy", lambda d: d.replace(b"\n", b"\tx\n", 1)),
    "copy-row-too-narrow": (".copy", lambda d: d.replace(b"\t", b" ", 1)),
    "copy-cut-short": (".copy", lambda d: d[:-3]),
    "copy-not-utf8": (".copy", lambda d: d.replace(b"\n", b"\xff\xfe\n", 1)),
    "copy-more-rows-than-said": (".copy", lambda d: d + d.split(b"\n")[0] + b"\n"),
    "pgbinary-wrong-field-count": (".pgbinary", lambda d: b"\x00\x03" + d[2:]),
    "pgbinary-cut-short": (".pgbinary", lambda d: d[:-3]),
    "pgbinary-huge-length": (".pgbinary", lambda d: d[:2] + b"\x7f\xff\xff\xff" + d[6:]),
    "pgbinary-negative-length": (".pgbinary", lambda d: d[:2] + b"\xff\xff\xff\xfe" + d[6:]),
    "pgbinary-trailer-inside": (".pgbinary", lambda d: d[: _tuple_end(d)] + b"\xff\xff" + d[_tuple_end(d) :]),
    "pgbinary-more-rows-than-said": (".pgbinary", lambda d: d + d[: _tuple_end(d)]),
    "jsonl-deeply-nested": (".jsonl", lambda d: d.replace(b"\n", b"\n" + b"[" * 100000 + b"]" * 100000 + b"\n", 1)),
    "jsonl-row-too-wide": (".jsonl", lambda d: d.replace(b"]\n", b', "x"]\n', 1)),
    "jsonl-not-json": (".jsonl", lambda d: d.replace(b"]\n", b"\n", 1)),
}


@pytest.mark.parametrize("head", [False, True], ids=["no-head", "head"])
@pytest.mark.parametrize("case", sorted(DB_CASES))
def test_malformed_db_segment_is_refused_and_changes_nothing(
    case: str, head: bool, tmp_path: Path, identity_file: Path, pg_url: str
) -> None:
    import sqlite3

    ext, damage = DB_CASES[case]
    recipient = IDENTITY.recipient().to_string()
    env = dict(os.environ)
    if ext in (".copy", ".pgbinary"):
        with psycopg_connect(pg_url) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            conn.execute("INSERT INTO t SELECT g, 'new-' || g FROM generate_series(1, 500) g")
        source = ["--db-url", pg_url]
        env["STATEKIT_DB_COPY_FORMAT"] = "text" if ext == ".copy" else "binary"
    else:
        with sqlite3.connect(tmp_path / "src.db") as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"new-{i}") for i in range(500)])
        source = ["--db-url", f"sqlite:///{tmp_path / 'src.db'}"]
    good = tmp_path / "good.statekit"
    snap = subprocess.run([STATEKIT, "snapshot", *source, "--to", str(good), "-r", recipient], capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert snap.returncode == 0, snap.stderr
    bad = rewrite(good, tmp_path / "bad.statekit", lambda n, d: damage(d) if n.endswith(ext) else d, head=head)
    assert ("tiers" in Archive(bad, [IDENTITY]).head()) == head
    target = tmp_path / "target.db"
    with sqlite3.connect(target) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"old-{i}") for i in range(10)])
    before = _sqlite_rows(target)
    code, err = _restore(bad, identity_file, "--tier", "db", "--target-url", f"sqlite:///{target}", "--dry-run")
    assert code == 3, f"{case}: {err}"
    assert "archive member db/" in err and err.count("\n") == 1, err
    assert _sqlite_rows(target) == before
    assert not list(Path().glob("undo-*.statekit"))
    # The restore checks each segment as it loads it, inside its one transaction: the damage rolls it back.
    code, err = _restore(bad, identity_file, "--tier", "db", "--target-url", f"sqlite:///{target}", "--yes")
    last = err.strip().splitlines()[-1]  # after the lines naming the undo archive, sealed before the load
    if head and case.endswith("more-rows-than-said"):
        # Without a verifying pass the manifest's row counts are known at the end of the load pass: the
        # target refuses the duplicated row first (exit 6). Nothing is changed either way.
        assert code in (3, 6) and "nothing was changed" in last, f"{case}: {err}"
    else:
        assert code == 3, f"{case}: {err}"
        assert "archive member db/" in last and "nothing was changed" in last, err
    assert _sqlite_rows(target) == before
    code, err = _restore(good, identity_file, "--tier", "db", "--target-url", f"sqlite:///{target}", "--no-undo")
    assert code == 0, err  # the undamaged archive restores: the damage is what was refused


def psycopg_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
