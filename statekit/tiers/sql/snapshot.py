"""snapshot_db: every selected table from one consistent database snapshot into archive members.

Members written (docs/FORMAT.md ("db members")): `db/schema.json` first (all tables in foreign-key order, types, enums,
domains, sequences, dialect, server version), then per table data segments
`<member>.<NNNNNN>.pgbinary` / `.copy` (PostgreSQL binary / text COPY) or `.jsonl` (portable rows), where `<member>`
is the table's percent-encoded `db/<schema>.<table>` prefix recorded in schema.json.
"""

from __future__ import annotations

import glob
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from statekit.config import DbConfig
from statekit.errors import StatekitError
from statekit.model import MemberSink, Progress, TierSummary, Warn, announce_total, no_progress, no_warn, wants_totals
from statekit.tiers.sql.connect import DbTarget
from statekit.tiers.sql.schema import SCHEMA_MEMBER, DbSchema, TableDesc


def snapshot_db(
    cfg: DbConfig,
    sink: MemberSink,
    *,
    jobs: int | None = None,
    progress: Progress = no_progress,
    warn: Warn = no_warn,
) -> TierSummary:
    """Archive the tables selected by cfg (include/exclude globs, schemas) from one consistent snapshot.

    PostgreSQL streams COPY (binary where every column's type has a wire token, else text) with `jobs`
    connections sharing one exported snapshot; MySQL/MariaDB and SQLite stream rows through a server-side
    cursor. Raises TierUnavailable when the database cannot be reached and TierError when it fails mid-way."""
    target = DbTarget(cfg.url)
    return snapshot_target(
        target,
        sink,
        include=list(cfg.include),
        exclude=list(cfg.exclude),
        schemas=list(cfg.schemas),
        jobs=jobs if jobs is not None else cfg.jobs,
        copy_format=cfg.copy_format,
        progress=progress,
        warn=warn,
    )


def exact_patterns(keys: list[str]) -> list[str]:
    """Glob patterns that match exactly these table keys (identifiers may hold * ? [)."""
    return [glob.escape(k) for k in keys]


def _pg_row_estimate(target: DbTarget, desc: DbSchema) -> int:
    """The planner's row estimate (pg_class.reltuples) of the selected tables, for a progress ETA only. It
    runs on a connection of its own so that it can never disturb the snapshot's transaction."""
    import psycopg

    names = [target.dialect.qualified(t.schema, t.name) for t in desc.tables]
    if not names:
        return 0
    try:
        with target.psycopg_connect("statekit-snapshot") as pg:
            row = pg.execute(
                "SELECT COALESCE(sum(GREATEST(reltuples, 0)), 0) FROM pg_class "
                "WHERE oid = ANY(CAST(CAST(%s AS text[]) AS regclass[]))",
                [names],
            ).fetchone()
    except (StatekitError, psycopg.Error):
        return 0
    return int(row[0] or 0) if row else 0


def snapshot_target(
    target: DbTarget,
    sink: MemberSink,
    *,
    include: list[str],
    exclude: list[str],
    schemas: list[str],
    jobs: int = 1,
    copy_format: str = "binary",
    progress: Progress = no_progress,
    warn: Warn = no_warn,
) -> TierSummary:
    """snapshot_db on an already parsed target (the restore uses it for its undo archive)."""
    from statekit.errors import ConfigError

    if jobs < 1:
        raise ConfigError("db jobs must be at least 1")
    if copy_format not in ("binary", "text"):
        raise ConfigError(f"db copy_format must be 'binary' or 'text', not {copy_format[:40]!r}")
    summary = TierSummary(tier="db", started_at=time.time())
    dialect = target.dialect
    done = {"rows": 0, "bytes": 0}
    lock = threading.Lock()  # segments arrive from several worker threads

    def add(table: TableDesc, seq: int, data: bytes | bytearray, rows: int) -> None:
        sink.add(f"{table.member}.{seq:06d}.{table.encoding}", data, meta={"rows": rows, "table": table.key})
        with lock:
            done["rows"] += rows
            done["bytes"] += len(data)
            progress("db", done["rows"], done["bytes"])

    def write_schema(desc: DbSchema) -> None:
        # First member of the tier: a restore knows every table's columns before it meets any data segment.
        sink.add(SCHEMA_MEMBER, desc.to_json_bytes(), meta={"tables": len(desc.tables)})
        if dialect.native_copy and wants_totals(progress):
            announce_total(progress, "db", _pg_row_estimate(target, desc))

    try:
        if dialect.native_copy:
            desc, counts = _snapshot_pg(
                target, include, exclude, schemas, jobs, add, write_schema, binary=copy_format == "binary"
            )
        else:
            desc, counts = _snapshot_generic(target, include, exclude, schemas, add, write_schema)
    except StatekitError:
        raise
    except Exception as exc:
        raise target.fail("snapshot", exc) from None
    summary.finished_at = time.time()
    summary.counts = {"tables": len(desc.tables), "rows": sum(counts.values())}
    summary.details = {
        "source": target.shown,
        "dialect": dialect.name,
        "server_version": desc.server_version,
        "isolation": desc.isolation,
        "jobs": jobs if dialect.native_copy else 1,
        "encoding": "+".join(sorted({t.encoding for t in desc.tables})) or ("copy" if dialect.native_copy else "jsonl"),
        "tables": {t.key: counts.get(t.key, 0) for t in desc.tables},
    }
    if not desc.tables:
        msg = "db: no table matched the include/exclude patterns"
        summary.warnings.append(msg)
        warn(msg)
    return summary


def _snapshot_pg(
    target: DbTarget,
    include: list[str],
    exclude: list[str],
    schemas: list[str],
    jobs: int,
    add: Any,
    write_schema: Callable[[DbSchema], None],
    *,
    binary: bool,
) -> tuple[DbSchema, dict[str, int]]:
    """PostgreSQL through psycopg alone: the catalogue is read by pgcatalog, so SQLAlchemy is never loaded."""
    import psycopg

    from statekit.tiers.sql import pgcatalog
    from statekit.tiers.sql.postgres import copy_out_parallel, fold_partitions, prepare_session

    pg = target.psycopg_connect("statekit-snapshot")
    try:
        pg.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        pg.read_only = True
        # the first statement opens the transaction, and with it the snapshot every table is read in
        version = _scalar(pg, "SELECT current_setting('server_version')")
        prepare_session(pg)
        snapshot_id = _scalar(pg, "SELECT pg_export_snapshot()") if jobs > 1 else None
        tables, enums, domains, default_schema = pgcatalog.reflect(pg, schemas, include, exclude)
        tables = fold_partitions(pg, tables)
        if not binary:
            for t in tables:
                t.encoding, t.wire = "copy", []
        desc = DbSchema(
            dialect=target.dialect.name,
            server_version=version,
            default_schema=default_schema,
            tables=tables,
            enums=enums,
            domains=domains,
            isolation="REPEATABLE READ" + (" (exported snapshot shared by workers)" if jobs > 1 else ""),
        )
        # Largest tables first so parallel workers finish together; one worker keeps foreign-key order.
        work = list(tables)
        if jobs > 1 and work:
            sizes = {
                (str(s), str(n)): int(p)
                for s, n, p in pg.execute(
                    "SELECT n.nspname, c.relname, c.relpages FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')"
                )
            }
            work.sort(key=lambda t: -sizes.get((t.schema or "", t.name), 0))
        write_schema(desc)
        counts = copy_out_parallel(target, pg, work, add, jobs, snapshot_id)
        pg.rollback()
    finally:
        pg.close()
    return desc, counts


def _scalar(pg: Any, sql: str) -> str:
    row = pg.execute(sql).fetchone()
    return str(row[0]) if row else ""


def _snapshot_generic(
    target: DbTarget,
    include: list[str],
    exclude: list[str],
    schemas: list[str],
    add: Any,
    write_schema: Callable[[DbSchema], None],
) -> tuple[DbSchema, dict[str, int]]:
    import sqlalchemy as sa

    from statekit.tiers.sql.generic import copy_out_rows

    dialect = target.dialect
    with target.connection() as conn, warnings.catch_warnings():
        # SQLAlchemy warns about types it does not know; they are archived as "other".
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        isolation = dialect.begin_snapshot(conn)
        try:
            version = dialect.server_version(conn)
            tables, enums, domains, default_schema = dialect.reflect(conn, schemas, include, exclude)
            desc = DbSchema(
                dialect=dialect.name,
                server_version=version,
                default_schema=default_schema,
                tables=tables,
                enums=enums,
                domains=domains,
                isolation=isolation,
            )
            write_schema(desc)
            counts = copy_out_rows(conn, tables, add, lambda t: t.schema)
        finally:
            dialect.end_snapshot(conn)
    return desc, counts
