"""plan_db_restore and restore_db: put archived tables into a target database, all or nothing.

Order of a restore: plan (refuse on any problem), save the undo archive (the affected tables as they are now,
with the snapshot code), then one transaction: create missing tables, empty (replace) the restored ones, load
every segment as the archive streams past, and commit only after the archive pass ended without
CorruptArchive. PostgreSQL→PostgreSQL loads with `COPY … FROM STDIN` straight from the archive stream;
everything else decodes rows and inserts them in large executemany batches. With `--jobs N` (PostgreSQL,
replace), big tables that nothing else refers to are loaded by N more connections into staging tables that
the one transaction swaps in last (statekit.tiers.sql.pgstage).

Restoring a db undo archive also drops the tables the restore it undoes created (statekit.tiers.sql.created):
PostgreSQL first thing in the one transaction; SQLite after the load, before its COMMIT; MySQL/MariaDB after
the load committed, in the same run (their DDL commits at once, so it cannot share the load's transaction).
On PostgreSQL the enums, domains and schemas that restore created follow its tables, in the same transaction.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import time
from collections.abc import Callable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from statekit.config import DbConfig
from statekit.errors import CorruptArchive, Refused, StatekitError, TierUnavailable
from statekit.model import (
    Progress,
    RestoreOptions,
    RestoreReport,
    TierSummary,
    UndoSink,
    Warn,
    announce_total,
    no_progress,
    no_warn,
)
from statekit.tiers.sql import pgbinary, pgload, pgstage, pgtables
from statekit.tiers.sql.created import SCHEMAS, TABLES, TYPES, plain_key, plain_schema, plain_type
from statekit.tiers.sql.dialects import Dialect
from statekit.tiers.sql.dialects.base import driver_sql
from statekit.tiers.sql.dialects.postgresql import qident, qtable
from statekit.tiers.sql.plan import RestoreContext, TablePlan, fill_row_counts, prepare
from statekit.tiers.sql.postgres import prepare_session
from statekit.tiers.sql.schema import SCHEMA_MEMBER, DbSchema, base_kind
from statekit.tiers.sql.segments import CheckedSegment, check_rows, check_segments, manifest_rows, segment_check
from statekit.tiers.sql.snapshot import exact_patterns, snapshot_target
from statekit.tiers.sql.values import iter_copy_rows, iter_jsonl, pg_text_parser, typed_rows

if TYPE_CHECKING:
    import sqlalchemy as sa

BATCH_ROWS = 5000
# restore_tier plans (the plan a person is shown), confirms, then restores. A restore of the same archive with the
# same options that follows its plan within this many seconds (no prompt: --yes) uses that plan; after a longer
# pause (a person answering the prompt) the target is read again, and a change since is refused or planned for.
REPLAN_AFTER_S = 1.0
_last_plan: list[tuple[Any, RestoreOptions, str | None, float, RestoreContext]] = []
_CHECK_BLOCK = 1 << 20
_MARK = "\0"  # a value's place in an INSERT until the driver's mark goes in (no name holds a NUL)


def plan_db_restore(archive: Any, opts: RestoreOptions, cfg: DbConfig, *, archive_counts: bool = True) -> RestoreReport:
    """Dry run: read the archive and the target, write nothing. `plan` holds one dict per table (table,
    rows in the archive, rows in the target that would be removed, mode, action); `problems` lists every
    incompatibility column by column and every non-portable column. With `opts.dry_run` every data segment
    it would load is read and checked here; a restore (no dry run) checks each one as it loads it, inside its
    transaction. The archive's row counts come from its manifest; without `archive_counts` they are left out
    (None)."""
    ctx = prepare(archive, opts, cfg.url, with_counts=False)
    _mark_staged(ctx, opts.jobs)
    _last_plan[:] = [] if opts.dry_run else [(archive, copy.deepcopy(opts), cfg.url, time.monotonic(), ctx)]
    if not ctx.problems and opts.dry_run:
        # every segment it would load (a restore checks them as it loads); the pass verifies the whole archive
        check_segments(archive, ctx.by_member())
    if archive_counts and (opts.dry_run or archive.verified):  # a restore does not read the archive for them
        fill_row_counts(ctx, archive)
    return _report(ctx, dry_run=True)


def _planned(archive: Any, opts: RestoreOptions, url: str | None) -> RestoreContext | None:
    """The plan plan_db_restore just made for this restore (see REPLAN_AFTER_S), taken once; else None."""
    if not _last_plan:
        return None
    planned_archive, planned_opts, planned_url, at, ctx = _last_plan.pop()
    fresh = time.monotonic() - at < REPLAN_AFTER_S
    same = planned_archive is archive and planned_opts == opts and planned_url == url  # never a dry run's
    return ctx if fresh and same else None


def _mark_staged(ctx: RestoreContext, jobs: int) -> None:
    """--jobs N: say in the plan which tables load through staging tables (ctx.stageable, found by the plan;
    the restore asks again before it creates them)."""
    for p in ctx.stageable:
        steps: list[str] = []
        for step in p.sql:
            if step == "LOCK TABLE":
                steps.append("LOCK TABLE (EXCLUSIVE: still readable)")
            elif step == "TRUNCATE":
                continue
            elif step.startswith("COPY"):
                big = f"{pgstage.STAGE_FROM_BYTES >> 20} MiB"
                steps += [
                    f"if its first segment is {big} or more: CREATE TABLE (LIKE the table: a staging table), "
                    f"{step} over {jobs} connections into it, ADD CONSTRAINT and CREATE INDEX (as the target has "
                    "them), DROP TABLE and RENAME (the staging table takes its place); else TRUNCATE, " + step,
                ]
            else:
                steps.append(step)
        p.sql = steps


def _report(ctx: RestoreContext, *, dry_run: bool) -> RestoreReport:
    report = RestoreReport(tier="db", dry_run=dry_run)
    report.plan = [p.to_json(ctx.mode) for p in ctx.plans] + [ctx.drop_json(t) for t in ctx.drops]
    report.plan += [ctx.drop_type_json(*t) for t in ctx.drop_types]
    report.plan += [ctx.drop_schema_json(name) for name in ctx.drop_schemas] + ctx.kept
    report.problems = list(ctx.problems)
    report.counts = {
        "tables": len(ctx.plans),
        "remove": sum(p.target_rows for p in ctx.plans) if ctx.mode == "replace" else 0,
    }
    if ctx.drops or ctx.drop_types or ctx.drop_schemas:
        report.counts["drop"] = len(ctx.drops) + len(ctx.drop_types) + len(ctx.drop_schemas)
        report.counts["remove"] += sum(ctx.drop_rows.values())
    if all(p.archive_rows is not None for p in ctx.plans):
        report.counts["rows"] = sum(p.archive_rows or 0 for p in ctx.plans)
    return report


def restore_db(
    archive: Any,
    opts: RestoreOptions,
    cfg: DbConfig,
    *,
    undo: UndoSink | None,
    progress: Progress = no_progress,
    warn: Warn = no_warn,
) -> RestoreReport:
    """Restore the archived tables (opts.tables globs, default all) into opts.target (else cfg.url).

    Refused when the plan finds a problem; otherwise the undo archive is written and sealed first (unless
    `undo` is None), then one transaction loads everything. On any error the target is left as it was."""
    ctx = _planned(archive, opts, cfg.url)
    if ctx is None:
        ctx = prepare(archive, opts, cfg.url, with_counts=opts.dry_run)
        _mark_staged(ctx, opts.jobs)
    if ctx.problems:
        more = f" (and {len(ctx.problems) - 1} more)" if len(ctx.problems) > 1 else ""
        raise Refused(f"db restore into {ctx.target.shown}: {ctx.problems[0]}{more}")
    if opts.dry_run:
        return _report(ctx, dry_run=True)
    report = _report(ctx, dry_run=False)
    native = ctx.same_dialect and ctx.target.dialect.native_copy
    if opts.jobs > 1 and not native:
        what = "of a PostgreSQL archive into PostgreSQL" if ctx.target.dialect.native_copy else "into PostgreSQL"
        warn(f"--jobs {opts.jobs} applies to restores {what} only; this one loads over one connection")
    if undo is not None:
        report.undo_archive = _save_undo(ctx, undo)
    announce_total(progress, "db", sum(p.archive_rows or 0 for p in ctx.plans))
    started = time.time()
    try:
        loaded = _restore_pg(ctx, archive, progress, opts.jobs) if native else _restore_generic(ctx, archive, progress)
    except StatekitError as exc:
        exc.target_unchanged = ctx.rolled_back
        raise
    except Exception as exc:
        err = ctx.target.fail("restore", exc)
        err.target_unchanged = ctx.rolled_back
        raise err from None
    report.counts["rows"] = sum(loaded.values())
    report.counts["duration_ms"] = int((time.time() - started) * 1000)
    for line in report.plan:
        if "table" in line:  # the lines of what an undo drops or keeps hold no rows
            line["rows"] = loaded.get(line["table"], 0) if line["action"] != "drop" else None
    return report


def _save_undo(ctx: RestoreContext, undo: UndoSink) -> str:
    # The tables as they are now, written by the snapshot code: restoring this archive (mode replace)
    # puts them back. Tables the restore creates did not exist before and are not in it; tables it drops
    # (restoring an undo archive) are, so that they come back too.
    existing = [p.existing for p in ctx.plans if p.existing is not None] + ctx.drops
    keys = [t.key for t in existing]
    schemas = sorted({t.schema for t in existing if t.schema})
    if not ctx.target.dialect.named_schemas:
        schemas = []
    if keys:
        summary = snapshot_target(ctx.target, undo.sink, include=exact_patterns(keys), exclude=[], schemas=schemas)
    else:
        # Nothing existed yet: an empty db tier, so the undo archive still restores (to no change).
        empty = DbSchema(ctx.target.dialect.name, "", ctx.default_schema, [])
        undo.sink.add(SCHEMA_MEMBER, empty.to_json_bytes(), meta={"tables": 0})
        summary = TierSummary(tier="db", started_at=time.time(), finished_at=time.time())
        summary.details = {"source": ctx.target.shown, "dialect": ctx.target.dialect.name, "tables": {}}
    created = [p.target_key for p in ctx.plans if p.existing is None]
    _list_created(summary.details, TABLES, created, lambda k: plain_key(k, ctx.target.dialect))
    # PostgreSQL: the enums, domains and schemas the load creates first (none of them there when planned); an
    # archived type without a schema is created in the target's default one
    types = [f"{schema or ctx.default_schema or ''}.{name}" for schema, name in ctx.ddl.created_types]
    _list_created(summary.details, TYPES, types, plain_type)
    _list_created(summary.details, SCHEMAS, ctx.ddl.created_schemas, plain_schema)
    return undo.seal(summary)


def _list_created(details: dict[str, Any], key: str, created: list[str], plain: Callable[[str], bool]) -> None:
    """List what the restore creates under `key` of the undo archive's details: restoring the undo archive drops
    these again (statekit.tiers.sql.created reads them back strictly). Names an undo archive may not list for
    dropping go under `key`_kept: kept by the undo, listed so a person can drop them."""
    listed = [k for k in created if plain(k)]
    if listed:
        details[key] = listed
    if len(listed) < len(created):
        details[f"{key}_kept"] = [k for k in created if k not in listed]


def _drop_sql(ctx: RestoreContext) -> list[str]:
    """The statements that drop what the restore of an undo archive drops: one DROP TABLE for every table
    (RESTRICT: a table some other table still references is never dropped; the statement fails and the
    transaction with it), then (PostgreSQL) one DROP TYPE for the enums and domains, after the tables whose
    columns use them, and one DROP SCHEMA, after everything in them. Without named schemas, only names in the
    URL's database / file: never another one."""
    out: list[str] = []
    if ctx.drops:
        out.append(f"DROP TABLE {', '.join(ctx.target.dialect.qualified(t.schema, t.name) for t in ctx.drops)}")
    if ctx.drop_types:
        # one statement: PostgreSQL orders a domain over an enum (or over another domain) itself
        out.append(f"DROP TYPE {', '.join(qtable(schema, name) for schema, name, _ in ctx.drop_types)}")
    if ctx.drop_schemas:
        out.append(f"DROP SCHEMA {', '.join(qident(name) for name in ctx.drop_schemas)}")
    return out


def _segments(
    ctx: RestoreContext, archive: Any, *, server_counts: bool = False
) -> Iterator[tuple[TablePlan, str, Any]]:
    """(plan, encoding, member) for every data segment of a selected table, in archive order, each member's
    stream checked as it is read (segments.CheckedSegment: a bad segment raises before its bytes go on, a
    segment whose rows differ from MANIFEST.json's at its end). The pass ends with the manifest check, so a
    caller commits only after this iterator is exhausted. The pass must meet the db/schema.json the plan was
    made from: the file may have been replaced since. With `server_counts`, the rows of binary COPY segments
    are left to the PostgreSQL COPY that loads them (pgload.check_server_counts)."""
    by_member = ctx.by_member()
    # The manifest's row counts: known now if the archive was verified before, else checked at the pass's end
    said = manifest_rows(archive.manifest) if archive.verified else None
    found: dict[str, int] = {}
    for m in archive.members("db/"):
        if m.name == SCHEMA_MEMBER:
            if m.size > 256 << 20 or DbSchema.from_json_bytes(m.read_all()) != ctx.desc:
                raise CorruptArchive(f"{SCHEMA_MEMBER} differs from the one the restore was planned with")
            continue
        prefix, _, ext = m.name.rpartition(".")
        prefix = prefix.rpartition(".")[0]
        plan = by_member.get(prefix)
        if plan is None:
            continue
        check = segment_check(m.name, ext, len(plan.src.data_columns), server_counts=server_counts)
        expected = said.get(m.name) if said is not None else None
        checked = io.BufferedReader(CheckedSegment(m.stream, check, expected, found), _CHECK_BLOCK)
        yield plan, ext, dataclasses.replace(m, stream=checked)
        while checked.read(_CHECK_BLOCK):  # whatever the consumer left: checked too
            pass
    if said is None:
        check_rows(archive.manifest, found)  # the pass just ended: its manifest is verified, and known


# -- PostgreSQL into PostgreSQL ---------------------------------------------------------------------------


def _restore_pg(ctx: RestoreContext, archive: Any, progress: Progress, jobs: int = 1) -> dict[str, int]:
    # Rows are counted and estimated mid-COPY only for a progress line (pgload.copy_segments).
    shown = progress is not no_progress
    stager = pgstage.Stager(ctx.target, jobs, estimate=shown) if jobs > 1 and ctx.mode == "replace" else None
    conn = None
    loaded: dict[str, int] = {p.src.key: 0 for p in ctx.plans}
    committing = False
    try:
        existing = [p for p in ctx.plans if p.existing is not None]
        if stager is not None:  # before the restore's transaction locks the tables
            stager.open(existing, [qtable(p.schema, p.src.name) for p in existing])
        staged = stager.by_key if stager is not None else {}  # filled as the load pass meets the tables
        candidates = {t for _, t, _ in stager.candidates.values()} if stager is not None else set()
        conn = ctx.target.psycopg_connect("statekit-restore")
        prepare_session(conn)
        with conn.cursor() as cur:
            # Restoring an undo archive: the tables its restore created go first, in this one transaction
            # (before any foreign key of theirs is deferred or a table they reference is emptied), then the
            # enums, domains and schemas it created.
            for stmt in _drop_sql(ctx):
                cur.execute(stmt)
            # the DDL was worked out (and every archived type name checked) by the plan
            before, fks = ctx.ddl.before(), ctx.ddl.after()
            for stmt in before:
                cur.execute(stmt)
            changed = pgtables.defer_foreign_keys(cur, ctx)
            cur.execute("SET CONSTRAINTS ALL DEFERRED")
            occupied: set[str] = set()  # candidates for staging that hold rows
            if ctx.mode == "replace":
                emptied = [qtable(p.schema, p.src.name) for p in existing]
                truncated = pgtables.empty_tables(cur, [t for t in emptied if t not in candidates])
                if candidates:
                    # Nothing writes to them from now on, readers still read (a staged table is swapped in last,
                    # under ACCESS EXCLUSIVE); one left to this connection is truncated when its load begins.
                    order = sorted(candidates)
                    cur.execute(f"LOCK TABLE {', '.join(order)} IN EXCLUSIVE MODE")
                    occupied = pgtables.with_rows(cur, order)
            else:
                truncated = set()
            merge_tmp: dict[str, str] = {}
            rebuild = pgload.IndexRebuild()
            started: set[str] = set()  # tables a COPY has begun loading
            frozen: set[str] = set()  # tables loaded with COPY FREEZE
            pgload.raise_maintenance_memory(cur)
            wires = pgload.TargetWires()  # every binary table's column types, in one statement
            wires.prefetch(
                cur,
                {
                    qtable(p.schema, p.src.name): [c.name for c in p.src.data_columns]
                    for p in ctx.plans
                    if p.src.encoding == "pgbinary"
                },
            )

            def destination(plan: TablePlan, first_size: int) -> str:
                if plan.src.key in staged:
                    return staged[plan.src.key].stage
                table = qtable(plan.schema, plan.src.name)
                if ctx.mode == "merge" and plan.existing is not None:
                    if plan.src.key not in merge_tmp:
                        merge_tmp[plan.src.key] = pgtables.merge_table(cur, plan, len(merge_tmp))
                    return merge_tmp[plan.src.key]
                first = table not in started
                started.add(table)
                if first and table in occupied:  # a candidate for staging left to this connection
                    cur.execute(f"TRUNCATE TABLE {table}")
                    truncated.add(table)
                big = ctx.mode == "replace" and plan.existing is not None and first_size >= pgload.REBUILD_FROM_BYTES
                # emptied above: its keys and indexes are built after the data, and it may load frozen
                if big and rebuild.drop(cur, table) and first and pgtables.prepare_freeze(cur, table, truncated):
                    frozen.add(table)
                return table

            def finished(plan: TablePlan, dest: str) -> None:
                if ctx.mode == "merge" and dest != qtable(plan.schema, plan.src.name):
                    pgtables.merge_into(cur, plan, dest)

            own: list[Any] = [{}, 0]  # what this connection has loaded: rows per table, bytes

            def tick(done: dict[str, int], nbytes: int) -> None:
                if not shown:  # a tick per table and segment, each merging every table's count: only if shown
                    return
                own[:] = [dict(done), nbytes]
                if stager is not None:  # the workers' part too
                    more, more_bytes = stager.progress()
                    done = {k: done.get(k, 0) + more.get(k, 0) for k in done.keys() | more.keys()}
                    nbytes += more_bytes
                progress("db", sum(done.values()), nbytes)

            segments = _segments(ctx, archive, server_counts=True)
            if stager is not None:
                segments = stager.route(segments, wires, on_segment=lambda: tick(*own))
            rows, counted = pgload.copy_segments(
                cur,
                segments,
                destination=destination,
                finished=finished,
                tick=tick,
                wires=wires,
                frozen=frozen,
                stop=stager.aborted.set if stager is not None else None,
                estimate=shown,
            )
            if stager is not None:
                more, more_counted = stager.finish()  # the workers committed into the staging tables
                for key, n in more.items():
                    rows[key] = rows.get(key, 0) + n
                counted += more_counted
                progress("db", sum(rows.values()), own[1] + stager.progress()[1])  # the exact count, workers' too
                # candidates with no segment in the archive: emptied, as replace empties every table
                unloaded = sorted(occupied - started - {s.table for s in staged.values()})
                if unloaded:
                    cur.execute(f"TRUNCATE TABLE {', '.join(unloaded)}")
            pgload.check_server_counts(archive.manifest, counted)  # the pass ended: its manifest is verified
            loaded.update(rows)
            rebuild.rebuild(cur)
            # The archive pass is complete and verified: finish constraints, counters, then commit.
            for stmt in fks:
                cur.execute(stmt)
            cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for stmt in changed:
                cur.execute(stmt)
            if stager is not None:
                stager.swap(cur)
            pgtables.set_sequences(cur, ctx)
        committing = True
        conn.commit()
    except BaseException:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.rollback()
        # Before COMMIT was sent the transaction cannot commit, whether the rollback above reached the server or
        # the connection was already gone (the server then aborts it): the target is as it was. The staging
        # tables of --jobs were never the target's; the stager drops them, or the next restore does.
        ctx.rolled_back = not committing
        raise
    finally:
        if conn is not None:
            conn.close()
        if stager is not None:
            stager.close()  # the staging tables still there (none after a commit) are dropped
    return loaded


# -- every other combination ------------------------------------------------------------------------------


def _restore_generic(ctx: RestoreContext, archive: Any, progress: Progress) -> dict[str, int]:
    target = ctx.target
    dialect = target.dialect
    loaded: dict[str, int] = {p.src.key: 0 for p in ctx.plans}
    engine = target.engine()
    created: list[str] = []
    committing = False
    try:
        conn = engine.connect()
    except Exception as exc:
        engine.dispose()
        raise TierUnavailable(f"db {target.shown}: cannot connect: {target.scrub(str(exc))}") from None

    def qname(p: TablePlan, *, final: bool = False) -> str:
        return dialect.qualified(p.schema, p.src.name if final or p.staging is None else p.staging)

    def run(text: str) -> None:
        conn.exec_driver_sql(driver_sql(conn, text))

    try:
        dialect.begin_load(conn)
        drops = _drop_sql(ctx)
        if drops and dialect.drop_at == "first":
            for stmt in drops:
                run(stmt)  # in the one transaction, as in _restore_pg
        for p in ctx.plans:
            table_ddl = ctx.ddl.tables.get(p.src.key)
            if table_ddl is None:
                continue
            for stmt in table_ddl.before:
                conn.exec_driver_sql(stmt)
                if qname(p) not in created:
                    created.append(qname(p))
        if not dialect.transactional_ddl:
            # DDL commits at once: new tables exist under staging names until the data is in, and are
            # dropped again on failure, so no half-restored table ever carries its real name
            conn.commit()
        if dialect.defers_constraints:
            conn.exec_driver_sql("SET CONSTRAINTS ALL DEFERRED")
        if ctx.mode == "replace":
            for p in reversed(ctx.plans):
                if p.existing is not None:
                    run(f"DELETE FROM {qname(p)}")
        nbytes = 0
        for plan, ext, member in _segments(ctx, archive):
            cols = plan.src.data_columns
            rows: Iterator[list[Any]]
            if ext == "copy":
                rows = iter_copy_rows(member.stream, [pg_text_parser(c.type) for c in cols])
            elif ext == "pgbinary":
                fields = pgbinary.iter_text_rows(member.stream, plan.src.wire, member.name)
                rows = typed_rows(fields, [pg_text_parser(c.type) for c in cols])
            else:
                rows = iter_jsonl(member.stream, len(cols))
            fit = dialect.row_adapter([base_kind(c.type)["kind"] for c in cols])
            sql = _insert_sql(conn, dialect, plan, qname(plan), ctx.mode)
            while batch := [fit(r) for r in islice(rows, BATCH_ROWS)]:
                conn.exec_driver_sql(sql, batch)
                loaded[plan.src.key] += len(batch)
            nbytes += member.size
            progress("db", sum(loaded.values()), nbytes)
        if dialect.defers_constraints:
            conn.exec_driver_sql("SET CONSTRAINTS ALL IMMEDIATE")
        if dialect.sets_sequences:
            with conn.connection.driver_connection.cursor() as cur:  # type: ignore[union-attr]
                pgtables.set_sequences(cur, ctx)
        staged = [p for p in ctx.plans if p.staging is not None]
        committing = True
        if drops and dialect.drop_at == "before_commit":
            for stmt in drops:
                run(stmt)  # after the load, still inside the one transaction
        if staged:
            # RENAME TABLE commits the data first (implicitly), then renames every staged table in one step
            pairs = ", ".join(f"{qname(p)} TO {qname(p, final=True)}" for p in staged)
            try:
                run(f"RENAME TABLE {pairs}")
            except Exception:
                # Refused before its implicit COMMIT (a name it does not take), the load's transaction is still
                # open: rolled back below, as are the new tables (the plan checks their names, so this is rare).
                # After it, the existing tables hold the archive's rows; the new ones, unrenamed, are dropped.
                committing = any(p.existing is not None for p in ctx.plans) and not _in_transaction(conn)
                raise
            created.clear()
            conn.commit()
        else:
            dialect.commit(conn)
        if drops and dialect.drop_at == "after_commit":
            # MySQL/MariaDB commit DDL at once: the drop can share no transaction with the load. It runs after the
            # load committed, in the same run; should it fail, the data is restored and the error (naming the
            # undo archive of this run) says so.
            try:
                for stmt in drops:
                    run(stmt)
                conn.commit()
            except Exception as exc:
                raise target.fail("dropping the created tables (the data is restored)", exc) from None
    except BaseException:
        try:
            dialect.rollback(conn)
            if not dialect.transactional_ddl:
                for name in created:
                    run(f"DROP TABLE IF EXISTS {name}")
                conn.commit()
            ctx.rolled_back = not committing
        except Exception:
            # a server with transactional DDL aborts an uncommitted transaction whatever became of the connection
            ctx.rolled_back = dialect.transactional_ddl and not committing
        raise
    finally:
        conn.close()
        engine.dispose()
    return loaded


def _in_transaction(conn: sa.Connection) -> bool:
    """MariaDB: whether the session's transaction is still open. False when that cannot be told (MySQL has no
    @@in_transaction; the status flag its results carry is set again by any statement that asks)."""
    try:
        return bool(int(conn.exec_driver_sql("SELECT @@in_transaction").scalar() or 0))
    except Exception:
        return False


def _insert_sql(conn: sa.Connection, dialect: Dialect, plan: TablePlan, qname: str, mode: str) -> str:
    q = dialect.quote
    cols = [c.name for c in plan.src.data_columns]
    head = f"INSERT INTO {qname} ({', '.join(q(c) for c in cols)}) " + dialect.overriding_identity(plan.src)
    sql = head + f"VALUES ({', '.join([_MARK] * len(cols))})"
    if mode == "merge":
        pk = plan.existing.primary_key if plan.existing is not None else plan.src.primary_key
        sql = dialect.upsert(sql, pk, [c for c in cols if c not in pk])
    return driver_sql(conn, sql).replace(_MARK, "?" if conn.dialect.paramstyle == "qmark" else "%s")
