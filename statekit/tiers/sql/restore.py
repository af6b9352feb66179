"""plan_db_restore and restore_db: put archived tables into a target database, all or nothing.

Order of a restore: plan (refuse on any problem), save the undo archive (the affected tables as they are now,
with the snapshot code), then one transaction: create missing tables, empty (replace) the restored ones, load
every segment as the archive streams past, and commit only after the archive pass ended without
CorruptArchive. PostgreSQL→PostgreSQL loads with `COPY … FROM STDIN` straight from the archive stream;
everything else decodes rows and inserts them in large executemany batches.

Restoring a db undo archive also drops the tables the restore it undoes created (statekit.tiers.sql.created):
PostgreSQL first thing in the one transaction; SQLite after the load, before its COMMIT; MySQL/MariaDB after
the load committed, in the same run (their DDL commits at once, so it cannot share the load's transaction).
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterator
from itertools import islice
from typing import Any

import sqlalchemy as sa

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
from statekit.tiers.sql import pgbinary, pgload
from statekit.tiers.sql.created import plain_key
from statekit.tiers.sql.dialects import Dialect
from statekit.tiers.sql.dialects.base import driver_sql, union_selects
from statekit.tiers.sql.dialects.postgresql import copy_columns, qident, qtable
from statekit.tiers.sql.plan import RestoreContext, TablePlan, fill_row_counts, prepare
from statekit.tiers.sql.postgres import SESSION_SETTINGS
from statekit.tiers.sql.schema import SCHEMA_MEMBER, DbSchema, base_kind
from statekit.tiers.sql.segments import CheckedSegment, check_rows, check_segments, manifest_rows, segment_check
from statekit.tiers.sql.snapshot import exact_patterns, snapshot_target
from statekit.tiers.sql.values import iter_copy_rows, iter_jsonl, pg_text_parser, typed_rows

BATCH_ROWS = 5000
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
    if not ctx.problems and opts.dry_run:
        # every segment it would load (a restore checks them as it loads); the pass verifies the whole archive
        check_segments(archive, ctx.by_member())
    if archive_counts and (opts.dry_run or archive.verified):  # a restore does not read the archive for them
        fill_row_counts(ctx, archive)
    return _report(ctx, dry_run=True)


def _report(ctx: RestoreContext, *, dry_run: bool) -> RestoreReport:
    report = RestoreReport(tier="db", dry_run=dry_run)
    report.plan = [p.to_json(ctx.mode) for p in ctx.plans] + [ctx.drop_json(t) for t in ctx.drops]
    report.problems = list(ctx.problems)
    report.counts = {
        "tables": len(ctx.plans),
        "remove": sum(p.target_rows for p in ctx.plans) if ctx.mode == "replace" else 0,
    }
    if ctx.drops:
        report.counts["drop"] = len(ctx.drops)
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
    ctx = prepare(archive, opts, cfg.url, with_counts=opts.dry_run)
    if ctx.problems:
        more = f" (and {len(ctx.problems) - 1} more)" if len(ctx.problems) > 1 else ""
        raise Refused(f"db restore into {ctx.target.shown}: {ctx.problems[0]}{more}")
    if opts.dry_run:
        return _report(ctx, dry_run=True)
    report = _report(ctx, dry_run=False)
    if undo is not None:
        report.undo_archive = _save_undo(ctx, undo)
    announce_total(progress, "db", sum(p.archive_rows or 0 for p in ctx.plans))
    started = time.time()
    try:
        if ctx.same_dialect and ctx.target.dialect.native_copy:
            loaded = _restore_pg(ctx, archive, progress)
        else:
            loaded = _restore_generic(ctx, archive, progress)
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
    plain = [k for k in created if plain_key(k, ctx.target.dialect)]
    if plain:
        # Restoring the undo archive drops these again (statekit.tiers.sql.created reads them back strictly).
        summary.details["created_by_restore"] = plain
    if len(plain) < len(created):
        # Names an undo archive may not list for dropping: kept by the undo, listed so a person can drop them.
        summary.details["created_by_restore_kept"] = [k for k in created if k not in plain]
    return undo.seal(summary)


def _drop_sql(ctx: RestoreContext) -> str | None:
    """One DROP TABLE for every table the restore of an undo archive drops (RESTRICT: a table some other
    table still references is never dropped; the statement fails and the transaction with it). Without
    named schemas, only names in the URL's database / file: never another one."""
    if not ctx.drops:
        return None
    return f"DROP TABLE {', '.join(ctx.target.dialect.qualified(t.schema, t.name) for t in ctx.drops)}"


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


def _restore_pg(ctx: RestoreContext, archive: Any, progress: Progress) -> dict[str, int]:
    conn = ctx.target.psycopg_connect("statekit-restore")
    loaded: dict[str, int] = {p.src.key: 0 for p in ctx.plans}
    committing = False
    try:
        with conn.cursor() as cur:
            for stmt in SESSION_SETTINGS:
                cur.execute(stmt)
            drop = _drop_sql(ctx)
            if drop is not None:
                # Restoring an undo archive: the tables its restore created go first, in this one transaction
                # (before any foreign key of theirs is deferred or a table they reference is emptied).
                cur.execute(drop)
            # the DDL was worked out (and every archived type name checked) by the plan
            before, fks = ctx.ddl.before(), ctx.ddl.after()
            for stmt in before:
                cur.execute(stmt)
            changed = _defer_foreign_keys(cur, ctx)
            cur.execute("SET CONSTRAINTS ALL DEFERRED")
            if ctx.mode == "replace":
                _empty_tables(cur, [qtable(p.schema, p.src.name) for p in ctx.plans if p.existing is not None])
            merge_tmp: dict[str, str] = {}
            rebuild = pgload.IndexRebuild()
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
                table = qtable(plan.schema, plan.src.name)
                if ctx.mode == "merge" and plan.existing is not None:
                    merge_tmp[plan.src.key] = merge_tmp.get(plan.src.key) or _merge_table(cur, plan, len(merge_tmp))
                    return merge_tmp[plan.src.key]
                if ctx.mode == "replace" and plan.existing is not None and first_size >= pgload.REBUILD_FROM_BYTES:
                    rebuild.drop(cur, table)  # emptied above: its keys and indexes are built after the data
                return table

            def finished(plan: TablePlan, dest: str) -> None:
                if dest != qtable(plan.schema, plan.src.name):
                    _merge_into(cur, plan, dest)

            def tick(done: dict[str, int], nbytes: int) -> None:
                progress("db", sum(done.values()), nbytes)

            segments = _segments(ctx, archive, server_counts=True)
            rows, counted = pgload.copy_segments(
                cur, segments, destination=destination, finished=finished, tick=tick, wires=wires
            )
            pgload.check_server_counts(archive.manifest, counted)  # the pass ended: its manifest is verified
            loaded.update(rows)
            rebuild.rebuild(cur)
            # The archive pass is complete and verified: finish constraints, counters, then commit.
            for stmt in fks:
                cur.execute(stmt)
            cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for stmt in changed:
                cur.execute(stmt)
            _set_sequences(cur, ctx)
        committing = True
        conn.commit()
    except BaseException:
        try:
            conn.rollback()
            ctx.rolled_back = not committing
        except Exception:
            pass
        raise
    finally:
        conn.close()
    return loaded


# Foreign keys between the listed tables (quoted names), as (referencing, referenced) places in the list.
_REFERENCING_SQL = """
SELECT ch.k, pa.k
FROM unnest(%(t)s::text[]) WITH ORDINALITY AS ch(t, k)
JOIN pg_constraint con ON con.conrelid = to_regclass(ch.t) AND con.contype = 'f'
JOIN unnest(%(t)s::text[]) WITH ORDINALITY AS pa(t, k) ON con.confrelid = to_regclass(pa.t)
WHERE ch.k <> pa.k
"""


def _empty_tables(cur: Any, names: list[str]) -> None:
    """Empty the tables a replace restore loads (quoted names), in one TRUNCATE: the tables may reference
    each other, and TRUNCATE is transactional in PostgreSQL. All of them are locked first, as TRUNCATE would
    lock them; a table that holds no row then is left out of the TRUNCATE unless it references one that is
    truncated (TRUNCATE wants those in the same statement). Truncating gives each table and index new files,
    which costs milliseconds per table; into a target of hundreds of empty tables that was most of a restore."""
    if not names:
        return
    cur.execute(f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE")
    filled = _union_values(cur, [f"EXISTS (SELECT 1 FROM {name})" for name in names])
    occupied = {i for i, has_rows in enumerate(filled) if has_rows}
    if not occupied:
        return
    cur.execute(_REFERENCING_SQL, {"t": names})
    referencing: dict[int, set[int]] = {}
    for child, parent in cur.fetchall():
        referencing.setdefault(int(parent) - 1, set()).add(int(child) - 1)
    todo = list(occupied)
    while todo:  # a table referencing a truncated one is truncated with it
        for child in referencing.get(todo.pop(), ()):
            if child not in occupied:
                occupied.add(child)
                todo.append(child)
    cur.execute(f"TRUNCATE TABLE {', '.join(names[i] for i in sorted(occupied))}")


def _defer_foreign_keys(cur: Any, ctx: RestoreContext) -> list[str]:
    """Make the foreign keys touching the restored tables deferrable for this transaction (segments of
    parallel snapshots interleave, so children may load before parents); return the statements that put
    them back. ALTER CONSTRAINT is transactional: a rollback undoes it too."""
    tables = [qtable(p.schema, p.src.name) for p in ctx.plans if p.existing is not None]
    if not tables:
        return []
    cur.execute(
        "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE contype = 'f' "
        "AND NOT condeferrable AND (conrelid = ANY(%(t)s::regclass[]) OR confrelid = ANY(%(t)s::regclass[]))",
        {"t": tables},
    )
    restore: list[str] = []
    for rel, name in cur.fetchall():
        cur.execute(f"ALTER TABLE {rel} ALTER CONSTRAINT {qident(name)} DEFERRABLE INITIALLY DEFERRED")
        restore.append(f"ALTER TABLE {rel} ALTER CONSTRAINT {qident(name)} NOT DEFERRABLE")
    return restore


def _merge_table(cur: Any, plan: TablePlan, n: int) -> str:
    name = f"statekit_merge_{n}"
    cols = copy_columns(plan.src)
    cur.execute(
        f"CREATE TEMP TABLE {name} ON COMMIT DROP AS SELECT {cols} FROM {qtable(plan.schema, plan.src.name)} "
        "WITH NO DATA"
    )
    return name


def _merge_into(cur: Any, plan: TablePlan, tmp: str) -> None:
    assert plan.existing is not None
    cols = copy_columns(plan.src)
    pk = plan.existing.primary_key
    rest = [c.name for c in plan.src.data_columns if c.name not in pk]
    action = "DO UPDATE SET " + ", ".join(f"{qident(c)} = EXCLUDED.{qident(c)}" for c in rest) if rest else "DO NOTHING"
    cur.execute(
        f"INSERT INTO {qtable(plan.schema, plan.src.name)} ({cols}) OVERRIDING SYSTEM VALUE "
        f"SELECT {cols} FROM {tmp} ON CONFLICT ({', '.join(qident(c) for c in pk)}) {action}"
    )
    cur.execute(f"TRUNCATE {tmp}")


_SERIAL_SQL = """
SELECT u.k, pg_get_serial_sequence(u.t, u.c)
FROM unnest(%(t)s::text[], %(c)s::text[]) WITH ORDINALITY AS u(t, c, k)
ORDER BY u.k
"""


def _set_sequences(cur: Any, ctx: RestoreContext) -> None:
    """Move serial/identity sequences past the restored ids (and never behind the archived position). A few
    statements for all tables: which columns own a sequence, their maxima, (merge and append) the sequences'
    positions, then every setval."""
    candidates = [
        (p, qtable(p.schema, p.src.name), col)
        for p in ctx.plans
        for col in p.src.data_columns  # a generated column has no sequence (and may not have been created)
        if base_kind(col.type)["kind"] == "int"
    ]
    if not candidates:
        return
    cur.execute(_SERIAL_SQL, {"t": [t for _, t, _ in candidates], "c": [c.name for _, _, c in candidates]})
    owned = [(candidates[int(k) - 1], str(seq)) for k, seq in cur.fetchall() if seq]
    if not owned:
        return
    tops = _union_values(cur, [f"max({qident(col.name)}) FROM {table}" for (_, table, col), _ in owned])
    positions = (
        _union_values(cur, [f"CASE WHEN is_called THEN last_value END FROM {seq}" for _, seq in owned])
        if ctx.mode != "replace"
        else [None] * len(owned)
    )
    names: list[str] = []
    values: list[int] = []
    for ((p, _, col), seq), top, position in zip(owned, tops, positions, strict=True):
        value = int(top) if top is not None else 0
        a = {s["column"]: s for s in p.src.sequences}.get(col.name)
        if a and a.get("is_called"):
            value = max(value, int(a["last_value"]))
        if position is not None:
            value = max(value, int(position))
        if value >= 1:
            names.append(seq)
            values.append(value)
    if names:
        cur.execute(
            "SELECT count(setval(s::regclass, v, true)) FROM unnest(%(s)s::text[], %(v)s::bigint[]) AS u(s, v)",
            {"s": names, "v": values},
        )


def _union_values(cur: Any, selects: list[str]) -> list[Any]:
    """The value of each select list (dialects.base.union_selects), in their order."""
    out: list[Any] = []
    for sql in union_selects(selects):
        cur.execute(sql)
        out.extend(v for _, v in sorted(cur.fetchall(), key=lambda r: r[0]))
    return out


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
        drop = _drop_sql(ctx)
        if drop is not None and dialect.drop_at == "first":
            run(drop)  # in the one transaction, as in _restore_pg
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
                _set_sequences(cur, ctx)
        staged = [p for p in ctx.plans if p.staging is not None]
        committing = True
        if drop is not None and dialect.drop_at == "before_commit":
            run(drop)  # after the load, still inside the one transaction
        if staged:
            # RENAME TABLE commits the data first (implicitly), then renames every staged table in one step
            pairs = ", ".join(f"{qname(p)} TO {qname(p, final=True)}" for p in staged)
            run(f"RENAME TABLE {pairs}")
            created.clear()
            conn.commit()
        else:
            dialect.commit(conn)
        if drop is not None and dialect.drop_at == "after_commit":
            # MySQL/MariaDB commit DDL at once: the drop can share no transaction with the load. It runs after the
            # load committed, in the same run; should it fail, the data is restored and the error (naming the
            # undo archive of this run) says so.
            try:
                run(drop)
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
            pass
        raise
    finally:
        conn.close()
        engine.dispose()
    return loaded


def _insert_sql(conn: sa.Connection, dialect: Dialect, plan: TablePlan, qname: str, mode: str) -> str:
    q = dialect.quote
    cols = [c.name for c in plan.src.data_columns]
    head = f"INSERT INTO {qname} ({', '.join(q(c) for c in cols)}) " + dialect.overriding_identity(plan.src)
    sql = head + f"VALUES ({', '.join([_MARK] * len(cols))})"
    if mode == "merge":
        pk = plan.existing.primary_key if plan.existing is not None else plan.src.primary_key
        sql = dialect.upsert(sql, pk, [c for c in cols if c not in pk])
    return driver_sql(conn, sql).replace(_MARK, "?" if conn.dialect.paramstyle == "qmark" else "%s")
