"""PostgreSQL: the COPY fast path of the snapshot (its catalogue is read by pgcatalog.py, through psycopg alone).

Rows leave the server as `COPY … TO STDOUT` text and go into the archive as bytes: no per-row Python work
beyond appending what libpq hands over. A table becomes segments of about SEGMENT_BYTES, each ending at a row
boundary, so a restore can replay every segment as its own `COPY … FROM STDIN`. With jobs > 1 the extra workers
import the snapshot exported by the main connection (`pg_export_snapshot()`), so every table still comes from
one consistent database snapshot.
"""

from __future__ import annotations

import queue
import select
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import pq

from statekit.tiers.sql import pgbinary
from statekit.tiers.sql.connect import DbTarget
from statekit.tiers.sql.dialects.postgresql import copy_columns, qtable
from statekit.tiers.sql.schema import TableDesc

# In flight at once: the segment being read, one waiting and one being compressed (so a 1M-row snapshot's peak
# RSS stays within 1.2x of a 100k-row one's; 8 MiB segments made it 1.2-1.4x). A restore streams a table's
# segments into one COPY whatever their size.
SEGMENT_BYTES = 4 << 20

# Session settings that make COPY text unambiguous and identical across servers: ISO dates, UTC instants,
# shortest exact floats, hex bytea. Restore sets the same before COPY FROM.
SESSION_SETTINGS = (
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET TimeZone = 'UTC'",
    "SET extra_float_digits = 3",
    "SET bytea_output = 'hex'",
    "SET client_encoding = 'UTF8'",
    "SET standard_conforming_strings = on",
)

AddSegment = Callable[[TableDesc, int, bytes | bytearray, int], None]

# libpq reads what the server sends into an input buffer of 16 KiB, which it enlarges only to fit a longer
# message and never shrinks. A COPY's rows are short messages, so each read from the socket took 16 KiB: for a
# 500k-row table (55 MB of binary COPY) 3,684 recv() and 3,668 select() calls, each select a hand-over of the
# GIL to the compression thread and back. One 256 KiB message first leaves the buffer at 512 KiB for the
# connection's life, and a read takes whatever the socket holds: 643 recv() and 614 select() calls (perf stat),
# and the COPY with compression alongside took 0.25 s instead of 0.27 s, the 1 ms this query costs included
# (median of eight runs each; a 1 or 2 MiB buffer did no better). A segment is cut once the rows libpq holds
# are used up, so it can pass SEGMENT_BYTES by a buffer's worth: the message is kept to a sixteenth of
# SEGMENT_BYTES (the buffer to an eighth).
WIDE_INPUT_MESSAGE = 256 << 10
LIBPQ_INPUT_BUFFER = 16 << 10


_PARTITIONS_SQL = """
SELECT cn.nspname, c.relname, pn.nspname, p.relname
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid AND c.relispartition
JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_class p ON p.oid = i.inhparent
JOIN pg_namespace pn ON pn.oid = p.relnamespace
"""


def fold_partitions(pg: psycopg.Connection[Any], tables: list[TableDesc]) -> list[TableDesc]:
    """Read partitioned tables through their parent: a partition whose parent (up to the root) is selected
    is dropped from the list, and the parent is marked so its COPY goes through a query. A restore then
    loads the parent and PostgreSQL routes each row to its partition."""
    parent_of = {(str(a), str(b)): (str(c), str(d)) for a, b, c, d in pg.execute(_PARTITIONS_SQL)}
    if not parent_of:
        return tables
    selected = {(t.schema or "", t.name) for t in tables}
    parents = set(parent_of.values())

    def covered(key: tuple[str, str]) -> bool:
        while key in parent_of:
            key = parent_of[key]
            if key in selected:
                return True
        return False

    out = []
    for t in tables:
        key = (t.schema or "", t.name)
        if covered(key):
            continue
        t.partitioned = key in parents
        out.append(t)
    return out


# -- COPY snapshot ----------------------------------------------------------------------------------------


class _SegmentWriter:
    """Hands finished segments to a thread that compresses them into the archive while the COPY goes on:
    reading rows and zstd then overlap (both release the GIL), even with one worker."""

    def __init__(self, add: AddSegment) -> None:
        self._add = add
        self._q: queue.Queue[tuple[TableDesc, int, bytearray, int] | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="statekit-db-segments", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self._add(*item)
                except BaseException as exc:
                    self.error = exc

    def put(self, table: TableDesc, seq: int, data: bytearray, rows: int) -> None:
        if self.error is not None:
            raise self.error
        self._q.put((table, seq, data, rows))

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error


def copy_table(pgconn: Any, table: TableDesc, writer: _SegmentWriter) -> int:
    """COPY one table out in segments; returns its row count.

    COPY text rows are counted by their newlines (embedded ones are escaped). A binary COPY ("pgbinary") sends
    one CopyData message per row: the first also carries the file header, which is not archived, and the
    last message is the trailer, which is not either; a segment is a run of whole tuples.

    Talks to libpq through psycopg's `pq` layer: one non-blocking PQgetCopyData per row in a tight loop over
    the rows libpq holds, then the segment-size check and a select() once it holds no complete row (12% less
    reader CPU than checking the size per row). psycopg's Copy.read() costs several Python frames per row and
    roughly doubles the client CPU of a snapshot; the blocking form would hold the GIL while waiting and stall
    the compression thread and the other workers."""
    if not table.data_columns:
        return 0
    binary = table.encoding == "pgbinary"
    if table.partitioned:  # COPY cannot read a partitioned table directly, a query over it can
        sql = f"COPY (SELECT {copy_columns(table)} FROM {qtable(table.schema, table.name)}) TO STDOUT"
    else:
        sql = f"COPY {qtable(table.schema, table.name)} ({copy_columns(table)}) TO STDOUT"
    if binary:
        sql += " (FORMAT binary)"
    pg = pgconn.pgconn
    pg.send_query(sql.encode("utf-8"))
    _result(pg, pq.ExecStatus.COPY_OUT)
    rows = 0
    seq = 0
    buf = bytearray()
    get = pg.get_copy_data
    messages = 0  # binary: CopyData messages, one per row (the trailer's included)
    n, data = _next_copy_data(pg)
    if binary and n > 0:  # the first message carries the file header (maybe nothing else)
        data = bytes(data)
        data = data[pgbinary.strip_header(data) :]
        if not data:
            n, data = get(1)
    while True:
        # Every row libpq holds (its input buffer: see WIDE_INPUT_MESSAGE), then one size check.
        while n > 0:
            buf += data
            messages += 1
            n, data = get(1)
        if n < 0:  # the end: a binary COPY's trailer is in buf, taken off below
            break
        if len(buf) >= SEGMENT_BYTES:
            if binary and buf.endswith(pgbinary.TRAILER):
                # The trailer, or a row that ends in ff ff: only whether another message follows tells.
                n, data = _next_copy_data(pg)
                if n < 0:
                    break
            count = messages if binary else buf.count(b"\n")
            rows += count
            writer.put(table, seq, buf, count)
            seq += 1
            buf = bytearray()
            messages = 0
            if n > 0:
                continue
        n, data = _next_copy_data(pg)
    res = _result(pg, pq.ExecStatus.COMMAND_OK)
    sent = res.command_tuples
    _drain(pg)
    if binary:
        if not buf.endswith(pgbinary.TRAILER):
            raise psycopg.OperationalError(f"binary COPY of {table.key} did not end with its trailer")
        del buf[-len(pgbinary.TRAILER) :]
        messages -= 1
    if buf:
        count = messages if binary else buf.count(b"\n")
        rows += count
        writer.put(table, seq, buf, count)
    if sent is not None and sent != rows:  # the segments' row counts would not match MANIFEST.json's
        raise psycopg.OperationalError(f"COPY of {table.key} sent {sent} rows, {rows} were counted")
    return rows


def widen_input_buffer(pgconn: Any) -> None:
    """Grow libpq's input buffer for the COPYs that follow on this connection (see WIDE_INPUT_MESSAGE). The
    result stays in libpq: nothing is converted to Python objects."""
    size = min(WIDE_INPUT_MESSAGE, SEGMENT_BYTES // 16)
    if size <= LIBPQ_INPUT_BUFFER:
        return
    pg = pgconn.pgconn
    pg.send_query(f"SELECT repeat('x', {size})".encode())
    _result(pg, pq.ExecStatus.TUPLES_OK).clear()
    _drain(pg)


def _next_copy_data(pg: Any) -> tuple[int, Any]:
    # The next CopyData message (n > 0) or the end of the COPY (n < 0), waiting for it if libpq has none.
    while True:
        n, data = pg.get_copy_data(1)
        if n != 0:
            return n, data
        select.select([pg.socket], [], [])
        pg.consume_input()


def _result(pg: Any, expect: Any) -> Any:
    """The next result of the statement sent, which must have status `expect`; else the statement's error is
    raised, once the connection has nothing left to read."""
    _await_result(pg)
    res = pg.get_result()
    if res is None or res.status != expect:
        message = _error_text(pg, res)
        _drain(pg)
        raise psycopg.OperationalError(message)
    return res


def _await_result(pg: Any) -> None:
    # Wait (GIL released in select) until libpq can hand over a result without blocking.
    pg.consume_input()
    while pg.is_busy():
        select.select([pg.socket], [], [])
        pg.consume_input()


def _drain(pg: Any) -> None:
    while True:
        _await_result(pg)
        if pg.get_result() is None:
            return


def _error_text(pg: Any, res: Any) -> str:
    raw = res.error_message if res is not None else b""
    if not raw:
        raw = pg.error_message
    return bytes(raw).decode("utf-8", "replace").strip() or "COPY failed"


def prepare_session(pgconn: Any) -> None:
    """Apply SESSION_SETTINGS on a psycopg connection, in one round trip (a statement without parameters goes
    by the simple query protocol, which takes several)."""
    with pgconn.cursor() as cur:
        cur.execute("; ".join(SESSION_SETTINGS))


def copy_out_parallel(
    target: DbTarget,
    main_pg: Any,
    tables: list[TableDesc],
    add: AddSegment,
    jobs: int,
    snapshot_id: str | None,
) -> dict[str, int]:
    """Copy every table out; the main connection works too, jobs-1 extra connections import its snapshot.
    Returns row counts by table key."""
    counts: dict[str, int] = {}
    work: queue.Queue[TableDesc] = queue.Queue()
    for t in tables:
        work.put(t)
    errors: list[BaseException] = []
    stop = threading.Event()

    def drain(pgconn: Any) -> None:
        widen_input_buffer(pgconn)
        writer = _SegmentWriter(add)
        try:
            while not stop.is_set():
                try:
                    t = work.get_nowait()
                except queue.Empty:
                    break
                counts[t.key] = copy_table(pgconn, t, writer)
        finally:
            writer.close()

    def worker() -> None:
        conn = None
        try:
            conn = target.psycopg_connect("statekit-snapshot")
            prepare_session(conn)
            with conn.cursor() as cur:
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cur.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
            drain(conn)
            conn.rollback()
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=worker, name=f"statekit-db-{i}") for i in range(max(0, jobs - 1))]
    for th in threads:
        th.start()
    try:
        drain(main_pg)
    except BaseException as exc:
        errors.insert(0, exc)
        stop.set()
    finally:
        for th in threads:
            th.join()
    if errors:
        raise errors[0]
    return counts
