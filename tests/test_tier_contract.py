"""One contract for every registered tier (statekit.tiers.TIERS), on real servers: a round trip of the tier's
torture data, plan-then-restore (the plan writes nothing, the restore does what it planned), undo (restoring
the undo archive puts the target back), member decoding (the tier's decoder yields what was snapshotted) and
rehearsal (passes on a good archive, fails on a damaged one).

The suite reads the registry: a new tier is under test as soon as it is registered, and fails here until it
has a `Kit` (how to fill a source with torture data, how to read a target's state) in `KITS`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from statekit.archive.reader import Archive
from statekit.archive.writer import ArchiveWriter
from statekit.config import Config, DbConfig, FilesConfig, RedisConfig
from statekit.errors import CorruptArchive
from statekit.fsio import atomic_output
from statekit.model import RestoreOptions, no_progress, no_warn
from statekit.ops.rehearse import rehearse
from statekit.restore import restore_tier
from statekit.tiers import TIERS, Tier, get, names
from statekit.tiers.files.members import FileRecord
from statekit.tiers.redis import portable
from statekit.tiers.redis.members import RedisKey
from statekit.tiers.redis.records import TYPE_NAMES
from statekit.tiers.sql.members import TableSegment
from tests.db_support import execute, fetch, rows_as_text
from tests.redis_support import client, same_state, state
from tests.test_db_pg import TABLES as DB_TABLES
from tests.test_db_pg import make_torture

# -- what the suite needs to know of each tier ------------------------------------------------------------


class Kit:
    """The test side of one tier: a source full of torture data, targets, and a target's state."""

    # A plan's count → the restore report's count of the same thing (a plan says "create", a restore "created").
    counts: ClassVar[dict[str, str]] = {}

    def source(self, request: pytest.FixtureRequest, tmp: Path) -> str:
        """A new source holding the tier's torture data (a URL or a directory)."""
        raise NotImplementedError

    def empty(self, request: pytest.FixtureRequest, tmp: Path) -> str:
        """A new, empty target."""
        raise NotImplementedError

    def other(self, request: pytest.FixtureRequest, tmp: Path) -> str:
        """A new target holding data that differs from the torture data (some of it overlapping)."""
        raise NotImplementedError

    def config(self, where: str) -> Config:
        """A configuration naming `where` as the tier's source and target."""
        raise NotImplementedError

    def options(self, tier: str, target: str | None) -> RestoreOptions:
        return RestoreOptions(tier=tier, target=target, undo=False)

    def state(self, where: str) -> Any:
        """Everything the tier holds at `where`, in a comparable form."""
        raise NotImplementedError

    def same(self, a: Any, b: Any) -> None:
        assert a == b

    def holds(self, big: Any, small: Any) -> None:
        """`big` (a state) holds everything `small` holds, the same (a restore leaves other items alone)."""
        assert small.keys() <= big.keys(), set(small) - set(big)
        self.same({k: big[k] for k in small}, small)

    def decoded(self, records: Iterable[object]) -> Any:
        """What the tier's decoder yielded, in the form `snapshotted` gives."""
        raise NotImplementedError

    def snapshotted(self, where: str) -> Any:
        """What a snapshot of `where` holds, read from the source itself."""
        raise NotImplementedError


class FilesKit(Kit):
    counts: ClassVar[dict[str, str]] = {"create": "created", "overwrite": "overwritten", "unchanged": "unchanged"}

    def _make(self, root: Path, files: dict[str, tuple[bytes, int]]) -> str:
        for rel, (data, mode) in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(mode)
        return str(root)

    def source(self, request: pytest.FixtureRequest, tmp: Path) -> str:
        return self._make(tmp / "src", {
            "instances/a/creds.json": (b'{"k": "v"}', 0o600),
            "instances/b/empty": (b"", 0o644),
            "ünïcode ñame/😀 file.bin": (bytes(range(256)) * 64, 0o600),
            "deep/" * 20 + "leaf": (b"deep", 0o640),
            "big.bin": (os.urandom(5 << 20), 0o600),  # over the size read whole: streamed
            "spaces and 'quotes'.txt": (b"line\r\nline\n", 0o755),
        })  # fmt: skip

    def empty(self, request: pytest.FixtureRequest, tmp: Path) -> str:
        (tmp / "empty").mkdir()
        return str(tmp / "empty")

    def other(self, request: pytest.FixtureRequest, tmp: Path) -> str:
        return self._make(tmp / "other", {
            "instances/a/creds.json": (b'{"k": "old"}', 0o600),
            "only-here.txt": (b"kept", 0o600),
        })  # fmt: skip

    def config(self, where: str) -> Config:
        return Config(files=FilesConfig(root=where))

    def state(self, where: str) -> dict[str, tuple[bytes, int]]:
        out = {}
        for dirpath, _, files in os.walk(where):
            for name in files:
                path = Path(dirpath) / name
                # a restore gives at most 0600, the owner's read/write bits of the archived mode
                out[str(path.relative_to(where))] = (path.read_bytes(), path.stat().st_mode & 0o600)
        return out

    def decoded(self, records: Iterable[object]) -> dict[str, bytes]:
        out = {}
        for rec in records:
            assert isinstance(rec, FileRecord)
            out[rec.rel] = rec.data
        return out

    def snapshotted(self, where: str) -> dict[str, bytes]:
        return {rel: data for rel, (data, _) in self.state(where).items()}


class RedisKit(Kit):
    counts: ClassVar[dict[str, str]] = {
        "create": "created",
        "replace": "replaced",
        "skip": "skipped",
        "expired": "expired",
        "delete": "deleted",
    }

    def _fill(self, url: str) -> None:
        with client(url) as r:
            r.set(b"\xff\xfe\x00bin", b"\x00\x01\xff" * 10)
            r.set(b"empty", b"")
            r.set(b"int", b"12345")
            r.set(b"ttl", b"v", px=600_000)
            r.rpush(b"list\x80", b"a", b"", b"\xff", b"123")
            r.sadd(b"set", b"x", b"\x00", b"")
            r.sadd(b"intset", 1, 2, 3, -7)
            r.zadd(b"zset", {b"a": 1.5, b"\xff": -3, b"c": 1e-300})
            r.hset(b"hash", mapping={b"f\x00": b"", b"g": b"\xff\xfe"})
            r.expire(b"hash", 3600)
            r.xadd(b"stream", {b"f": b"v"}, id=b"1-1")
            r.xgroup_create(b"stream", b"grp", id=b"0")
            # big keys (over big_key_elements below): archived in chunks
            r.hset(b"bighash", mapping={b"f%d" % i: b"v%d" % i for i in range(700)})
            r.pexpire(b"bighash", 900_000)
            r.rpush(b"biglist", *[b"e%d" % i for i in range(700)])
            r.sadd(b"bigset", *[b"m%d" % i for i in range(700)])
            r.zadd(b"bigzset", {b"z%d" % i: i / 7 for i in range(700)})

    def source(self, request: pytest.FixtureRequest, tmp: Path) -> str:
        url = str(request.getfixturevalue("redis_url"))
        self._fill(url)
        return url

    def empty(self, request: pytest.FixtureRequest, tmp: Path) -> str:
        return str(request.getfixturevalue("redis_url2"))

    def other(self, request: pytest.FixtureRequest, tmp: Path) -> str:
        url = str(request.getfixturevalue("redis_url2"))
        with client(url) as r:
            r.set(b"int", b"old")
            r.hset(b"bighash", mapping={b"other": b"field"})
            r.set(b"only-here", b"kept", px=800_000)
        return url

    def config(self, where: str) -> Config:
        return Config(redis=RedisConfig(url=where, big_key_elements=200))

    def state(self, where: str) -> Any:
        return state(where)

    def same(self, a: Any, b: Any) -> None:
        same_state(a, b)

    def decoded(self, records: Iterable[object]) -> dict[bytes, tuple[str, Any]]:
        out: dict[bytes, tuple[str, Any]] = {}
        for rec in records:
            assert isinstance(rec, RedisKey)
            kind = TYPE_NAMES[rec.type]
            if kind == "stream":
                out[rec.key] = (kind, None)
                continue
            if rec.items is not None:
                items = rec.items
                value: Any = b"".join(items) if kind == "string" else items
                if kind in ("hash", "zset"):
                    value = list(zip(items[::2], items[1::2]))
            else:
                _, value = portable.decode(rec.payload or b"")
                value = value if isinstance(value, bytes) else list(value)
            if kind == "zset":
                value = sorted(m for m, _ in value)
            elif kind in ("set", "hash"):
                value = sorted(value)
            out[rec.key] = (kind, value)
        return out

    def snapshotted(self, where: str) -> dict[bytes, tuple[str, Any]]:
        with client(where) as r:
            return {key: _redis_value(r, key) for key in r.scan_iter()}


def _redis_value(r: Any, key: bytes) -> tuple[str, Any]:
    kind = r.type(key).decode()
    if kind == "string":
        return kind, r.get(key)
    if kind == "list":
        return kind, r.lrange(key, 0, -1)
    if kind == "set":
        return kind, sorted(r.smembers(key))
    if kind == "zset":
        return kind, sorted(r.zrange(key, 0, -1))
    if kind == "hash":
        return kind, sorted(r.hgetall(key).items())
    return kind, None


class DbKit(Kit):
    counts: ClassVar[dict[str, str]] = {"tables": "tables", "rows": "rows", "remove": "remove"}

    def source(self, request: pytest.FixtureRequest, tmp: Path) -> str:
        url = str(request.getfixturevalue("pg_url"))
        make_torture(url)
        return url

    def empty(self, request: pytest.FixtureRequest, tmp: Path) -> str:
        return str(request.getfixturevalue("pg_url2"))

    def other(self, request: pytest.FixtureRequest, tmp: Path) -> str:
        url = str(request.getfixturevalue("pg_url2"))
        make_torture(url)
        execute(url, "DELETE FROM serials WHERE id < 10", "INSERT INTO nokey VALUES (99, 'target only')",
                "UPDATE composite SET v = '\"changed\"' WHERE k1 = 1")  # fmt: skip
        return url

    def config(self, where: str) -> Config:
        return Config(db=DbConfig(url=where))

    def options(self, tier: str, target: str | None) -> RestoreOptions:
        # The suite's own archives are trusted, as a signed one would be.
        return RestoreOptions(tier=tier, target=target, undo=False, trust_archive_sql=True)

    def state(self, where: str) -> dict[str, list[tuple[Any, ...]]]:
        return {t: rows_as_text(where, t) for t in DB_TABLES}

    def decoded(self, records: Iterable[object]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rec in records:
            assert isinstance(rec, TableSegment)
            counts[rec.key] = counts.get(rec.key, 0) + sum(1 for _ in rec.rows())
        return counts

    def snapshotted(self, where: str) -> dict[str, int]:
        tables = fetch(where, "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = "
                              "'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')")  # fmt: skip
        return {f"{s}.{t}": int(fetch(where, f'SELECT count(*) FROM "{s}"."{t}"')[0][0]) for s, t in tables}


KITS: dict[str, Kit] = {"files": FilesKit(), "redis": RedisKit(), "db": DbKit()}


def test_every_registered_tier_has_a_kit() -> None:
    assert names() == tuple(t.name for t in TIERS)
    assert sorted(KITS) == sorted(names()), "a registered tier without a Kit in this suite is not under test"
    for tier in TIERS:
        assert get(tier.name) is tier
        assert tier.prefix == f"{tier.name}/"


@pytest.fixture(params=TIERS, ids=lambda t: t.name)
def tier(request: pytest.FixtureRequest) -> Tier:
    assert isinstance(request.param, Tier)
    return request.param


@dataclass
class Snapped:
    archive: Archive
    source: str
    kit: Kit


def _snapshot(tier: Tier, kit: Kit, source: str, path: Path) -> Archive:
    with atomic_output(path) as fh:
        writer = ArchiveWriter(fh, recipients=None)
        summary = tier.snapshot(kit.config(source), writer, jobs=None, progress=no_progress, warn=no_warn)
        assert summary.tier == tier.name
        writer.finish({"tiers": [summary.to_json()]})
    return Archive(path)


@pytest.fixture
def snapped(tier: Tier, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Snapped]:
    kit = KITS[tier.name]
    source = kit.source(request, tmp_path)
    yield Snapped(_snapshot(tier, kit, source, tmp_path / "a.statekit"), source, kit)


def test_round_trip(tier: Tier, snapped: Snapped, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    kit = snapped.kit
    target = kit.empty(request, tmp_path)
    report = tier.restore(snapped.archive, kit.options(tier.name, target), kit.config(target), undo=None,
                          progress=no_progress, warn=no_warn)  # fmt: skip
    assert report.tier == tier.name and not report.problems
    kit.same(kit.state(target), kit.state(snapped.source))


def test_plan_writes_nothing_and_restore_does_what_it_planned(
    tier: Tier, snapped: Snapped, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    kit = snapped.kit
    target = kit.other(request, tmp_path)
    before = kit.state(target)
    opts = kit.options(tier.name, target)
    plan = tier.plan_restore(snapped.archive, opts, kit.config(target))
    assert plan.tier == tier.name and plan.dry_run and not plan.problems
    assert plan.plan, "a plan says what it would do"
    kit.same(kit.state(target), before)
    done = tier.restore(snapped.archive, opts, kit.config(target), undo=None, progress=no_progress, warn=no_warn)
    assert not done.dry_run and not done.problems
    assert kit.counts and sum(plan.counts[p] for p in kit.counts) > 0
    assert {p: done.counts[d] for p, d in kit.counts.items()} == {p: plan.counts[p] for p in kit.counts}
    kit.holds(kit.state(target), kit.state(snapped.source))


def test_undo_archive_puts_the_target_back(
    tier: Tier, snapped: Snapped, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    kit = snapped.kit
    target = kit.other(request, tmp_path)
    before = kit.state(target)
    cfg = kit.config(target)
    undo_dir = tmp_path / "undo"
    undo_dir.mkdir()
    opts = kit.options(tier.name, target)
    opts.undo = True
    report = restore_tier(snapped.archive, opts, cfg, undo_dir=undo_dir, undo_recipients=[], confirm=lambda r: True)
    assert report.undo_archive and report.undo_command and f"--tier {tier.name}" in report.undo_command
    kit.holds(kit.state(target), kit.state(snapped.source))
    undo = Archive(Path(report.undo_archive))
    assert undo.snapshot["restore_target"]["tier"] == tier.name
    # No target named: the undo archive goes back where it was saved from.
    back = restore_tier(undo, kit.options(tier.name, None), cfg, undo_dir=undo_dir, undo_recipients=[],
                        confirm=lambda r: True)  # fmt: skip
    assert back.target_note and back.target_note.endswith("the undo archive was saved from")
    kit.same(kit.state(target), before)


def test_members_decode_to_what_was_snapshotted(tier: Tier, snapped: Snapped) -> None:
    kit = snapped.kit
    got = kit.decoded(tier.records(snapped.archive))
    assert got, "the decoder yields the tier's records"
    assert got == kit.snapshotted(snapped.source)
    # One pass over every member: a decoder ignores members of other tiers.
    assert list(tier.records(_OtherTiersOnly(snapped.archive, tier))) == []


class _OtherTiersOnly:
    """A member source that hands the decoder only members it does not own (renamed out of its prefix)."""

    def __init__(self, archive: Archive, tier: Tier) -> None:
        self.snapshot = archive.snapshot
        self._archive = archive
        self._tier = tier

    def members(self, prefix: str | None = None) -> Iterator[Any]:
        for m in self._archive.members():
            m.name = "other/" + m.name
            yield m


def test_rehearse_passes_on_a_good_archive_and_fails_on_a_damaged_one(
    tier: Tier, snapped: Snapped, tmp_path: Path
) -> None:
    good = rehearse(snapped.archive, tiers=[tier.name], trust_archive_sql=True)
    assert good.ok, [c.to_json() for c in good.checks if not c.ok]
    assert {c.tier for c in good.checks} == {tier.name}
    data = bytearray(snapped.archive.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged = tmp_path / "damaged.statekit"
    damaged.write_bytes(bytes(data))
    try:
        report = rehearse(Archive(damaged), tiers=[tier.name], trust_archive_sql=True)
    except CorruptArchive:
        return
    assert not report.ok
