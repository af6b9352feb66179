"""What pgcatalog no longer copies from the Inspector-based reader it replaced, each shown on a schema of its own:
reflected into db/schema.json, then snapshotted and restored into fresh, empty databases, trusted (the archive's
native SQL applied) and untrusted (an unsigned archive is data: names, validated types, keys).

1. A foreign key from schema `app` to `public.parent` names `public`, not `app` (where a table `parent` exists
   too): the untrusted restore, which builds the key from the portable description, points at the right table.
2. A default with `nextval('seq'…` on an unqualified sequence keeps the text before it, and a schema with
   quotes is quoted in the string literal: `(nextval('tag_seq') || 'x')`, a serial in schema `it's "q"`.
3. A domain keeps its whole base type: `timestamp(3) with time zone`, `character varying(12)`,
   `numeric(10,2)`, `character varying(10)[]`; `timestamptz` stays `timestamptz`.
4. ON DELETE SET NULL (k1) / SET DEFAULT (k1) (PostgreSQL 15+) archive as the plain action, which an archive
   may hold, and its columns apart (`on_delete_columns`, names checked against the key's own); an untrusted
   restore into PostgreSQL 15+ builds the same action from them, a trusted one runs the native definition.
5. A unique index (not a constraint) another table's foreign key references is its table's index, and is
   created before the foreign keys.
6. A foreign key to a partitioned table is one key, not one more per referenced partition (the copies
   PostgreSQL keeps for them).

Checks compare behaviour and catalogue facts (not the text a server version prints), so that they hold on the
test server and on the PostgreSQL of the other major version, where the last test restores all six.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from statekit.errors import CorruptArchive
from statekit.tiers.sql import pgcatalog
from statekit.tiers.sql.plan import read_schema
from statekit.tiers.sql.schema import DbSchema, TableDesc
from tests.conftest import _fresh_pg_database
from tests.db_support import execute, fetch, pg_connect, restore, rows_as_text, snap
from tests.servers import CrossServer

Check = Callable[[str, str, bool], None]  # (source, restored target, trusted)


@pytest.fixture
def pg_url3(pg_server: str) -> Iterator[str]:
    """A third fresh database on the main server (the untrusted restore's target)."""
    yield from _fresh_pg_database(pg_server)


def _round_trip(src: str, tmp_path: Path, trusted_url: str, untrusted_url: str) -> DbSchema:
    """Snapshot `src`, restore the archive into both targets (trusted, then untrusted) and return the archived
    db/schema.json as the restore reads it (so checked as any archive is)."""
    archive, _ = snap(src, tmp_path / "a.statekit")
    restore(archive, trusted_url, trusted=True)
    restore(archive, untrusted_url, trusted=False)
    return read_schema(archive)


def _table(desc: DbSchema, key: str) -> TableDesc:
    return next(t for t in desc.tables if t.key == key)


def _fails(url: str, sql: str, sqlstate: str) -> None:
    """`sql` fails on `url` with the given SQLSTATE."""
    with pg_connect(url) as pg, pytest.raises(psycopg.Error) as caught:
        pg.execute(sql)
    assert caught.value.sqlstate == sqlstate, caught.value


# -- 1. foreign keys name the referenced table's own schema ------------------------------------------------

FK_SCHEMA = [
    "CREATE SCHEMA app",
    "CREATE TABLE public.parent (id int PRIMARY KEY)",
    "CREATE TABLE app.parent (id int PRIMARY KEY)",  # the table the old reader pointed the key at
    "CREATE TABLE app.child (id int PRIMARY KEY, p int REFERENCES public.parent (id))",
    "INSERT INTO public.parent VALUES (1), (2)",
    "INSERT INTO app.parent VALUES (3)",
    "INSERT INTO app.child VALUES (1, 1)",
]


def _check_fk_schema(src: str, dst: str, trusted: bool) -> None:
    refs = (
        "SELECT rn.nspname, rc.relname FROM pg_constraint con JOIN pg_class rc ON rc.oid = con.confrelid "
        "JOIN pg_namespace rn ON rn.oid = rc.relnamespace WHERE con.conrelid = 'app.child'::regclass "
        "AND con.contype = 'f'"
    )
    assert fetch(dst, refs) == fetch(src, refs) == [("public", "parent")]
    assert rows_as_text(dst, "app.child") == rows_as_text(src, "app.child")
    execute(dst, "INSERT INTO app.child VALUES (2, 2)")  # in public.parent
    _fails(dst, "INSERT INTO app.child VALUES (3, 3)", "23503")  # only in app.parent


def test_a_foreign_key_names_the_referenced_tables_own_schema(
    pg_url: str, pg_url2: str, pg_url3: str, tmp_path: Path
) -> None:
    execute(pg_url, *FK_SCHEMA)
    desc = _round_trip(pg_url, tmp_path, pg_url2, pg_url3)
    (fk,) = _table(desc, "app.child").foreign_keys
    assert (fk["ref_schema"], fk["ref_table"]) == ("public", "parent")
    keys = [t.key for t in desc.tables]
    assert keys.index("public.parent") < keys.index("app.child")  # parents first: the real parent
    for dst, trusted in ((pg_url2, True), (pg_url3, False)):
        _check_fk_schema(pg_url, dst, trusted)


# -- 2. nextval defaults ------------------------------------------------------------------------------------

ODD = 'it\'s "q"'  # a schema whose name needs both quotes
ODD_Q = '"it\'s ""q"""'  # quoted as an identifier
ODD_LIT = ODD_Q.replace("'", "''")  # … and within a string literal


def _nextval_schema(url: str) -> list[str]:
    """The schema of test 2; `url`'s database gets ODD on its search path, so that pg_get_expr() writes the
    sequences of its tables unqualified (as it does those of public)."""
    database = make_url(url).database
    return [
        f"CREATE SCHEMA {ODD_Q}",
        f'ALTER DATABASE "{database}" SET search_path = "$user", public, {ODD_Q}',
        "CREATE SEQUENCE tag_seq",
        "CREATE SEQUENCE n_seq",
        "CREATE TABLE tagged (id int PRIMARY KEY, tag text DEFAULT (nextval('tag_seq') || 'x'), "
        "n bigint DEFAULT (nextval('n_seq') * 10))",
        "ALTER SEQUENCE tag_seq OWNED BY tagged.tag",  # owned: archived and created with the table
        "ALTER SEQUENCE n_seq OWNED BY tagged.n",
        "INSERT INTO tagged (id) VALUES (1), (2)",
        f"CREATE TABLE {ODD_Q}.counter (id serial PRIMARY KEY, v text)",
        f"INSERT INTO {ODD_Q}.counter (v) VALUES ('a'), ('b'), ('c')",
    ]


def _check_nextval(src: str, dst: str, trusted: bool) -> None:
    counter = f"{ODD_Q}.counter"
    assert rows_as_text(dst, counter) == rows_as_text(src, counter)
    assert rows_as_text(dst, "tagged") == rows_as_text(src, "tagged")
    # the serial column's default is its own sequence, trusted or not
    execute(dst, f"INSERT INTO {counter} (v) VALUES ('d')")
    assert fetch(dst, f"SELECT id FROM {counter} WHERE v = 'd'") == [(4,)]
    assert fetch(dst, f"SELECT pg_get_serial_sequence('{counter.replace(chr(39), 2 * chr(39))}', 'id')") == [
        (f"{ODD_Q}.counter_id_seq",)
    ]
    if not trusted:
        return  # an untrusted archive's other defaults are expressions: skipped
    execute(dst, "INSERT INTO tagged (id) VALUES (3)")
    assert fetch(dst, "SELECT tag, n FROM tagged WHERE id = 3") == fetch(
        dst, "SELECT (SELECT last_value FROM tag_seq) || 'x', (SELECT last_value FROM n_seq) * 10"
    )


def test_a_nextval_default_keeps_its_text_and_quotes_the_schema(
    pg_url: str, pg_url2: str, pg_url3: str, tmp_path: Path
) -> None:
    execute(pg_url, *_nextval_schema(pg_url))
    desc = _round_trip(pg_url, tmp_path, pg_url2, pg_url3)
    defaults = {c.name: c.default for c in _table(desc, "public.tagged").columns}
    assert str(defaults["tag"]).startswith("""(nextval('"public".tag_seq'::regclass) ||""")
    assert str(defaults["n"]).startswith("""(nextval('"public".n_seq'::regclass) *""")
    (counter_id, _) = _table(desc, f"{ODD}.counter").columns
    assert counter_id.default == f"nextval('{ODD_LIT}.counter_id_seq'::regclass)"
    assert counter_id.autoincrement and counter_id.sequence == f"{ODD_Q}.counter_id_seq"
    for dst, trusted in ((pg_url2, True), (pg_url3, False)):
        _check_nextval(pg_url, dst, trusted)


def test_nextval_qualification_leaves_the_rest_of_the_text() -> None:
    q = pgcatalog.qualified_nextval
    assert q("nextval('s'::regclass)", "public") == """nextval('"public".s'::regclass)"""
    assert q("(nextval('s'::regclass) || 'x'::text)", "a") == """(nextval('"a".s'::regclass) || 'x'::text)"""
    assert q("nextval('s'::regclass)", ODD) == f"nextval('{ODD_LIT}.s'::regclass)"
    # already qualified (a quote in the schema included), or quoted with a quote in the name
    assert q("""nextval('"it''s".s'::regclass)""", "a") == """nextval('"it''s".s'::regclass)"""
    assert q("nextval('h.s'::regclass)", "a") == "nextval('h.s'::regclass)"
    assert q("""nextval('"we''ird"'::regclass)""", "a") == """nextval('"a"."we''ird"'::regclass)"""
    # every nextval of the expression
    assert q("(nextval('s'::regclass) + nextval('h.t'::regclass) + nextval('u'::regclass))", "a") == (
        """(nextval('"a".s'::regclass) + nextval('h.t'::regclass) + nextval('"a".u'::regclass))"""
    )
    assert q("now()", "a") == "now()"


# -- 3. domains keep their whole base type ------------------------------------------------------------------

DOMAINS = {  # name: (base type as written, its portable type)
    "tstz3": ("timestamp(3) with time zone", {"kind": "timestamptz"}),
    "tstz_plain": ("timestamptz", {"kind": "timestamptz"}),
    "code12": ("varchar(12)", {"kind": "text", "length": 12, "fixed": False}),
    "amount": ("numeric(10,2)", {"kind": "numeric", "precision": 10, "scale": 2}),
    "tags10": ("varchar(10)[]", {"kind": "array", "item": {"kind": "text", "length": 10, "fixed": False}}),
}
DOMAIN_SCHEMA = [
    *(f"CREATE DOMAIN {name} AS {base}" for name, (base, _) in DOMAINS.items()),
    "CREATE TABLE events (id int PRIMARY KEY, at tstz3, at0 tstz_plain, code code12, price amount, tags tags10)",
    "INSERT INTO events VALUES (1, '2024-02-29 12:34:56.789+05:30', '2024-02-29 12:34:56.789012+05:30', "
    "'abcdefghijkl', 12345678.91, '{abcdefghij,x}'), (2, NULL, NULL, NULL, NULL, NULL)",
]
_DOMAIN_BASES = (
    "SELECT t.typname, format_type(t.typbasetype, t.typtypmod), t.typbasetype = 'timestamptz'::regtype "
    "FROM pg_type t WHERE t.typtype = 'd' AND t.typname = ANY(ARRAY[{}]) ORDER BY 1"
).format(", ".join(f"'{name}'" for name in DOMAINS))


def _check_domains(src: str, dst: str, trusted: bool) -> None:
    bases = fetch(dst, _DOMAIN_BASES)
    assert bases == fetch(src, _DOMAIN_BASES) and len(bases) == len(DOMAINS)
    assert {name for name, _, tz in bases if tz} == {"tstz3", "tstz_plain"}  # timestamptz stays timestamptz
    assert rows_as_text(dst, "events") == rows_as_text(src, "events")
    _fails(dst, "INSERT INTO events (id, code) VALUES (3, 'abcdefghijklm')", "22001")  # 13 > varchar(12)
    _fails(dst, "INSERT INTO events (id, tags) VALUES (3, '{abcdefghijk}')", "22001")
    execute(dst, "INSERT INTO events (id, at, price) VALUES (3, '2024-01-01 00:00:00.12345+00', 1.005)")
    assert fetch(dst, "SELECT at = '2024-01-01 00:00:00.123+00', price::text FROM events WHERE id = 3") == [
        (True, "1.01")
    ]


def test_a_domain_keeps_its_whole_base_type(pg_url: str, pg_url2: str, pg_url3: str, tmp_path: Path) -> None:
    execute(pg_url, *DOMAIN_SCHEMA)
    desc = _round_trip(pg_url, tmp_path, pg_url2, pg_url3)
    written = {str(n): str(t) for n, t, _ in fetch(pg_url, _DOMAIN_BASES)}
    archived = {d["name"]: d["type"] for d in desc.domains}
    assert archived == written  # format_type()'s whole text: modifiers, `with time zone`, `[]`
    columns = {c.name: c.type for c in _table(desc, "public.events").columns}
    for column, name in (("at", "tstz3"), ("at0", "tstz_plain"), ("code", "code12"), ("price", "amount"),
                         ("tags", "tags10")):  # fmt: skip
        assert columns[column] == {"kind": "domain", "name": name, "schema": None, "base": DOMAINS[name][1]}
    for dst, trusted in ((pg_url2, True), (pg_url3, False)):
        _check_domains(pg_url, dst, trusted)


# -- 4. ON DELETE SET NULL (k1) ---------------------------------------------------------------------------

SET_COLUMNS_SCHEMA = [
    "CREATE TABLE pair_parent (k1 int, k2 int, PRIMARY KEY (k1, k2))",
    "CREATE TABLE pair_child (id int PRIMARY KEY, k1 int, k2 int NOT NULL, "
    "CONSTRAINT pair_null FOREIGN KEY (k1, k2) REFERENCES pair_parent ON DELETE SET NULL (k1))",
    "CREATE TABLE pair_default (id int PRIMARY KEY, k1 int DEFAULT 0, k2 int NOT NULL, "
    "CONSTRAINT pair_default FOREIGN KEY (k1, k2) REFERENCES pair_parent ON DELETE SET DEFAULT (k1))",
    "INSERT INTO pair_parent VALUES (0, 10), (1, 10), (2, 20)",
    "INSERT INTO pair_child VALUES (1, 1, 10), (2, 2, 20)",
    "INSERT INTO pair_default VALUES (1, 1, 10)",
]
_FK_ACTIONS = (
    "SELECT conname, confdeltype::text, ARRAY(SELECT attname::text FROM pg_attribute a "
    "WHERE a.attrelid = con.conrelid AND a.attnum = ANY(con.confdelsetcols) ORDER BY a.attnum) "
    "FROM pg_constraint con WHERE conname IN ('pair_null', 'pair_default') ORDER BY 1"
)


def _check_set_columns(src: str, dst: str, trusted: bool) -> None:
    assert rows_as_text(dst, "pair_child") == rows_as_text(src, "pair_child")
    actions = fetch(dst, _FK_ACTIONS)
    assert [(name, action) for name, action, _ in actions] == [("pair_default", "d"), ("pair_null", "n")]
    assert actions == fetch(src, _FK_ACTIONS) == [("pair_default", "d", ["k1"]), ("pair_null", "n", ["k1"])]
    execute(dst, "DELETE FROM pair_parent WHERE k1 = 1")
    assert rows_as_text(dst, "pair_child") == [("1", None, "10"), ("2", "2", "20")]  # only k1 became NULL
    # only k1 took its default: 0, or none where an untrusted restore left the default (archive SQL) out
    assert rows_as_text(dst, "pair_default") == [("1", "0" if trusted else None, "10")]


def test_on_delete_set_null_of_some_columns_archives_the_action_and_its_columns(
    pg_url: str, pg_url2: str, pg_url3: str, tmp_path: Path
) -> None:
    execute(pg_url, *SET_COLUMNS_SCHEMA)
    desc = _round_trip(pg_url, tmp_path, pg_url2, pg_url3)  # read back: an action check_schema accepts
    for key, action in (("public.pair_child", "SET NULL"), ("public.pair_default", "SET DEFAULT")):
        table = _table(desc, key)
        (fk,) = table.foreign_keys
        assert fk["on_delete"] == action and fk["on_delete_columns"] == ["k1"]
        (native,) = [con["definition"] for con in table.constraints if con["type"] == "f"]
        assert f"ON DELETE {action} (k1)" in native  # the column list, for a same-dialect restore
    for dst, trusted in ((pg_url2, True), (pg_url3, False)):
        _check_set_columns(pg_url, dst, trusted)


def test_a_target_older_than_postgresql_15_gets_the_plain_action_and_the_plan_says_so(pg_url: str) -> None:
    from statekit.tiers.sql import ddl, pgtypes

    execute(pg_url, *SET_COLUMNS_SCHEMA)
    with pg_connect(pg_url) as pg:
        tables, _, _, _ = pgcatalog.reflect(pg, [], ["*"], [])
        child = next(t for t in tables if t.name == "pair_child")
        check = pgtypes.PgTypeCheck(pg, {})
        for set_columns, tail in ((True, 'ON DELETE SET NULL ("k1")'), (False, "ON DELETE SET NULL")):
            out = ddl._pg_untrusted_table(child, "public", check, [], lambda s: s, set_columns=set_columns)
            (fk,) = out.foreign_keys
            assert fk.endswith(tail), fk
            listed = [x for x in out.skipped if "column list" in x]
            assert listed == ([] if set_columns else ["the column list of foreign key pair_null's ON DELETE action"])


def test_an_archive_written_with_the_column_list_in_its_action_reads_as_the_plain_action() -> None:
    """Archives written before the fix carry `SET NULL (k1)` as the portable action: they restore again."""
    import json

    col = {"name": "k1", "type": {"kind": "int", "bits": 32}, "native": "integer"}
    fk = {"name": "f", "columns": ["k1"], "ref_schema": "public", "ref_table": "p", "ref_columns": ["id"]}
    doc: dict[str, Any] = {
        "format": "statekit-db-schema", "format_version": 1, "dialect": "postgresql", "server_version": "15",
        "default_schema": "public",
        "tables": [
            {"schema": "public", "name": f"c{i}", "member": f"db/public.c{i}", "columns": [col],
             "foreign_keys": [{**fk, "on_delete": action}]}
            for i, action in enumerate(["SET NULL (k1)", "set default (k1, \"K 2\")", "CASCADE"])
        ],
    }  # fmt: skip
    desc = DbSchema.from_json_bytes(json.dumps(doc).encode())
    assert [t.foreign_keys[0]["on_delete"] for t in desc.tables] == ["SET NULL", "set default", "CASCADE"]
    doc["tables"][0]["foreign_keys"][0]["on_delete"] = "SET NULL (k1); DROP TABLE x"
    with pytest.raises(CorruptArchive):
        DbSchema.from_json_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("action", "columns"),
    [
        ("SET NULL", ["k2"]),  # not a column of the key
        ("CASCADE", ["k1"]),  # an action without a column list
        (None, ["k1"]),
        ("SET NULL", []),
        ("SET NULL", "k1"),
        ("SET NULL", ["k1) ON UPDATE CASCADE, ADD COLUMN x int --"]),
    ],
)
def test_on_delete_columns_must_be_columns_of_the_key_under_set_null_or_default(action: Any, columns: Any) -> None:
    import json

    cols = [{"name": n, "type": {"kind": "int", "bits": 32}, "native": "integer"} for n in ("k1", "k2")]
    fk = {"name": "f", "columns": ["k1"], "ref_schema": "public", "ref_table": "p", "ref_columns": ["id"],
          "on_delete": action, "on_delete_columns": columns}  # fmt: skip
    doc = {
        "format": "statekit-db-schema", "format_version": 1, "dialect": "postgresql", "server_version": "15",
        "default_schema": "public",
        "tables": [{"schema": "public", "name": "c", "member": "db/public.c", "columns": cols, "foreign_keys": [fk]}],
    }  # fmt: skip
    with pytest.raises(CorruptArchive):
        DbSchema.from_json_bytes(json.dumps(doc).encode())
    fk["on_delete"], fk["on_delete_columns"] = "SET NULL", ["k1"]
    assert DbSchema.from_json_bytes(json.dumps(doc).encode()).tables[0].foreign_keys[0]["on_delete_columns"] == ["k1"]


# -- 5. a unique index another table's foreign key references ---------------------------------------------

REFERENCED_INDEX_SCHEMA = [
    "CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL)",
    "CREATE UNIQUE INDEX accounts_email ON accounts (email)",
    "CREATE TABLE sessions (id int PRIMARY KEY, email text REFERENCES accounts (email))",
    "INSERT INTO accounts VALUES (1, 'a@x'), (2, 'b@x')",
    "INSERT INTO sessions VALUES (1, 'a@x')",
]
_UNIQUE_EMAIL = (
    "SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
    "WHERE i.indrelid = 'accounts'::regclass AND i.indisunique AND NOT i.indisprimary "
    "AND i.indnatts = 1 AND i.indkey[0] = (SELECT attnum FROM pg_attribute WHERE attrelid = 'accounts'::regclass "
    "AND attname = 'email')"
)


def _check_referenced_index(src: str, dst: str, trusted: bool) -> None:
    names = [str(n) for (n,) in fetch(dst, _UNIQUE_EMAIL)]
    # trusted: the source's own index; untrusted: the unique key the description lists (a constraint's index)
    if trusted:
        assert names == ["accounts_email"]
    else:
        assert len(names) == 1
    refs = "SELECT confrelid::regclass::text FROM pg_constraint WHERE conrelid = 'sessions'::regclass AND contype = 'f'"
    assert fetch(dst, refs) == [("accounts",)]
    assert rows_as_text(dst, "sessions") == rows_as_text(src, "sessions")
    _fails(dst, "INSERT INTO accounts VALUES (3, 'a@x')", "23505")
    _fails(dst, "INSERT INTO sessions VALUES (2, 'c@x')", "23503")


def test_a_unique_index_a_foreign_key_references_stays_its_tables(
    pg_url: str, pg_url2: str, pg_url3: str, tmp_path: Path
) -> None:
    execute(pg_url, *REFERENCED_INDEX_SCHEMA, "CREATE TABLE slots (r int4range, EXCLUDE USING gist (r WITH &&))")
    with pg_connect(pg_url) as pg:  # an exclusion constraint's index is the constraint's, not the table's
        tables = {t.key: t for t in pgcatalog.reflect(pg, [], ["*"], [])[0]}
    assert tables["public.slots"].indexes == [] and [c["type"] for c in tables["public.slots"].constraints] == ["x"]
    assert [ix for ix in tables["public.accounts"].indexes if "accounts_email" in ix]
    execute(pg_url, "DROP TABLE slots")
    desc = _round_trip(pg_url, tmp_path, pg_url2, pg_url3)
    accounts = _table(desc, "public.accounts")
    (index,) = accounts.indexes
    assert index.startswith("CREATE UNIQUE INDEX accounts_email ON ")
    assert accounts.unique == [["email"]] and not any("pkey" in ix for ix in accounts.indexes)
    for dst, trusted in ((pg_url2, True), (pg_url3, False)):
        _check_referenced_index(pg_url, dst, trusted)


def test_an_exclusion_constraint_is_created_by_a_trusted_restore(
    pg_url: str, pg_url2: str, pg_url3: str, tmp_path: Path
) -> None:
    """The source's CREATE TABLE as a trusted restore runs it carries the table's EXCLUDE constraints (an
    untrusted restore lists them as skipped, as it does checks)."""
    execute(
        pg_url,
        "CREATE TABLE slots (id int PRIMARY KEY, r int4range, CONSTRAINT no_overlap EXCLUDE USING gist (r WITH &&))",
        "INSERT INTO slots VALUES (1, '[1,5)'), (2, '[5,9)')",
    )
    _round_trip(pg_url, tmp_path, pg_url2, pg_url3)
    kinds = "SELECT conname, contype::text FROM pg_constraint WHERE conrelid = 'slots'::regclass ORDER BY 1"
    assert ("no_overlap", "x") in fetch(pg_url2, kinds)
    assert rows_as_text(pg_url2, "slots") == rows_as_text(pg_url, "slots")
    _fails(pg_url2, "INSERT INTO slots VALUES (3, '[4,6)')", "23P01")
    assert ("no_overlap", "x") not in fetch(pg_url3, kinds)
    assert rows_as_text(pg_url3, "slots") == rows_as_text(pg_url, "slots")


# -- 6. a foreign key to a partitioned table is one key ---------------------------------------------------

PARTITIONED_FK_SCHEMA = [
    "CREATE TABLE orders (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)",
    "CREATE TABLE orders_low PARTITION OF orders FOR VALUES FROM (0) TO (100)",
    "CREATE TABLE orders_high PARTITION OF orders FOR VALUES FROM (100) TO (200)",
    "INSERT INTO orders SELECT g, 'o' || g FROM generate_series(1, 150) g",
    "CREATE TABLE lines (id int PRIMARY KEY, order_id int REFERENCES orders (id) ON DELETE CASCADE)",
    "INSERT INTO lines SELECT g, g FROM generate_series(1, 150) g",
]


def _check_partitioned_fk(src: str, dst: str, trusted: bool) -> None:
    # the target's orders is a plain table (a missing partitioned table is created plain: docs/FORMAT.md)
    refs = "SELECT confrelid::regclass::text FROM pg_constraint WHERE conrelid = 'lines'::regclass AND contype = 'f'"
    assert fetch(dst, refs) == [("orders",)]
    assert rows_as_text(dst, "lines") == rows_as_text(src, "lines")
    assert rows_as_text(dst, "orders") == rows_as_text(src, "orders")
    execute(dst, "DELETE FROM orders WHERE id IN (5, 120)")  # one row from each source partition: cascades
    assert fetch(dst, "SELECT count(*) FROM lines") == [(148,)]
    _fails(dst, "INSERT INTO lines VALUES (999, 500)", "23503")


def test_a_foreign_key_to_a_partitioned_table_is_one_key(
    pg_url: str, pg_url2: str, pg_url3: str, tmp_path: Path
) -> None:
    """PostgreSQL keeps a copy of such a key for every referenced partition; they used to be archived as keys of
    their own, so a restore that created the tables failed on a missing partition (exit 6)."""
    execute(pg_url, *PARTITIONED_FK_SCHEMA)
    desc = _round_trip(pg_url, tmp_path, pg_url2, pg_url3)
    assert [fk["ref_table"] for fk in _table(desc, "public.lines").foreign_keys] == ["orders"]
    for dst, trusted in ((pg_url2, True), (pg_url3, False)):
        _check_partitioned_fk(pg_url, dst, trusted)


# -- all six across major versions -----------------------------------------------------------------------


@contextmanager
def _databases(server_url: str, n: int) -> Iterator[list[str]]:
    with ExitStack() as stack:
        yield [stack.enter_context(contextmanager(_fresh_pg_database)(server_url)) for _ in range(n)]


def test_all_six_restore_into_the_other_major_version(
    pg_url: str, pg_cross_server: CrossServer, tmp_path: Path
) -> None:
    execute(pg_url, *FK_SCHEMA, *_nextval_schema(pg_url), *DOMAIN_SCHEMA, *SET_COLUMNS_SCHEMA,
            *REFERENCED_INDEX_SCHEMA, *PARTITIONED_FK_SCHEMA)  # fmt: skip
    checks: list[Check] = [_check_fk_schema, _check_nextval, _check_domains, _check_set_columns,
                           _check_referenced_index, _check_partitioned_fk]  # fmt: skip
    with _databases(pg_cross_server.url, 2) as (trusted_url, untrusted_url):
        _round_trip(pg_url, tmp_path, trusted_url, untrusted_url)
        for check in checks:
            for dst, trusted in ((trusted_url, True), (untrusted_url, False)):
                check(pg_url, dst, trusted)
