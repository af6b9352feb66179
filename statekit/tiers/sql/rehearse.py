"""The db tier's rehearsal: the archive restored into an embedded PostgreSQL (run as the sandbox account,
reached as a login role without superuser); per table the row count against the manifest, and a content
hash: the restored database is snapshotted again and each table's rows are hashed as a multiset (order of
rows does not matter) on both sides. An archive that is not trusted gets no statement of its own applied."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from statekit.config import DbConfig
from statekit.model import RestoreOptions, Warn, no_warn
from statekit.tiers.base import decode
from statekit.tiers.rehearsal import Check, CollectingSink, MultisetHash, RehearsalReport
from statekit.tiers.sql.members import DbDecoder
from statekit.tiers.sql.pgbinary import copy_text_line, iter_text_rows
from statekit.tiers.sql.schema import SCHEMA_MEMBER, DbSchema

if TYPE_CHECKING:
    from statekit.archive.reader import Archive


def _line_hash(hashes: dict[str, MultisetHash], key: str, lines: list[bytes]) -> None:
    h = hashes.setdefault(key, MultisetHash())
    for line in lines:
        h.add(line)


def _family(name: str) -> str:
    # Binary COPY segments are compared as the COPY text lines they decode to.
    ext = name.rsplit(".", 1)[-1]
    return "copy" if ext == "pgbinary" else ext


def rehearse_db(archive: Archive, report: RehearsalReport, *, trusted: bool = False, warn: Warn = no_warn) -> None:
    """Restore the db tier into a throwaway PostgreSQL (stopped afterwards) and compare."""
    from statekit.servers import EmbeddedPostgres
    from statekit.tiers.sql.restore import restore_db
    from statekit.tiers.sql.snapshot import snapshot_db

    rows: dict[str, int] = defaultdict(int)
    enc: dict[str, str] = {}
    for m in archive.manifest.get("members", []):
        meta = m.get("meta") or {}
        if m["name"].startswith("db/") and "table" in meta:
            rows[meta["table"]] += int(meta.get("rows", 0))
            enc[meta["table"]] = _family(m["name"])
    archived: dict[str, MultisetHash] = {}
    for segment in decode(archive, DbDecoder()):
        _line_hash(archived, segment.key, segment.lines())
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
        restored: dict[str, MultisetHash] = {}

        # A table of another dialect's archive lands in the default schema: compare it under its archived key.
        placed = {p["target"]: p["table"] for p in done.plan}

        wire: dict[str, list[str]] = {}

        def on_member(name: str, body: bytes, meta: dict[str, Any]) -> None:
            if name == SCHEMA_MEMBER:
                wire.update((t.member, t.wire) for t in DbSchema.from_json_bytes(body).tables)
            if "table" in meta:
                key = placed.get(meta["table"], meta["table"])
                got_rows[key] += int(meta.get("rows", 0))
                got_enc[key] = _family(name)
                if name.endswith(".pgbinary"):
                    tokens = wire[name.rpartition(".")[0].rpartition(".")[0]]
                    lines = [copy_text_line(r)[:-1] for r in iter_text_rows(io.BytesIO(body), tokens, name)]
                else:
                    lines = body.splitlines()
                _line_hash(restored, key, lines)

        snapshot_db(DbConfig(url=url), CollectingSink(on_member), warn=warn)
    finally:
        server.stop()
    for table in sorted(set(rows) | set(got_rows)):
        report.checks.append(Check("db", table, "rows", rows.get(table), got_rows.get(table)))
        if enc.get(table) != got_enc.get(table):
            report.notes.append(f"db {table}: archived as {enc.get(table)}, rehearsal reads {got_enc.get(table)}; "
                                "content hash not comparable, row count only")  # fmt: skip
            continue
        a = archived.get(table, MultisetHash()).hexdigest()
        b = restored.get(table, MultisetHash()).hexdigest()
        report.checks.append(Check("db", table, "content", a, b))
