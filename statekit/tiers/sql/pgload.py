"""PostgreSQL bulk loading for a restore: the load pass streamed into COPY, keys and indexes built after the data.

Two things bring a restore's load close to the server's own COPY speed:

- **A streamed load pass.** A thread reads the archive (decrypts, decompresses, hashes) while the main thread
  streams the segments into `COPY … FROM STDIN`; a small queue between them bounds the memory. The pass ends
  with the check of every member against MANIFEST.json; the caller commits only after it, so a failed check
  (or a killed process) rolls the whole transaction back.
- **Indexes after the data**, as pg_restore does: in replace mode, when a big table has just been emptied,
  its indexes and its primary-key/unique/exclusion constraints are dropped inside the restore's transaction
  and created again after the load, from the target's own catalogue (`pg_get_indexdef`,
  `pg_get_constraintdef`), never from the archive. The table's foreign keys, and those that depend on a
  dropped key, are dropped with it and added back as they were, each checked by one query instead of a
  trigger per row. Anything this cannot put back exactly (a comment, a replica-identity or
  clustered index, a partition's index, a tablespace, per-column statistics) keeps its index in place.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from statekit.errors import CorruptArchive
from statekit.tiers.sql import pgbinary
from statekit.tiers.sql.dialects.postgresql import copy_columns, qident
from statekit.tiers.sql.segments import BinaryCheck, manifest_rows

# A table whose first archived segment is at least this big gets its indexes rebuilt after the load;
# smaller ones load faster into their indexes than a rebuild would cost.
REBUILD_FROM_BYTES = 1 << 20
# Memory for the index builds of this transaction (never lowered below the server's setting).
MAINTENANCE_WORK_MEM_MB = 512
CHUNK_BYTES = 1 << 20
_QUEUE_CHUNKS = 8  # decoded chunks waiting for COPY: at most this many MiB in memory
# The progress estimate of a binary table's rows walks its first tuples only.
_ESTIMATE_TUPLES = 256
_ESTIMATE_STEP = 16 << 10

_INDEXES_SQL = """
SELECT i.indexrelid, i.indexrelid::regclass::text, con.oid, con.conname, pg_get_indexdef(i.indexrelid),
       pg_get_constraintdef(con.oid)
FROM pg_index i
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_class ic ON ic.oid = i.indexrelid
LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
     AND con.contype IN ('p', 'u', 'x')
WHERE i.indrelid = %(t)s::regclass
  AND t.relkind = 'r' AND NOT t.relispartition
  AND i.indisvalid AND i.indisready AND i.indislive
  AND NOT i.indisreplident AND NOT i.indisclustered
  AND ic.reltablespace = 0
  AND obj_description(i.indexrelid, 'pg_class') IS NULL
  AND (con.oid IS NULL OR obj_description(con.oid, 'pg_constraint') IS NULL)
  AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid OR h.inhparent = i.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indexrelid AND a.attstattarget >= 0)
  -- only foreign keys of plain tables may depend on the index: nothing else is put back
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indexrelid
        AND NOT EXISTS (
            SELECT 1 FROM pg_constraint f JOIN pg_class fc ON fc.oid = f.conrelid
            WHERE d.classid = 'pg_constraint'::regclass AND f.oid = d.objid AND f.contype = 'f'
              AND f.conparentid = 0 AND fc.relkind = 'r' AND NOT fc.relispartition
              AND obj_description(f.oid, 'pg_constraint') IS NULL))
ORDER BY con.contype NULLS LAST, 5
"""

_FOREIGN_KEYS_SQL = """
SELECT DISTINCT f.oid, f.conrelid::regclass::text, f.conname, pg_get_constraintdef(f.oid)
FROM pg_constraint f
WHERE f.contype = 'f' AND f.conparentid = 0
  AND (f.conindid = ANY(%(ix)s::oid[]) OR f.conrelid = %(t)s::regclass)
  AND obj_description(f.oid, 'pg_constraint') IS NULL
ORDER BY 1
"""


@dataclass
class IndexRebuild:
    """The indexes, key constraints and foreign keys dropped in this transaction, with the statements (read
    from the target's catalogue before the drop) that create them again."""

    tables: set[str] = field(default_factory=set)
    create: list[str] = field(default_factory=list)
    foreign_keys: list[str] = field(default_factory=list)

    def drop(self, cur: Any, table: str) -> bool:
        """Drop the rebuildable indexes of `table` (a quoted, qualified name, just emptied), its foreign keys
        and those that depend on its keys. Call before its first row is loaded. Nothing is dropped when a
        table involved already holds rows waiting for a deferred foreign-key check (a child loaded before
        its parent): that table then loads into its indexes. True unless that was the case."""
        if table in self.tables:
            return True
        self.tables.add(table)
        cur.execute(_INDEXES_SQL, {"t": table})
        indexes = cur.fetchall()
        cur.execute(_FOREIGN_KEYS_SQL, {"ix": [int(r[0]) for r in indexes], "t": table})
        foreign_keys = cur.fetchall()
        create: list[str] = []
        keys: list[str] = []
        cur.execute("SAVEPOINT statekit_rebuild")
        try:
            for _oid, rel, name, definition in foreign_keys:
                cur.execute(f"ALTER TABLE {rel} DROP CONSTRAINT {qident(name)}")
                keys.append(f"ALTER TABLE {rel} ADD CONSTRAINT {qident(name)} {definition}")
            for _oid, index_name, con_oid, con_name, index_def, con_def in indexes:
                if con_oid is not None:
                    cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT {qident(con_name)}")
                    create.append(f"ALTER TABLE {table} ADD CONSTRAINT {qident(con_name)} {con_def}")
                else:
                    cur.execute(f"DROP INDEX {index_name}")
                    create.append(str(index_def))
        except psycopg.errors.ObjectInUse:  # "pending trigger events"
            cur.execute("ROLLBACK TO SAVEPOINT statekit_rebuild")
            return False
        cur.execute("RELEASE SAVEPOINT statekit_rebuild")
        self.create.extend(create)
        self.foreign_keys.extend(keys)
        return True

    def rebuild(self, cur: Any) -> None:
        """After the data: run the deferred foreign-key checks still pending, create the keys and indexes
        again, then the foreign keys (each checked by one query over the loaded rows)."""
        cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for stmt in self.create:
            cur.execute(stmt)
        for stmt in self.foreign_keys:
            cur.execute(stmt)


def raise_maintenance_memory(cur: Any) -> None:
    """SET LOCAL maintenance_work_mem for the index builds of this transaction (never lower than it is)."""
    cur.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'maintenance_work_mem'")  # in kB
    row = cur.fetchone()
    current_kb = int(row[0]) if row and row[0] is not None else 0
    if current_kb < MAINTENANCE_WORK_MEM_MB * 1024:
        cur.execute(f"SET LOCAL maintenance_work_mem = '{MAINTENANCE_WORK_MEM_MB}MB'")


# -- the load pass: the archive read in a thread, COPY fed in the caller's ---------------------------------------


class _Stopped(Exception):
    """The consumer went away: the reading thread ends quietly."""


_END_MEMBER = object()
_DONE = object()


def put_checked(q: queue.Queue[Any], item: Any, check: Callable[[], None]) -> None:
    """Put `item` on the bounded queue `q`, calling `check()` (which raises to give up) first and then every
    0.2 s while the queue is full: a producer never waits forever for a consumer that has gone."""
    while True:
        check()
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


def get_checked(q: queue.Queue[Any], check: Callable[[], None]) -> Any:
    """Take the next item of `q`, calling `check()` (which raises to give up) first and then every 0.2 s while
    the queue is empty: a consumer never waits forever for a producer that has gone."""
    while True:
        check()
        try:
            return q.get(timeout=0.2)
        except queue.Empty:
            continue


class _Feed:
    """Reads (plan, ext, member) segments in a thread of its own and hands over their bytes in order:
    ("start", plan, ext, name, size), chunks, _END_MEMBER … then _DONE once the archive pass has ended and
    verified, or the exception that ended it."""

    def __init__(self, segments: Iterator[tuple[Any, str, Any]]) -> None:
        self._segments = segments
        self._q: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statekit-restore-read", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        put_checked(self._q, item, self._check)

    def _check(self) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _run(self) -> None:
        try:
            for plan, ext, member in self._segments:
                self._put(("start", plan, ext, member.name, member.size))
                while chunk := member.stream.read(CHUNK_BYTES):
                    self._put(chunk)
                self._put(_END_MEMBER)
            self._put(_DONE)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the consumer, which raises it
            try:
                self._put(exc)
            except _Stopped:
                pass
        finally:
            close = getattr(self._segments, "close", None)
            if close is not None:
                close()

    def get(self) -> Any:
        """The next item; an exception raised by the reading thread is raised here."""
        item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the reading thread (if it still runs) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


_WIRE_SQL = """
SELECT ty.typname, tn.nspname, ty.typtype::text
FROM unnest(%(cols)s::text[]) WITH ORDINALITY AS u(name, i)
LEFT JOIN pg_attribute a ON a.attrelid = %(t)s::regclass AND a.attname = u.name AND NOT a.attisdropped
LEFT JOIN pg_type ty ON ty.oid = a.atttypid
LEFT JOIN pg_namespace tn ON tn.oid = ty.typnamespace
ORDER BY u.i
"""


# What the server says of binary COPY data it cannot read as tuples (a field count or size that does not fit, data
# cut short, a value of the wrong length for its type).
_NOT_BINARY_COPY = (
    psycopg.errors.BadCopyFileFormat,
    psycopg.errors.InvalidBinaryRepresentation,
    psycopg.errors.ProtocolViolation,
)


def target_wire(cur: Any, table: str, columns: list[str]) -> list[str | None]:
    """The binary wire token (tiers.sql.pgbinary) of each of `columns` of `table` (a quoted name) as the
    target's catalogue has them, None for a column whose type has none."""
    cur.execute(_WIRE_SQL, {"t": table, "cols": columns})
    return [None if n is None else pgbinary.wire_token(str(n), str(s), str(k)) for n, s, k in cur.fetchall()]


# target_wire for many tables in one statement: a row per (table, column), saying whether the table exists.
_WIRES_SQL = """
SELECT to_regclass(u.t) IS NOT NULL, ty.typname, tn.nspname, ty.typtype::text
FROM unnest(%(t)s::text[], %(cols)s::text[]) WITH ORDINALITY AS u(t, name, k)
LEFT JOIN pg_attribute a ON a.attrelid = to_regclass(u.t) AND a.attname = u.name AND NOT a.attisdropped
LEFT JOIN pg_type ty ON ty.oid = a.atttypid
LEFT JOIN pg_namespace tn ON tn.oid = ty.typnamespace
ORDER BY u.k
"""


class TargetWires:
    """target_wire with the answers for many tables read up front in one statement (a restore of hundreds of
    tables then costs one round trip here, not one per table). A table not read up front is asked on its own."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, tuple[str, ...]], list[str | None]] = {}

    def prefetch(self, cur: Any, tables: dict[str, list[str]]) -> None:
        """Read the tokens of these tables' columns (quoted table name -> column names). Tables that do not
        exist are left to be asked later, where the question fails as target_wire's does."""
        flat = [(t, c) for t, cols in tables.items() for c in cols]
        if not flat:
            return
        cur.execute(_WIRES_SQL, {"t": [t for t, _ in flat], "cols": [c for _, c in flat]})
        rows = iter(cur.fetchall())
        for table, cols in tables.items():
            mine = [next(rows) for _ in cols]
            if mine and mine[0][0]:  # the table exists: a column it lacks has no token
                self._known[(table, tuple(cols))] = [
                    None if n is None else pgbinary.wire_token(str(n), str(s), str(k)) for _, n, s, k in mine
                ]

    def __call__(self, cur: Any, table: str, columns: list[str]) -> list[str | None]:
        known = self._known.get((table, tuple(columns)))
        return known if known is not None else target_wire(cur, table, columns)


class _Chunks(io.RawIOBase):
    """The chunks of the member being loaded, as a stream (for the segments decoded row by row)."""

    def __init__(self, feed: _Feed) -> None:
        self.feed = feed
        self.ended = False
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self._rest and not self.ended:
            chunk = self.feed.get()
            if chunk is _END_MEMBER:
                self.ended = True
            else:
                self._rest = chunk
        n = min(len(buf), len(self._rest))
        buf[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def copy_segments(
    cur: Any,
    segments: Iterator[tuple[Any, str, Any]],
    *,
    destination: Callable[[Any, int], str],
    finished: Callable[[Any, str], None],
    tick: Callable[[dict[str, int], int], None],
    wires: Callable[[Any, str, list[str]], list[str | None]] = target_wire,
    frozen: Container[str] = (),
    stop: Callable[[], None] | None = None,
    estimate: bool = True,
) -> tuple[dict[str, int], list[tuple[list[str], int]]]:
    """Stream every segment into COPY, consecutive segments of one table through one COPY. Returns the rows
    loaded per table key, and for the binary segments (whose rows the server counts, not the archive pass)
    each COPY's member names with the rows the server reported, for `check_server_counts`. `destination(plan,
    first_segment_size)` names the table a run of segments goes into, `finished(plan, destination)` runs after
    its COPY. Returns only after the archive pass verified everything; any failure (the archive's included)
    raises, and the caller rolls back.

    Binary COPY segments go to the server as they are when the destination's columns have the archive's wire
    tokens (the same binary format, asked of `wires`: target_wire or a TargetWires); otherwise each row is
    decoded to COPY text (tiers.sql.pgbinary) and the target's own input functions convert it, as they would a
    COPY text archive. A destination in `frozen` is loaded with COPY FREEZE. `stop` runs when the load fails,
    before the reading thread is stopped (it may be handing segments to other connections). With `estimate`
    false (no progress line is shown), a binary run's rows are ticked once its COPY has ended, not estimated
    from its bytes as the chunks go by: the estimate walks a segment's first tuples in Python, about 0.3 ms a
    table, a tenth of a restore of 300 small tables."""
    feed = _Feed(segments)
    loaded: dict[str, int] = {}
    counted: list[tuple[list[str], int]] = []
    nbytes = 0
    try:
        item = feed.get()
        while item is not _DONE:
            _, plan, ext, name, size = item
            key = plan.src.key
            _same_encoding(plan, ext, name)
            dest = destination(plan, size)
            binary = ext == "pgbinary"
            as_is = binary and wires(cur, dest, [c.name for c in plan.src.data_columns]) == plan.src.wire
            options = (["FORMAT binary"] if as_is else []) + (["FREEZE"] if dest in frozen else [])
            fmt = f" ({', '.join(options)})" if options else ""
            members: list[str] = []
            run_bytes = per_row = decoded = 0
            try:
                with cur.copy(f"COPY {dest} ({copy_columns(plan.src)}) FROM STDIN{fmt}") as cp:
                    if as_is:
                        cp.write(pgbinary.HEADER)
                    while True:
                        _same_encoding(plan, ext, name)
                        members.append(name)
                        rows = 0
                        if binary and not as_is:
                            stream = io.BufferedReader(_Chunks(feed), CHUNK_BYTES)
                            for fields in pgbinary.iter_text_rows(stream, plan.src.wire, name):
                                cp.write(pgbinary.copy_text_line(fields))
                                decoded += 1
                            nbytes += size
                        else:
                            while (chunk := feed.get()) is not _END_MEMBER:
                                cp.write(chunk)
                                nbytes += len(chunk)
                                if not binary:
                                    rows += chunk.count(b"\n")  # COPY text escapes embedded newlines
                                elif estimate:
                                    run_bytes += len(chunk)
                                    per_row = per_row or _tuple_bytes(chunk, len(plan.src.data_columns), name)
                                    if per_row:
                                        tick({**loaded, key: loaded.get(key, 0) + run_bytes // per_row}, nbytes)
                        if binary:  # the server counts the rows when the COPY ends: an estimate until then
                            est = decoded or (run_bytes // per_row if per_row else 0)
                            tick({**loaded, key: loaded.get(key, 0) + est}, nbytes)
                        else:
                            loaded[key] = loaded.get(key, 0) + rows
                            tick(loaded, nbytes)
                        item = feed.get()
                        if item is _DONE or item[1].src.key != key:
                            break
                        _, plan, ext, name, size = item
                    if as_is:
                        cp.write(pgbinary.TRAILER)
            except _NOT_BINARY_COPY as exc:
                if not as_is:
                    raise
                # binary tuples the server cannot read: the archive's fault, not the target's
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "malformed binary COPY data"
                raise CorruptArchive(f"archive member {members[-1] if members else name}: {detail}") from None
            if binary:
                server_rows = int(cur.rowcount)
                loaded[key] = loaded.get(key, 0) + server_rows
                counted.append((members, server_rows))
                tick(loaded, nbytes)
            finished(plan, dest)
    except BaseException:
        if stop is not None:
            stop()
        raise
    finally:
        feed.close()
    return loaded, counted


def _tuple_bytes(chunk: bytes, width: int, name: str) -> int:
    """The average size of the binary COPY tuples a chunk starts with (0 when it holds no tuple start or is
    damaged): a progress estimate of rows from bytes, never a check (the server's COPY checks the tuples).
    Walks only until _ESTIMATE_TUPLES tuples have started, in _ESTIMATE_STEP pieces."""
    check = BinaryCheck(name, width)
    fed = 0
    try:
        while fed < len(chunk) and check.rows < _ESTIMATE_TUPLES:
            check.feed(chunk[fed : fed + _ESTIMATE_STEP])
            fed = min(fed + _ESTIMATE_STEP, len(chunk))
    except CorruptArchive:
        return 0
    return fed // check.rows if check.rows else 0


def _same_encoding(plan: Any, ext: str, name: str) -> None:
    if ext != plan.src.encoding or ext not in ("copy", "pgbinary"):
        raise CorruptArchive(f"archive member {name}: not the encoding db/schema.json gives its table")


def check_server_counts(manifest: dict[str, Any], counted: list[tuple[list[str], int]]) -> None:
    """Each binary COPY loaded as many rows as MANIFEST.json gives its segments (call after the archive pass,
    which verified the manifest)."""
    said = manifest_rows(manifest)
    for members, rows in counted:
        if not all(m in said for m in members):  # a manifest that gives no rows checks none (as for COPY text)
            continue
        expected = sum(said[m] for m in members)
        if expected != rows:
            raise CorruptArchive(
                f"archive member {members[-1]}: the server loaded {rows} rows, MANIFEST.json says {expected}"
            )
