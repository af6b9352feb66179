"""What a PostgreSQL restore does to the tables around its load, in its one transaction: lock and empty them
(TRUNCATE only where rows are), ready an emptied table for COPY FREEZE, defer the foreign keys touching them,
merge through temporary tables, and move the sequences past the restored ids. A few statements for all tables
together, never a few per table."""

from __future__ import annotations

from typing import Any

from statekit.errors import Refused
from statekit.tiers.sql.dialects.base import union_selects
from statekit.tiers.sql.dialects.postgresql import copy_columns, qident, qtable
from statekit.tiers.sql.pgcatalog import without_pages
from statekit.tiers.sql.plan import RestoreContext, TablePlan
from statekit.tiers.sql.schema import base_kind

# Foreign keys between the listed tables (quoted names), as (referencing, referenced) places in the list.
_REFERENCING_SQL = """
SELECT ch.k, pa.k
FROM unnest(%(t)s::text[]) WITH ORDINALITY AS ch(t, k)
JOIN pg_constraint con ON con.conrelid = to_regclass(ch.t) AND con.contype = 'f'
JOIN unnest(%(t)s::text[]) WITH ORDINALITY AS pa(t, k) ON con.confrelid = to_regclass(pa.t)
WHERE ch.k <> pa.k
"""


def empty_tables(cur: Any, names: list[str]) -> set[str]:
    """Empty the tables a replace restore loads (quoted names), in one TRUNCATE: the tables may reference
    each other, and TRUNCATE is transactional in PostgreSQL. All of them are locked first, as TRUNCATE would
    lock them; a table that holds no row then is left out of the TRUNCATE unless it references one that is
    truncated (TRUNCATE wants those in the same statement). Truncating gives each table and index new files,
    which costs milliseconds per table; into a target of hundreds of empty tables that was most of a restore.
    Returns the tables truncated."""
    if not names:
        return set()
    cur.execute(f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE")
    filled = with_rows(cur, names)
    occupied = {i for i, name in enumerate(names) if name in filled}
    if not occupied:
        return set()
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
    truncated = [names[i] for i in sorted(occupied)]
    cur.execute(f"TRUNCATE TABLE {', '.join(truncated)}")
    return set(truncated)


# Whether a table just emptied may be loaded with COPY FREEZE: a plain table (not partitioned) in a READ COMMITTED
# transaction (a serializable snapshot would make the server refuse FREEZE), and, unless it was
# truncated already, one that an extra TRUNCATE leaves unnoticed: no other table's foreign key refers to it (that
# TRUNCATE would refuse), no TRUNCATE trigger, no publication.
_FREEZE_SQL = """
SELECT c.relkind = 'r' AND current_setting('transaction_isolation') = 'read committed',
       NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.confrelid = c.oid AND f.contype = 'f' AND f.conrelid <> c.oid)
       AND NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND (g.tgtype & 32) <> 0)
       AND NOT EXISTS (SELECT 1 FROM pg_publication_tables pt
                       JOIN pg_namespace n ON n.nspname = pt.schemaname
                       WHERE n.oid = c.relnamespace AND pt.tablename = c.relname)
FROM pg_class c WHERE c.oid = %(t)s::regclass
"""


def prepare_freeze(cur: Any, table: str, truncated: set[str]) -> bool:
    """Prepare `table` (emptied by this replace restore, nothing loaded into it yet) for COPY FREEZE, which
    PostgreSQL allows into a table truncated in the same transaction: the rows go in frozen, and the first scan
    after the load (the primary key's build) does not have to write every page again. An empty table is
    truncated here when that changes nothing else (_FREEZE_SQL). False: load it without FREEZE."""
    cur.execute(_FREEZE_SQL, {"t": table})
    row = cur.fetchone()
    if not row or not row[0]:
        return False
    if table in truncated:
        return True
    if not row[1]:
        return False
    cur.execute(f"TRUNCATE TABLE {table}")
    truncated.add(table)
    return True


def defer_foreign_keys(cur: Any, ctx: RestoreContext) -> list[str]:
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


def merge_table(cur: Any, plan: TablePlan, n: int) -> str:
    name = f"statekit_merge_{n}"
    cols = copy_columns(plan.src)
    cur.execute(
        f"CREATE TEMP TABLE {name} ON COMMIT DROP AS SELECT {cols} FROM {qtable(plan.schema, plan.src.name)} "
        "WITH NO DATA"
    )
    return name


def merge_into(cur: Any, plan: TablePlan, tmp: str) -> None:
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


_BOUNDS_SQL = """
SELECT u.s, u.v, q.seqmax
FROM unnest(%(s)s::text[], %(v)s::bigint[]) WITH ORDINALITY AS u(s, v, k)
JOIN pg_sequence q ON q.seqrelid = u.s::regclass
WHERE u.v > q.seqmax
ORDER BY u.k
LIMIT 1
"""


def set_sequences(cur: Any, ctx: RestoreContext) -> None:
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
    tops = union_values(cur, [f"max({qident(col.name)}) FROM {table}" for (_, table, col), _ in owned])
    positions = (
        union_values(cur, [f"CASE WHEN is_called THEN last_value END FROM {seq}" for _, seq in owned])
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
    if not names:
        return
    # A position below a sequence's minimum needs no setval (every value it gives is above it); one above its
    # maximum cannot be set: the target's sequence is too small for the restored rows, so the restore is
    # refused and its transaction rolled back.
    cur.execute(_BOUNDS_SQL, {"s": names, "v": values})
    over = cur.fetchone()
    if over is not None:
        seq, value, top = over
        raise Refused(
            f"db: sequence {seq} on the target ends at {top}, but the restored rows need it at {value}: "
            "raise its MAXVALUE (or restore into a table with a bigger one)"
        )
    cur.execute(
        "SELECT count(setval(u.s::regclass, u.v, true)) FROM unnest(%(s)s::text[], %(v)s::bigint[]) AS u(s, v) "
        "JOIN pg_sequence q ON q.seqrelid = u.s::regclass WHERE u.v >= q.seqmin",
        {"s": names, "v": values},
    )


def with_rows(cur: Any, names: list[str]) -> set[str]:
    """Which of these tables (quoted names) hold at least one row: none of those without a page on disk, the
    others asked a hundred tables per statement."""
    empty = without_pages(cur, names)
    rest = [name for i, name in enumerate(names) if i not in empty]
    filled = union_values(cur, [f"EXISTS (SELECT 1 FROM {name})" for name in rest])
    return {name for name, has_rows in zip(rest, filled, strict=True) if has_rows}


def union_values(cur: Any, selects: list[str]) -> list[Any]:
    """The value of each select list (dialects.base.union_selects), in their order."""
    out: list[Any] = []
    for sql in union_selects(selects):
        cur.execute(sql)
        out.extend(v for _, v in sorted(cur.fetchall(), key=lambda r: r[0]))
    return out
