"""pgcatalog, the PostgreSQL catalogue read with plain psycopg, against what SQLAlchemy's Inspector reads.

The reference is built here from SQLAlchemy: its Inspector turned into table descriptions by the dialects'
shared reflection (`_reflect_tables`, `portable_type`), plus the PostgreSQL extras read one table at a time
(native types, identity, owned sequences, constraints, indexes, wire tokens, native DDL, sequence positions,
the enums and domains of `get_enums` / `get_domains`). Both must give the same db/schema.json, on a schema
with every kind of type, key and default, in two schemas (one named with a space), on the test server and on
the PostgreSQL of the other major version. Besides: reflecting never loads SQLAlchemy, and costs the same few
statements for 2 tables as for 200.

Where pgcatalog corrects what the Inspector-based reader wrote, the reference applies the same correction to
SQLAlchemy's answer, each one marked "Corrected:" below: a foreign key's referenced schema, ON DELETE apart from
its column list, a domain's whole base type and NOT VALID checks, `nextval` defaults, the indexes a
constraint owns, a foreign key to a partitioned table without its per-partition copies.
tests/test_db_pg_catalog_fixes.py shows each of them, and restores it.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.base import PGDialect, ischema_names

from statekit.tiers.sql import pgcatalog
from statekit.tiers.sql.dialects import dialect_for
from statekit.tiers.sql.dialects.base import Reflected, _reflect_tables
from statekit.tiers.sql.dialects.postgresql import native_create_table, qident, qtable
from statekit.tiers.sql.pgbinary import wire_token
from statekit.tiers.sql.schema import DbSchema, TableDesc, fk_order, matches, portable_type
from tests.db_support import cli_env, encrypted_snapshot, execute, pg_connect

WIDE = [
    'CREATE SCHEMA "Odd Schema"',
    "CREATE SCHEMA hidden",  # not on the search path: its types are written schema-qualified
    "CREATE TYPE mood AS ENUM ('happy', 'sad', 'it''s ok')",
    """CREATE TYPE "Odd Schema"."Color" AS ENUM ('red', 'green')""",
    "CREATE TYPE hidden.mood AS ENUM ('x', 'y')",  # the same name as a visible enum
    "CREATE TYPE hidden.lonely AS ENUM ('only')",  # never used
    "CREATE TYPE empty_enum AS ENUM ()",
    """CREATE TYPE "CHAR" AS ENUM ('c')""",
    "CREATE TYPE pair AS (a int, b text)",
    "CREATE DOMAIN posint AS integer NOT NULL DEFAULT 1 CHECK (VALUE > 0)",
    "CREATE DOMAIN small_posint AS posint CHECK (VALUE < 100) CONSTRAINT a_first CHECK (VALUE <> 50)",
    "CREATE DOMAIN hidden.code AS varchar(12) DEFAULT 'x'",
    "CREATE DOMAIN tstz3 AS timestamp(3) with time zone",
    "CREATE DOMAIN tstz AS timestamptz",
    "CREATE DOMAIN intarr AS integer[]",
    "CREATE DOMAIN moods AS mood[]",
    "CREATE DOMAIN dnum AS numeric(10,2)",
    "CREATE DOMAIN vc10arr AS varchar(10)[]",
    "CREATE DOMAIN seqdom AS bigint",
    "CREATE DOMAIN hidden.hmood_d AS hidden.mood",
    "CREATE DOMAIN lax AS int",
    "ALTER DOMAIN lax ADD CONSTRAINT lax_pos CHECK (VALUE > 0) NOT VALID",
    'CREATE DOMAIN ctext AS text COLLATE "C"',
    "CREATE SEQUENCE hidden.ext_seq",
    "CREATE SEQUENCE plain_seq",
    "CREATE DOMAIN seqdef AS int DEFAULT nextval('plain_seq')",
    """CREATE TABLE wide (
        id serial PRIMARY KEY, big bigserial, i2 smallint, i4 integer DEFAULT 4, i8 bigint DEFAULT (2 + 3),
        n numeric, n2 numeric(12,3), r real, d8 double precision, f float, b boolean DEFAULT true,
        vc varchar, vc10 varchar(10), c1 char, c5 char(5), bpc bpchar, qchar "char", nm name,
        t text DEFAULT 'x' COLLATE "C", by bytea, dt date DEFAULT now()::date, tm time, tm3 time(3),
        ttz timetz, ttz2 time(2) with time zone, ts timestamp, ts3 timestamp(3), tz timestamptz DEFAULT now(),
        tz0 timestamp(0) with time zone, iv interval, iv2 interval day to second(2), iv3 interval year,
        u uuid DEFAULT gen_random_uuid(), j json, jb jsonb, x xml, ip inet, cidr_ cidr, mac macaddr,
        mac8 macaddr8, mo money, o oid, rc regclass, bt bit(3), bv bit varying(5), tsv tsvector, tsq tsquery,
        rcfg regconfig, r4 int4range, r8 int8range, nr numrange, dr daterange, tsr tsrange, tztr tstzrange,
        mr int4multirange, pt point, lsn pg_lsn, pr pair, jp jsonpath, xi xid, oi oidvector,
        txt_arr text[], int_arr integer[], int2d integer[][], vc_arr varchar(5)[], num_arr numeric(5,2)[],
        mood_arr mood[], color_arr "Odd Schema"."Color"[], hmood hidden.mood, hmood_arr hidden.mood[],
        pi posint, spi small_posint NOT NULL, hc hidden.code, tz3d tstz3, tzd tstz, ia intarr, ms moods,
        dn dnum, vca vc10arr, posarr posint[], ipa inet[], lsna pg_lsn[], e_empty empty_enum, qc "CHAR",
        nv bigint DEFAULT nextval('plain_seq'::regclass), nv2 integer DEFAULT nextval('hidden.ext_seq'),
        nvt text DEFAULT (nextval('plain_seq') || 'x'), sd seqdom DEFAULT nextval('plain_seq'),
        gen bigint GENERATED ALWAYS AS (i8 * 2) STORED,
        "Mixed Case" text, "we""ird" int, "sp ace.dot" text
    )""",
    """CREATE TABLE idents (
        a int GENERATED ALWAYS AS IDENTITY, b bigint GENERATED BY DEFAULT AS IDENTITY (START WITH 10),
        c int, d text NOT NULL,
        PRIMARY KEY (c, a), UNIQUE (d), CONSTRAINT two UNIQUE (b, c), CONSTRAINT incl UNIQUE (c) INCLUDE (d)
    )""",
    # unique indexes count by name (m, z, a made in neither that order nor its reverse)
    "CREATE UNIQUE INDEX idents_m ON idents (a, d)",
    "CREATE UNIQUE INDEX idents_z ON idents (d, b)",
    "CREATE UNIQUE INDEX idents_dup ON idents (d)",
    "CREATE UNIQUE INDEX idents_partial ON idents (c) WHERE c > 0",
    "CREATE UNIQUE INDEX idents_expr ON idents (lower(d))",
    "CREATE UNIQUE INDEX idents_a ON idents (b) INCLUDE (c)",
    "CREATE INDEX idents_plain ON idents (c DESC)",
    # a unique index (no constraint) that another table's foreign key references: still the table's index
    "CREATE TABLE uix_parent (id int, code text)",
    "CREATE UNIQUE INDEX uix_parent_code ON uix_parent (code)",
    """CREATE TABLE "Odd Schema".uix_child (code text REFERENCES uix_parent (code))""",
    """CREATE TABLE "Odd Schema"."Parent" (id int PRIMARY KEY, code text UNIQUE, k1 int, k2 int, UNIQUE (k1, k2))""",
    """CREATE TABLE "Odd Schema"."Child" (
        id int PRIMARY KEY, parent int REFERENCES "Odd Schema"."Parent"(id) ON DELETE CASCADE,
        pcode text REFERENCES "Odd Schema"."Parent"(code) ON UPDATE SET NULL ON DELETE SET DEFAULT,
        k1 int, k2 int, self_ref int REFERENCES "Odd Schema"."Child"(id) DEFERRABLE INITIALLY DEFERRED,
        w int REFERENCES wide(id) MATCH FULL ON DELETE RESTRICT, col "Odd Schema"."Color",
        FOREIGN KEY (k2, k1) REFERENCES "Odd Schema"."Parent"(k2, k1) ON DELETE SET NULL (k1)
    )""",
    """CREATE TABLE fk_out (id int PRIMARY KEY, p int REFERENCES "Odd Schema"."Parent"(id) ON UPDATE CASCADE,
        c int)""",
    """ALTER TABLE fk_out ADD CONSTRAINT fk_out_c FOREIGN KEY (c) REFERENCES "Odd Schema"."Child" NOT VALID""",
    """CREATE TABLE "Odd Schema".to_public (id int REFERENCES fk_out(id), i text REFERENCES idents(d))""",
    "CREATE TABLE pp (id int, v text, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)",
    "CREATE TABLE pp_2024 PARTITION OF pp FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    "CREATE TABLE pp_2025 PARTITION OF pp FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
    "CREATE INDEX pp_v ON pp (v)",
    "CREATE TABLE pid (id int GENERATED BY DEFAULT AS IDENTITY, at int, PRIMARY KEY (id, at)) PARTITION BY LIST (at)",
    "CREATE TABLE pid1 PARTITION OF pid FOR VALUES IN (1)",
    "CREATE TABLE refpid (x int, y int, FOREIGN KEY (x, y) REFERENCES pid (id, at) ON DELETE CASCADE)",
    """CREATE TABLE "MixedTable" ("Id" int PRIMARY KEY, "Val" text CHECK (length("Val") > 1),
        CONSTRAINT "Chk" CHECK ("Id" > 0))""",
    """CREATE TABLE "per%cent" (id serial PRIMARY KEY, sd seqdef, hd hidden.hmood_d, l lax,
        ct ctext COLLATE "POSIX", e mood)""",
    """CREATE TABLE "tab""le" (id bigserial PRIMARY KEY)""",
    "CREATE TABLE nocols ()",
    "CREATE TABLE excluded_one (id int)",
    """CREATE TABLE "Odd Schema".skipme (id int)""",
    "CREATE VIEW a_view AS SELECT 1 AS x",
    "CREATE TABLE hidden.h (id int)",
    "SELECT setval('plain_seq', 42, false)",
    "SELECT setval('wide_id_seq', 7)",
]

# Extension types SQLAlchemy knows by name, when the server has them.
EXTENSIONS = {
    "hstore": ["CREATE EXTENSION hstore", "CREATE TABLE ext_hstore (h hstore, ha hstore[])"],
    "citext": ["CREATE EXTENSION citext", 'CREATE TABLE ext_citext (c citext, cc citext COLLATE "C", ca citext[])'],
}

# PostgreSQL 18: virtual generated columns, temporal keys, named NOT NULL constraints.
PG18 = [
    "CREATE EXTENSION btree_gist",
    "CREATE TABLE virt (id int PRIMARY KEY, v int GENERATED ALWAYS AS (id * 3) VIRTUAL, "
    "s int GENERATED ALWAYS AS (id * 2) STORED)",
    "CREATE TABLE rooms (room int, during tstzrange, CONSTRAINT rooms_wo UNIQUE (room, during WITHOUT OVERLAPS))",
    "CREATE TABLE booking (id int, room int, during tstzrange, "
    "FOREIGN KEY (room, PERIOD during) REFERENCES rooms (room, PERIOD during))",
    "CREATE TABLE nn (a int CONSTRAINT a_named_nn NOT NULL, b int NOT NULL)",
]

# (schemas, include, exclude): every user schema, explicit schemas, globs on keys and on bare names.
SELECTIONS: list[tuple[list[str], list[str], list[str]]] = [
    ([], ["*"], []),
    ([], [], []),
    (["Odd Schema"], [], []),
    (["public", "hidden"], ["*"], ["excluded_*", "hidden.*"]),
    ([], ["Odd Schema.*", "wide", "per%cent"], ["*.skipme"]),
    (["public", "public"], ["*"], ["wide"]),
    (["public"], ["no_such_table"], []),
    (["no_such_schema"], ["*"], []),
]


def _create_wide(url: str) -> int:
    """The wide schema in `url`'s database; returns the server's version number."""
    with pg_connect(url) as pg:
        version = int(pg.info.server_version)
        available = {str(r[0]) for r in pg.execute("SELECT name FROM pg_available_extensions")}
    ddl = list(WIDE)
    for name, statements in EXTENSIONS.items():
        if name in available:
            ddl += statements
    if version >= 180000 and "btree_gist" in available:
        ddl += PG18
    execute(url, *(s.replace("%", "%%") for s in ddl))
    return version


# -- the reference: SQLAlchemy's Inspector and the extras one table at a time --------------------------------


def _used(ptype: dict[str, Any], kind: str) -> set[str]:
    inner = [ptype[k] for k in ("base", "item") if k in ptype]
    own = {str(ptype["name"])} if ptype.get("kind") == kind and ptype.get("name") else set()
    return own.union(*(_used(i, kind) for i in inner))


def _corrected_nextval(sqlalchemy: str, written: str, schema: str) -> str:
    """Corrected: SQLAlchemy writes a default `nextval('seq'…` on an unqualified sequence as
    `nextval('"<schema>".seq…`, dropping the text before `nextval` and putting the schema into the string
    literal unescaped; statekit keeps that text and quotes the schema (as an identifier, then for the literal).
    `written` is the default as pg_get_expr() writes it, `sqlalchemy` what SQLAlchemy made of it."""
    before = written[: written.index("nextval('")]
    literal = qident(schema).replace("'", "''")
    return before + sqlalchemy.replace(f'nextval(\'"{schema}".', f"nextval('{literal}.", 1)


def _extras(conn: sa.Connection, t: TableDesc, with_sequences: bool) -> None:
    rel = {"t": qtable(t.schema, t.name)}
    cols = {c.name: c for c in t.columns}
    wire: dict[str, str | None] = {}
    for name, native, identity, seq, typname, typschema, typtype, written in conn.execute(
        sa.text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity::text, "
            "pg_get_serial_sequence(:t, a.attname), ty.typname, tn.nspname, ty.typtype::text, "
            "coalesce(pg_get_expr(d.adbin, d.adrelid), CASE WHEN ty.typtype = 'd' THEN ty.typdefault END) "
            "FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid "
            "JOIN pg_namespace tn ON tn.oid = ty.typnamespace "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        rel,
    ):
        col = cols[name]
        wire[name] = wire_token(typname, typschema, typtype)
        col.native = native
        if identity in ("a", "d"):
            col.identity = {"always": identity == "a"}
        col.sequence = seq
        if col.default is not None and written is not None and col.default != written:  # SQLAlchemy's nextval
            col.default = _corrected_nextval(col.default, written, str(t.schema))
    ref_schemas: dict[str, str] = {
        str(name): str(schema)
        for name, schema in conn.execute(
            sa.text(
                "SELECT con.conname, rn.nspname FROM pg_constraint con JOIN pg_class rc ON rc.oid = con.confrelid "
                "JOIN pg_namespace rn ON rn.oid = rc.relnamespace WHERE con.conrelid = CAST(:t AS regclass)"
            ),
            rel,
        )
    }
    # Corrected: a foreign key to a partitioned table is one key; SQLAlchemy also lists the copies PostgreSQL
    # keeps of it for each referenced partition (children of a constraint on the same table).
    copies = set(
        conn.scalars(
            sa.text(
                "SELECT con.conname FROM pg_constraint con JOIN pg_constraint up ON up.oid = con.conparentid "
                "AND up.conrelid = con.conrelid WHERE con.conrelid = CAST(:t AS regclass)"
            ),
            rel,
        )
    )
    t.foreign_keys = [fk for fk in t.foreign_keys if fk["name"] not in copies]
    for fk in t.foreign_keys:
        # Corrected: SQLAlchemy leaves out the referenced table's schema when the table is visible on the search
        # path (the reader then wrote the referencing table's); statekit names the referenced table's own.
        fk["ref_schema"] = ref_schemas[fk["name"]]
        # Corrected: SQLAlchemy reads ON DELETE SET NULL (k1) as one string; statekit archives the plain action
        # and the column list apart (on_delete_columns), so that a restore checks each.
        if fk["on_delete"] and " (" in fk["on_delete"]:
            fk["on_delete"], columns = fk["on_delete"].split(" (", 1)
            fk["on_delete_columns"] = [c.strip() for c in columns.rstrip(")").split(",")]
    t.constraints = [
        {"name": n, "type": ct, "definition": d}
        for n, ct, d in conn.execute(
            sa.text(
                "SELECT conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = CAST(:t AS regclass) ORDER BY contype, conname"
            ),
            rel,
        )
        if n not in copies
    ]
    tokens = [wire[c.name] for c in t.data_columns]
    t.encoding, t.wire = ("pgbinary", [str(w) for w in tokens]) if tokens and all(tokens) else ("copy", [])
    # Corrected: an index is left out only when it backs a key or exclusion constraint of this table (not when
    # it is merely the one another table's foreign key references).
    t.indexes = list(
        conn.scalars(
            sa.text(
                "SELECT pg_get_indexdef(i.indexrelid) AS def FROM pg_index i WHERE i.indrelid = CAST(:t AS regclass) "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid "
                "AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')) ORDER BY def"
            ),
            rel,
        )
    )
    t.native_ddl = native_create_table(t)
    for c in t.columns:
        if with_sequences and c.sequence:
            last, called = conn.execute(sa.text(f"SELECT last_value, is_called FROM {c.sequence}")).one()
            t.sequences.append({"column": c.name, "name": c.sequence, "last_value": last, "is_called": called})


def _whole_check(text: str) -> str:
    """A domain CHECK's expression as SQLAlchemy gives it, without what its cut left of a NOT VALID."""
    return text.removesuffix(") NOT VALI")


@contextmanager
def _whole_domain_types(conn: sa.Connection) -> Iterator[None]:
    """Corrected: SQLAlchemy cuts a domain's base type at its first "(" (`timestamp(3) with time zone` becomes
    `timestamp`, `character varying(10)[]` `character varying`); statekit keeps format_type()'s whole text, for
    the domain's `type` and the portable base type read from it. The Inspector's dialect is given the whole text
    here, and SQLAlchemy's own type parser reads it."""
    whole = {
        (str(s), str(n)): str(t)
        for s, n, t in conn.execute(
            sa.text(
                "SELECT n.nspname, t.typname, format_type(t.typbasetype, t.typtypmod) FROM pg_type t "
                "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typtype = 'd'"
            )
        )
    }
    dialect: Any = conn.dialect
    load = dialect._load_domains

    def load_whole(connection: Any, schema: Any = None, **kw: Any) -> list[dict[str, Any]]:
        return [{**d, "type": whole[(d["schema"], d["name"])]} for d in load(connection, schema, **kw)]

    dialect._load_domains = load_whole
    try:
        yield
    finally:
        del dialect._load_domains


def inspector_reflect(
    conn: sa.Connection, schemas: list[str], include: list[str], exclude: list[str], with_sequences: bool = True
) -> Reflected:
    """The description as SQLAlchemy's Inspector reads it (with the corrections marked "Corrected:")."""
    with _whole_domain_types(conn):
        return _inspector_reflect(conn, schemas, include, exclude, with_sequences)


def _inspector_reflect(
    conn: sa.Connection, schemas: list[str], include: list[str], exclude: list[str], with_sequences: bool
) -> Reflected:
    insp: Any = sa.inspect(conn)
    if not schemas:
        names = insp.get_schema_names()
        schemas = [n for n in names if not n.startswith(("pg_catalog", "information_schema", "pg_toast"))]
    tables: list[TableDesc] = []
    for schema in schemas:
        keys = [
            n
            for n in insp.get_table_names(schema=schema)
            if matches(f"{schema}.{n}", n, include or ["*"]) and not matches(f"{schema}.{n}", n, exclude)
        ]
        if keys:
            tables.extend(_reflect_tables(conn, insp, schema, schema, keys))
    for t in tables:
        _extras(conn, t, with_sequences)
    enums_used: set[str] = set()
    domains_used: set[str] = set()
    for c in (c for t in tables for c in t.columns):
        enums_used |= _used(c.type, "enum")
        domains_used |= _used(c.type, "domain")
    enums = [
        {"schema": e["schema"], "name": e["name"], "labels": list(e["labels"])}
        for e in insp.get_enums(schema="*")
        if e["name"] in enums_used
    ]
    domains = [
        {
            "schema": d["schema"],
            "name": d["name"],
            "type": d["type"],
            "nullable": d["nullable"],
            "default": d["default"],
            # Corrected: SQLAlchemy cuts "CHECK (…) NOT VALID" as if it ended at "(…)": `VALUE > 0) NOT VALI`
            "checks": [{"name": ck["name"], "check": _whole_check(ck["check"])} for ck in d["constraints"]],
        }
        for d in insp.get_domains(schema="*")
        if d["name"] in domains_used and d["schema"] not in ("information_schema", "pg_catalog")
    ]
    return fk_order(tables), enums, domains, insp.default_schema_name


def schema_json(reflected: Reflected) -> str:
    tables, enums, domains, default_schema = reflected
    desc = DbSchema("postgresql", "", default_schema, tables, enums, domains)
    return desc.to_json_bytes().decode()


# -- tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["pg_url", "pg_cross_url"])
def test_the_catalogue_reads_as_sqlalchemy_does(server: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(server)
    version = _create_wide(url)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:  # the dialect reads through pgcatalog, in the transaction of its connection
        assert dialect_for("postgresql").reflect(conn, [], ["*"], [])[0] and conn.in_transaction()
    with engine.connect() as conn, warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)  # types SQLAlchemy does not know
        conn.exec_driver_sql("CREATE TEMP TABLE scratch (id serial PRIMARY KEY)")  # never reflected
        pg: Any = conn.connection.driver_connection
        for schemas, include, exclude in SELECTIONS:
            for with_sequences in (True, False):
                want = schema_json(inspector_reflect(conn, schemas, include, exclude, with_sequences))
                got = schema_json(pgcatalog.reflect(pg, schemas, include, exclude, with_sequences=with_sequences))
                assert got == want, (schemas, include, exclude, with_sequences)
        want = schema_json(inspector_reflect(conn, [], ["*"], [], with_sequences=False))
        assert schema_json(dialect_for("postgresql").reflect(conn, [], ["*"], [], with_sequences=False)) == want
    engine.dispose()

    # the test covered what it means to: every table, both schemas, enums and domains, keys of each kind
    with pg_connect(url) as pg:
        tables, enums, domains, default_schema = pgcatalog.reflect(pg, [], ["*"], [])
    assert default_schema == "public"
    by_key = {t.key: t for t in tables}
    assert {"Odd Schema.Child", "hidden.h", "public.per%cent", 'public.tab"le', "public.nocols"} <= set(by_key)
    assert "public.a_view" not in by_key and "public.scratch" not in by_key
    assert {(e["schema"], e["name"]) for e in enums} == {
        ("Odd Schema", "Color"), ("hidden", "mood"), ("public", "mood"), ("public", "empty_enum"),
    }  # fmt: skip
    assert {d["name"] for d in domains} >= {"posint", "small_posint", "code", "seqdef", "lax"}
    kinds = {c.name: c.type for c in by_key["public.wide"].columns}
    assert kinds["hmood"] == {"kind": "enum", "name": "mood", "schema": "hidden", "labels": ["x", "y"]}
    assert kinds["spi"]["base"]["kind"] == "domain" and kinds["int_arr"]["kind"] == "array"
    assert {kinds[c]["kind"] for c in ("ip", "lsn", "pr", "lsna", "bpc")} == {"other"}
    child_fks = {fk["name"]: fk for fk in by_key["Odd Schema.Child"].foreign_keys}
    assert child_fks["Child_k2_k1_fkey"]["on_delete"] == "SET NULL"  # SET NULL (k1): the plain action
    assert {fk["ref_schema"] for fk in by_key["Odd Schema.to_public"].foreign_keys} == {"public"}
    assert by_key["public.uix_parent"].indexes and by_key["public.uix_parent"].unique == [["code"]]
    domain_types = {d["name"]: d["type"] for d in domains}
    assert domain_types["tstz3"] == "timestamp(3) with time zone" and domain_types["code"] == "character varying(12)"
    assert next(d["checks"] for d in domains if d["name"] == "lax") == [{"name": "lax_pos", "check": "VALUE > 0"}]
    assert kinds["tz3d"]["base"] == {"kind": "timestamptz"}
    assert kinds["vca"]["base"] == {"kind": "array", "item": {"kind": "text", "length": 10, "fixed": False}}
    nvt = next(c for c in by_key["public.wide"].columns if c.name == "nvt")
    assert nvt.default == """(nextval('"public".plain_seq'::regclass) || 'x'::text)"""
    assert by_key["public.idents"].primary_key == ["c", "a"]
    assert by_key["public.idents"].unique == [["d"], ["c"], ["b", "c"], ["b"], ["a", "d"], ["d", "b"]]
    assert by_key["public.per%cent"].sequences[0]["name"] == 'public."per%cent_id_seq"'
    if version >= 180000 and "public.virt" in by_key:
        assert by_key["public.virt"].columns[1].generated == "(id * 3)"


def _sqlalchemy_type(text: str) -> Any:
    """The type SQLAlchemy reflects for format_type() text, with no enum or domain in the database."""
    named: Any = type("NoNamedTypes", (), {"enums": {}, "domains": {}})()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        dialect: Any = PGDialect
        return dialect()._reflect_type(text, named, "column", None)


def test_every_type_sqlalchemy_knows_by_name_reads_the_same() -> None:
    texts = [k for k in ischema_names if k != "_array"]  # "_array" alone is no type SQLAlchemy can build
    texts += [f"{k}[]" for k in texts]
    texts += [
        "character varying(10)", "character(5)[]", "numeric(12,3)", "numeric(5,2)[]", "timestamp(3) with time zone",
        "timestamp(0) without time zone[]", "time(2) with time zone", "time(6) without time zone", "interval(3)",
        "interval day to second(2)", "interval year[]", "bit varying(5)", "bit(3)", "bpchar", "pg_lsn", "pg_lsn[]",
        "xml", "point", 'public."Mood"', '"CHAR"', '"Text"', "mood[]", "s.t", "public.citext",
    ]  # fmt: skip
    for text in texts:
        want = portable_type(_sqlalchemy_type(text))
        got, _ = pgcatalog.portable_of(text, lambda key: None)
        assert got == want, text


def test_quoted_dotted_names_split_as_format_type_writes_them() -> None:
    assert pgcatalog.dotted("mood") == ("mood",)
    assert pgcatalog.dotted('"Odd Schema"."Color"') == ("Odd Schema", "Color")
    assert pgcatalog.dotted('hidden."we""ird.name"') == ("hidden", 'we"ird.name')


def test_reflecting_never_imports_sqlalchemy(pg_url: str) -> None:
    execute(
        pg_url,
        "CREATE TYPE mood AS ENUM ('a', 'b')",
        "CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
        "CREATE TABLE t (id serial PRIMARY KEY, m mood, p posint, pt point)",
    )
    conninfo = pg_url.replace("postgresql+psycopg://", "postgresql://")
    program = f"""
import sys
import psycopg
from statekit.tiers.sql import pgcatalog
with psycopg.connect({conninfo!r}) as pg:
    tables, enums, domains, _ = pgcatalog.reflect(pg, [], ["*"], [])
assert [t.name for t in tables] == ["t"] and tables[0].sequences, tables
assert [e["name"] for e in enums] == ["mood"] and [d["name"] for d in domains] == ["posint"], (enums, domains)
assert "sqlalchemy" not in sys.modules, "reflecting loaded SQLAlchemy"
import statekit.tiers.sql.dialects.postgresql
assert "sqlalchemy" not in sys.modules, "the PostgreSQL dialect loaded SQLAlchemy"
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=cli_env())
    assert done.returncode == 0, done.stderr


def test_a_postgresql_restore_never_imports_sqlalchemy(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    """Plan, undo archive and load of a PostgreSQL restore run on psycopg alone: into an empty database (the
    tables, enum and domain are created from the unsigned archive), then again into the tables it made (replace,
    with --jobs 2), and as a dry run."""
    execute(
        pg_url,
        "CREATE TYPE mood AS ENUM ('a', 'b')",
        "CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
        "CREATE TABLE t (id serial PRIMARY KEY, m mood, p posint, note text)",
        "INSERT INTO t (m, p, note) SELECT 'a', g, md5(g::text) FROM generate_series(1, 500) g",
        "CREATE TABLE child (id int PRIMARY KEY, t_id int REFERENCES t (id))",
        "INSERT INTO child SELECT g, g FROM generate_series(1, 50) g",
    )
    archive, identity = encrypted_snapshot(pg_url, tmp_path)
    common = [str(archive), "--tier", "db", "--target-url", pg_url2, "-i", str(identity), "--undo-dir", str(tmp_path)]
    program = f"""
import sys
from statekit.cli import run
for extra in ([], ["--jobs", "2"], ["--dry-run"]):
    code = run(["restore", *{common!r}, "--yes", *extra])
    assert code == 0, (extra, code)
    assert "sqlalchemy" not in sys.modules, f"restore {{extra}} loaded SQLAlchemy"
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=cli_env())
    assert done.returncode == 0, done.stderr
    with pg_connect(pg_url2) as pg:
        assert pg.execute("SELECT count(*), sum(p), min(m::text) FROM t").fetchone() == (500, 125250, "a")
        assert pg.execute("SELECT count(*) FROM child JOIN t ON t.id = child.t_id").fetchone() == (50,)
        assert pg.execute("SELECT nextval('t_id_seq')").fetchone() == (501,)


class CountingCursor(psycopg.Cursor[Any]):
    """A cursor that records every statement it sends."""

    sent: ClassVar[list[str]] = []

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Self:
        CountingCursor.sent.append(str(query))
        return super().execute(query, params, prepare=prepare, binary=binary)


def test_two_hundred_tables_cost_the_statements_of_two(pg_url: str) -> None:
    statements = [
        "CREATE TYPE state AS ENUM ('on', 'off')",
        "CREATE DOMAIN code AS text CHECK (VALUE <> '')",
        "CREATE TABLE parent (id int PRIMARY KEY)",
    ]
    for i in range(200):
        statements.append(
            f"CREATE TABLE t{i:03} (id serial PRIMARY KEY, p int REFERENCES parent (id), s state, c code UNIQUE, "
            f"v text, g int GENERATED ALWAYS AS (id * 2) STORED)"
        )
        statements.append(f"CREATE INDEX t{i:03}_v ON t{i:03} (lower(v))")
    execute(pg_url, *statements)
    conninfo = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, cursor_factory=CountingCursor) as pg:
        counts = {}
        for pattern, n in (("t00[01]", 2), ("t*", 200)):
            CountingCursor.sent.clear()
            tables, enums, domains, _ = pgcatalog.reflect(pg, [], [pattern, "parent"], [])
            assert len(tables) == n + 1 and enums and domains and all(t.sequences for t in tables[1:])
            counts[n] = len(CountingCursor.sent)
    # a constant number of statements, plus one per hundred sequence positions
    assert counts[200] - math.ceil(200 / 100) == counts[2] - math.ceil(2 / 100) <= 8, counts
