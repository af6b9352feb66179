"""The trust model of db restores: an archive that is not signed by a trusted key is data.

Each hostile archive is a real snapshot, decrypted, with SQL written into one field of db/schema.json, and
re-encrypted to the public recipient (what anyone holding only the recipient can do), unsigned. Restored into a
target that holds a `victim` table, it must leave the victim in place and run nothing (no `COPY … TO PROGRAM`
marker file, no table of its own): the restore is refused with exit 3, or the expression is skipped and the plan
says so. The controls show the same payloads do run once the archive is trusted (--trust-archive-sql or a
trusted signature), so the suite can fail.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit.archive.format import RESERVED_MEMBERS
from statekit.archive.keys import generate_identity
from statekit.archive.reader import Archive
from statekit.archive.signing import generate_signing_key, sign_archive
from statekit.archive.writer import ArchiveWriter
from statekit.cli import run
from statekit.tiers.sql.schema import member_prefix

IDENTITY = generate_identity()
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="rehearsal servers run as their own account: needs root")
Mutate = Callable[[dict[str, Any], "Ctx"], None]


class Ctx:
    """What a payload needs to know: the dialect and where a side effect would show."""

    def __init__(self, dialect: str, tmp: Path) -> None:
        self.dialect = dialect
        self.marker = Path(f"/tmp/statekit-pwn-{uuid.uuid4().hex}")
        self.victim = "public.victim" if dialect == "postgresql" else "victim"

    @property
    def short(self) -> str:
        """A payload short enough for a name (MySQL names stop at 64 characters)."""
        return f"DROP TABLE {self.victim}"

    @property
    def sql(self) -> str:
        """Statements an attacker appends: drop an unrelated table, then run a program (PostgreSQL) or write a
        file (MariaDB, SQLite)."""
        if self.dialect == "postgresql":
            return f"DROP TABLE {self.victim}; COPY (SELECT 1) TO PROGRAM 'cat > {self.marker}'"
        if self.dialect == "mysql":
            return f"DROP TABLE {self.victim}; SELECT 1 INTO OUTFILE '{self.marker}'"
        return f"DROP TABLE {self.victim}; ATTACH DATABASE '{self.marker}' AS pwn"


@pytest.fixture(autouse=True)
def _no_marker_left() -> Iterator[None]:
    yield
    for p in Path("/tmp").glob("statekit-pwn-*"):
        p.unlink(missing_ok=True)


# -- databases ---------------------------------------------------------------------------------------------


def _exec(url: str, *stmts: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for s in stmts:
                conn.exec_driver_sql(s)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _source(dialect: str, url: str) -> None:
    ddl = {
        "postgresql": "CREATE TABLE acct (id integer PRIMARY KEY, name text, n integer)",
        "mysql": "CREATE TABLE acct (id int PRIMARY KEY, name varchar(40), n int)",
        "sqlite": "CREATE TABLE acct (id INTEGER PRIMARY KEY, name TEXT, n INTEGER)",
    }[dialect]
    _exec(url, ddl, "INSERT INTO acct VALUES (1, 'alpha', 10), (2, 'beta', 20), (3, 'gamma', 30)")


def _urls(dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if dialect == "postgresql":
        return request.getfixturevalue("pg_url"), request.getfixturevalue("pg_url2")
    if dialect == "mysql":
        src = request.getfixturevalue("mysql_url")
        dst = src.rsplit("/", 1)[0] + "/" + _mysql_second(src)
        return src, dst
    return f"sqlite:///{tmp_path / 'src.db'}", f"sqlite:///{tmp_path / 'dst.db'}"


def _mysql_second(src: str) -> str:
    # a second database beside the fixture's, dropped by the fixture's finaliser below
    name = f"sk_{uuid.uuid4().hex[:12]}"
    base = src.rsplit("/", 1)[0] + "/mysql"
    _exec(base, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    _MYSQL_EXTRA.append((base, name))
    return name + "?charset=utf8mb4"


_MYSQL_EXTRA: list[tuple[str, str]] = []


@pytest.fixture(autouse=True)
def _drop_mysql_extra() -> Iterator[None]:
    yield
    while _MYSQL_EXTRA:
        base, name = _MYSQL_EXTRA.pop()
        _exec(base, f"DROP DATABASE IF EXISTS `{name}`")


# -- archives ----------------------------------------------------------------------------------------------


def snapshot(url: str, path: Path, recipient: str) -> Path:
    code = run(["snapshot", "--tier", "db", "--db-url", url, "--to", str(path), "-r", recipient, "-q"])
    assert code == 0
    return path


def rewrite(src: Path, dst: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    """The archive `src` with db/schema.json changed by `mutate`, validly encrypted to the public recipient
    and unsigned: what anyone who knows the recipient can produce."""
    archive = Archive(src, [IDENTITY])
    entries = {m["name"]: m for m in archive.manifest["members"]}
    with open(dst, "wb") as fh:
        writer = ArchiveWriter(fh, recipients=[IDENTITY.recipient()])
        for m in archive.members():
            if m.name in RESERVED_MEMBERS:
                continue
            body = m.read_all()
            if m.name == "db/schema.json":
                doc = json.loads(body)
                mutate(doc)
                body = json.dumps(doc).encode()
            e = entries[m.name]
            writer.add(m.name, body, mode=int(e["mode"], 8), mtime=e["mtime"], meta=e.get("meta"))
        keep = ("format", "format_version", "snapshot_id", "statekit_version")
        writer.finish({k: v for k, v in archive.snapshot.items() if k not in keep})
    return dst


def _acct(doc: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in doc["tables"] if t["name"] == "acct")


def _col(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in _acct(doc)["columns"] if c["name"] == name)


# -- payloads: one per schema field ------------------------------------------------------------------------


def p_index(doc: dict[str, Any], c: Ctx) -> None:
    table = "public.acct" if c.dialect == "postgresql" else "acct"
    _acct(doc)["indexes"] = [f"CREATE INDEX ix_n ON {table} (n); {c.sql}"]


def p_native_ddl(doc: dict[str, Any], c: Ctx) -> None:
    _acct(doc)["native_ddl"] = f"CREATE TABLE acct (id int PRIMARY KEY, name text, n int); {c.sql}"


def p_native(doc: dict[str, Any], c: Ctx) -> None:
    _col(doc, "n")["native"] = f"integer; {c.sql}; --"


def p_default(doc: dict[str, Any], c: Ctx) -> None:
    _col(doc, "n")["default"] = f"0; {c.sql}; --"


def p_generated(doc: dict[str, Any], c: Ctx) -> None:
    _acct(doc)["columns"].append(
        {"name": "g", "type": {"kind": "int", "bits": 32}, "native": "integer", "nullable": True,
         "generated": f"n * 2) STORED); {c.sql}; --"}
    )  # fmt: skip


def p_sequence(doc: dict[str, Any], c: Ctx) -> None:
    col = _col(doc, "id")
    col["sequence"] = f"public.acct_id_seq; {c.sql}; --"
    col["default"] = "nextval('acct_id_seq'::regclass)"


def p_constraint_check(doc: dict[str, Any], c: Ctx) -> None:
    _acct(doc)["constraints"].append({"name": "ck", "type": "c", "definition": f"CHECK (n > 0)); {c.sql}; --"})


def p_constraint_primary(doc: dict[str, Any], c: Ctx) -> None:
    _acct(doc)["constraints"] = [{"name": "pk", "type": "p", "definition": f"PRIMARY KEY (id)); {c.sql}; --"}]


def p_domain(doc: dict[str, Any], c: Ctx, *, where: str = "check") -> None:
    dom: dict[str, Any] = {"schema": "public", "name": "posint", "type": "integer", "nullable": True,
                           "default": None, "checks": []}  # fmt: skip
    if where == "check":
        dom["checks"] = [{"name": "ck", "check": f"VALUE > 0); {c.sql}; --"}]
    elif where == "default":
        dom["default"] = f"1; {c.sql}; --"
    else:
        dom["type"] = f"integer; {c.sql}; --"
    doc["domains"] = [dom]
    col = _col(doc, "n")
    col["type"] = {"kind": "domain", "name": "posint", "schema": "public", "base": {"kind": "int", "bits": 32}}
    col["native"] = "posint"


def p_enum_label(doc: dict[str, Any], c: Ctx) -> None:
    # quotes and backslashes that would end a badly quoted literal
    evil = f"z\\'); {c.short}; -- '"
    labels = ["alpha", "beta", "gamma", evil]
    if c.dialect == "postgresql":
        doc["enums"] = [{"schema": "public", "name": "mood", "labels": labels}]
    else:
        col = _col(doc, "name")
        col["type"] = {"kind": "enum", "name": None, "schema": None, "labels": labels}


def p_table_name(doc: dict[str, Any], c: Ctx) -> None:
    t = _acct(doc)
    q = '"' if c.dialect == "postgresql" else "`"
    t["name"] = f"acct{q}; {c.short}; --"
    t["member"] = member_prefix(t["schema"], t["name"])


def p_column_name(doc: dict[str, Any], c: Ctx) -> None:
    q = '"' if c.dialect == "postgresql" else "`"
    _col(doc, "n")["name"] = f"n{q} int); {c.short}; --"


def p_schema_name(doc: dict[str, Any], c: Ctx) -> None:
    t = _acct(doc)
    t["schema"] = f'evil"; {c.short}; --'
    t["member"] = member_prefix(t["schema"], t["name"])


def p_fk_action(doc: dict[str, Any], c: Ctx) -> None:
    fk = {"name": "fk", "columns": ["n"], "ref_schema": None, "ref_table": "acct", "ref_columns": ["id"],
          "on_delete": f"CASCADE; {c.sql}", "on_update": None}  # fmt: skip
    _acct(doc)["foreign_keys"] = [fk]


def p_type_length(doc: dict[str, Any], c: Ctx) -> None:
    _col(doc, "name")["type"] = {"kind": "text", "length": f"10); {c.sql}; --", "fixed": False}


PAYLOADS: dict[str, tuple[Mutate, str]] = {
    # name: (mutation, what happens: "refused" exit 3 | "skipped" listed in the plan | "quoted" harmless)
    "index": (p_index, "skipped"),
    "native_ddl": (p_native_ddl, "skipped"),
    "native": (p_native, "refused"),
    "default": (p_default, "skipped"),
    "generated": (p_generated, "skipped"),
    "sequence": (p_sequence, "quoted"),  # the field is never used: a serial is rebuilt from its default
    "constraint-check": (p_constraint_check, "skipped"),
    "constraint-primary": (p_constraint_primary, "quoted"),
    "domain-check": (lambda d, c: p_domain(d, c, where="check"), "skipped"),
    "domain-default": (lambda d, c: p_domain(d, c, where="default"), "skipped"),
    "domain-type": (lambda d, c: p_domain(d, c, where="type"), "refused"),
    "enum-label": (p_enum_label, "quoted"),
    "table-name": (p_table_name, "quoted"),
    "column-name": (p_column_name, "quoted"),
    "schema-name": (p_schema_name, "quoted"),
    "fk-action": (p_fk_action, "refused"),
    "type-length": (p_type_length, "refused"),
}


def _expect(name: str, dialect: str) -> str:
    outcome = PAYLOADS[name][1]
    if dialect != "postgresql":
        # MySQL and SQLite have no domains, sequences or schemas of their own: those fields are not used there
        if name in ("sequence", "schema-name"):
            return "ignored"
        if name.startswith("domain-"):
            return "refused"  # a MySQL or SQLite archive never describes domains
        if name == "native_ddl" or name in ("default", "generated", "index", "constraint-check"):
            return "skipped"
    elif name == "native_ddl":
        return "ignored"  # PostgreSQL tables are always rebuilt from their parts, never from this text
    return outcome


def _victim_present(dialect: str, url: str) -> bool:
    return "victim" in _tables(url)


DIALECTS = ["postgresql", "mysql", "sqlite"]


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("dialect", DIALECTS)
def test_unsigned_archive_runs_no_sql_of_its_own(
    dialect: str, payload: str, tmp_path: Path, identity_file: Path, request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    src, dst = _urls(dialect, request, tmp_path)
    ctx = Ctx(dialect, tmp_path)
    _source(dialect, src)
    _exec(dst, "CREATE TABLE victim (id int)", "INSERT INTO victim VALUES (42)")
    good = snapshot(src, tmp_path / "good.statekit", IDENTITY.recipient().to_string())
    mutate, _ = PAYLOADS[payload]
    hostile = rewrite(good, tmp_path / "hostile.statekit", lambda doc: mutate(doc, ctx))
    capsys.readouterr()
    code = run(["restore", str(hostile), "--tier", "db", "--target-url", dst, "-i", str(identity_file),
                "--yes", "--no-undo"])  # fmt: skip
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert _victim_present(dialect, dst), (payload, out, err)
    assert not ctx.marker.exists()
    expect = _expect(payload, dialect)
    if expect == "refused":
        assert code == 3, (out, err)
        assert err.startswith("Error: ") and err.count("\n") == 1, err
        assert "acct" not in _tables(dst)
    else:
        assert code == 0, (out, err)
        if expect == "skipped":
            assert "skipped:" in out, out
        if payload != "schema-name":  # (that table went into a schema of its own)
            assert len(_tables(dst)) == 2  # the victim and the restored table, nothing else


# -- the same payloads do run once the archive is trusted --------------------------------------------------


def _trust_flags(how: str, archive: Path, tmp_path: Path) -> list[str]:
    if how == "flag":
        return ["--trust-archive-sql"]
    key = generate_signing_key()
    sign_archive(archive, key)
    if how == "signer":
        return ["--signer", key.public_string()]
    config = tmp_path / "statekit.toml"
    config.write_text(f'[archive]\nsigners = ["{key.public_string()}"]\n')
    return ["--config", str(config)]


@pytest.mark.parametrize("how", ["flag", "signer", "config"])
def test_trusted_archive_applies_its_sql_postgresql(
    how: str, tmp_path: Path, identity_file: Path, pg_url: str, pg_url2: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control: trusted, the index payload drops the victim and runs a program on the server."""
    ctx = Ctx("postgresql", tmp_path)
    _source("postgresql", pg_url)
    _exec(pg_url2, "CREATE TABLE victim (id int)")
    good = snapshot(pg_url, tmp_path / "good.statekit", IDENTITY.recipient().to_string())
    hostile = rewrite(good, tmp_path / "hostile.statekit", lambda doc: p_index(doc, ctx))
    flags = _trust_flags(how, hostile, tmp_path)
    code = run(["restore", str(hostile), "--tier", "db", "--target-url", pg_url2, "-i", str(identity_file),
                "--yes", "--no-undo", *flags])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "victim" not in _tables(pg_url2)
    assert ctx.marker.exists()


def test_trusted_archive_applies_its_sql_mysql_and_sqlite(
    tmp_path: Path, identity_file: Path, mysql_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trusted, MySQL gets the source's own CREATE TABLE (its default applies) and SQLite its index
    statements (one that makes a table of its own); untrusted, neither."""
    for dialect in ("mysql", "sqlite"):
        (tmp_path / dialect).mkdir()
        if dialect == "mysql":
            src = mysql_url
            _exec(src, "CREATE TABLE acct (id int PRIMARY KEY, name varchar(40), n int DEFAULT 42)",
                  "INSERT INTO acct VALUES (1, 'alpha', 10)")  # fmt: skip
        else:
            src = f"sqlite:///{tmp_path / dialect / 'src.db'}"
            _source("sqlite", src)
        good = snapshot(src, tmp_path / dialect / "good.statekit", IDENTITY.recipient().to_string())
        if dialect == "sqlite":
            good = rewrite(good, tmp_path / dialect / "h.statekit",
                           lambda doc: _acct(doc).update(indexes=["CREATE TABLE pwned AS SELECT 1 AS x"]))  # fmt: skip
        for trusted in (False, True):
            if dialect == "mysql":
                dst = mysql_url.rsplit("/", 1)[0] + "/" + _mysql_second(mysql_url)
            else:
                dst = f"sqlite:///{tmp_path / dialect / f'dst-{trusted}.db'}"
            code = run(["restore", str(good), "--tier", "db", "--target-url", dst, "-i", str(identity_file), "--yes",
                        "--no-undo", *(["--trust-archive-sql"] if trusted else [])])  # fmt: skip
            out, err = capsys.readouterr()
            assert code == 0, err
            if dialect == "mysql":
                _exec(dst, "INSERT INTO acct (id, name) VALUES (2, 'b')")
                engine = sa.create_engine(dst)
                with engine.connect() as conn:
                    n = conn.exec_driver_sql("SELECT n FROM acct WHERE id = 2").scalar()
                engine.dispose()
                assert n == (42 if trusted else None), (trusted, out)
                assert ("skipped:" in out) is not trusted
            else:
                assert ("pwned" in _tables(dst)) is trusted, out


# -- rehearsal ---------------------------------------------------------------------------------------------


def _all_expressions(doc: dict[str, Any], c: Ctx) -> None:
    for name in ("index", "native_ddl", "default", "generated", "sequence", "constraint-check", "domain-check",
                 "enum-label"):  # fmt: skip
        PAYLOADS[name][0](doc, c)
    # the domain payload replaced the column type: give the domain a default payload too
    doc["domains"][0]["default"] = f"1; {c.sql}; --"


@needs_root
def test_rehearsal_runs_no_archive_sql(
    tmp_path: Path, identity_file: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One archive with SQL in every expression field: an untrusted rehearsal applies none of it and still
    compares the data; a trusted one runs it as a role without privileges, so the program never runs; a
    type-name payload is refused before any server starts."""
    ctx = Ctx("postgresql", tmp_path)
    _source("postgresql", pg_url)
    good = snapshot(pg_url, tmp_path / "good.statekit", IDENTITY.recipient().to_string())
    hostile = rewrite(good, tmp_path / "hostile.statekit", lambda doc: _all_expressions(doc, ctx))
    capsys.readouterr()
    code = run(["verify", str(hostile), "--rehearse", "-i", str(identity_file), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["rehearsal"]["ok"] is True
    note = " ".join(doc["rehearsal"]["notes"])
    for what in ("index ix_n", "default of n", "generated column g", "constraint ck", "check ck of domain"):
        assert what in note, note
    assert not ctx.marker.exists()

    program = f"CREATE INDEX ix_n ON public.acct (n); COPY (SELECT 1) TO PROGRAM 'cat > {ctx.marker}'"
    trusted = rewrite(good, tmp_path / "trusted.statekit", lambda doc: _acct(doc).update(indexes=[program]))
    code = run(["verify", str(trusted), "--rehearse", "-i", str(identity_file), "--trust-archive-sql"])
    out, err = capsys.readouterr()
    assert code == 6, err
    assert "external program" in err, err
    assert not ctx.marker.exists()

    typed = rewrite(good, tmp_path / "typed.statekit", lambda doc: p_native(doc, ctx))
    code = run(["verify", str(typed), "--rehearse", "-i", str(identity_file)])
    out, err = capsys.readouterr()
    assert code == 3, err
    assert not ctx.marker.exists()


@needs_root
def test_rehearsal_of_another_dialect_runs_no_archive_sql(
    tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SQLite archive rehearsed in the embedded PostgreSQL: its generated-column expression is skipped."""
    ctx = Ctx("postgresql", tmp_path)
    src = f"sqlite:///{tmp_path / 'src.db'}"
    _source("sqlite", src)
    good = snapshot(src, tmp_path / "good.statekit", IDENTITY.recipient().to_string())
    hostile = rewrite(good, tmp_path / "hostile.statekit", lambda doc: p_generated(doc, ctx))
    capsys.readouterr()
    code = run(["verify", str(hostile), "--rehearse", "-i", str(identity_file), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "generated column g" in " ".join(json.loads(out)["rehearsal"]["notes"])
    assert not ctx.marker.exists()
    assert os.path.exists(tmp_path / "src.db") and sqlite3.connect(tmp_path / "src.db").execute(
        "SELECT count(*) FROM acct"
    ).fetchone() == (3,)


# -- MySQL: a killed restore leaves no new table under its real name ---------------------------------------


def test_killed_mysql_restore_leaves_no_new_table_under_its_name(
    tmp_path: Path, identity_file: Path, mysql_url: str
) -> None:
    """MySQL commits CREATE TABLE at once. The restore creates missing tables under staging names and renames
    them only with the data: killed while it waits for a lock held by the test (after the DDL, before the
    data), the target has no `acct` table, `other` is unchanged, and the next restore succeeds."""
    import signal
    import subprocess
    import sys
    import time

    import pymysql

    _source("mysql", mysql_url)
    _exec(mysql_url, "CREATE TABLE other (id int PRIMARY KEY, v text)", "INSERT INTO other VALUES (1, 'new')")
    archive = snapshot(mysql_url, tmp_path / "a.statekit", IDENTITY.recipient().to_string())
    dst = mysql_url.rsplit("/", 1)[0] + "/" + _mysql_second(mysql_url)
    _exec(dst, "CREATE TABLE other (id int PRIMARY KEY, v text)", "INSERT INTO other VALUES (1, 'old')")
    u = sa.engine.make_url(dst)
    holder = pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                             database=u.database, autocommit=False)  # fmt: skip
    statekit = str(Path(sys.executable).with_name("statekit"))
    args = [statekit, "restore", str(archive), "--tier", "db", "--target-url", dst, "-i", str(identity_file),
            "--yes", "--no-undo"]  # fmt: skip
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT * FROM other FOR UPDATE")  # the restore's DELETE FROM other waits for this
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        watcher = pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "")
        try:
            for _ in range(6000):  # until the restore waits on the lock (or gave up)
                with watcher.cursor() as cur:
                    cur.execute("SELECT count(*) FROM information_schema.processlist "
                                "WHERE db = %s AND info LIKE 'DELETE FROM%%'", (u.database,))  # fmt: skip
                    if cur.fetchone()[0] or proc.poll() is not None:
                        break
                time.sleep(0.01)
            assert proc.poll() is None, proc.communicate()
            with watcher.cursor() as cur:
                cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                            (u.database,))  # fmt: skip
                during = {r[0] for r in cur.fetchall()}
        finally:
            watcher.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        holder.rollback()
        holder.close()
    assert "acct" not in during and any(t.startswith("statekit_new_") for t in during), during
    after = _tables(dst)
    assert "acct" not in after, after
    engine = sa.create_engine(dst)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT v FROM other").scalar() == "old"
    engine.dispose()
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    engine = sa.create_engine(dst)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM acct").scalar() == 3
        assert conn.exec_driver_sql("SELECT v FROM other").scalar() == "new"
    engine.dispose()


# -- any value in any field: a one-line error, never an internal one -----------------------------------------

_BASE_DOC: dict[str, Any] = {
    "format": "statekit-db-schema", "format_version": 1, "dialect": "postgresql", "server_version": "15",
    "default_schema": "public", "isolation": "",
    "enums": [{"schema": "public", "name": "mood", "labels": ["a", "b"]}],
    "domains": [{"schema": "public", "name": "posint", "type": "integer", "nullable": True, "default": None,
                 "checks": [{"name": "ck", "check": "VALUE > 0"}]}],
    "tables": [{
        "schema": "public", "name": "acct", "member": "db/public.acct", "encoding": "copy", "partitioned": False,
        "columns": [
            {"name": "id", "type": {"kind": "int", "bits": 32, "unsigned": False}, "native": "integer",
             "nullable": False, "default": "nextval('acct_id_seq'::regclass)", "generated": None, "identity": None,
             "autoincrement": True, "sequence": "public.acct_id_seq"},
            {"name": "m", "type": {"kind": "enum", "name": "mood", "schema": "public", "labels": ["a", "b"]},
             "native": "mood", "nullable": True, "default": None, "generated": None, "identity": None,
             "autoincrement": False, "sequence": None},
            {"name": "q", "type": {"kind": "domain", "name": "posint", "schema": "public",
                                   "base": {"kind": "int", "bits": 32}},
             "native": "posint", "nullable": True, "default": None, "generated": None, "identity": None,
             "autoincrement": False, "sequence": None},
            {"name": "t", "type": {"kind": "text", "length": 20, "fixed": False}, "native": "character varying(20)",
             "nullable": True, "default": None, "generated": None, "identity": None, "autoincrement": False,
             "sequence": None},
        ],
        "primary_key": ["id"], "unique": [["t"]],
        "foreign_keys": [{"name": "fk", "columns": ["q"], "ref_schema": "public", "ref_table": "acct",
                          "ref_columns": ["id"], "on_delete": "CASCADE", "on_update": None}],
        "constraints": [{"name": "ck", "type": "c", "definition": "CHECK (q > 0)"}],
        "native_ddl": None, "indexes": ["CREATE INDEX ix ON public.acct USING btree (t)"],
        "sequences": [{"column": "id", "name": "public.acct_id_seq", "last_value": 3, "is_called": True}],
    }],
}  # fmt: skip


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


_PATHS = _paths(_BASE_DOC)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _plan_everywhere(data: bytes, conn: Any) -> None:
    """Read the description and work out its DDL for every dialect, trusted and not."""
    from sqlalchemy.dialects import mysql, sqlite

    from statekit.errors import StatekitError
    from statekit.tiers.sql import ddl
    from statekit.tiers.sql.dialects import dialect_for
    from statekit.tiers.sql.schema import DbSchema, TableDesc

    try:
        desc = DbSchema.from_json_bytes(data)
        for dialect in (mysql.dialect(), sqlite.dialect()):
            for trusted in (False, True):
                creates: list[tuple[TableDesc, str | None, str | None]] = [
                    (t, None, "statekit_new_x_0" if dialect.name == "mysql" else None) for t in desc.tables
                ]
                ddl.generic_plan(
                    desc, creates, dialect, {t.name for t in desc.tables}, trusted=trusted,
                    target=dialect_for(dialect.name),
                )  # fmt: skip
        for trusted in (False, True):
            ddl.pg_plan(conn, desc, [(t, t.schema) for t in desc.tables], trusted=trusted, map_schema=lambda s: s)
    except StatekitError:
        pass


def test_any_value_in_any_schema_field_is_a_clean_error(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    with engine.connect() as sa_conn:
        conn = sa_conn.connection.driver_connection  # ddl.pg_plan reads the target through psycopg
        _plan_everywhere(json.dumps(_BASE_DOC).encode(), conn)  # the baseline plans without error

        @settings(max_examples=300, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
        @given(st.sampled_from(_PATHS), _JSON)
        def check(path: tuple[Any, ...], value: Any) -> None:
            doc = json.loads(json.dumps(_BASE_DOC))
            node = doc
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            _plan_everywhere(json.dumps(doc).encode(), conn)

        check()
    engine.dispose()


def test_unsigned_archive_still_creates_a_working_table(
    tmp_path: Path, identity_file: Path, pg_url: str, pg_url2: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the structured description keeps: types, enums, domains, keys, foreign keys, identity and serial
    counters; what it leaves out (and the plan lists): other defaults, checks, indexes, generated columns."""
    _exec(
        pg_url,
        "CREATE TYPE mood AS ENUM ('ok', 'sad')",
        "CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
        "CREATE TABLE parent (id serial PRIMARY KEY, code varchar(8) UNIQUE NOT NULL, m mood DEFAULT 'ok', "
        "q posint, tags text[], g int GENERATED ALWAYS AS (id * 2) STORED, CHECK (id < 1000))",
        "CREATE INDEX parent_lower ON parent (lower(code))",
        "CREATE TABLE child (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "pid int REFERENCES parent (id) ON DELETE CASCADE)",
        "INSERT INTO parent (code, m, q, tags) VALUES ('a', 'sad', 1, '{x,y}'), ('b', 'ok', 2, NULL)",
        "INSERT INTO child (pid) VALUES (1), (2)",
    )
    good = snapshot(pg_url, tmp_path / "good.statekit", IDENTITY.recipient().to_string())
    capsys.readouterr()
    code = run(["restore", str(good), "--tier", "db", "--target-url", pg_url2, "-i", str(identity_file), "--yes",
                "--no-undo"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    for what in ("default of m", "generated column g", "constraint parent_id_check", "index parent_lower",
                 "check posint_check of domain posint"):  # fmt: skip
        assert what in out, out
    _exec(pg_url2, "INSERT INTO parent (code, q) VALUES ('c', -5)", "INSERT INTO child (pid) VALUES (3)")
    engine = sa.create_engine(pg_url2)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, code, m::text, q, tags FROM parent ORDER BY id").fetchall()
        assert [tuple(r) for r in rows] == [(1, "a", "sad", 1, ["x", "y"]), (2, "b", "ok", 2, None),
                                            (3, "c", None, -5, None)]  # fmt: skip
        assert conn.exec_driver_sql("SELECT max(id) FROM child").scalar() == 3
        assert "g" not in {c["name"] for c in sa.inspect(conn).get_columns("parent")}
        assert [ix["name"] for ix in sa.inspect(conn).get_indexes("parent")] == ["parent_code_key"]  # unique only
    engine.dispose()
    with pytest.raises(sa.exc.IntegrityError):
        _exec(pg_url2, "INSERT INTO parent (code) VALUES ('a')")  # unique kept
    with pytest.raises(sa.exc.IntegrityError):
        _exec(pg_url2, "INSERT INTO child (pid) VALUES (99)")  # foreign key kept
    _exec(pg_url2, "DELETE FROM parent WHERE id = 1")
    engine = sa.create_engine(pg_url2)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM child").scalar() == 2  # ON DELETE CASCADE kept
    engine.dispose()


def test_unsigned_mysql_archive_still_creates_a_working_table(
    tmp_path: Path, identity_file: Path, mysql_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """MySQL from the description: native types that pass the grammar, enum labels with a backslash and a
    quote, AUTO_INCREMENT, unique keys and foreign keys; the source's CREATE TABLE is listed as skipped."""
    _exec(
        mysql_url,
        "CREATE TABLE p (id int unsigned AUTO_INCREMENT PRIMARY KEY, code varchar(10) NOT NULL UNIQUE, "
        "amount decimal(12,3), e enum('a','b\\\\c','d''e'), flag tinyint(1) DEFAULT 1)",
        "CREATE TABLE c (id bigint AUTO_INCREMENT PRIMARY KEY, pid int unsigned, "
        "FOREIGN KEY (pid) REFERENCES p (id) ON DELETE CASCADE)",
        "INSERT INTO p (code, amount, e) VALUES ('x', 1.5, 'b\\\\c'), ('y', NULL, 'd''e')",
        "INSERT INTO c (pid) VALUES (1), (2)",
    )
    good = snapshot(mysql_url, tmp_path / "good.statekit", IDENTITY.recipient().to_string())
    dst = mysql_url.rsplit("/", 1)[0] + "/" + _mysql_second(mysql_url)
    capsys.readouterr()
    code = run(["restore", str(good), "--tier", "db", "--target-url", dst, "-i", str(identity_file), "--yes",
                "--no-undo"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "default of flag" in out and "the source's CREATE TABLE" in out, out
    _exec(dst, "INSERT INTO p (code) VALUES ('z')")
    engine = sa.create_engine(dst)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, code, e FROM p ORDER BY id").fetchall()
        assert [tuple(r) for r in rows] == [(1, "x", "b\\c"), (2, "y", "d'e"), (3, "z", None)]
        assert sorted(sa.inspect(conn).get_table_names()) == ["c", "p"]
    engine.dispose()
    with pytest.raises(sa.exc.IntegrityError):
        _exec(dst, "INSERT INTO c (pid) VALUES (99)")
    _exec(dst, "DELETE FROM p WHERE id = 1")
    engine = sa.create_engine(dst)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM c").scalar() == 1
    engine.dispose()
