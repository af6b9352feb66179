"""Helpers shared by the db tier tests: archives written and read with the real container."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from statekit.archive.keys import generate_identity
from statekit.archive.reader import Archive
from statekit.archive.writer import ArchiveWriter
from statekit.config import DbConfig
from statekit.fsio import atomic_output
from statekit.model import MemberSink, Progress, RestoreOptions, RestoreReport, TierSummary, no_progress
from statekit.tiers.sql import restore_db, snapshot_db


def write_archive(path: Path, fill: Callable[[MemberSink], TierSummary]) -> tuple[Archive, TierSummary]:
    """An unencrypted archive at `path` holding what `fill` writes."""
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=None)
        summary = fill(w)
        w.finish({"tiers": [summary.to_json()]})
    return Archive(path), summary


def snap(
    url: str, path: Path, *, jobs: int | None = None, progress: Progress = no_progress, **cfg: Any
) -> tuple[Archive, TierSummary]:
    """snapshot_db of `url` into a new archive at `path`."""
    return write_archive(path, lambda sink: snapshot_db(DbConfig(url=url, **cfg), sink, jobs=jobs, progress=progress))


class FileUndo:
    """An UndoSink writing a real archive file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cm = atomic_output(path)
        self._fh = self._cm.__enter__()
        self._writer = ArchiveWriter(self._fh, recipients=None)
        self.sink: MemberSink = self._writer
        self.sealed = False

    def seal(self, tier_summary: TierSummary) -> str:
        self._writer.finish({"tiers": [tier_summary.to_json()]})
        self._cm.__exit__(None, None, None)
        self.sealed = True
        return str(self.path)


def restore(
    archive: Archive, target: str, *, mode: str = "replace", tables: list[str] | None = None,
    undo: FileUndo | None = None, progress: Any = None, trusted: bool = True,
) -> RestoreReport:  # fmt: skip
    """restore_db with the usual options; the test's own archives are trusted (as a signed one would be)."""
    opts = RestoreOptions(tier="db", target=target, mode=mode, tables=list(tables or []), trust_archive_sql=trusted)
    kw: dict[str, Any] = {}
    if progress is not None:
        kw["progress"] = progress
    return restore_db(archive, opts, DbConfig(), undo=undo, **kw)


def rows_as_text(url: str, table: str, order: str = "1") -> list[tuple[Any, ...]]:
    """Every row of a PostgreSQL table with each column cast to text (exact comparison, NaN included)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET TimeZone = 'UTC'")
            cols = [
                r[0]
                for r in conn.exec_driver_sql(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %(t)s::regclass AND attnum > 0 "
                    "AND NOT attisdropped ORDER BY attnum",
                    {"t": table},
                )
            ]
            sel = ", ".join(f'"{c}"::text' for c in cols)
            return [tuple(r) for r in conn.exec_driver_sql(f"SELECT {sel} FROM {table} ORDER BY {order}")]
    finally:
        engine.dispose()


def execute(url: str, *statements: str) -> None:
    """Run statements in one transaction."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for s in statements:
                conn.exec_driver_sql(s)
    finally:
        engine.dispose()


def fetch(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query, as the driver returns them."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql)]
    finally:
        engine.dispose()


def nan_safe(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with float NaN replaced by a marker so equality works."""
    return [tuple("NaN" if isinstance(v, float) and math.isnan(v) else v for v in r) for r in rows]


def encrypted_snapshot(url: str, tmp_path: Path) -> tuple[Path, Path]:
    """A db snapshot of `url` encrypted to a new identity: (the archive, the 0600 identity file), for the CLI."""
    identity = generate_identity()
    id_file = tmp_path / "id.txt"
    id_file.write_text(identity.to_string() + "\n")
    os.chmod(id_file, 0o600)
    path = tmp_path / "a.statekit"
    with atomic_output(path) as fh:
        w = ArchiveWriter(fh, recipients=[identity.recipient()])
        w.finish({"tiers": [snapshot_db(DbConfig(url=url), w).to_json()]})
    return path, id_file


def cli_env() -> dict[str, str]:
    """The environment for a statekit child process: this one's, without the user's STATEKIT_ settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_") or k.startswith("STATEKIT_TEST")}


def pg_connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit psycopg connection to a test database (its SQLAlchemy URL)."""
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


@contextmanager
def killed_at_gate(url: str, key: int, args: list[str], application: str) -> Iterator[tuple[Any, Any]]:
    """Run the command `args` while holding the advisory lock `key` in `url`'s database, and yield (a connection
    there, (pid, query)) once a backend whose application_name is LIKE `application` waits for that lock: a
    restore caught at a row of the test's choosing (a trigger or check on it takes the lock), whatever the
    machine's speed. On leaving, the process gets SIGKILL, the lock is released and the restore's backends are
    waited out (the server rolls them back when it notices their client is gone)."""
    with pg_connect(url) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (key,))
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env())
        try:
            waiting = None
            for _ in range(6000):
                waiting = gate.execute(
                    "SELECT a.pid, a.query FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name LIKE %s",
                    (application,),
                ).fetchone()
                if waiting is not None or proc.poll() is not None:
                    break
                time.sleep(0.02)
            assert waiting is not None, f"never reached the gate: {proc.stderr.read() if proc.stderr else b''!r}"
            yield gate, waiting
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        gate.execute("SELECT pg_advisory_unlock(%s)", (key,))
        for _ in range(3000):
            left = gate.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'statekit-restore%%'"
            ).fetchone()
            if left == (0,):
                break
            time.sleep(0.02)
