"""Reconcile into the db tier: each operation writes one row's value column (e.g. `"Session".creds`), the way
the application itself writes it (a new row gets the locator's `insert` columns: a cuid or UUID id, the
creation time). All operations run in one transaction, each as a compare-and-set on its row; the tables are
saved into an undo archive (the db tier's snapshot format) before the first change."""

from __future__ import annotations

import datetime as dt
import secrets
import string
import uuid
from typing import Any

from statekit.audit.apply import ApplyResult
from statekit.audit.entities import DbLocator, Entity, Model
from statekit.audit.plan import Operation, ReconcilePlan
from statekit.errors import StatekitError, TierError, UsageError
from statekit.model import Progress, TierSummary, UndoSink, no_progress

_CUID_ALPHABET = string.digits + string.ascii_lowercase


def new_cuid() -> str:
    """A Prisma-style cuid: "c" and 24 base-36 characters (Prisma's `@default(cuid())` for "Session".id)."""
    return "c" + "".join(secrets.choice(_CUID_ALPHABET) for _ in range(24))


def _insert_value(kind: str) -> Any:
    if kind == "cuid":
        return new_cuid()
    if kind == "uuid":
        return str(uuid.uuid4())
    # Prisma stores DateTime as a timestamp without time zone, in UTC.
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class DbWriter:
    """Reconcile into a database: one transaction of compare-and-set row writes."""

    tier = DbLocator.kind

    def apply(
        self,
        plan: ReconcilePlan,
        location: str | None,
        *,
        model: Model | None,
        undo: UndoSink | None,
        progress: Progress = no_progress,
    ) -> ApplyResult:
        """Apply the plan to the database at `location` (a URL); the model says which columns a new row gets."""
        if model is None or not location:
            raise UsageError(f"reconcile --to {self.tier} needs the entity model and a database URL")
        result = ApplyResult()
        if not plan.ops:
            return result
        if undo is not None:
            result.undo_archive = save_db_undo(location, model, plan, undo)
        apply_db(plan, model, location, result.conflicts, result.counts, progress)
        return result


def save_db_undo(url: str, model: Model, plan: ReconcilePlan, undo: UndoSink) -> str:
    """The tables the plan writes, as they are now, in the db tier's snapshot format."""
    from statekit.tiers.sql.connect import DbTarget
    from statekit.tiers.sql.snapshot import exact_patterns, snapshot_target

    tables = sorted({op.loc[1] for op in plan.ops})
    target = DbTarget(url)
    schemas = sorted(
        {s for e in model.entities.values() if (loc := e.locators.get(DbWriter.tier)) and (s := loc.schema)}
    )
    summary: TierSummary = snapshot_target(target, undo.sink, include=exact_patterns(tables), exclude=[],
                                           schemas=schemas)  # fmt: skip
    summary.details["undo_of"] = "statekit reconcile"
    return undo.seal(summary)


def apply_db(
    plan: ReconcilePlan,
    model: Model,
    url: str,
    conflicts: list[str],
    counts: dict[str, int],
    progress: Progress = no_progress,
) -> None:
    """Apply the plan's row operations in one transaction; an operation whose row changed since the plan (or
    whose parent row is gone) is skipped and listed in `conflicts`, the others commit together."""
    import sqlalchemy as sa

    from statekit.audit.sources.db import open_engine

    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            for i, op in enumerate(plan.ops, 1):
                ent = model.entities[op.entity]
                if _apply_one(conn, sa, ent, _parent(model, ent), op):
                    counts[op.op] += 1
                else:
                    conflicts.append(f"{op.where()}: changed since the plan, skipped")
                progress(DbWriter.tier, i, 0)
    except StatekitError:
        raise
    except Exception as exc:
        raise TierError(f"reconcile: the db transaction failed and was rolled back ({type(exc).__name__})") from None
    finally:
        engine.dispose()


def _parent(model: Model, ent: Entity) -> Entity | None:
    root = ent
    while root.parent is not None:
        root = model.entities[root.parent]
    return root if root is not ent and DbWriter.tier in root.locators else None


def _apply_one(conn: Any, sa: Any, ent: Entity, parent: Entity | None, op: Operation) -> bool:
    loc = ent.locators[DbWriter.tier]
    assert loc.table is not None and loc.value_column is not None
    key, value = loc.key_columns[0], loc.value_column
    cols = [key, value, *loc.insert]
    t = sa.table(loc.table, *[sa.column(c) for c in cols], schema=loc.schema)
    after = None if op.after is None else op.after.decode("utf-8", "surrogatepass")
    before = None if op.before is None else op.before.decode("utf-8", "surrogatepass")
    if op.op == "create":
        if conn.execute(sa.select(sa.literal(1)).select_from(t).where(t.c[key] == op.id)).first() is not None:
            return False
        if parent is not None:
            ploc = parent.locators[DbWriter.tier]
            pt = sa.table(ploc.table, sa.column(ploc.key_columns[0]), schema=ploc.schema)
            found = conn.execute(sa.select(sa.literal(1)).select_from(pt).where(pt.c[ploc.key_columns[0]] == op.id))
            if found.first() is None:
                return False  # the instance was deleted since the plan
        row = {key: op.id, value: after, **{c: _insert_value(kind) for c, kind in loc.insert.items()}}
        savepoint = conn.begin_nested()
        try:
            conn.execute(sa.insert(t).values(row))
        except Exception:
            savepoint.rollback()
            return False  # a row appeared in between (unique key)
        savepoint.commit()
        return True
    same = t.c[value].is_(None) if before is None else t.c[value] == before
    cond = sa.and_(t.c[key] == op.id, same)
    if op.op == "update":
        return bool(conn.execute(sa.update(t).where(cond).values({value: after})).rowcount == 1)
    return bool(conn.execute(sa.delete(t).where(cond)).rowcount == 1)


__all__ = ["DbWriter", "apply_db", "new_cuid", "save_db_undo"]
