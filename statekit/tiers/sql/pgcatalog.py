"""PostgreSQL's catalogue, read with plain psycopg: the description of every selected table and of the enums
and domains they use, in a handful of statements however many tables there are (at most seven, and one
more per hundred sequence positions).

`reflect` runs on the caller's connection and in its transaction (a snapshot's REPEATABLE READ READ ONLY one,
say). Plain and partitioned tables are read, temporary ones and views are not. Each table gets its columns
with portable and native types, defaults, generated expressions, identity and owned sequences; its primary
key; its unique keys (constraints, then unique indexes on plain columns, partial ones included); its foreign
keys; every constraint definition; the indexes that back none of its keys or exclusion constraints; a
native CREATE TABLE; and the encoding of its data (binary COPY when every archived column has a wire token,
else COPY text). The quoting and the CREATE TABLE live here for that reason; dialects.postgresql exports them
with the rest of its DDL.

Portable types ({"kind": ...}, see schema.portable_type) come from `format_type()` text: a builtin name with
its modifiers and `[]` suffix, else an enum or a domain named as `format_type()` writes it (schema-qualified
only when the type is not visible on the search path). Any other type is "other", and so is an array of one.
A domain's `type` is the whole `format_type()` text of its base type (`timestamp(3) with time zone`,
`character varying(10)[]`), and its portable base type is read from that text, modifiers and `[]` included. A
column of a domain type takes the domain's default when it has none of its own, and is NOT NULL when the
domain is. A foreign key names the referenced table's own schema (also where its native definition, written
under the search path, leaves it out); its portable ON DELETE is the plain action (the column list SET NULL /
SET DEFAULT may carry, PostgreSQL 15+, stays in the constraint's native definition). An index that backs a
primary key, unique or exclusion constraint of its own table is part of that constraint; any other index
(one another table's foreign key references included) is a native CREATE INDEX of the table. In a default,
each `nextval('seq'…` on an unqualified sequence becomes `nextval('"schema".seq'…` with the table's schema
(quoted as an identifier, its quotes then doubled for the string literal), the rest of the text as it was;
a `nextval` default makes an integer column autoincrement.

Nothing here imports SQLAlchemy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from statekit.tiers.sql.pgbinary import wire_token
from statekit.tiers.sql.schema import ColumnDesc, TableDesc, fk_order, matches, member_prefix

if TYPE_CHECKING:
    import psycopg

    from statekit.tiers.sql.dialects.base import Reflected


def qident(name: str) -> str:
    """A PostgreSQL quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def qtable(schema: str | None, name: str) -> str:
    """A quoted, schema-qualified table name."""
    return f"{qident(schema)}.{qident(name)}" if schema else qident(name)


def native_column(c: ColumnDesc) -> str:
    """One column of a native CREATE TABLE."""
    parts = [qident(c.name), c.native]
    if c.generated is not None:
        parts.append(f"GENERATED ALWAYS AS ({c.generated}) STORED")
    elif c.identity is not None:
        parts.append(f"GENERATED {'ALWAYS' if c.identity['always'] else 'BY DEFAULT'} AS IDENTITY")
    elif c.default is not None:
        parts.append(f"DEFAULT {c.default}")
    if not c.nullable:
        parts.append("NOT NULL")
    return " ".join(parts)


def native_create_table(t: TableDesc, schema: str | None = None) -> str:
    """CREATE TABLE with columns, primary key, unique, check and exclusion constraints; foreign keys are added
    later (dialects.postgresql.native_foreign_keys) once every table exists."""
    lines = [native_column(c) for c in t.columns]
    for con in t.constraints:
        if con["type"] in ("p", "u", "c", "x"):
            lines.append(f"CONSTRAINT {qident(con['name'])} {con['definition']}")
    body = ",\n  ".join(lines)
    return f"CREATE TABLE {qtable(schema if schema is not None else t.schema, t.name)} (\n  {body}\n)"


# -- types ------------------------------------------------------------------------------------------------

_INTS = {"smallint": 16, "integer": 32, "bigint": 64}
_FLOATS = {"real": 32, "float": 32, "double precision": 64}
_TEXTS = {"character varying": False, "character": True, '"char"': False, "name": False, "text": False, "citext": False}
_PLAIN = {
    "boolean": "bool", "bytea": "bytes", "date": "date", "uuid": "uuid", "json": "json", "jsonb": "jsonb",
    "timestamp": "timestamp", "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
}  # fmt: skip
_TIMES = {"time": False, "time without time zone": False, "time with time zone": True}
# Types with a name of their own that no portable kind stands for.
_OTHERS = frozenset(
    {
        "hstore", "inet", "cidr", "macaddr", "macaddr8", "money", "oid", "regclass", "bit", "bit varying",
        "tsvector", "tsquery", "regconfig", "int4range", "int8range", "numrange", "daterange", "tsrange",
        "tstzrange", "int4multirange", "int8multirange", "nummultirange", "datemultirange", "tsmultirange",
        "tstzmultirange",
    }
)  # fmt: skip
_OTHER: dict[str, Any] = {"kind": "other"}

_MODIFIERS = re.compile(r"\((.*)\)")  # from the first "(" to the last ")": varchar(10), numeric(10,2)
_COMMA = re.compile(r"\s*,\s*")
_ARRAY = re.compile(r"(?:\[\])+$")
# `nextval('` and the sequence name up to the literal's closing quote (a quote in the name is doubled)
_NEXTVAL = re.compile(r"nextval\('((?:[^']|'')+)'")


def _number(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def builtin_type(name: str, modifiers: list[str]) -> dict[str, Any] | None:
    """The portable type of a builtin type name as format_type() writes it without modifiers and `[]` (e.g.
    "character varying", "timestamp with time zone"), given its modifiers; None for a name that is not one."""
    key = name.lower()
    if key in _INTS:
        return {"kind": "int", "bits": _INTS[key], "unsigned": False}
    if key in _FLOATS:
        return {"kind": "float", "bits": _FLOATS[key]}
    if key == "numeric":
        p, s = (_number(m) for m in modifiers) if len(modifiers) == 2 else (None, None)
        return {"kind": "numeric", "precision": p, "scale": s}
    if key in _TEXTS:
        return {"kind": "text", "length": _number(modifiers[0]) if modifiers else None, "fixed": _TEXTS[key]}
    if key in _PLAIN:
        return {"kind": _PLAIN[key]}
    if key in _TIMES:
        return {"kind": "time", "tz": _TIMES[key]}
    if key == "interval" or name.startswith("interval "):
        return {"kind": "interval"}
    if key in _OTHERS:
        return dict(_OTHER)
    return None


def dotted(text: str) -> tuple[str, ...]:
    """The parts of a dotted name, each possibly double-quoted: `s."My ""T"".x"` → ("s", 'My "T".x')."""
    parts: list[str] = []
    part: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"' and quoted and text[i + 1 : i + 2] == '"':
            part.append('"')
            i += 1
        elif ch == '"':
            quoted = not quoted
        elif ch == "." and not quoted:
            parts.append("".join(part))
            part = []
        else:
            part.append(ch)
        i += 1
    parts.append("".join(part))
    return tuple(parts)


@dataclass
class NamedType:
    """An enum ("e") or a domain ("d") as the catalogue holds it."""

    typtype: str
    schema: str
    name: str
    visible: bool  # found by its bare name on the search path
    labels: list[str]  # enum labels in their order
    base: str  # domain: the base type as format_type() writes it, modifiers and `[]` included
    nullable: bool
    default: str | None
    checks: list[dict[str, str]]  # domain: CHECK constraints (name, expression) by name

    def portable(self, find: Callable[[tuple[str, ...]], NamedType | None]) -> dict[str, Any]:
        """Its portable type: enum(name, schema, labels) or domain(name, schema, base); the schema only when
        the type is not visible on the search path."""
        schema = None if self.visible else self.schema
        if self.typtype == "e":
            return {"kind": "enum", "name": self.name, "schema": schema, "labels": list(self.labels)}
        return {"kind": "domain", "name": self.name, "schema": schema, "base": portable_of(self.base, find)[0]}


_NAMED_TYPES_SQL = """
SELECT t.typtype::text, n.nspname, t.typname, pg_type_is_visible(t.oid),
       ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END, NOT t.typnotnull, t.typdefault,
       ARRAY(SELECT ARRAY[con.conname::text, pg_get_expr(con.conbin, 0, true)]
             FROM pg_constraint con WHERE con.contypid = t.oid AND con.contype = 'c' ORDER BY con.conname, con.oid)
FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype IN ('e', 'd')
ORDER BY n.nspname, t.typname
"""


class NamedTypes:
    """Every enum and domain of the database (by schema, then name), read on first use; and the portable
    type of any format_type() text."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur
        self._all: list[NamedType] | None = None
        self._by_key: dict[tuple[str, tuple[str, ...]], NamedType] = {}

    def all(self) -> list[NamedType]:
        """Every enum and domain, by schema then name."""
        if self._all is None:
            self._cur.execute(_NAMED_TYPES_SQL)
            self._all = []
            for typtype, schema, name, visible, labels, base, nullable, default, cons in self._cur.fetchall():
                checks = [{"name": str(n), "check": str(expr)} for n, expr in cons or []]
                named = NamedType(
                    typtype=str(typtype),
                    schema=str(schema),
                    name=str(name),
                    visible=bool(visible),
                    labels=[str(x) for x in labels],
                    base="" if base is None else str(base),
                    nullable=bool(nullable),
                    default=None if default is None else str(default),
                    checks=checks,
                )
                self._all.append(named)
            for t in self._all:
                self._by_key[(t.typtype, (t.name,) if t.visible else (t.schema, t.name))] = t
        return self._all

    def find(self, key: tuple[str, ...]) -> NamedType | None:
        """The enum, else the domain, a name as format_type() writes it stands for (split by `dotted`)."""
        self.all()
        return self._by_key.get(("e", key)) or self._by_key.get(("d", key))

    def portable(self, text: str | None) -> tuple[dict[str, Any], NamedType | None]:
        """The portable type of format_type() text (see `portable_of`), enums and domains looked up here."""
        return portable_of(text, self.find)


def portable_of(
    text: str | None, find: Callable[[tuple[str, ...]], NamedType | None]
) -> tuple[dict[str, Any], NamedType | None]:
    """The portable type of format_type() text, and the domain when it is one (not an array of one). A name
    that is not builtin is looked up with `find` (its `dotted` parts)."""
    if text is None:
        return dict(_OTHER), None
    m = _MODIFIERS.search(text)
    modifiers = _COMMA.split(m.group(1)) if m and m.group(1) else []
    array = _ARRAY.search(text) is not None
    name = _ARRAY.sub("", _MODIFIERS.sub("", text))
    ptype = builtin_type(name, modifiers)
    domain = None
    if ptype is None:
        named = find(dotted(name))
        if named is None:
            return dict(_OTHER), None
        ptype = named.portable(find)
        domain = named if named.typtype == "d" else None
    if array:
        return {"kind": "array", "item": ptype}, None
    return ptype, domain


def _collect_types(ptype: dict[str, Any], enums: set[str], domains: set[str]) -> None:
    """Add the names of the enums and domains a portable type uses (inside arrays and domains too)."""
    kind = ptype.get("kind")
    if kind == "enum" and ptype.get("name"):
        enums.add(str(ptype["name"]))
    elif kind == "domain":
        domains.add(str(ptype["name"]))
        _collect_types(ptype["base"], enums, domains)
    elif kind == "array":
        _collect_types(ptype["item"], enums, domains)


# -- tables -----------------------------------------------------------------------------------------------

# Plain tables without a page on disk hold no row (every row lives in a page of the main fork). Partitioned
# tables (their rows are in the partitions), views and foreign tables are never among them.
_NO_PAGES_SQL = """
SELECT u.k FROM unnest(%(t)s::text[]) WITH ORDINALITY AS u(t, k)
JOIN pg_class c ON c.oid = to_regclass(u.t)
WHERE c.relkind = 'r' AND pg_relation_size(c.oid) = 0
"""


def without_pages(cur: Any, names: list[str]) -> set[int]:
    """The places in `names` (quoted, qualified table names) of the plain tables that have no page on disk, so
    hold no row: one statement for all of them, where a `count(*)` or `EXISTS` costs each table a fraction of a
    millisecond (a third of a restore into 300 empty tables went to those)."""
    if not names:
        return set()
    cur.execute(_NO_PAGES_SQL, {"t": names})
    return {int(k) - 1 for (k,) in cur.fetchall()}


# Plain and partitioned tables, temporary ones excluded, in the given schemas, else in every schema but
# pg_* and information_schema*.
_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
  AND CASE WHEN cardinality(%(schemas)s::text[]) > 0 THEN n.nspname = ANY(%(schemas)s::text[])
           ELSE left(n.nspname, 3) <> 'pg_' AND left(n.nspname, 18) <> 'information_schema' END
"""

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       CASE WHEN a.atthasdef THEN pg_get_expr(d.adbin, d.adrelid) END, a.attgenerated <> '', a.attidentity::text,
       pg_get_serial_sequence(quote_ident(n.nspname) || '.' || quote_ident(c.relname), a.attname),
       ty.typname, tn.nspname, ty.typtype::text
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type ty ON ty.oid = a.atttypid
JOIN pg_namespace tn ON tn.oid = ty.typnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY(%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""


def _names(key: str, rel: str) -> str:
    """The column names of an attnum array, in its order (NULL for 0: an index expression)."""
    return (
        f"ARRAY(SELECT att.attname::text FROM unnest({key}) WITH ORDINALITY AS k(num, ord) "
        f"LEFT JOIN pg_attribute att ON att.attrelid = {rel} AND att.attnum = k.num"
    )


# Every constraint (by type, then name); for keys their columns, for foreign keys the referenced table (its
# own schema), its columns, the ON UPDATE / ON DELETE actions and the columns ON DELETE SET NULL / SET DEFAULT
# names (PostgreSQL 15+). A foreign key to a partitioned table is one
# constraint; the copies PostgreSQL keeps of it for each referenced partition (children of a constraint on the
# same table) are left out.
_CONSTRAINTS_SQL = f"""
SELECT con.conrelid, con.conname, con.contype::text, pg_get_constraintdef(con.oid),
       {_names("con.conkey", "con.conrelid")} ORDER BY k.ord),
       rn.nspname, rc.relname,
       {_names("con.confkey", "con.confrelid")} ORDER BY k.ord),
       con.confupdtype::text, con.confdeltype::text,
       -- ON DELETE SET NULL / SET DEFAULT (k1): its columns (PostgreSQL 15+; read through to_jsonb, which has
       -- no such field on older servers, and only for those two actions)
       ARRAY(SELECT att.attname::text
             FROM jsonb_array_elements_text(
                 CASE WHEN con.confdeltype IN ('n', 'd') THEN
                     CASE WHEN jsonb_typeof(to_jsonb(con) -> 'confdelsetcols') = 'array'
                          THEN to_jsonb(con) -> 'confdelsetcols' END END)
                  WITH ORDINALITY AS k(num, ord)
             JOIN pg_attribute att ON att.attrelid = con.conrelid AND att.attnum = k.num::int2 ORDER BY k.ord)
FROM pg_constraint con
LEFT JOIN pg_class rc ON rc.oid = con.confrelid
LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE con.conrelid = ANY(%s::oid[])
  AND NOT EXISTS (SELECT 1 FROM pg_constraint up WHERE up.oid = con.conparentid AND up.conrelid = con.conrelid)
ORDER BY con.conrelid, con.contype, con.conname, con.oid
"""

# The indexes backing no primary key, unique or exclusion constraint of their table, as CREATE INDEX. (A
# foreign key's conindid is the referenced table's index: such an index is the referenced table's own.)
_INDEXES_SQL = """
SELECT i.indrelid, pg_get_indexdef(i.indexrelid) AS def
FROM pg_index i
WHERE i.indrelid = ANY(%s::oid[])
  AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid
                  AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x'))
ORDER BY i.indrelid, def
"""

# The key columns of each unique index but the primary key's, by index name.
_UNIQUE_INDEXES_SQL = f"""
SELECT i.indrelid, {_names("i.indkey", "i.indrelid")} WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY(%s::oid[]) AND i.indisunique AND NOT i.indisprimary
ORDER BY i.indrelid, ic.relname
"""

# ON UPDATE / ON DELETE as schema.FK_ACTIONS spells them ("a", NO ACTION: none). The column list SET NULL /
# SET DEFAULT may carry (PostgreSQL 15+) is no part of the portable action: it stays in the native definition.
_ACTIONS = {"c": "CASCADE", "r": "RESTRICT", "n": "SET NULL", "d": "SET DEFAULT"}


def _by_table(cur: psycopg.Cursor[Any], sql: str, oids: list[int]) -> dict[int, list[Any]]:
    """The rows of one catalogue statement over every table, grouped by table oid, order kept."""
    out: dict[int, list[Any]] = {}
    cur.execute(sql, (oids,))
    for row in cur.fetchall():
        out.setdefault(int(row[0]), []).append(row[1:])
    return out


def _foreign_key(row: Any) -> dict[str, Any]:
    """A foreign key from its row of _CONSTRAINTS_SQL."""
    name, _, _, columns, ref_schema, ref_table, ref_columns, on_update, on_delete, set_columns = row
    fk = {
        "name": str(name),
        "columns": list(columns),
        "ref_schema": str(ref_schema),
        "ref_table": str(ref_table),
        "ref_columns": list(ref_columns),
        "on_delete": _ACTIONS.get(str(on_delete)),
        "on_update": _ACTIONS.get(str(on_update)),
    }
    if set_columns:  # ON DELETE SET NULL (k1): only these columns are set
        fk["on_delete_columns"] = [str(c) for c in set_columns]
    return fk


def qualified_nextval(default: str, schema: str) -> str:
    """A column default with each `nextval('seq'…` on an unqualified sequence name qualified with `schema`,
    quoted as an identifier and then as part of the string literal: `nextval('"it''s".seq'…`. The rest of
    the text, before and after, stays as it was."""
    prefix = qident(schema).replace("'", "''") + "."

    def qualify(m: re.Match[str]) -> str:
        if len(dotted(m.group(1).replace("''", "'"))) > 1:
            return m.group(0)
        return f"nextval('{prefix}{m.group(1)}'"

    return _NEXTVAL.sub(qualify, default)


def _column(row: Any, schema: str, types: NamedTypes) -> tuple[ColumnDesc, str | None]:
    """A column and its wire token."""
    name, native, notnull, default, generated, identity, seq, typname, typschema, typtype = row
    ptype, domain = types.portable(native)
    nullable = not notnull
    if domain is not None:
        if not default and domain.default is not None:
            default = domain.default
        nullable = nullable and domain.nullable
    expression = None
    if generated:
        expression, default = str(default), None
    autoincrement = identity != "" and seq is not None
    if default is not None and _NEXTVAL.search(default):
        autoincrement = autoincrement or ptype["kind"] == "int"
        default = qualified_nextval(str(default), schema)
    col = ColumnDesc(
        name=str(name),
        type=ptype,
        native=str(native),
        nullable=nullable,
        default=None if default is None else str(default),
        generated=expression,
        identity={"always": identity == "a"} if identity in ("a", "d") else None,
        autoincrement=autoincrement,
        sequence=str(seq) if seq else None,
    )
    return col, wire_token(str(typname), str(typschema), str(typtype))


def _table(
    schema: str, name: str, columns: list[Any], constraints: list[Any], indexes: list[Any],
    unique_indexes: list[Any], types: NamedTypes,
) -> TableDesc:  # fmt: skip
    """One table from its rows of each catalogue statement."""
    cols = [_column(row, schema, types) for row in columns]
    t = TableDesc(schema=schema, name=name, member=member_prefix(schema, name), columns=[c for c, _ in cols])
    for row in constraints:
        contype = row[1]
        if contype == "p":
            t.primary_key = list(row[3])
        elif contype == "u":
            t.unique.append(list(row[3]))
        elif contype == "f":
            t.foreign_keys.append(_foreign_key(row))
    for (keys,) in unique_indexes:
        if keys and None not in keys and keys not in t.unique:
            t.unique.append(list(keys))
    t.constraints = [{"name": str(r[0]), "type": str(r[1]), "definition": str(r[2])} for r in constraints]
    tokens = [w for c, w in cols if c.generated is None]
    if tokens and all(tokens):
        t.encoding, t.wire = "pgbinary", [str(w) for w in tokens]
    else:
        t.encoding, t.wire = "copy", []
    t.indexes = [str(r[0]) for r in indexes]
    t.native_ddl = native_create_table(t)
    return t


def _sequence_values(cur: psycopg.Cursor[Any], names: list[str]) -> list[tuple[int, bool]]:
    """last_value and is_called of each sequence (names as pg_get_serial_sequence gives them: quoted and
    qualified), a hundred per statement."""
    from statekit.tiers.sql.dialects.base import union_selects

    out: list[tuple[int, bool]] = []
    for sql in union_selects([f"last_value, is_called FROM {name}" for name in names]):
        cur.execute(sql)
        out.extend((int(last), bool(called)) for _, last, called in sorted(cur.fetchall()))
    return out


def reflect(
    pg: psycopg.Connection[Any],
    schemas: list[str],
    include: list[str],
    exclude: list[str],
    *,
    with_sequences: bool = True,
) -> Reflected:
    """The tables of `schemas` (every user schema when empty) whose `schema.table` key or bare name matches
    a glob of `include` (all when empty) and none of `exclude`, parents before children (schema.fk_order);
    the enums and domains their columns use (every one of a used name); and the connection's current
    schema. With `with_sequences`, each table also gets the positions of the sequences its columns own."""
    from psycopg.rows import tuple_row

    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute("SELECT current_schema()")
        row = cur.fetchone()
        default_schema = None if row is None or row[0] is None else str(row[0])
        cur.execute(_TABLES_SQL, {"schemas": list(schemas)})
        inc = include or ["*"]
        found = [(int(oid), str(s), str(n)) for oid, s, n in cur.fetchall()]
        selected = [
            (oid, s, n) for oid, s, n in found if matches(f"{s}.{n}", n, inc) and not matches(f"{s}.{n}", n, exclude)
        ]
        if not selected:
            return [], [], [], default_schema
        oids = [oid for oid, _, _ in selected]
        columns = _by_table(cur, _COLUMNS_SQL, oids)
        constraints = _by_table(cur, _CONSTRAINTS_SQL, oids)
        indexes = _by_table(cur, _INDEXES_SQL, oids)
        unique_indexes = _by_table(cur, _UNIQUE_INDEXES_SQL, oids)
        types = NamedTypes(cur)
        tables = [
            _table(s, n, columns.get(oid, []), constraints.get(oid, []), indexes.get(oid, []),
                   unique_indexes.get(oid, []), types)
            for oid, s, n in selected
        ]  # fmt: skip
        if with_sequences:
            owned = [(t, c) for t in tables for c in t.columns if c.sequence]
            values = _sequence_values(cur, [str(c.sequence) for _, c in owned])
            for (t, col), (last, called) in zip(owned, values, strict=True):
                t.sequences.append({"column": col.name, "name": col.sequence, "last_value": last, "is_called": called})
        used_enums: set[str] = set()
        used_domains: set[str] = set()
        for t in tables:
            for c in t.columns:
                _collect_types(c.type, used_enums, used_domains)
        named = types.all() if used_enums or used_domains else []
    enums = [{"schema": e.schema, "name": e.name, "labels": list(e.labels)} for e in named
             if e.typtype == "e" and e.name in used_enums]  # fmt: skip
    domains = [
        {"schema": d.schema, "name": d.name, "type": d.base, "nullable": d.nullable, "default": d.default,
         "checks": [dict(ck) for ck in d.checks]}
        for d in named
        if d.typtype == "d" and d.name in used_domains and d.schema not in ("information_schema", "pg_catalog")
    ]  # fmt: skip
    return fk_order(tables), enums, domains, default_schema
