"""Whether an archive's tables fit a restore target, checked while the restore is planned, before anything
changes: each archived column against the target's (column_problem), the names the restored tables take in the
target (name_problems), and missing columns, NOT NULL columns, merge keys and foreign keys that replace mode or
an undo archive's drops would break (table_problems). Each problem is one line; restore_db refuses to start
while there is one. `ctx` is the plan's RestoreContext (statekit.tiers.sql.plan), which imports this
module."""

from __future__ import annotations

from typing import Any

from statekit.tiers.sql.dialects import Dialect
from statekit.tiers.sql.dialects.base import shown
from statekit.tiers.sql.schema import TableDesc, base_kind, non_portable_reason

_FAMILY = {
    "int": "int", "bool": "bool", "numeric": "numeric", "float": "float", "text": "text", "enum": "text",
    "uuid": "uuid", "json": "json", "jsonb": "json", "bytes": "bytes", "date": "date", "time": "time",
    "timestamp": "timestamp", "timestamptz": "timestamp", "interval": "interval", "array": "array",
}  # fmt: skip
# (archived family, target family) pairs that still store every value exactly.
_ALSO_FITS = {
    ("bool", "int"), ("int", "numeric"), ("uuid", "text"), ("json", "text"), ("text", "json"),
    ("text", "uuid"), ("int", "bool"),
}  # fmt: skip


def column_problem(src: Any, dst: Any, same_dialect: bool, target: Dialect) -> str | None:
    """Why values of archived column `src` would not fit target column `dst` (None if they do)."""
    if target.dynamic_typing:
        return None  # any value goes into any column
    a, b = base_kind(src.type), base_kind(dst.type)
    ka, kb = a["kind"], b["kind"]
    if ka in ("other", "array", "interval") or kb in ("other", "array", "interval"):
        if same_dialect and src.native == dst.native:
            return None
        if ka == kb == "array" and same_dialect:
            return None
        if ka == kb and ka != "other":
            return None
        return f"archive type {src.native}, target type {dst.native}"
    fa, fb = _FAMILY.get(ka, ka), _FAMILY.get(kb, kb)
    if fa != fb and (fa, fb) not in _ALSO_FITS:
        return f"archive type {src.native}, target type {dst.native}"
    if ka == kb == "int" and int(b.get("bits", 64)) < int(a.get("bits", 64)):
        return f"archive type {src.native} is wider than target type {dst.native}"
    longer = bool(b.get("length")) and (not a.get("length") or a["length"] > b["length"])
    if fa == fb == "text" and ka != "enum" and longer:
        return f"archive type {src.native} may hold longer values than target type {dst.native}"
    if (
        ka == kb == "numeric"
        and b.get("precision")
        and (
            not a.get("precision")
            or a["precision"] - (a.get("scale") or 0) > b["precision"] - (b.get("scale") or 0)
            or (a.get("scale") or 0) > (b.get("scale") or 0)
        )
    ):
        return f"archive type {src.native} does not fit target type {dst.native}"
    return None


# What else holds a name in the target that a new table cannot take: (name, what it is) rows
_MY_NAMES_SQL = "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
_SQLITE_NAMES_SQL = "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view', 'index')"
_PG_NAMES_SQL = """
SELECT ns.nspname, c.relname, CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
    WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' WHEN 'i' THEN 'index'
    WHEN 'I' THEN 'index' WHEN 'c' THEN 'type' ELSE 'relation' END
FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
WHERE (ns.nspname, c.relname) IN (SELECT * FROM unnest(%(s)s::text[], %(n)s::text[]))
UNION ALL
SELECT ns.nspname, t.typname, 'type'
FROM pg_type t JOIN pg_namespace ns ON ns.oid = t.typnamespace
WHERE t.typrelid = 0 AND (ns.nspname, t.typname) IN (SELECT * FROM unnest(%(s)s::text[], %(n)s::text[]))
"""
MYSQL_MAX_NAME = 64  # characters in a MySQL/MariaDB table name
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def name_problems(ctx: Any, pg: Any) -> list[str]:
    """The name every restored table gets in the target, checked before anything changes: two archived tables
    that would become one table (MySQL/MariaDB and SQLite hold every table in the URL's database, whatever schema
    it came from; names compared as the target compares them), and a table the restore creates whose name the
    target already gives a view, sequence, index or type, or (MySQL/MariaDB) does not allow. MySQL/MariaDB
    would otherwise find these only when it renames the new tables into place, after the data is committed."""
    td = ctx.target.dialect
    default = ctx.default_schema
    creates = [p for p in ctx.plans if p.existing is None]
    taken: list[tuple[str | None, str, str]] = []  # (schema, name, what it is)
    fold_case = td.name == "sqlite"
    try:
        if creates and pg is not None:
            schemas = [p.schema or default or "" for p in creates]
            with pg.cursor() as cur:
                cur.execute(_PG_NAMES_SQL, {"s": schemas, "n": [p.src.name for p in creates]})
                taken = [(str(a), str(b), str(c)) for a, b, c in cur.fetchall()]
            pg.rollback()
        elif creates and not td.missing_database(ctx.target.parts.database):
            with ctx.target.connection() as conn:
                if td.name == "mysql":
                    fold_case = bool(int(conn.exec_driver_sql("SELECT @@lower_case_table_names").scalar() or 0))
                sql = _MY_NAMES_SQL if td.name == "mysql" else _SQLITE_NAMES_SQL if td.name == "sqlite" else None
                if sql is not None:
                    taken = [(default, str(a), str(b).lower()) for a, b in conn.exec_driver_sql(sql).fetchall()]
                conn.rollback()
    except Exception as exc:
        raise ctx.target.fail("reading the target's schema", exc) from None

    def key(schema: str | None, name: str) -> tuple[str | None, str]:
        if fold_case:  # MySQL/MariaDB with lower_case_table_names; SQLite folds ASCII letters only
            name = name.lower() if td.name == "mysql" else name.translate(_ASCII_LOWER)
        return (schema if schema is not None else default), name

    out: list[str] = []
    first: dict[tuple[str | None, str], Any] = {}  # plan.TablePlan
    for p in ctx.plans:
        other = first.setdefault(key(p.schema, p.src.name), p)
        if other is not p:
            out.append(f"archived tables {shown(other.src.key)} and {shown(p.src.key)} would both be table "
                       f"{shown(p.target_key)} in the target")  # fmt: skip
    kinds = {key(schema, name): what for schema, name, what in taken}
    for p in creates:
        what = kinds.get(key(p.schema, p.src.name))
        if what is not None:
            what = "table" if what in ("base table", "system versioned") else what
            out.append(f"{shown(p.target_key)}: the target has a {what} of that name")
        if td.name == "mysql" and (len(p.src.name) > MYSQL_MAX_NAME or p.src.name != p.src.name.rstrip(" ")):
            out.append(f"{shown(p.target_key)}: not a table name MySQL/MariaDB allows (at most 64 characters, "
                       "no space at its end)")  # fmt: skip
    return out


def table_problems(ctx: Any, existing: list[TableDesc]) -> list[str]:
    out: list[str] = []
    td = ctx.target.dialect
    for p in ctx.plans:
        src = p.src
        if not ctx.same_dialect:
            for c in src.data_columns:
                why = non_portable_reason(c.type, td.name)
                if why:
                    out.append(f"{src.key}.{c.name} ({c.native}): not portable to {td.name}: {why}")
        if p.existing is not None:
            dst_cols = {c.name: c for c in p.existing.columns}
            for c in src.data_columns:
                d = dst_cols.get(c.name)
                if d is None:
                    out.append(f"{p.target_key}.{c.name}: column missing in the target ({c.native} in archive)")
                    continue
                if d.generated is not None:
                    out.append(f"{p.target_key}.{c.name}: generated in the target, plain in the archive")
                    continue
                why = column_problem(c, d, ctx.same_dialect, td)
                if why:
                    out.append(f"{p.target_key}.{c.name}: {why}")
                if c.nullable and not d.nullable:
                    out.append(f"{p.target_key}.{c.name}: NOT NULL in the target, nullable in the archive")
            archived = {c.name for c in src.data_columns}
            for d in p.existing.columns:
                if d.name in archived or d.generated is not None or d.nullable:
                    continue
                if d.default is None and d.identity is None and not d.autoincrement:
                    out.append(f"{p.target_key}.{d.name}: NOT NULL without default, not in the archive")
        if ctx.mode == "merge":
            pk = p.existing.primary_key if p.existing is not None else src.primary_key
            if not pk:
                out.append(f"{p.target_key}: merge needs a primary key and the table has none")
            elif not set(pk) <= {c.name for c in src.data_columns}:
                out.append(f"{p.target_key}: merge key ({', '.join(pk)}) is not in the archived columns")
    if ctx.mode == "replace":
        restored = {(p.schema if p.schema is not None else ctx.default_schema, p.src.name) for p in ctx.plans}
        dropped = {(t.schema, t.name) for t in ctx.drops}
        for t in existing:
            if (t.schema, t.name) in dropped:
                continue
            refs = [(f"{t.key}: references {fk['ref_schema']}.{fk['ref_table']}, ", (fk["ref_schema"], fk["ref_table"]))
                    for fk in t.foreign_keys]  # fmt: skip
            out += [head + "which restoring this undo archive drops (its restore created it); drop or change that "
                    "foreign key first" for head, ref in refs if ref in dropped]  # fmt: skip
            if (t.schema, t.name) not in restored:
                out += [head + "which replace would empty; restore it too (--tables) or use --mode merge"
                        for head, ref in refs if ref in restored]  # fmt: skip
    return out
