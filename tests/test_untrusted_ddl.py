"""DDL from an unsigned archive, two ways its data got into the target's catalogue.

Sequences: a new table's serial column is created as smallserial/serial/bigserial, so PostgreSQL creates its
sequence under a name of its own choosing; a sequence the archive names (`nextval('orders_id_seq'…)`, the
sequence of an unrelated target table) is never taken over, used or moved, and the undo drops only what the
restore created. setval moves only sequences the target's own catalogue says the restored columns own.

Type names: an enum or domain of the archive reaches a statement only as its quoted (schema, name); any other
type text passes a strict grammar (name, modifiers, array dimensions, nothing after them) and the target's
`to_regtype()`. A domain named `integer references victim on delete cascade` used as a column's native type
used to put a foreign key (or a default) into CREATE TABLE. SQLite type names likewise take no word SQLite
reads as the start of a column constraint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from statekit.cli import run
from tests.test_restore_hostile import psycopg_connect
from tests.test_sql_trust import IDENTITY, _exec, _source, _tables, rewrite, snapshot


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg_connect(url) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def _restore(
    archive: Path, target: str, identity: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(["restore", str(archive), "--tier", "db", "--target-url", target, "-i", str(identity), "--yes",
                *extra])  # fmt: skip
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _forged(src: str, tmp_path: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    good = snapshot(src, tmp_path / "good.statekit", IDENTITY.recipient().to_string())
    return rewrite(good, tmp_path / "forged.statekit", mutate)


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in doc["tables"] if t["name"] == name)


_CATALOG = """SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2"""


# -- sequences ---------------------------------------------------------------------------------------------


def _point_at_orders_seq(doc: dict[str, Any]) -> None:
    t = _table(doc, "newtab")
    (col,) = [c for c in t["columns"] if c["name"] == "id"]
    col["default"] = "nextval('orders_id_seq'::regclass)"
    col["sequence"] = "public.orders_id_seq"
    t["sequences"] = [{"column": "id", "name": "public.orders_id_seq", "last_value": 2147483647, "is_called": True}]


@pytest.mark.parametrize("taken", [False, True], ids=["plain", "newtab_id_seq-taken"])
def test_a_new_serial_column_gets_a_new_sequence_never_an_existing_one(
    taken: bool, pg_url: str, pg_url2: str, tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _exec(pg_url, "CREATE TABLE newtab (id serial PRIMARY KEY, v text)", "INSERT INTO newtab (v) VALUES ('a'), ('b')")
    _exec(pg_url2, "CREATE TABLE orders (id serial PRIMARY KEY, item text)", "INSERT INTO orders (item) VALUES ('o1')")
    if taken:  # the name PostgreSQL would give newtab's sequence first: an unrelated sequence has it
        _exec(pg_url2, "CREATE SEQUENCE newtab_id_seq START 700", "SELECT nextval('newtab_id_seq')")
    before = _rows(pg_url2, _CATALOG)
    positions = _rows(pg_url2, "SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
    forged = _forged(pg_url, tmp_path, _point_at_orders_seq)
    (tmp_path / "undo").mkdir()
    code, out, err = _restore(forged, pg_url2, identity_file, capsys, "--undo-dir", str(tmp_path / "undo"))
    assert code == 0, err
    assert "serial column (a new sequence, named by PostgreSQL and owned by the column)" in out, out
    (own,) = _rows(pg_url2, "SELECT pg_get_serial_sequence('newtab', 'id')")[0]
    assert own not in (None, "public.orders_id_seq", "public.newtab_id_seq" if taken else None), own
    assert _rows(pg_url2, "SELECT pg_get_serial_sequence('orders', 'id')") == [("public.orders_id_seq",)]
    # the archived position went to newtab's own sequence; the others did not move
    assert _rows(pg_url2, f"SELECT last_value FROM {own}") == [(2147483647,)]
    others = _rows(pg_url2, f"SELECT sequencename, last_value FROM pg_sequences WHERE sequencename <> '{own[7:]}'")
    assert sorted(others) == positions
    _exec(pg_url2, "INSERT INTO orders (item) VALUES ('o2')")
    assert _rows(pg_url2, "SELECT id FROM orders WHERE item = 'o2'") == [(2,)]

    (undo,) = (tmp_path / "undo").glob("undo-*.statekit")
    code, out, err = _restore(undo, pg_url2, identity_file, capsys, "--no-undo")
    assert code == 0, err
    assert _rows(pg_url2, _CATALOG) == before  # newtab and its sequence gone; orders and its sequence kept
    assert _rows(pg_url2, "SELECT sequencename, last_value FROM pg_sequences ORDER BY 1") == sorted(
        [("orders_id_seq", 2), *(p for p in positions if p[0] != "orders_id_seq")]
    )


def test_replacing_a_table_sets_the_sequence_its_column_owns_on_the_target(
    pg_url: str, pg_url2: str, tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The archive names another table's sequence for a table the target has: setval goes to the sequence the
    target's column owns (pg_get_serial_sequence), the named one stays where it was."""
    _exec(pg_url, "CREATE TABLE newtab (id serial PRIMARY KEY, v text)", "INSERT INTO newtab (v) VALUES ('a'), ('b')")
    _exec(
        pg_url2,
        "CREATE TABLE orders (id serial PRIMARY KEY, item text)",
        "INSERT INTO orders (item) VALUES ('o1')",
        "CREATE TABLE newtab (id serial PRIMARY KEY, v text)",
    )
    forged = _forged(pg_url, tmp_path, _point_at_orders_seq)
    code, _, err = _restore(forged, pg_url2, identity_file, capsys, "--no-undo")
    assert code == 0, err
    assert _rows(pg_url2, "SELECT last_value FROM newtab_id_seq") == [(2147483647,)]
    assert _rows(pg_url2, "SELECT last_value, is_called FROM orders_id_seq") == [(1, True)]
    assert _rows(pg_url2, "SELECT column_default FROM information_schema.columns WHERE table_name = 'newtab' "
                          "AND column_name = 'id'") == [("nextval('newtab_id_seq'::regclass)",)]  # fmt: skip


def test_a_nullable_serial_column_stays_nullable(
    pg_url: str, pg_url2: str, tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _exec(
        pg_url,
        "CREATE TABLE s (k int PRIMARY KEY, n bigserial, m smallserial NOT NULL)",
        "ALTER TABLE s ALTER COLUMN n DROP NOT NULL",
        "INSERT INTO s (k, n) VALUES (1, NULL), (2, 5)",
    )
    forged = _forged(pg_url, tmp_path, lambda doc: None)
    code, _, err = _restore(forged, pg_url2, identity_file, capsys, "--no-undo")
    assert code == 0, err
    assert _rows(pg_url2, "SELECT k, n, m FROM s ORDER BY k") == [(1, None, 1), (2, 5, 2)]
    columns = "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = 's'"
    assert sorted(_rows(pg_url2, columns)) == [("k", "integer", "NO"), ("m", "smallint", "NO"), ("n", "bigint", "YES")]
    _exec(pg_url2, "INSERT INTO s (k) VALUES (3)")
    assert _rows(pg_url2, "SELECT n, m FROM s WHERE k = 3") == [(6, 3)]


# -- type names --------------------------------------------------------------------------------------------

_DOMAINS = "SELECT typname FROM pg_type WHERE typtype = 'd' AND typnamespace = 'public'::regnamespace"
PAYLOADS = [
    "integer references victim on delete cascade",
    "integer default (5)",
    "integer default current_user",
    "integer not null",
    'integer[] collate "C"',
]


def _domain_named(payload: str, *, column: str = "native") -> Callable[[dict[str, Any]], None]:
    """A domain named `payload`; with column="native" the acct column n says `payload` as its native type
    (its portable type a plain int), with column="domain" the column is of the domain, with "base" a second
    domain has `payload` as its base type."""

    def mutate(doc: dict[str, Any]) -> None:
        doc["domains"] = [{"schema": "public", "name": payload, "type": "integer", "nullable": True,
                           "default": None, "checks": []}]  # fmt: skip
        col = next(c for c in _table(doc, "acct")["columns"] if c["name"] == "n")
        if column == "native":
            col["native"] = payload
        elif column == "domain":
            col["type"] = {"kind": "domain", "name": payload, "schema": "public", "base": {"kind": "int", "bits": 32}}
            col["native"] = payload
        else:
            doc["domains"].append({"schema": "public", "name": "d2", "type": payload, "nullable": True,
                                   "default": None, "checks": []})  # fmt: skip

    return mutate


@pytest.mark.parametrize("where", ["native", "base"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_type_name_that_spells_an_archived_domain_is_still_checked(
    payload: str, where: str, pg_url: str, pg_url2: str, tmp_path: Path, identity_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _source("postgresql", pg_url)
    _exec(pg_url2, "CREATE TABLE victim (id int PRIMARY KEY)", "INSERT INTO victim VALUES (42)")
    before = _rows(pg_url2, _CATALOG)
    forged = _forged(pg_url, tmp_path, _domain_named(payload, column=where))
    for extra in (["--dry-run"], ["--no-undo"]):
        code, out, err = _restore(forged, pg_url2, identity_file, capsys, *extra)
        assert code == 3, (out, err)
        assert err.startswith("Error: ") and err.count("\n") == 1 and "not a plain type name" in err, err
        assert _rows(pg_url2, _CATALOG) == before
        assert _rows(pg_url2, _DOMAINS) == []


def test_a_column_of_an_archived_domain_gets_its_quoted_name_only(
    pg_url: str, pg_url2: str, tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same domain names, used structurally: a domain of that (odd) name, and nothing else."""
    _source("postgresql", pg_url)
    _exec(pg_url2, "CREATE TABLE victim (id int PRIMARY KEY)", "INSERT INTO victim VALUES (42)")
    forged = _forged(pg_url, tmp_path, _domain_named(PAYLOADS[0], column="domain"))
    code, _, err = _restore(forged, pg_url2, identity_file, capsys, "--no-undo")
    assert code == 0, err
    assert _rows(pg_url2, "SELECT conname FROM pg_constraint WHERE contype = 'f'") == []
    column = "SELECT format_type(atttypid, atttypmod), atthasdef FROM pg_attribute WHERE attrelid = 'acct'::regclass"
    assert _rows(pg_url2, f"{column} AND attname = 'n'") == [(f'"{PAYLOADS[0]}"', False)]
    _exec(pg_url2, "DELETE FROM victim")
    assert _rows(pg_url2, "SELECT count(*) FROM acct") == [(3,)]


@pytest.mark.parametrize(
    "native", ["integer references victim on delete cascade", "integer default (5)", "integer primary key",
               "int NOT NULL", "text collate nocase", "integer as (5)"],
)  # fmt: skip
def test_sqlite_type_names_take_no_column_constraint(
    native: str, tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = f"sqlite:///{tmp_path / 'src.db'}", f"sqlite:///{tmp_path / 'dst.db'}"
    _source("sqlite", src)
    _exec(dst, "CREATE TABLE victim (id int PRIMARY KEY)", "INSERT INTO victim VALUES (42)")

    def mutate(doc: dict[str, Any]) -> None:
        next(c for c in _table(doc, "acct")["columns"] if c["name"] == "n")["native"] = native

    code, out, err = _restore(_forged(src, tmp_path, mutate), dst, identity_file, capsys, "--no-undo")
    assert code == 3, (out, err)
    assert err.startswith("Error: ") and err.count("\n") == 1 and "not a plain type name" in err, err
    assert _tables(dst) == {"victim"}
