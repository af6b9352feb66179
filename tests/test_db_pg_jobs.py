"""PostgreSQL `restore --jobs N`: tables loaded over N connections into staging tables and swapped in by the
restore's own transaction; which tables may be staged; a failed or killed restore leaves the target as it was
(and the next one clears the staging tables a killed run left); COPY FREEZE into tables emptied by the
restore."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from statekit.archive.keys import generate_identity
from statekit.archive.reader import Archive
from statekit.archive.writer import ArchiveWriter
from statekit.config import DbConfig
from statekit.errors import CorruptArchive
from statekit.fsio import atomic_output
from statekit.model import RestoreOptions
from statekit.tiers.sql import pgload, pgstage, plan_db_restore, postgres, restore_db, snapshot_db
from statekit.tiers.sql.connect import DbTarget
from tests.db_support import cli_env, encrypted_snapshot, execute, fetch, killed_at_gate, pg_connect, rows_as_text, snap

STATEKIT = str(Path(sys.executable).parent / "statekit")

# Everything a swapped table must come back with: its columns (types, defaults, generated, not null, comments),
# its constraints and indexes by name, its owner, privileges and comment, the sequence it owns.
CATALOGUE = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attgenerated,
       pg_get_expr(d.adbin, d.adrelid), col_description(a.attrelid, a.attnum)
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = '{t}'::regclass AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL SELECT conname, contype::text, convalidated, NULL, pg_get_constraintdef(oid), NULL
FROM pg_constraint WHERE conrelid = '{t}'::regclass AND contype <> 'n'
UNION ALL SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid), indisprimary, NULL, NULL, NULL
FROM pg_index WHERE indrelid = '{t}'::regclass
UNION ALL SELECT relowner::regrole::text, array_to_string(ARRAY(SELECT x::text FROM unnest(relacl) x ORDER BY 1), ' '),
       NULL, NULL, obj_description(oid, 'pg_class'), pg_get_serial_sequence('{t}', 'id')
FROM pg_class WHERE oid = '{t}'::regclass
ORDER BY 1, 2
"""


def catalogue(url: str, table: str) -> list[tuple[Any, ...]]:
    return fetch(url, CATALOGUE.format(t=table))


def oid(url: str, table: str) -> int:
    return int(fetch(url, f"SELECT '{table}'::regclass::oid")[0][0])


def stages(url: str) -> list[str]:
    return [str(r[0]) for r in fetch(url, "SELECT relname FROM pg_class WHERE relname LIKE 'statekit\\_stage\\_%%'")]


def jobs_restore(archive: Archive, target: str, jobs: int = 2, **kw: Any) -> Any:
    opts = RestoreOptions(tier="db", target=target, jobs=jobs, trust_archive_sql=True)
    return restore_db(archive, opts, DbConfig(), undo=None, **kw)


@pytest.fixture
def role(pg_url: str, pg_url2: str) -> Any:
    """A role of the test's own (roles belong to the whole server): gone again at the end."""
    name = f"sk_reader_{secrets.token_hex(4)}"
    execute(pg_url, f"CREATE ROLE {name}")
    yield name
    for url in (pg_url, pg_url2):
        execute(url, f"DROP OWNED BY {name}")
    execute(pg_url, f"DROP ROLE {name}")


def _schema(role: str) -> list[str]:
    return [
        "CREATE TABLE big (id serial PRIMARY KEY, code text NOT NULL UNIQUE, v int DEFAULT 7 CHECK (v >= 0), "
        "note text, doubled int GENERATED ALWAYS AS (v * 2) STORED)",
        "CREATE INDEX big_note ON big (lower(note)) WHERE note IS NOT NULL",
        "COMMENT ON TABLE big IS 'the big one'",
        "COMMENT ON COLUMN big.code IS 'a code'",
        f"GRANT SELECT, INSERT ON big TO {role}",
        f"GRANT UPDATE ON big TO {role} WITH GRANT OPTION",
        # a table a view refers to: loaded by the restore's own connection, into itself
        "CREATE TABLE seen (id int PRIMARY KEY, v text)",
        "CREATE VIEW seen_view AS SELECT id FROM seen",
        # tables that could be staged, too small to be: one with rows in the archive, one without
        "CREATE TABLE tiny (id int PRIMARY KEY, v text)",
        "CREATE TABLE gone (id int PRIMARY KEY)",
        # a second staged table, its names needing quotes (its index's a %, which no driver may take for a
        # placeholder: %% in the test's SQL)
        'CREATE SCHEMA "Odd Schema"',
        f"CREATE TABLE {ODD} (id bigint PRIMARY KEY, payload text NOT NULL)",
        f'CREATE INDEX "odd %%idx" ON {ODD} (payload)',
    ]


ODD = '"Odd Schema"."we ird ""t"""'


def _fill(url: str, n: int, salt: str) -> None:
    execute(
        url,
        f"TRUNCATE big, seen, tiny, gone, {ODD}",
        f"INSERT INTO {ODD} SELECT g, '{salt}' || repeat(md5(g::text), 2) FROM generate_series(1, {n // 3}) g",
        f"INSERT INTO tiny VALUES (1, '{salt}'), (2, '{salt}')",
        f"INSERT INTO big (code, v, note) SELECT '{salt}' || g, g %% 100, repeat(md5(g::text), 3) "
        f"FROM generate_series(1, {n}) g",
        f"INSERT INTO seen SELECT g, '{salt}' FROM generate_series(1, {n // 10}) g",
    )


def test_jobs_swaps_staged_tables_in_as_the_target_had_them(
    pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    """`--jobs 2`: a table nothing else refers to is loaded by two workers (its segments dealt out in turn)
    into a staging table that takes its place: rows, columns, constraints, indexes, comments, owner,
    privileges and its serial sequence as the target had them, its key rebuilt. A table a view refers to is
    loaded into itself. No staging table is left."""
    monkeypatch.setattr(postgres, "SEGMENT_BYTES", 256 << 10)
    monkeypatch.setattr(pgstage, "STAGE_FROM_BYTES", 200 << 10)
    execute(pg_url, *_schema(role))
    _fill(pg_url, 30_000, "new")
    archive, _ = snap(pg_url, tmp_path / "a.statekit")
    assert sum(1 for m in archive.members("db/") if ".big." in m.name) >= 4
    execute(pg_url2, *_schema(role))
    _fill(pg_url2, 500, "old")
    execute(pg_url2, "INSERT INTO gone VALUES (1), (2)")
    tables = ("big", "seen", "tiny", "gone", ODD)
    before = {t: catalogue(pg_url2, t) for t in tables}
    oids = {t: oid(pg_url2, t) for t in tables}
    plan = plan_db_restore(archive, RestoreOptions(tier="db", target=pg_url2, jobs=2), DbConfig())
    sql = {p["table"]: p["sql"] for p in plan.plan}
    assert "over 2 connections" in sql["public.big"] and "RENAME" in sql["public.big"]
    assert "over 2 connections" not in sql["public.seen"]
    assert "over 2 connections" in sql["public.tiny"]  # a candidate: its first segment decides
    loaders: set[str] = set()
    real = pgload.copy_segments

    def watch(cur: Any, *a: Any, **kw: Any) -> Any:
        loaders.add(str(cur.connection.info.parameter_status("application_name")))
        return real(cur, *a, **kw)

    monkeypatch.setattr(pgload, "copy_segments", watch)
    report = jobs_restore(archive, pg_url2)
    assert loaders == {"statekit-restore", "statekit-restore-1", "statekit-restore-2"}
    assert report.counts["rows"] == 43_002
    for t in tables:
        assert rows_as_text(pg_url2, t) == rows_as_text(pg_url, t)
        assert catalogue(pg_url2, t) == before[t]
    assert oid(pg_url2, "big") != oids["big"] and oid(pg_url2, ODD) != oids[ODD]  # swapped in
    assert all(oid(pg_url2, t) == oids[t] for t in ("seen", "tiny", "gone"))  # loaded (or emptied) in place
    assert stages(pg_url2) == []
    execute(pg_url2, "INSERT INTO big (code) VALUES ('after')")  # the sequence moved past the restored ids
    assert fetch(pg_url2, "SELECT id FROM big WHERE code = 'after'") == [(30_001,)]
    with pytest.raises(Exception, match="duplicate key"):
        execute(pg_url2, "INSERT INTO big (code) VALUES ('new1')")
    assert fetch(pg_url2, "SELECT count(*) FROM seen_view") == [(3_000,)]


ELIGIBILITY: dict[str, tuple[list[str], bool]] = {
    "plain": (["CREATE TABLE plain (id int PRIMARY KEY, v text)"], True),
    "serial_default": (["CREATE TABLE serial_default (id serial PRIMARY KEY, at timestamptz DEFAULT now())"], True),
    "viewed": (["CREATE TABLE viewed (id int)", "CREATE VIEW viewed_v AS SELECT * FROM viewed"], False),
    "parent": (["CREATE TABLE parent (id int PRIMARY KEY)"], False),
    "child": (["CREATE TABLE child (id int, p int REFERENCES parent)"], False),
    "triggered": (
        [
            "CREATE TABLE triggered (id int)",
            "CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
            "CREATE TRIGGER t BEFORE INSERT ON triggered FOR EACH ROW EXECUTE FUNCTION noop()",
        ],
        False,
    ),
    "policed": (["CREATE TABLE policed (id int)", "ALTER TABLE policed ENABLE ROW LEVEL SECURITY"], False),
    "ident": (["CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY)"], False),
    "parted": (["CREATE TABLE parted (id int) PARTITION BY RANGE (id)"], False),
    "part1": (["CREATE TABLE part1 PARTITION OF parted FOR VALUES FROM (0) TO (10)"], False),
    "inh_base": (["CREATE TABLE inh_base (id int)"], False),
    "inh_kid": (["CREATE TABLE inh_kid () INHERITS (inh_base)"], False),
    "typed_user": (["CREATE TABLE typed_user (id int)", "CREATE TABLE uses_row (r typed_user)"], False),
    "uses_row": ([], True),
    "distinct_opt": (
        ["CREATE TABLE distinct_opt (id int)", "ALTER TABLE distinct_opt ALTER id SET (n_distinct = 5)"],
        False,
    ),
    "stats": (["CREATE TABLE stats (a int, b int)", "CREATE STATISTICS stats_ab ON a, b FROM stats"], False),
    "clustered": (["CREATE TABLE clustered (id int PRIMARY KEY)", "CLUSTER clustered USING clustered_pkey"], False),
    "fillfactor": (["CREATE TABLE fillfactor (id int) WITH (fillfactor = 50)"], False),
    "unlogged": (["CREATE UNLOGGED TABLE unlogged (id int)"], False),
    "published": (
        ["CREATE TABLE published (id int PRIMARY KEY)", "CREATE PUBLICATION sk_pub FOR TABLE published"],
        False,
    ),
}


def test_only_tables_nothing_else_refers_to_are_staged(pg_url: str) -> None:
    """Which tables `--jobs` stages: those that can be dropped and replaced with nothing else noticing. A view,
    a trigger, a foreign key either way, a policy, an identity column, partitions, inheritance, a use of the
    row type, column options, statistics objects, a clustered index, storage options, an unlogged table or a
    publication each keep a table out (it loads into itself)."""
    execute(pg_url, *[stmt for ddl, _ in ELIGIBILITY.values() for stmt in ddl])
    try:
        with pg_connect(pg_url) as conn:
            places = pgstage.eligible(conn.cursor(), [f'"public"."{t}"' for t in ELIGIBILITY])
        assert {list(ELIGIBILITY)[i] for i in places} == {t for t, (_, ok) in ELIGIBILITY.items() if ok}
    finally:
        execute(pg_url, "DROP PUBLICATION sk_pub")


def _tampered(url: str, path: Path, identity: Any) -> Archive:
    """A snapshot whose last data segment's sha256 in the manifest is wrong."""
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=[identity.recipient()])
        summary = snapshot_db(DbConfig(url=url), w)
        segments = [e for e in w.entries if e.name.endswith((".copy", ".pgbinary"))]
        segments[-1].sha256 = "0" * 64
        w.finish({"tiers": [summary.to_json()]})
    return Archive(path, [identity])


def test_jobs_restore_of_a_damaged_archive_leaves_the_target(
    pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    """A segment that fails its check near the end of the pass (after the workers loaded others): the restore
    raises CorruptArchive, the target keeps its rows, definitions and tables, and the staging tables are
    gone."""
    monkeypatch.setattr(postgres, "SEGMENT_BYTES", 256 << 10)
    monkeypatch.setattr(pgstage, "STAGE_FROM_BYTES", 0)
    execute(pg_url, *_schema(role))
    _fill(pg_url, 30_000, "new")
    execute(pg_url2, *_schema(role))
    _fill(pg_url2, 500, "old")
    archive = _tampered(pg_url, tmp_path / "a.statekit", generate_identity())
    before = {t: (rows_as_text(pg_url2, t), catalogue(pg_url2, t), oid(pg_url2, t)) for t in ("big", "seen")}
    with pytest.raises(CorruptArchive):
        jobs_restore(archive, pg_url2)
    assert {t: (rows_as_text(pg_url2, t), catalogue(pg_url2, t), oid(pg_url2, t)) for t in ("big", "seen")} == before
    assert stages(pg_url2) == []


def test_kill_9_of_a_jobs_restore_leaves_the_target_and_the_next_one_clears_its_staging_tables(
    pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kill -9` while the workers load: the target's table is untouched (the swap never ran); the staging
    table the dead run committed stays until the next `--jobs` restore into that database, which drops it,
    but not the staging table of a run still alive (its advisory lock is held)."""
    gate_fn = (
        "CREATE FUNCTION gate(i int) RETURNS boolean LANGUAGE plpgsql AS "
        "$$ BEGIN IF i = 30000 THEN PERFORM pg_advisory_xact_lock_shared(4243); END IF; RETURN true; END $$"
    )
    ddl = "CREATE TABLE big (id int PRIMARY KEY, v text, CONSTRAINT gated CHECK (gate(id)))"
    # 60000 rows of 130 bytes: a first segment over STAGE_FROM_BYTES, with the gated row in it
    execute(pg_url, gate_fn, ddl, "INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 60000) g")
    execute(pg_url2, gate_fn, ddl, "INSERT INTO big SELECT g, 'old' || g FROM generate_series(1, 500) g")
    path, id_file = encrypted_snapshot(pg_url, tmp_path)
    before = (rows_as_text(pg_url2, "big"), catalogue(pg_url2, "big"), oid(pg_url2, "big"))
    args = [STATEKIT, "restore", str(path), "--tier", "db", "--target-url", pg_url2, "-i", str(id_file),
            "--yes", "--no-undo", "--jobs", "2"]  # fmt: skip
    with killed_at_gate(pg_url2, 4243, args, "statekit-restore-_") as (_gate, waiting):
        assert str(waiting[1]).startswith("COPY") and "statekit_stage_" in str(waiting[1])
    assert (rows_as_text(pg_url2, "big"), catalogue(pg_url2, "big"), oid(pg_url2, "big")) == before
    left = stages(pg_url2)
    assert len(left) == 1
    # a run that is still alive: its staging table has a name of the pattern and its lock is held
    alive = "statekit_stage_0000beef_0"
    execute(pg_url2, f"CREATE TABLE {alive} (id int)")
    with pg_connect(pg_url2) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (pgstage._LOCK_SPACE, pgstage._lock_key("0000beef")))
        done = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=300)
        assert done.returncode == 0, done.stderr
        assert stages(pg_url2) == [alive]
    assert rows_as_text(pg_url2, "big") == rows_as_text(pg_url, "big")
    assert catalogue(pg_url2, "big") == before[1]


def test_replace_loads_an_emptied_table_with_copy_freeze(
    pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table emptied by a replace restore is loaded with COPY FREEZE, whether it held rows (truncated with the
    others) or not (truncated for it): its rows arrive frozen, visible even to a snapshot older than the
    restore (PostgreSQL's documented effect of FREEZE; TRUNCATE alone leaves such a snapshot an empty table).
    An empty table that another table's foreign key still refers to (its key is kept: a comment on it) is not
    truncated for it and loads without FREEZE."""
    monkeypatch.setattr(pgload, "REBUILD_FROM_BYTES", 0)
    ddl = [
        "CREATE TABLE full_t (id int PRIMARY KEY, v text)",
        "CREATE TABLE empty_t (id int PRIMARY KEY, v text)",
        "CREATE TABLE referred (id int PRIMARY KEY, v text)",
        "COMMENT ON INDEX referred_pkey IS 'kept as it is'",
        "CREATE TABLE referring (id int PRIMARY KEY, r int REFERENCES referred)",
    ]
    fill = [
        f"INSERT INTO {t} SELECT g, md5(g::text) FROM generate_series(1, 2000) g"
        for t in ("full_t", "empty_t", "referred")
    ]
    execute(pg_url, *ddl, *fill)
    archive, _ = snap(pg_url, tmp_path / "a.statekit")
    execute(pg_url2, *ddl, "INSERT INTO full_t VALUES (1, 'old')")
    tables = ("full_t", "empty_t", "referred", "referring")
    with pg_connect(pg_url2) as old:
        old.autocommit = False
        old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        old.execute("SELECT 1")  # the snapshot is taken; no table is touched (no lock held)
        restore_db(archive, RestoreOptions(tier="db", target=pg_url2), DbConfig(), undo=None)
        seen = {t: old.execute(f"SELECT count(*) FROM {t}").fetchone() for t in tables}
        old.rollback()
    assert seen == {"full_t": (2000,), "empty_t": (2000,), "referred": (0,), "referring": (0,)}
    for t in tables:
        assert rows_as_text(pg_url2, t) == rows_as_text(pg_url, t)


def test_a_table_changed_after_its_staging_table_was_made_fails_the_swap(pg_url2: str) -> None:
    """The swap checks each table again under its ACCESS EXCLUSIVE lock: one whose definition changed since its
    staging table was made (a column added in the instant before the restore's lock) fails the restore, which
    rolls back; the table keeps its rows and the staging table is dropped."""
    execute(pg_url2, "CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'a')")
    plan = SimpleNamespace(src=SimpleNamespace(key="public.t", name="t"))
    stager = pgstage.Stager(DbTarget(pg_url2), 2)
    try:
        stager.open([plan], ['"public"."t"'])
        assert stager._stage("public.t", pgstage.STAGE_FROM_BYTES) and len(stages(pg_url2)) == 1
        execute(pg_url2, "ALTER TABLE t ADD COLUMN w int")
        with pg_connect(pg_url2) as conn:
            conn.autocommit = False
            with pytest.raises(pgstage.StageError, match="changed while the restore loaded it"):
                stager.swap(conn.cursor())
            conn.rollback()
    finally:
        stager.close()
    assert stages(pg_url2) == []
    assert fetch(pg_url2, "SELECT * FROM t") == [(1, "a", None)]


# Records, for each key and index a restore worker builds, the server's max_parallel_maintenance_workers in effect.
_BUILD_LOG = [
    "CREATE TABLE sk_build_log (query text, workers text)",
    """CREATE FUNCTION sk_log_build() RETURNS event_trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('application_name') LIKE 'statekit-restore-_' THEN
            INSERT INTO public.sk_build_log
            VALUES (current_query(), current_setting('max_parallel_maintenance_workers'));
        END IF;
    END $$""",
    "CREATE EVENT TRIGGER sk_log_build ON ddl_command_end WHEN TAG IN ('ALTER TABLE', 'CREATE INDEX') "
    "EXECUTE FUNCTION sk_log_build()",
]


def test_builds_side_by_side_leave_the_server_s_parallel_workers_out(
    pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    """The workers build the staging tables' keys and indexes, one per connection at a time. A build that starts
    while another runs, or with more to come, runs without the server's parallel maintenance workers (the
    restore already runs as many builds at once as --jobs asks for); a build alone keeps the server's setting."""
    monkeypatch.setattr(postgres, "SEGMENT_BYTES", 256 << 10)
    monkeypatch.setattr(pgstage, "STAGE_FROM_BYTES", 200 << 10)
    execute(pg_url, *_schema(role), "CREATE TABLE solo (id int PRIMARY KEY, v text)")
    _fill(pg_url, 30_000, "new")
    execute(pg_url, "INSERT INTO solo SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g")
    default = str(fetch(pg_url2, "SHOW max_parallel_maintenance_workers")[0][0])
    assert default != "0"
    try:
        execute(pg_url2, "DROP EVENT TRIGGER IF EXISTS sk_log_build", *_BUILD_LOG)
        # two staged tables, five builds: big's key, unique key and index, the odd table's key and index
        archive, _ = snap(pg_url, tmp_path / "a.statekit", include=["big", 'Odd Schema.we ird "t"'])
        execute(pg_url2, *_schema(role))
        jobs_restore(archive, pg_url2)
        built = fetch(pg_url2, "SELECT query, workers FROM sk_build_log")
        assert len(built) == 5
        shared = [q for q, w in built if w == "0"]
        assert len(shared) >= 4  # each of the first four leaves another to come; only the last may run alone
        assert all(w in ("0", default) for _, w in built)
        # one staged table with one key: its build runs alone, with the server's setting
        execute(pg_url2, "TRUNCATE sk_build_log")
        solo, _ = snap(pg_url, tmp_path / "solo.statekit", include=["solo"])
        execute(pg_url2, "CREATE TABLE solo (id int PRIMARY KEY, v text)")
        jobs_restore(solo, pg_url2)
        assert [w for _, w in fetch(pg_url2, "SELECT query, workers FROM sk_build_log")] == [default]
        assert rows_as_text(pg_url2, "solo") == rows_as_text(pg_url, "solo")
    finally:
        execute(pg_url2, "DROP EVENT TRIGGER IF EXISTS sk_log_build")


def test_a_build_next_to_others_gets_its_share_of_the_jobs() -> None:
    """The cap on the server's parallel workers for each build: none while two builds share --jobs 2, the
    server's own setting for a build alone, N // (builds at once) - 1 otherwise."""
    two = pgstage.Stager(target=None, jobs=2)
    for k in range(3):
        two.tasks.put(f"b{k}")
    assert two.take_build() == ("b0", 0)
    assert two.take_build() == ("b1", 0)
    two.build_done()
    two.build_done()
    assert two.take_build() == ("b2", None)  # nothing else runs or waits
    two.build_done()
    assert two.take_build() is None
    eight = pgstage.Stager(target=None, jobs=8)
    for k in range(10):
        eight.tasks.put(f"c{k}")
    assert eight.take_build() == ("c0", 0)  # eight builds at once: one process each
    taken = [eight.take_build() for _ in range(7)]
    assert all(t is not None and t[1] == 0 for t in taken)
    for _ in range(8):
        eight.build_done()
    assert eight.take_build() == ("c8", 3)  # two left: 8 // 2 - 1
    assert eight.take_build() == ("c9", 3)


@pytest.mark.parametrize("direction", ["pg to mysql", "mysql to pg"])
def test_jobs_where_it_does_not_apply_is_said(direction: str, pg_url: str, mysql_url: str, tmp_path: Path) -> None:
    """--jobs N only spreads a PostgreSQL archive's load into PostgreSQL; any other restore says it loads over
    one connection, and loads."""
    src, dst = (pg_url, mysql_url) if direction == "pg to mysql" else (mysql_url, pg_url)
    execute(src, "CREATE TABLE t (id int PRIMARY KEY, v varchar(20))", "INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    archive = snap(src, tmp_path / "a.statekit")[0]
    said: list[str] = []
    report = jobs_restore(archive, dst, jobs=3, warn=said.append)
    assert report.counts["rows"] == 2
    assert fetch(dst, "SELECT id, v FROM t ORDER BY id") == [(1, "a"), (2, "b")]
    if direction == "mysql to pg":
        assert said == ["--jobs 3 applies to restores of a PostgreSQL archive into PostgreSQL only; this one loads "
                        "over one connection"]  # fmt: skip
    else:
        assert said == ["--jobs 3 applies to restores into PostgreSQL only; this one loads over one connection"]
    same: list[str] = []
    jobs_restore(snap(dst, tmp_path / "b.statekit")[0], dst, jobs=3, warn=same.append)
    assert (same == []) == (dst == pg_url)
