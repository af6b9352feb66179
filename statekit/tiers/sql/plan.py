"""Planning a db restore: what the archive holds, what the target holds, and whether they fit.

The plan reads the archive's db/schema.json and reflects the target (writing nothing). Every problem found
(missing columns, narrower types, non-portable columns for another dialect, tables that would lose their
foreign-key parents) is reported column by column, and restore_db refuses to start while there is one.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from statekit.errors import ConfigError, CorruptArchive
from statekit.model import RestoreOptions
from statekit.tiers.sql import compat, ddl, pgstage
from statekit.tiers.sql.connect import DbTarget
from statekit.tiers.sql.created import created_by_restore, created_schemas_by_restore, created_types_by_restore
from statekit.tiers.sql.ddl import CreatePlan
from statekit.tiers.sql.dialects import Dialect, dialect_for
from statekit.tiers.sql.dialects.base import driver_sql, union_selects
from statekit.tiers.sql.dialects.postgresql import qtable
from statekit.tiers.sql.schema import (
    SCHEMA_MEMBER,
    DbSchema,
    TableDesc,
    matches,
)

MODES = ("replace", "merge", "append")
_CREATED_BY = "created by the restore this undo archive undoes"


@dataclass
class TablePlan:
    """One archived table and where it goes."""

    src: TableDesc
    schema: str | None  # target schema (None: the connection's default)
    existing: TableDesc | None  # the target table as reflected, None when it will be created
    action: str  # create | replace | merge | append
    target_rows: int = 0
    archive_rows: int | None = None
    sql: list[str] = field(default_factory=list)  # statement classes that will run for this table
    skipped: list[str] = field(default_factory=list)  # archive SQL that is not applied
    staging: str | None = None  # MySQL: created under this name, renamed into place with the data

    @property
    def target_key(self) -> str:
        """The table's name in the target, for messages."""
        return f"{self.schema}.{self.src.name}" if self.schema else self.src.name

    def to_json(self, mode: str) -> dict[str, Any]:
        """The plan line shown by --dry-run."""
        return {
            "table": self.src.key,
            "target": self.target_key,
            "rows": self.archive_rows,
            "target_rows": self.target_rows,
            "remove": self.target_rows if mode == "replace" else 0,
            "mode": mode,
            "action": self.action,
            "sql": ", ".join(self.sql),
            **(
                {"skipped": "; ".join(self.skipped) + " (archive SQL: --signer or --trust-archive-sql applies it)"}
                if self.skipped
                else {}
            ),
        }


@dataclass
class RestoreContext:
    """Everything a restore needs to know before it starts writing."""

    target: DbTarget
    desc: DbSchema
    mode: str
    plans: list[TablePlan]
    problems: list[str] = field(default_factory=list)
    default_schema: str | None = None
    trusted: bool = False  # the archive's own SQL may run (trusted signature or --trust-archive-sql)
    ddl: CreatePlan = field(default_factory=CreatePlan)
    # Restoring a db undo archive: target tables the restore it undoes created, dropped (see created.py)
    drops: list[TableDesc] = field(default_factory=list)
    drop_rows: dict[str, int] = field(default_factory=dict)
    # … and (PostgreSQL) the enums and domains, (schema, name, "enum" | "domain"), and the schemas it created;
    # those something that stays still uses are kept, each with a plan line that says why
    drop_types: list[tuple[str, str, str]] = field(default_factory=list)
    drop_schemas: list[str] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    rolled_back: bool = False  # the load failed and its transaction was rolled back: the target is as it was
    # restore --jobs N (PostgreSQL, replace): the existing tables pgstage.eligible finds stageable, when planned
    stageable: list[TablePlan] = field(default_factory=list)

    def drop_key(self, t: TableDesc) -> str:
        """A dropped table's name in the target, for messages (as TablePlan.target_key)."""
        return t.key if self.target.dialect.named_schemas else t.name

    def drop_json(self, t: TableDesc) -> dict[str, Any]:
        """The plan line of a table the restore drops."""
        rows = self.drop_rows.get(t.key, 0)
        key = self.drop_key(t)
        return {
            "table": key,
            "target": key,
            "rows": None,
            "target_rows": rows,
            "remove": rows,
            "mode": self.mode,
            "action": "drop",
            "sql": "DROP TABLE (created by the restore this undo archive undoes)",
        }

    def drop_type_json(self, schema: str, name: str, kind: str) -> dict[str, Any]:
        """The plan line of an enum or domain the restore drops."""
        sql = f"DROP TYPE ({'an enum' if kind == 'enum' else 'a domain'} {_CREATED_BY})"
        return {"type": f"{schema}.{name}", "mode": self.mode, "action": "drop", "sql": sql}

    def drop_schema_json(self, name: str) -> dict[str, Any]:
        """The plan line of a schema the restore drops."""
        return {"schema": name, "mode": self.mode, "action": "drop", "sql": f"DROP SCHEMA ({_CREATED_BY})"}

    @property
    def same_dialect(self) -> bool:
        """Whether the archive came from the target's dialect (native DDL and, for PostgreSQL, COPY)."""
        return self.desc.dialect == self.target.dialect.name

    def by_member(self) -> dict[str, TablePlan]:
        """Plans keyed by the archived member prefix."""
        return {p.src.member: p for p in self.plans}


def read_schema(archive: Any) -> DbSchema:
    """db/schema.json from the archive (the first db member); the pass is abandoned right after it."""
    members = archive.members("db/")
    try:
        for m in members:
            if m.name != SCHEMA_MEMBER:
                raise CorruptArchive(f"archive db members do not start with {SCHEMA_MEMBER}")
            if m.size > 256 << 20:
                raise CorruptArchive(f"archive {SCHEMA_MEMBER} is implausibly large")
            return DbSchema.from_json_bytes(m.read_all())
    finally:
        members.close()
    raise ConfigError("the archive holds no db tier")


def archive_row_counts(archive: Any) -> dict[str, int]:
    """Rows per archived table key, from the manifest (runs the archive's verifying pass)."""
    counts: dict[str, int] = {}
    for m in archive.manifest.get("members", []):
        meta = m.get("meta") or {}
        if str(m.get("name", "")).startswith("db/") and "table" in meta:
            counts[meta["table"]] = counts.get(meta["table"], 0) + int(meta.get("rows", 0))
    return counts


def fill_row_counts(ctx: RestoreContext, archive: Any) -> None:
    """The archive's row counts (from its manifest) into the plan."""
    counts = archive_row_counts(archive)
    for p in ctx.plans:
        p.archive_rows = counts.get(p.src.key)


def prepare(archive: Any, opts: RestoreOptions, url: str | None, *, with_counts: bool) -> RestoreContext:
    """Read the archived schema, reflect the target and build the plan with its problems."""
    mode = opts.mode or "replace"
    if mode not in MODES:
        raise ConfigError(f"db restore mode {mode!r}: use one of {', '.join(MODES)}")
    target = DbTarget(opts.target or url, must_exist=False)
    desc = read_schema(archive)
    selected = desc.tables
    if opts.tables:
        for pat in opts.tables:
            if not any(matches(t.key, t.name, [pat]) for t in desc.tables):
                raise ConfigError(f"--tables {pat}: matches no table in the archive")
        selected = [t for t in desc.tables if matches(t.key, t.name, opts.tables)]
    # PostgreSQL: one psycopg connection reads everything the plan needs (catalogue, row counts, type checks)
    pg = target.psycopg_connect("statekit-plan") if target.dialect.native_copy else None
    try:
        existing, default_schema = _reflect_target(target, pg)
        ctx = RestoreContext(target, desc, mode, [], default_schema=default_schema)
        found = {(t.schema, t.name): t for t in existing}
        counts = archive_row_counts(archive) if with_counts else {}
        # Row counts need a connection only when the target already has tables (a missing SQLite file stays so).
        counting: AbstractContextManager[Query | None] = nullcontext()
        if pg is not None:
            counting = nullcontext(_pg_queries(target, pg))
        elif existing:
            counting = _sa_queries(target)
        with counting as query:
            for t in selected:
                schema = _target_schema(t, desc, target.dialect, default_schema)
                lookup = (schema if schema is not None else default_schema, t.name)
                have = found.get(lookup)
                plan = TablePlan(t, schema, have, "create" if have is None else mode, archive_rows=counts.get(t.key))
                ctx.plans.append(plan)
            ctx.drops = _undo_drops(archive, opts, ctx, found)
            if pg is not None:
                _undo_type_drops(archive, ctx, pg)
            if query is not None:
                present = [p for p in ctx.plans if p.existing is not None]
                named = target.dialect.named_schemas
                tables = [(p.schema, p.src.name) for p in present]
                tables += [(d.schema if named else None, d.name) for d in ctx.drops]
                rows = _counts(query, target.dialect, tables, _pg_without_pages(target, pg, tables))
                for p, n in zip(present, rows):
                    p.target_rows = n
                for d, n in zip(ctx.drops, rows[len(present) :]):
                    ctx.drop_rows[d.key] = n
        ctx.trusted = opts.trust_archive_sql
        _plan_creates(ctx, existing, pg)
        ctx.problems = compat.table_problems(ctx, existing) + compat.name_problems(ctx, pg) + ctx.ddl.problems
        if pg is not None and opts.jobs > 1 and mode == "replace" and ctx.same_dialect and not ctx.problems:
            ctx.stageable = _stageable(ctx, pg)
    finally:
        if pg is not None:
            pg.close()
    return ctx


def _stageable(ctx: RestoreContext, pg: Any) -> list[TablePlan]:
    """restore --jobs N: the existing tables that may load through staging tables (pgstage.eligible; the
    restore asks again before it creates them)."""
    present = [p for p in ctx.plans if p.existing is not None]
    if not present:
        return []
    try:
        with pg.cursor() as cur:
            places = pgstage.eligible(cur, [qtable(p.schema, p.src.name) for p in present])
        pg.rollback()
    except Exception as exc:
        raise ctx.target.fail("reading the target's schema", exc) from None
    return [present[i] for i in sorted(places)]


def _undo_drops(
    archive: Any, opts: RestoreOptions, ctx: RestoreContext, found: dict[tuple[str | None, str], TableDesc]
) -> list[TableDesc]:
    """Restoring a db undo archive in replace mode: the tables its restore created that exist on the target,
    are not held by the undo archive, and match --tables. Every other archive: none."""
    if archive.head().get("kind") == "snapshot":  # the head says it is no undo archive: no pass needed
        return []
    snapshot = archive.snapshot
    listed = created_by_restore(snapshot, ctx.target.dialect) if isinstance(snapshot, dict) else []
    if not listed or ctx.mode != "replace":
        return []
    default = ctx.default_schema
    held = {(p.schema if p.schema is not None else default, p.src.name) for p in ctx.plans}
    for t in ctx.desc.tables:  # also the archived tables --tables left out: never dropped
        schema = _target_schema(t, ctx.desc, ctx.target.dialect, default)
        held.add((schema if schema is not None else default, t.name))
    drops: list[TableDesc] = []
    for schema, name in listed:
        if not ctx.target.dialect.named_schemas:
            schema = None
        have = found.get((schema if schema is not None else default, name))
        if have is None or (have.schema, have.name) in held or have in drops:
            continue
        if opts.tables and not matches(ctx.drop_key(have), name, opts.tables):
            continue
        drops.append(have)
    return drops


_LISTED_TYPES_SQL = """
SELECT u.k, t.oid, t.typarray, t.typtype::text
FROM unnest(%(s)s::text[], %(n)s::text[]) WITH ORDINALITY AS u(s, n, k)
JOIN pg_namespace ns ON ns.nspname = u.s
JOIN pg_type t ON t.typnamespace = ns.oid AND t.typname = u.n
WHERE t.typtype IN ('e', 'd') AND left(ns.nspname, 3) <> 'pg_' AND ns.nspname <> 'information_schema'
ORDER BY u.k
"""
_LISTED_SCHEMAS_SQL = """
SELECT u.k, ns.oid
FROM unnest(%(n)s::text[]) WITH ORDINALITY AS u(n, k)
JOIN pg_namespace ns ON ns.nspname = u.n
WHERE left(ns.nspname, 3) <> 'pg_' AND ns.nspname <> 'information_schema'
ORDER BY u.k
"""
_TABLE_OIDS_SQL = """
SELECT c.oid
FROM unnest(%(s)s::text[], %(n)s::text[]) AS u(s, n)
JOIN pg_namespace ns ON ns.nspname = u.s
JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = u.n
"""
# What still depends on the types (and their array types) or schemas that would be dropped, once the dropped
# tables, types and schemas are gone: not those objects themselves, nor what belongs to them (a column default,
# a constraint, an index, an owned sequence: an automatic or internal dependency on one of them).
_USERS_SQL = """
WITH going(classid, objid) AS (
    SELECT 'pg_class'::regclass, unnest(%(tables)s::oid[])
    UNION ALL SELECT 'pg_type'::regclass, unnest(%(types)s::oid[])
    UNION ALL SELECT 'pg_namespace'::regclass, unnest(%(schemas)s::oid[])
)
SELECT DISTINCT d.refclassid = 'pg_namespace'::regclass, d.refobjid, pg_describe_object(d.classid, d.objid, d.objsubid)
FROM pg_depend d
WHERE d.deptype = 'n'
  AND ((d.refclassid = 'pg_type'::regclass AND d.refobjid = ANY(%(types)s::oid[]))
       OR (d.refclassid = 'pg_namespace'::regclass AND d.refobjid = ANY(%(schemas)s::oid[])))
  AND NOT EXISTS (SELECT 1 FROM going g WHERE g.classid = d.classid AND g.objid = d.objid)
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend e JOIN going g ON g.classid = e.refclassid AND g.objid = e.refobjid
      WHERE e.classid = d.classid AND e.objid = d.objid AND e.deptype IN ('a', 'i'))
ORDER BY 3
"""


def _undo_type_drops(archive: Any, ctx: RestoreContext, pg: Any) -> None:
    """Restoring a PostgreSQL undo archive in replace mode: the enums, domains and schemas its restore created
    that exist on the target and that the undo archive does not hold (those existed before that restore) go
    into ctx.drop_types and ctx.drop_schemas, dropped after the tables; one that something staying (a column
    of another table, a domain, a function, …) still uses is kept, with a plan line in ctx.kept."""
    if archive.head().get("kind") == "snapshot" or ctx.mode != "replace":
        return
    snapshot = archive.snapshot
    if not isinstance(snapshot, dict):
        return
    listed_types = created_types_by_restore(snapshot)
    listed_schemas = created_schemas_by_restore(snapshot)
    if not listed_types and not listed_schemas:
        return
    default = ctx.default_schema
    held_types = {(t.get("schema") or default, t["name"]) for t in [*ctx.desc.enums, *ctx.desc.domains]}
    held_schemas = {s for s, _ in held_types} | {p.schema or default for p in ctx.plans}
    for t in ctx.desc.tables:  # also the archived tables --tables left out
        held_schemas.add(_target_schema(t, ctx.desc, ctx.target.dialect, default) or default)
    types = [(s, n) for s, n in listed_types if (s, n) not in held_types]
    schemas = [s for s in listed_schemas if s not in held_schemas]
    try:
        with pg.cursor() as cur:
            cur.execute(_LISTED_TYPES_SQL, {"s": [s for s, _ in types], "n": [n for _, n in types]})
            found = {int(k) - 1: (int(oid), int(arr), str(kind)) for k, oid, arr, kind in cur.fetchall()}
            cur.execute(_LISTED_SCHEMAS_SQL, {"n": schemas})
            found_schemas = {int(k) - 1: int(oid) for k, oid in cur.fetchall()}
            cur.execute(
                _TABLE_OIDS_SQL, {"s": [t.schema or default for t in ctx.drops], "n": [t.name for t in ctx.drops]}
            )
            tables = [int(oid) for (oid,) in cur.fetchall()]
            going = {oid: i for i, (oid, _, _) in found.items()}
            going |= {arr: i for i, (_, arr, _) in found.items() if arr}
            going_schemas = {oid: i for i, oid in found_schemas.items()}
            why: dict[tuple[bool, int], str] = {}  # (schema?, index) of what stays: what uses it
            while going or going_schemas:
                params = {"tables": tables, "types": list(going), "schemas": list(going_schemas)}
                cur.execute(_USERS_SQL, params)
                users = cur.fetchall()
                if not users:
                    break
                for is_schema, ref, user in users:
                    index = (going_schemas if is_schema else going).get(int(ref))
                    if index is not None:
                        why.setdefault((bool(is_schema), index), str(user))
                # what is kept is no longer going: what uses it in turn stays too (the next round finds it)
                going = {oid: i for oid, i in going.items() if (False, i) not in why}
                going_schemas = {oid: i for oid, i in going_schemas.items() if (True, i) not in why}
        pg.rollback()
    except Exception as exc:
        raise ctx.target.fail("reading the target's schema", exc) from None
    for i, (schema, name) in enumerate(types):
        if i not in found:
            continue
        kind = "enum" if found[i][2] == "e" else "domain"
        user = why.get((False, i))
        if user is None:
            ctx.drop_types.append((schema, name, kind))
        else:
            what = f"{'an enum' if kind == 'enum' else 'a domain'} {_CREATED_BY}"
            ctx.kept.append({"type": f"{schema}.{name}", "mode": ctx.mode, "action": "keep",
                             "sql": f"none: {user} uses it ({what})"})  # fmt: skip
    for i, name in enumerate(schemas):
        if i not in found_schemas:
            continue
        user = why.get((True, i))
        if user is None:
            ctx.drop_schemas.append(name)
        else:
            ctx.kept.append({"schema": name, "mode": ctx.mode, "action": "keep",
                             "sql": f"none: it holds {user} ({_CREATED_BY})"})  # fmt: skip


def _plan_creates(ctx: RestoreContext, existing: list[TableDesc], pg: Any) -> None:
    """Work out the DDL for the missing tables (validating every archived type name on the way) and the
    statement classes of every table, so that the plan shows all of them."""
    target = ctx.target
    creates = [p for p in ctx.plans if p.existing is None]
    native_pg = ctx.same_dialect and target.dialect.native_copy
    if creates and target.dialect.stages_new_tables:
        token = secrets.token_hex(4)
        for i, p in enumerate(creates):
            p.staging = f"statekit_new_{token}_{i}"
    if creates and native_pg:
        import psycopg

        try:
            ctx.ddl = ddl.pg_plan(
                pg,
                ctx.desc,
                [(p.src, p.schema) for p in creates],
                trusted=ctx.trusted,
                map_schema=lambda s: _map_schema(s, ctx),
            )
        except psycopg.Error as exc:
            raise target.fail("checking the archived schema against the target", exc) from None
    elif creates:
        import sqlalchemy as sa

        missing_file = target.dialect.missing_database(target.parts.database)
        opened: AbstractContextManager[sa.Connection | None] = nullcontext() if missing_file else target.connection()
        with opened as conn:
            try:
                dialect = conn.dialect if conn is not None else target.engine().dialect
                present = {p.src.name for p in ctx.plans} | {t.name for t in existing}
                ctx.ddl = ddl.generic_plan(
                    ctx.desc, [(p.src, p.schema, p.staging) for p in creates], dialect, present,
                    trusted=ctx.trusted, target=target.dialect,
                )  # fmt: skip
            except sa.exc.DBAPIError as exc:
                raise target.fail("checking the archived schema against the target", exc) from None
    prelude_done = False
    for p in ctx.plans:
        table_ddl = ctx.ddl.tables.get(p.src.key)
        if table_ddl is not None:
            if not prelude_done:
                p.sql.extend(ctx.ddl.prelude_classes)
                p.skipped.extend(ctx.ddl.prelude_skipped)
                prelude_done = True
            p.sql.extend(table_ddl.classes)
            p.skipped.extend(table_ddl.skipped)
        p.sql.extend(_data_statements(p, ctx, native_pg))


def _map_schema(schema: str | None, ctx: RestoreContext) -> str | None:
    # a reference into the source's default schema points into the target's (as the tables themselves do)
    if schema is None or schema == ctx.desc.default_schema:
        return ctx.default_schema
    return schema


def _binary_load(p: TablePlan) -> str:
    """How binary COPY segments will load, as the load decides it (pgload.target_wire: the target's own column
    types against the archive's wire tokens). A table the restore creates gets the archive's types."""
    if p.existing is None:
        return "binary"
    if not p.existing.wire:  # a column of the target's table has no wire token: its tokens are not all known
        return "binary where the column types match the archive's, else as text"
    target = dict(zip([c.name for c in p.existing.data_columns], p.existing.wire))
    if [target.get(c.name) for c in p.src.data_columns] == p.src.wire:
        return "binary"
    return "binary rows loaded as text: column types differ"


def _data_statements(p: TablePlan, ctx: RestoreContext, native_pg: bool) -> list[str]:
    out: list[str] = []
    existing = p.existing is not None
    if native_pg:
        if existing:
            out.append("ALTER CONSTRAINT (foreign keys deferred for the transaction)")
        if existing and ctx.mode == "replace":
            out += ["LOCK TABLE", "TRUNCATE"]  # TRUNCATE only where there are rows to remove (restore._empty_tables)
        copy = "COPY"
        if p.src.encoding == "pgbinary":
            copy = f"COPY ({_binary_load(p)})"
        if ctx.mode == "merge" and existing:
            out.append(f"{copy} into a temporary table, INSERT … ON CONFLICT")
        else:
            out.append(copy)
    else:
        if existing and ctx.mode == "replace":
            out.append("DELETE")
        out.append("INSERT … ON CONFLICT" if ctx.mode == "merge" else "INSERT")
    if ctx.target.dialect.sets_sequences:
        out.append("setval (sequences)")
    return out


def _target_schema(t: TableDesc, desc: DbSchema, dialect: Dialect, default_schema: str | None) -> str | None:
    # MySQL databases and SQLite files are named by the URL: tables go into the target's own. PostgreSQL
    # keeps non-default schemas, and the source's default schema becomes the target's.
    if not dialect.named_schemas:
        return None
    if not dialect_for(desc.dialect).named_schemas or t.schema == desc.default_schema:
        return default_schema
    return t.schema


def _reflect_target(target: DbTarget, pg: Any) -> tuple[list[TableDesc], str | None]:
    """The target's tables and default schema; `pg` is the plan's psycopg connection to a PostgreSQL target
    (its catalogue is read by pgcatalog, without SQLAlchemy), else None."""
    if pg is not None:
        from statekit.tiers.sql import pgcatalog

        try:
            tables, _, _, default_schema = pgcatalog.reflect(pg, [], ["*"], [], with_sequences=False)
            pg.rollback()
        except Exception as exc:
            raise target.fail("reading the target's schema", exc) from None
        return tables, default_schema
    if target.dialect.missing_database(target.parts.database):
        return [], "main"
    import sqlalchemy as sa

    with target.connection() as conn:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", sa.exc.SAWarning)
                tables, _, _, default_schema = target.dialect.reflect(conn, [], ["*"], [], with_sequences=False)
            conn.rollback()
        except Exception as exc:
            raise target.fail("reading the target's schema", exc) from None
    return tables, default_schema


Query = Callable[[str], list[Any]]


def _pg_queries(target: DbTarget, pg: Any) -> Query:
    """Run statements on the plan's psycopg connection, each in a transaction of its own (so the locks it takes
    are released before the next), and return their rows."""

    def run(sql: str) -> list[Any]:
        try:
            return list(pg.execute(sql).fetchall())
        except Exception as exc:
            raise target.fail("counting the target's rows", exc) from None
        finally:
            pg.rollback()

    return run


@contextmanager
def _sa_queries(target: DbTarget) -> Iterator[Query]:
    """As _pg_queries, on a SQLAlchemy connection of its own (MySQL/MariaDB, SQLite)."""
    with target.connection() as conn:

        def run(sql: str) -> list[Any]:
            try:
                return list(conn.exec_driver_sql(driver_sql(conn, sql)).fetchall())
            finally:
                conn.rollback()

        yield run


def _pg_without_pages(target: DbTarget, pg: Any, tables: list[tuple[str | None, str]]) -> set[int]:
    """The places in `tables` of the PostgreSQL target's tables that hold no row for having no page on disk
    (pgcatalog.without_pages); none for another database."""
    if pg is None or not tables:
        return set()
    from statekit.tiers.sql.pgcatalog import without_pages

    try:
        with pg.cursor() as cur:
            return without_pages(cur, [target.dialect.qualified(schema, name) for schema, name in tables])
    except Exception as exc:
        raise target.fail("counting the target's rows", exc) from None
    finally:
        pg.rollback()


def _counts(query: Query, dialect: Dialect, tables: list[tuple[str | None, str]], empty: set[int]) -> list[int]:
    """The row count of each table, a hundred tables per statement; 0 for those at the places in `empty`."""
    counts = [f"count(*) FROM {dialect.qualified(s, n)}" for i, (s, n) in enumerate(tables) if i not in empty]
    found: list[int] = []
    for sql in union_selects(counts):
        found.extend(int(n or 0) for _, n in sorted(query(sql)))
    rest = iter(found)
    return [0 if i in empty else next(rest) for i in range(len(tables))]
