"""The portable schema description the db tier archives (db/schema.json): its shape, its checks, portable types.

Reflection that builds it lives with the dialects (statekit.tiers.sql.dialects): the portable part goes through
SQLAlchemy's Inspector for every dialect, and each dialect adds what only it knows.
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from statekit.archive.format import bound_json_values
from statekit.errors import CorruptArchive

SCHEMA_MEMBER = "db/schema.json"
# 2: PostgreSQL tables may be archived as binary COPY ("pgbinary", with a wire token per column); a document
# without such a table is still written as version 1
SCHEMA_FORMAT = 2
ENCODINGS = ("copy", "pgbinary", "jsonl")
# The dialects an archive may name, and whether its columns may use PostgreSQL's own types (enums, domains,
# arrays); statekit.tiers.sql.dialects holds one Dialect for each (a test keeps the two lists equal).
ARCHIVE_DIALECTS: dict[str, bool] = {"postgresql": True, "mysql": False, "sqlite": False}
# db/schema.json describes a table in about 5.6 KiB (300 tables of 12 columns with keys, indexes, checks and a
# foreign key: 1.6 MiB), so 64 MiB holds some 12,000 such tables. As the writer indents it, the document has
# more than 100 bytes per object or array and more than 20 per comma; one with an object or array every 16
# bytes or a comma every 8 is forged to exhaust memory (json.loads spends ~64 bytes on an empty `{}`).
SCHEMA_MAX_BYTES = 64 << 20


@dataclass
class ColumnDesc:
    """One column: portable `type` ({"kind": ...}), the source's `native` type text and its properties."""

    name: str
    type: dict[str, Any]
    native: str
    nullable: bool = True
    default: str | None = None
    generated: str | None = None  # expression of a stored generated column (never archived as data)
    identity: dict[str, Any] | None = None  # {"always": bool} for identity columns
    autoincrement: bool = False
    sequence: str | None = None  # PostgreSQL: quoted name of the sequence owned by this column


@dataclass
class TableDesc:
    """One table; `member` is the prefix of its data members; `columns` in table order."""

    schema: str | None
    name: str
    member: str
    columns: list[ColumnDesc]
    primary_key: list[str] = field(default_factory=list)
    unique: list[list[str]] = field(default_factory=list)
    foreign_keys: list[dict[str, Any]] = field(default_factory=list)
    constraints: list[dict[str, str]] = field(default_factory=list)  # PG: name, type, definition
    native_ddl: str | None = None
    indexes: list[str] = field(default_factory=list)  # native CREATE INDEX not backing a constraint
    encoding: str = "jsonl"  # "copy" / "pgbinary" (PostgreSQL COPY text / binary) or "jsonl" (portable rows)
    wire: list[str] = field(default_factory=list)  # "pgbinary": each data column's token (tiers.sql.pgbinary)
    partitioned: bool = False  # PostgreSQL partitioned table: its rows include every partition's
    sequences: list[dict[str, Any]] = field(default_factory=list)  # name, last_value, is_called

    @property
    def key(self) -> str:
        """`schema.table` (or `table` when the dialect has no schemas), used in messages and --tables."""
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def data_columns(self) -> list[ColumnDesc]:
        """Columns whose values are archived: generated columns are recomputed by the target instead."""
        return [c for c in self.columns if c.generated is None]


@dataclass
class DbSchema:
    """Everything db/schema.json holds: the source, tables in foreign-key order (parents first), types."""

    dialect: str
    server_version: str
    default_schema: str | None
    tables: list[TableDesc]
    enums: list[dict[str, Any]] = field(default_factory=list)
    domains: list[dict[str, Any]] = field(default_factory=list)
    isolation: str = ""

    def to_json_bytes(self) -> bytes:
        """db/schema.json content. Without a binary COPY table it is a version 1 document (no `wire` keys), which
        statekit releases before binary COPY read too."""
        body = asdict(self)
        binary = any(t.encoding == "pgbinary" for t in self.tables)
        if not binary:
            for t in body["tables"]:
                del t["wire"]
        doc = {"format": "statekit-db-schema", "format_version": SCHEMA_FORMAT if binary else 1, **body}
        return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> DbSchema:
        """Parse db/schema.json, refusing anything malformed (the archive is not trusted)."""
        try:
            doc = load_schema_json(data)
            if doc.get("format") != "statekit-db-schema":
                raise ValueError("not a db schema")
            if int(doc.get("format_version", 0)) > SCHEMA_FORMAT:
                raise CorruptArchive("db/schema.json was written by a newer statekit; upgrade to restore it")
            tables = []
            for t in doc["tables"]:
                _plain_actions(t.get("foreign_keys"))
                cols = [ColumnDesc(**c) for c in t.pop("columns")]
                tables.append(TableDesc(columns=cols, **t))
            desc = cls(
                dialect=str(doc["dialect"]),
                server_version=str(doc["server_version"]),
                default_schema=doc.get("default_schema"),
                tables=tables,
                enums=list(doc.get("enums", [])),
                domains=list(doc.get("domains", [])),
                isolation=str(doc.get("isolation", "")),
            )
            check_schema(desc)
            return desc
        except CorruptArchive:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise CorruptArchive(f"archive member {SCHEMA_MEMBER} is damaged: {exc}") from None


def load_schema_json(data: bytes) -> Any:
    """db/schema.json's JSON, refused (CorruptArchive) before it is parsed when it is bigger or holds more values
    than a real one (SCHEMA_MAX_BYTES); ValueError or RecursionError when it is not JSON."""
    if len(data) > SCHEMA_MAX_BYTES:
        raise CorruptArchive(f"archive member {SCHEMA_MEMBER} is implausibly large ({len(data)} bytes)")
    bound_json_values(data, SCHEMA_MEMBER, containers=len(data) // 16 + 64, commas=len(data) // 8 + 256)
    return json.loads(data)


def _plain_actions(fks: Any) -> None:
    """Archives written before statekit kept ON DELETE's column list out of the portable action carry
    `SET NULL (a, b)`: read as the plain action (the column list is in the constraint's native definition)."""
    for fk in fks if isinstance(fks, list) else []:
        action = fk.get("on_delete") if isinstance(fk, dict) else None
        if isinstance(action, str) and re.fullmatch(r"SET (NULL|DEFAULT) \(.*\)", action, re.I | re.S):
            fk["on_delete"] = action.split(" (", 1)[0]


# -- checking an archived description -----------------------------------------------------------------------

# Every kind portable_type produces; a description with another one was not written by statekit.
KINDS = {
    "int", "bool", "numeric", "float", "text", "bytes", "date", "time", "timestamp", "timestamptz", "interval",
    "uuid", "json", "jsonb", "enum", "array", "domain", "other",
}  # fmt: skip
FK_ACTIONS = {"CASCADE", "SET NULL", "SET DEFAULT", "RESTRICT", "NO ACTION"}
_MAX_NAME = 1024
_MAX_TYPE_DEPTH = 8


class _Bad(ValueError):
    """One field of db/schema.json that statekit would never have written."""


def _name(value: Any, what: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME or "\0" in value:
        raise _Bad(f"{what} is not a valid name")


def _opt_str(value: Any, what: str) -> None:
    if value is not None and (not isinstance(value, str) or "\0" in value):
        raise _Bad(f"{what} is not text")


def _int(value: Any, what: str, lo: int, hi: int, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _Bad(f"{what} is not an integer in [{lo}, {hi}]")


def _bool(value: Any, what: str) -> None:
    if not isinstance(value, bool):
        raise _Bad(f"{what} is not true/false")


def _names(value: Any, what: str) -> None:
    if not isinstance(value, list):
        raise _Bad(f"{what} is not a list of names")
    for i, v in enumerate(value):
        _name(v, f"{what}[{i}]")


def check_type(ptype: Any, what: str, depth: int = 0) -> None:
    """Refuse a portable type description that statekit would not have written (values that reach DDL
    as numbers must be numbers, names must be names)."""
    if depth > _MAX_TYPE_DEPTH or not isinstance(ptype, dict):
        raise _Bad(f"{what}: malformed type")
    kind = ptype.get("kind")
    if kind not in KINDS:
        raise _Bad(f"{what}: unknown type kind {str(kind)[:40]!r}")
    _int(ptype.get("bits"), f"{what} bits", 1, 64)
    _int(ptype.get("length"), f"{what} length", 0, 1 << 32)
    _int(ptype.get("precision"), f"{what} precision", 0, 1000)
    _int(ptype.get("scale"), f"{what} scale", -1000, 1000)
    for flag in ("unsigned", "fixed", "tz"):
        if flag in ptype and ptype[flag] is not None:
            _bool(ptype[flag], f"{what} {flag}")
    if kind in ("enum", "domain"):
        _name(ptype.get("name"), f"{what} name", optional=kind == "enum")
        _name(ptype.get("schema"), f"{what} schema", optional=True)
    if kind == "enum":
        labels = ptype.get("labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) and "\0" not in x for x in labels):
            raise _Bad(f"{what}: enum labels are not a list of text")
    if kind == "domain":
        check_type(ptype.get("base"), what, depth + 1)
    if kind == "array":
        check_type(ptype.get("item"), what, depth + 1)


def _kinds(ptype: dict[str, Any]) -> set[str]:
    inner = ptype.get("base") or ptype.get("item")
    return {str(ptype.get("kind"))} | (_kinds(inner) if isinstance(inner, dict) else set())


def _check_wire(t: TableDesc, where: str) -> None:
    from statekit.tiers.sql.pgbinary import TOKENS

    if not isinstance(t.wire, list):
        raise _Bad(f"{where} wire types are malformed")
    if t.encoding != "pgbinary":
        if t.wire:
            raise _Bad(f"{where}: wire types for a table not archived as binary COPY")
        return
    if len(t.wire) != len(t.data_columns) or not all(isinstance(w, str) and w in TOKENS for w in t.wire):
        raise _Bad(f"{where}: wire types are not one known token per archived column")


def check_schema(desc: DbSchema) -> None:
    """Check every field of an archived description for the shape statekit writes; raises _Bad (a
    ValueError) naming the first field that is not. Expressions (defaults, checks, indexes, native DDL) are
    only checked to be text here: whether they may run at all is the restore's trust decision."""
    _name(desc.dialect, "dialect")
    if desc.dialect not in ARCHIVE_DIALECTS:
        raise _Bad(f"unknown dialect {desc.dialect[:40]!r}")
    extended_types = ARCHIVE_DIALECTS[desc.dialect]
    _name(desc.default_schema, "default_schema", optional=True)
    seen: set[tuple[str | None, str]] = set()
    named_schemas = desc.dialect == "postgresql"  # a MySQL/MariaDB or SQLite archive holds one database
    for t in desc.tables:
        where = f"table {str(t.name)[:80]!r}"
        _name(t.name, where)
        _name(t.schema, f"{where} schema", optional=True)
        place = (t.schema if named_schemas else None, t.name)  # one database: names unique without schema
        if place in seen:
            raise _Bad(f"{where} is listed twice")
        seen.add(place)
        if t.member != member_prefix(t.schema, t.name):
            raise _Bad(f"{where}: member prefix does not match its name")
        if t.encoding not in ENCODINGS or (t.encoding != "jsonl" and desc.dialect != "postgresql"):
            raise _Bad(f"{where}: unknown encoding")
        _bool(t.partitioned, f"{where} partitioned")
        if not isinstance(t.columns, list):
            raise _Bad(f"{where} columns are malformed")
        cols: set[str] = set()
        for c in t.columns:
            cw = f"{where} column {str(c.name)[:80]!r}"
            _name(c.name, cw)
            if c.name in cols:
                raise _Bad(f"{cw} is listed twice")
            cols.add(c.name)
            check_type(c.type, cw)
            if not extended_types and _kinds(c.type) & {"domain", "array"}:
                raise _Bad(f"{cw}: a {desc.dialect} archive with PostgreSQL types")
            _opt_str(c.native, f"{cw} native type")
            if not isinstance(c.native, str):
                raise _Bad(f"{cw} native type is not text")
            _bool(c.nullable, f"{cw} nullable")
            _bool(c.autoincrement, f"{cw} autoincrement")
            _opt_str(c.default, f"{cw} default")
            _opt_str(c.generated, f"{cw} generated")
            _opt_str(c.sequence, f"{cw} sequence")
            if c.identity is not None and (not isinstance(c.identity, dict) or set(c.identity) != {"always"}):
                raise _Bad(f"{cw} identity is malformed")
            if c.identity is not None:
                _bool(c.identity["always"], f"{cw} identity")
        for what, group in (("primary key", [t.primary_key]), ("unique key", t.unique)):
            if not isinstance(group, list):
                raise _Bad(f"{where} {what} is malformed")
            for names in group:
                _names(names, f"{where} {what}")
                if not set(names) <= cols:
                    raise _Bad(f"{where} {what} names a column the table does not have")
        if not isinstance(t.foreign_keys, list):
            raise _Bad(f"{where} foreign keys are malformed")
        for fk in t.foreign_keys:
            if not isinstance(fk, dict):
                raise _Bad(f"{where}: malformed foreign key")
            _name(fk.get("name"), f"{where} foreign key name", optional=True)
            _names(fk.get("columns"), f"{where} foreign key columns")
            _names(fk.get("ref_columns"), f"{where} foreign key columns")
            _name(fk.get("ref_table"), f"{where} foreign key table")
            _name(fk.get("ref_schema"), f"{where} foreign key schema", optional=True)
            if not fk["columns"] or len(fk["columns"]) != len(fk["ref_columns"]) or not set(fk["columns"]) <= cols:
                raise _Bad(f"{where}: foreign key columns do not match")
            for key in ("on_delete", "on_update"):
                action = fk.get(key)
                if action is not None and (not isinstance(action, str) or action.upper() not in FK_ACTIONS):
                    raise _Bad(f"{where}: foreign key {key} is not one of {', '.join(sorted(FK_ACTIONS))}")
            if fk.get("on_delete_columns") is not None:  # ON DELETE SET NULL (k1): a part of the key's columns
                _names(fk["on_delete_columns"], f"{where} foreign key ON DELETE columns")
                action = str(fk.get("on_delete") or "").upper()
                cols_ok = fk["on_delete_columns"] and set(fk["on_delete_columns"]) <= set(fk["columns"])
                if action not in ("SET NULL", "SET DEFAULT") or not cols_ok:
                    raise _Bad(f"{where}: foreign key ON DELETE columns do not match its action and columns")
        if not isinstance(t.constraints, list) or not all(
            isinstance(c, dict) and all(isinstance(c.get(k), str) for k in ("name", "type", "definition"))
            for c in t.constraints
        ):
            raise _Bad(f"{where} constraints are malformed")
        _check_wire(t, where)
        _opt_str(t.native_ddl, f"{where} native DDL")
        if not isinstance(t.indexes, list) or not all(isinstance(x, str) for x in t.indexes):
            raise _Bad(f"{where} indexes are malformed")
        if not isinstance(t.sequences, list):
            raise _Bad(f"{where} sequences are malformed")
        for s in t.sequences:
            if not isinstance(s, dict) or s.get("column") not in cols:
                raise _Bad(f"{where}: malformed sequence position")
            _opt_str(s.get("name"), f"{where} sequence name")
            _int(s.get("last_value"), f"{where} sequence position", -(1 << 63), (1 << 63) - 1, optional=False)
            _bool(s.get("is_called"), f"{where} sequence is_called")
    if not extended_types and (desc.enums or desc.domains):
        raise _Bad(f"a {desc.dialect} archive with PostgreSQL enums or domains")
    for e in desc.enums:
        if not isinstance(e, dict):
            raise _Bad("malformed enum")
        check_type({"kind": "enum", **e}, f"enum {str(e.get('name'))[:80]!r}")
        _name(e.get("name"), "enum name")
        if any(len(x.encode()) > 63 for x in e["labels"]):
            raise _Bad(f"enum {str(e.get('name'))[:80]!r} has a label longer than PostgreSQL allows")
    for d in desc.domains:
        if not isinstance(d, dict):
            raise _Bad("malformed domain")
        dw = f"domain {str(d.get('name'))[:80]!r}"
        _name(d.get("name"), dw)
        _name(d.get("schema"), f"{dw} schema", optional=True)
        if not isinstance(d.get("type"), str):
            raise _Bad(f"{dw} type is not text")
        _opt_str(d.get("default"), f"{dw} default")
        if d.get("nullable") is not None:
            _bool(d["nullable"], f"{dw} nullable")
        checks = d.get("checks", [])
        if not isinstance(checks, list) or not all(
            isinstance(ck, dict) and isinstance(ck.get("check"), str) for ck in checks
        ):
            raise _Bad(f"{dw} checks are malformed")
        for ck in checks:
            _name(ck.get("name"), f"{dw} check name", optional=True)


# -- portable types ---------------------------------------------------------------------------------------


def portable_type(t: Any) -> dict[str, Any]:
    """Describe a reflected SQLAlchemy type as a dialect-neutral {"kind": ...} dict.

    Kinds: int(bits), bool, numeric(precision, scale), float(bits), text(length), bytes, date, time(tz),
    timestamp, timestamptz, interval, uuid, json, jsonb, enum(name, schema, labels), array(item),
    domain(name, schema, base), other. Order of the checks matters: Enum is a String, Float a Numeric."""
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql as pg_types

    if isinstance(t, pg_types.DOMAIN):
        return {"kind": "domain", "name": t.name, "schema": t.schema, "base": portable_type(t.data_type)}
    if isinstance(t, sa.Enum):
        return {"kind": "enum", "name": t.name, "schema": t.schema, "labels": list(t.enums)}
    if isinstance(t, sa.Boolean):
        return {"kind": "bool"}
    # A MySQL type exists only once SQLAlchemy's MySQL dialect is loaded; a PostgreSQL snapshot never loads it.
    my_types = sys.modules.get("sqlalchemy.dialects.mysql")
    if my_types is not None and isinstance(t, my_types.TINYINT):
        return {"kind": "int", "bits": 8, "unsigned": bool(getattr(t, "unsigned", False))}
    if my_types is not None and isinstance(t, my_types.MEDIUMINT):
        return {"kind": "int", "bits": 24, "unsigned": bool(getattr(t, "unsigned", False))}
    if isinstance(t, sa.SmallInteger):
        return {"kind": "int", "bits": 16, "unsigned": bool(getattr(t, "unsigned", False))}
    if isinstance(t, sa.BigInteger):
        return {"kind": "int", "bits": 64, "unsigned": bool(getattr(t, "unsigned", False))}
    if isinstance(t, sa.Integer):
        return {"kind": "int", "bits": 32, "unsigned": bool(getattr(t, "unsigned", False))}
    if isinstance(t, (sa.Float, sa.REAL, sa.Double)):
        bits = 32 if isinstance(t, sa.REAL) or type(t).__name__ in ("REAL", "FLOAT") else 64
        return {"kind": "float", "bits": bits}
    if isinstance(t, sa.Numeric):
        return {"kind": "numeric", "precision": t.precision, "scale": t.scale}
    if isinstance(t, pg_types.ARRAY):
        return {"kind": "array", "item": portable_type(t.item_type)}
    if isinstance(t, pg_types.JSONB):
        return {"kind": "jsonb"}
    if isinstance(t, sa.JSON):
        return {"kind": "json"}
    if isinstance(t, sa.Uuid):
        return {"kind": "uuid"}
    if isinstance(t, sa.String):
        return {"kind": "text", "length": t.length, "fixed": isinstance(t, sa.CHAR)}
    if isinstance(t, (sa.LargeBinary, sa.BINARY, sa.VARBINARY)):
        return {"kind": "bytes"}
    if isinstance(t, sa.DateTime):
        return {"kind": "timestamptz" if t.timezone else "timestamp"}
    if isinstance(t, sa.Date):
        return {"kind": "date"}
    if isinstance(t, sa.Time):
        return {"kind": "time", "tz": bool(t.timezone)}
    if isinstance(t, (sa.Interval, pg_types.INTERVAL)):
        return {"kind": "interval"}
    return {"kind": "other"}


def base_kind(ptype: dict[str, Any]) -> dict[str, Any]:
    """The type a domain stands for (domains of domains too)."""
    while ptype.get("kind") == "domain":
        ptype = ptype["base"]
    return ptype


# Kinds that exist in every supported dialect; the rest restore only into their own dialect.
PORTABLE_KINDS = {
    "int", "bool", "numeric", "float", "text", "bytes", "date", "time", "timestamp", "timestamptz",
    "uuid", "json", "jsonb", "enum",
}  # fmt: skip


def non_portable_reason(ptype: dict[str, Any], target_dialect: str) -> str | None:
    """Why a column of this type cannot go into another dialect (None if it can)."""
    kind = base_kind(ptype)["kind"]
    if kind not in PORTABLE_KINDS:
        return f"type {kind} has no equivalent in {target_dialect}"
    if kind == "time" and ptype.get("tz"):
        return f"time with time zone has no equivalent in {target_dialect}"
    return None


# -- selection and naming ----------------------------------------------------------------------------------


def matches(key: str, name: str, patterns: list[str]) -> bool:
    """Whether a table (`schema.table` key or bare name) matches any glob."""
    return any(fnmatch.fnmatchcase(key, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def select_tables(tables: list[TableDesc], include: list[str], exclude: list[str]) -> list[TableDesc]:
    """Tables matching include (default all) and not exclude, order kept."""
    inc = include or ["*"]
    return [t for t in tables if matches(t.key, t.name, inc) and not matches(t.key, t.name, exclude)]


def member_prefix(schema: str | None, name: str) -> str:
    """db/<schema>.<table> with every byte outside [A-Za-z0-9_-] percent-encoded, so any identifier makes a
    safe, unambiguous member name (the dots then only separate parts)."""

    def enc(s: str) -> str:
        return "".join(
            ch if (ch.isascii() and (ch.isalnum() or ch in "_-")) else "".join(f"%{b:02X}" for b in ch.encode())
            for ch in s
        )

    return f"db/{enc(schema)}.{enc(name)}" if schema else f"db/{enc(name)}"


def fk_order(tables: list[TableDesc]) -> list[TableDesc]:
    """Parents before children (self references and cycles ignored), otherwise stable by name."""
    by_key = {(t.schema, t.name): t for t in tables}
    deps: dict[tuple[str | None, str], set[tuple[str | None, str]]] = {}
    for t in tables:
        parents = {(fk["ref_schema"], fk["ref_table"]) for fk in t.foreign_keys}
        deps[(t.schema, t.name)] = {p for p in parents if p in by_key and p != (t.schema, t.name)}
    out: list[TableDesc] = []
    done: set[tuple[str | None, str]] = set()
    visiting: set[tuple[str | None, str]] = set()

    def visit(k: tuple[str | None, str]) -> None:
        if k in done or k in visiting:
            return
        visiting.add(k)
        for p in sorted(deps[k], key=lambda x: (x[0] or "", x[1])):
            visit(p)
        visiting.discard(k)
        done.add(k)
        out.append(by_key[k])

    for k in sorted(by_key, key=lambda x: (x[0] or "", x[1])):
        visit(k)
    return out
