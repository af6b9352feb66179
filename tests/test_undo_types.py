"""Undoing a db restore drops every object that restore created, not only its tables, and nothing that was there.

A PostgreSQL restore that creates tables also creates the enums, domains, schemas and serial sequences they
need. The undo command it prints (run as printed) drops all of them again, types after the tables that use
them and schemas last, so the target's catalogue is exactly as before: the Evolution API fixture's
"InstanceConnectionStatus" enum included. What existed before (an enum the archive also defines, a sequence a
serial column names) survives the undo, and the restore neither takes such a sequence over nor moves it. A
created type something else has started to use since is kept, and the plan says why. MariaDB has no types
of its own (an enum is a column type): its undo leaves the database as it was with nothing more to drop.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.db_support import fetch
from tests.test_db_pg import EVOLUTION_DDL, evolution_rows
from tests.test_db_undo_created import _exec, _rewrite
from tests.test_restore_undo import _env, printed_command, run_printed, sk

_CATALOG = {
    "types": """SELECT n.nspname, t.typname, t.typtype::text,
                       ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
                FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                WHERE t.typtype IN ('e', 'd') AND n.nspname NOT IN ('pg_catalog', 'information_schema')""",
    "relations": """SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c
                    JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')""",
    "schemas": "SELECT nspname FROM pg_namespace",
    "sequences": "SELECT schemaname, sequencename, last_value FROM pg_sequences",
}


def _catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The target's enums and domains (with their labels), relations, schemas and sequence positions."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {k: sorted(tuple(r) for r in conn.exec_driver_sql(q)) for k, q in _CATALOG.items()}
    finally:
        engine.dispose()


def _restore(src: str, dst: str, tmp_path: Path, age_keys: tuple[str, str], *extra: str) -> tuple[str, dict[str, str]]:
    """Snapshot `src`, restore it into `dst` (not the configured database); the restore's stdout and stderr,
    and the env to run the printed undo command with."""
    identity, recipient = age_keys
    archive = tmp_path / f"{uuid.uuid4().hex[:8]}.statekit"
    proc = sk("snapshot", "--db-url", src, "--to", str(archive), "-r", recipient)
    assert proc.returncode == 0, proc.stderr
    env = _env(STATEKIT_DB_URL=src)
    proc = sk("restore", str(archive), "--tier", "db", "--target-url", dst, "-i", identity, "--yes",
              "--undo-dir", str(tmp_path), *extra, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr, env


def _undo(out: str, env: dict[str, str], *extra: str) -> str:
    """Run the undo command a restore printed (with `extra` flags); its stdout and stderr."""
    proc = run_printed([*printed_command(out), *extra], env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def _lines(out: str, action: str) -> list[str]:
    return [ln.strip() for ln in out.splitlines() if ln.split()[1:2] == [action]]


def test_undo_drops_the_evolution_enum_its_restore_created(
    pg_url: str, pg_url2: str, tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    """The reported case: the Evolution API tables restored into a database without them create them and their
    enum; the printed undo drops the two tables and the enum (the plan shows all three drops), and undoing the
    undo brings all of them back."""
    _exec(pg_url, *EVOLUTION_DDL, *evolution_rows(12))
    _exec(pg_url2, "CREATE TABLE other (id int PRIMARY KEY)", "INSERT INTO other VALUES (1)")
    before = _catalog(pg_url2)
    out, env = _restore(pg_url, pg_url2, tmp_path, age_keys)
    assert "CREATE TYPE … AS ENUM" in out
    assert ("public", "InstanceConnectionStatus", "e", ["open", "close", "connecting"]) in _catalog(pg_url2)["types"]

    plan = _undo(out, env, "--dry-run")
    assert len(_lines(plan, "drop")) == 3, plan
    enum = [ln for ln in _lines(plan, "drop") if "type: public.InstanceConnectionStatus" in ln]
    assert len(enum) == 1 and "sql: DROP TYPE" in enum[0], plan
    assert _catalog(pg_url2) != before  # a dry run changes nothing

    undone = _undo(out, env)
    assert _catalog(pg_url2) == before
    assert fetch(pg_url2, "SELECT * FROM other") == [(1,)]
    # the undo of the undo creates the enum and the tables again, with their rows
    _undo(undone, env)
    assert fetch(pg_url2, 'SELECT count(*) FROM "Instance"') == [(12,)]
    assert ("public", "InstanceConnectionStatus", "e", ["open", "close", "connecting"]) in _catalog(pg_url2)["types"]


_SOURCE = [
    "CREATE TYPE mood AS ENUM ('sad', 'ok')",
    """CREATE TYPE "Status" AS ENUM ('on', 'off')""",
    "CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
    """CREATE DOMAIN "okStatus" AS "Status" """,
    "CREATE DOMAIN zlvl AS posint",  # a domain over a domain: dropped in one statement with it
    """CREATE TABLE a (id serial PRIMARY KEY, m mood, s "Status"[] NOT NULL, o "okStatus", n posint, l zlvl)""",
    "CREATE TABLE b (id serial PRIMARY KEY, v text)",
    "CREATE SCHEMA app",
    "CREATE TYPE app.kind AS ENUM ('x', 'y')",
    "CREATE TABLE app.things (id bigserial PRIMARY KEY, k app.kind, a_id int REFERENCES public.a (id))",
    "INSERT INTO a (m, s, o, n, l) VALUES ('ok', '{on,off}', 'on', 5, 6), ('sad', '{}', NULL, NULL, NULL)",
    "INSERT INTO b (v) VALUES ('x'), ('y'), ('z')",
    "INSERT INTO app.things (k, a_id) VALUES ('y', 1)",
]
# On the target before the restore: the same enum mood (the archive defines it too), a table using it, and an
# unowned sequence with the name b's serial column names, well ahead.
_TARGET = [
    "CREATE TYPE mood AS ENUM ('sad', 'ok')",
    "CREATE TABLE keep (id int PRIMARY KEY, m mood)",
    "INSERT INTO keep VALUES (1, 'sad')",
    "CREATE SEQUENCE b_id_seq START 500",
    "SELECT nextval('b_id_seq')",
]


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
def test_undo_drops_every_type_and_schema_its_restore_created_and_keeps_what_was_there(
    trusted: bool, pg_url: str, pg_url2: str, tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    _exec(pg_url, *_SOURCE)
    _exec(pg_url2, *_TARGET)
    before = _catalog(pg_url2)
    out, env = _restore(pg_url, pg_url2, tmp_path, age_keys, *(["--trust-archive-sql"] if trusted else []))
    after = _catalog(pg_url2)
    created = {(s, n) for s, n, _, _ in after["types"]} - {(s, n) for s, n, _, _ in before["types"]}
    assert created == {("public", "Status"), ("public", "okStatus"), ("public", "posint"), ("public", "zlvl"),
                       ("app", "kind")}  # fmt: skip
    assert ("app",) in after["schemas"]
    # the sequence that was there, with the name b's serial column names: neither taken over nor moved
    assert ("public", "b_id_seq", 500) in after["sequences"]
    assert fetch(pg_url2, "SELECT pg_get_serial_sequence('b', 'id')") != [("public.b_id_seq",)]

    plan = _undo(out, env, "--dry-run")
    drops = _lines(plan, "drop")
    assert len([ln for ln in drops if ln.startswith("- drop      table: ")]) == 3, plan
    assert len([ln for ln in drops if "sql: DROP TYPE" in ln]) == 5, plan
    assert [ln for ln in drops if "sql: DROP SCHEMA" in ln] == [
        "- drop      schema: app  mode: replace  sql: DROP SCHEMA (created by the restore this undo archive undoes)"
    ]
    assert not any("type: public.mood" in ln for ln in drops), plan

    _undo(out, env)
    assert _catalog(pg_url2) == before  # mood, keep and b_id_seq (at 500) still there, all else gone
    assert fetch(pg_url2, "SELECT * FROM keep") == [(1, "sad")]


def test_a_created_type_that_something_else_now_uses_is_kept(
    pg_url: str, pg_url2: str, tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    """A table made after the restore uses one of the enums it created, and a function was put into the schema
    it created: the undo drops everything else and keeps those two, each with a plan line that says why."""
    _exec(pg_url, *_SOURCE)
    _exec(pg_url2, *_TARGET)
    out, env = _restore(pg_url, pg_url2, tmp_path, age_keys)
    _exec(
        pg_url2,
        """CREATE TABLE later (id int, s "Status")""",
        "CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    )
    before = _catalog(pg_url2)
    plan = _undo(out, env, "--dry-run")
    kept = _lines(plan, "keep")
    assert len(kept) == 2, plan
    assert any("type: public.Status" in ln and "column s of table later uses it" in ln for ln in kept), plan
    assert any("schema: app" in ln and "function app.f()" in ln for ln in kept), plan
    assert not any("public.Status " in ln for ln in _lines(plan, "drop")), plan
    assert any("type: public.okStatus " in ln for ln in _lines(plan, "drop")), plan  # nothing uses it

    _undo(out, env)
    now = _catalog(pg_url2)
    names = {(s, n) for s, n, _, _ in now["types"]}
    assert names == {("public", "mood"), ("public", "Status")}
    assert ("app",) in now["schemas"]
    assert {(s, n) for s, n, k in now["relations"] if k == "r"} == {("public", "keep"), ("public", "later")}
    assert now["sequences"] == [("public", "b_id_seq", 500)]
    assert now != before


@pytest.mark.parametrize(
    "listed",
    [['public."Status"; DROP TABLE keep; --'], ["Status"], ["a.b.c"], ["x" * 65 + ".t"], [7], "public.Status"],
    ids=["quote", "no-schema", "three-parts", "too-long", "not-a-string", "not-a-list"],
)
def test_a_malformed_created_types_list_is_exit_3_and_changes_nothing(
    listed: Any, pg_url: str, pg_url2: str, tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    _exec(pg_url, *_SOURCE)
    _exec(pg_url2, *_TARGET)
    out, env = _restore(pg_url, pg_url2, tmp_path, age_keys)
    restored = _catalog(pg_url2)

    def change(snapshot: dict[str, Any]) -> None:
        for tier in snapshot["tiers"]:
            if tier["tier"] == "db":
                assert "created_types_by_restore" in tier["details"]
                tier["details"]["created_types_by_restore"] = listed

    crafted = _rewrite(Path(printed_command(out)[2]), tmp_path / "crafted.statekit", age_keys, change)
    for extra in (["--dry-run"], ["--yes"]):
        proc = sk("restore", str(crafted), "--tier", "db", "--target-url", pg_url2, "-i", age_keys[0],
                  "--undo-dir", str(tmp_path), *extra, env=env)  # fmt: skip
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "created_types_by_restore" in proc.stderr
        assert _catalog(pg_url2) == restored


def test_types_an_undo_archive_lists_but_holds_or_the_system_owns_are_not_dropped(
    pg_url: str, pg_url2: str, tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    """A crafted list naming mood (which the undo archive holds: its table keep uses it), a domain of
    information_schema and a base type: none of them is dropped (nor named in the plan); the enum it names
    that the restore created still is."""
    _exec(pg_url, *_SOURCE)
    _exec(pg_url2, *_TARGET)
    _exec(pg_url, "CREATE TABLE keep (id int PRIMARY KEY, m mood)", "INSERT INTO keep VALUES (2, 'ok')")
    out, env = _restore(pg_url, pg_url2, tmp_path, age_keys)

    def change(snapshot: dict[str, Any]) -> None:
        for tier in snapshot["tiers"]:
            if tier["tier"] == "db":
                tier["details"]["created_types_by_restore"] = [
                    "public.mood", "information_schema.cardinal_number", "pg_catalog.int4", "app.kind"
                ]  # fmt: skip

    crafted = _rewrite(Path(printed_command(out)[2]), tmp_path / "crafted.statekit", age_keys, change)
    proc = sk("restore", str(crafted), "--tier", "db", "--target-url", pg_url2, "-i", age_keys[0],
              "--undo-dir", str(tmp_path), "--yes", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    drops = [ln for ln in _lines(proc.stdout, "drop") if "DROP TYPE" in ln]
    assert len(drops) == 1 and "type: app.kind" in drops[0], proc.stdout
    for name in ("mood", "cardinal_number", "int4"):
        assert name not in proc.stdout
    names = {(s, n) for s, n, _, _ in _catalog(pg_url2)["types"]}
    assert ("public", "mood") in names and ("app", "kind") not in names and ("public", "posint") in names
    assert fetch(pg_url2, "SELECT * FROM keep") == [(1, "sad")]
    assert fetch(pg_url2, "SELECT 5::information_schema.cardinal_number") == [(5,)]


# -- MariaDB: enums are column types -------------------------------------------------------------------------


def _mysql_state(url: str) -> dict[str, Any]:
    """Every table of the database with its column types, and every row."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            q = conn.dialect.identifier_preparer.quote
            names = sorted(sa.inspect(conn).get_table_names())
            return {
                n: (
                    [tuple(r) for r in conn.exec_driver_sql(f"SHOW COLUMNS FROM {q(n)}")],
                    [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {q(n)} ORDER BY 1")],
                )
                for n in names
            }
    finally:
        engine.dispose()


@pytest.mark.parametrize("source", ["mysql", "postgresql"])
def test_mariadb_undo_of_tables_with_enum_columns_leaves_nothing_behind(
    source: str, mysql_url: str, mysql_url2: str, pg_url: str, tmp_path: Path, age_keys: tuple[str, str]
) -> None:
    """Enum columns restored into MariaDB, from MariaDB or from a PostgreSQL enum: the undo drops the created
    tables and has nothing else to drop (no type of its own was created)."""
    if source == "mysql":
        src = mysql_url2
        _exec(src, "CREATE TABLE st (id int PRIMARY KEY, s ENUM('open', 'close') NOT NULL)",
              "INSERT INTO st VALUES (1, 'open'), (2, 'close')")  # fmt: skip
    else:
        src = pg_url
        _exec(src, """CREATE TYPE "St" AS ENUM ('open', 'close')""",
              """CREATE TABLE st (id int PRIMARY KEY, s "St" NOT NULL)""",
              "INSERT INTO st VALUES (1, 'open'), (2, 'close')")  # fmt: skip
    _exec(mysql_url, "CREATE TABLE other (id int PRIMARY KEY, s ENUM('a', 'b'))", "INSERT INTO other VALUES (1, 'b')")
    before = _mysql_state(mysql_url)
    out, env = _restore(src, mysql_url, tmp_path, age_keys)
    assert fetch(mysql_url, "SELECT s FROM st ORDER BY id") == [("open",), ("close",)]
    undone = _undo(out, env)
    drops = _lines(undone, "drop")
    assert len(drops) == 1 and "table: st" in drops[0] and "DROP TABLE" in drops[0], undone
    assert _mysql_state(mysql_url) == before
