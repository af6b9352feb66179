"""`restore --jobs N` on PostgreSQL: tables loaded over N connections into staging tables, swapped in by the
restore's own transaction.

A replace restore with `--jobs N` (N ≥ 2) may stage the tables it can swap safely (`eligible`, the candidates):

1. Before the restore's transaction begins, a connection of its own (autocommit) takes a session advisory lock
   for the run, drops the staging tables of earlier runs whose lock is free (their process was killed; never
   those of a run still going) and finds the candidates.
2. The restore's transaction locks the candidates IN EXCLUSIVE MODE (nothing writes to them, readers still
   read) and the other tables as a replace always does. The archive is read once, as always. At a candidate's
   first segment, if that is STAGE_FROM_BYTES or more, the run's connection creates `statekit_stage_<run>_<n>`
   next to it with `CREATE TABLE … (LIKE …)` (columns, defaults, generated columns, check constraints, storage,
   compression, comments; no index) and gives it the table's owner, grants and comment; unless the two then
   read the same in the catalogue (`_SIGNATURE_SQL`), or an index cannot be carried over, the table is not
   staged. A staged table's segments are dealt out in turn to N workers, each a connection with a transaction
   of its own, loading COPY into the staging table; every segment is checked as it streams, and a worker
   commits only once the whole archive pass has been verified. A candidate not staged is truncated and loaded
   in place by the restore's own connection, which loads the other tables meanwhile.
3. The workers then build the staging tables' primary keys, unique and exclusion constraints and indexes, in
   parallel, under names of the run, with the statements the target's own catalogue gives for each table
   (`pg_get_constraintdef`, `pg_get_indexdef`), never the archive's.
4. In the restore's transaction, last: each staged table is locked ACCESS EXCLUSIVE and checked again (still
   eligible, its definition unchanged), its serial sequences change owner, it is dropped, and the staging
   table and its indexes take their names. The result must read in the catalogue as the dropped table did;
   then the commit. Any failure rolls the transaction back (the target's tables were never touched) and the
   staging tables are dropped.

What makes a table eligible is that nothing else in the database refers to it by its identity: no view,
rule, trigger, policy, publication, foreign key (either way), statistics object, inheritance or partition,
no use of its row type, no identity column, no per-column privileges or options. Any other table is loaded
by the restore's own connection as before.
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from statekit.errors import TierError
from statekit.tiers.sql import pgload
from statekit.tiers.sql.dialects.postgresql import qident
from statekit.tiers.sql.postgres import prepare_session

STAGE_PREFIX = "statekit_stage_"
# A table is staged when its first archived segment is at least this big (a segment is cut at about
# postgres.SEGMENT_BYTES): smaller tables cost more in staging statements than a second connection saves.
STAGE_FROM_BYTES = 4 << 20
# Chunks of a segment waiting for a worker's COPY (each up to pgload.CHUNK_BYTES): one segment's worth.
_WORKER_CHUNKS = 4
# How long a worker's statement may wait for a lock before the restore fails (see _Worker).
_LOCK_TIMEOUT_S = 60
# SET LOCAL for a build next to others (Stager.take_build). Two 500k-row keys side by side, two cores: 274-394 ms
# with the server's two workers each, 199-224 ms without; one 2M-row key alone: 548-572 ms with, 567-707 without.
_SHARED_BUILD = (
    "SELECT set_config('max_parallel_maintenance_workers', "
    "least(current_setting('max_parallel_maintenance_workers')::int, %s)::text, true)"
)
# The advisory lock space of staging runs (the first key of pg_advisory_lock(int, int)).
_LOCK_SPACE = 0x5354_4B53  # "STKS"

_ELIGIBLE_SQL = """
SELECT u.k, c.relnamespace::regnamespace::text
FROM unnest(%(t)s::text[]) WITH ORDINALITY AS u(t, k)
JOIN pg_class c ON c.oid = to_regclass(u.t)
WHERE c.relkind = 'r' AND NOT c.relispartition AND c.relpersistence = 'p'
  AND c.reloptions IS NULL AND c.reltablespace = 0 AND c.reloftype = 0
  AND NOT c.relrowsecurity AND NOT c.relforcerowsecurity AND c.relreplident = 'd' AND NOT c.relhassubclass
  AND c.relam = (SELECT oid FROM pg_am WHERE amname = 'heap')
  AND pg_has_role(c.relowner, 'MEMBER') AND has_schema_privilege(c.relnamespace, 'CREATE')
  AND (c.relacl IS NULL OR NOT EXISTS (SELECT 1 FROM aclexplode(c.relacl) x WHERE x.grantor <> c.relowner))
  AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = c.oid OR h.inhparent = c.oid)
  AND NOT EXISTS (SELECT 1 FROM pg_seclabel l WHERE l.classoid = 'pg_class'::regclass AND l.objoid = c.oid)
  AND NOT EXISTS (  -- a member of an extension
      SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')
  AND NOT EXISTS (
      SELECT 1 FROM pg_attribute a
      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        AND (a.attacl IS NOT NULL OR a.attfdwoptions IS NOT NULL
             -- options a user set (n_distinct …); some servers add a version marker of their own to every column
             OR EXISTS (SELECT 1 FROM unnest(a.attoptions) o WHERE o NOT LIKE 'pg\\_attver=%%')
             OR a.attstattarget >= 0 OR a.attidentity <> ''))
  -- every index is one the swap creates again exactly
  AND NOT EXISTS (
      SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
      WHERE i.indrelid = c.oid
        AND NOT (i.indisvalid AND i.indisready AND i.indislive AND NOT i.indisreplident AND NOT i.indisclustered
                 AND ic.reltablespace = 0 AND obj_description(i.indexrelid, 'pg_class') IS NULL
                 AND NOT EXISTS (SELECT 1 FROM pg_attribute ia WHERE ia.attrelid = i.indexrelid
                                 AND ia.attstattarget >= 0)))
  AND NOT EXISTS (
      SELECT 1 FROM pg_constraint o
      WHERE o.conrelid = c.oid AND o.contype IN ('p', 'u', 'x') AND obj_description(o.oid, 'pg_constraint') IS NOT NULL)
  -- nothing depends on the table but its own parts: indexes, toast table, row type, defaults, check and key
  -- constraints, serial sequences
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid
        AND NOT (
            (d.classid = 'pg_class'::regclass
             AND (d.objid = c.reltoastrelid
                  OR EXISTS (SELECT 1 FROM pg_index i WHERE i.indexrelid = d.objid AND i.indrelid = c.oid)
                  OR (d.deptype = 'a' AND EXISTS (SELECT 1 FROM pg_class s WHERE s.oid = d.objid AND s.relkind = 'S'))))
            OR (d.classid = 'pg_type'::regclass AND d.objid = c.reltype)
            OR (d.classid = 'pg_attrdef'::regclass
                AND EXISTS (SELECT 1 FROM pg_attrdef ad WHERE ad.oid = d.objid AND ad.adrelid = c.oid))
            OR (d.classid = 'pg_constraint'::regclass
                AND EXISTS (SELECT 1 FROM pg_constraint o WHERE o.oid = d.objid AND o.conrelid = c.oid
                            AND o.contype IN ('c', 'p', 'u', 'x', 'n')))))
  -- nor on its row type or that type's array type
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d JOIN pg_type ty ON ty.oid = c.reltype
      WHERE d.refclassid = 'pg_type'::regclass AND d.refobjid IN (ty.oid, ty.typarray)
        AND NOT (d.classid = 'pg_type'::regclass AND d.objid = ty.typarray)
        AND NOT (d.classid = 'pg_class'::regclass AND d.objid = c.oid))
ORDER BY u.k
"""

# What a table reads as in the catalogue, apart from its name and identity: compared between a table and its
# staging table (without the key constraints and indexes, which the staging table gets at the swap), and between
# the table before the swap and after it (with them).
_SIGNATURE_SQL = """
SELECT c.relkind, c.relpersistence, c.reloptions::text, c.relowner,
  (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(c.relacl) x), obj_description(c.oid, 'pg_class'),
  c.relrowsecurity, c.relforcerowsecurity, c.relreplident, c.reltablespace, c.relam, c.reloftype,
  (SELECT array_agg(format('%%L %%L %%L %%L %%L %%L %%L %%L %%L %%L', a.attname, format_type(a.atttypid, a.atttypmod),
                           a.attnotnull, a.attcollation, a.attgenerated, a.attidentity, a.attstorage,
                           a.attcompression, pg_get_expr(ad.adbin, ad.adrelid), col_description(c.oid, a.attnum))
                    ORDER BY a.attnum)
   FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT array_agg(format('%%L %%L %%L %%L', o.conname, o.contype, pg_get_constraintdef(o.oid),
                           obj_description(o.oid, 'pg_constraint')) ORDER BY o.conname)
   FROM pg_constraint o
   WHERE o.conrelid = c.oid AND (%(keys)s OR o.contype NOT IN ('p', 'u', 'x')) AND o.contype <> 'n'),
  (SELECT array_agg(format('%%L %%L', a.attname, o.conname) ORDER BY a.attnum)
   FROM pg_constraint o JOIN pg_attribute a ON a.attrelid = o.conrelid AND a.attnum = o.conkey[1]
   WHERE o.conrelid = c.oid AND o.contype = 'n' AND %(keys)s),
  (SELECT array_agg(d ORDER BY d)
   FROM (SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = c.oid AND %(keys)s) AS x(d))
FROM pg_class c WHERE c.oid = %(t)s::regclass
"""

_OWNER_SQL = """
SELECT c.relowner::regrole::text, quote_literal(obj_description(c.oid, 'pg_class')), c.relacl IS NOT NULL
FROM pg_class c WHERE c.oid = %(t)s::regclass
"""

_GRANTS_SQL = """
SELECT x.privilege_type, CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE x.grantee::regrole::text END, x.is_grantable
FROM pg_class c, aclexplode(c.relacl) x WHERE c.oid = %(t)s::regclass
"""

# A table's key constraints and indexes as its catalogue gives them: index name, constraint name and definition,
# the index definition and the start pg_get_indexdef gives it (CREATE … INDEX name ON schema.table USING), which
# is swapped for the staging table's.
_KEYS_SQL = """
SELECT ic.relname, con.conname, pg_get_constraintdef(con.oid), pg_get_indexdef(i.indexrelid),
       format('CREATE %%sINDEX %%s ON %%s.%%s USING ', CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END,
              quote_ident(ic.relname), quote_ident(n.nspname), quote_ident(t.relname))
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
     AND con.contype IN ('p', 'u', 'x')
WHERE i.indrelid = %(t)s::regclass
ORDER BY con.contype NULLS LAST, ic.relname
"""

# Not-null constraints with names of their own (PostgreSQL 18): column -> name.
_NOT_NULL_SQL = """
SELECT a.attname, o.conname
FROM pg_constraint o JOIN pg_attribute a ON a.attrelid = o.conrelid AND a.attnum = o.conkey[1]
WHERE o.conrelid = %(t)s::regclass AND o.contype = 'n'
"""

_SERIALS_SQL = """
SELECT d.objid::regclass::text, a.attname
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %(t)s::regclass
  AND d.deptype = 'a'
"""

# Staging tables left by runs whose connection is gone (a killed restore): their lock is free.
_LEFTOVER_SQL = """
SELECT c.oid::regclass::text, substr(c.relname, length(%(p)s) + 1, 8)
FROM pg_class c
WHERE c.relkind = 'r' AND c.relname ~ ('^' || %(p)s || '[0-9a-f]{8}_[0-9]+$')
"""


class StageError(TierError):
    """A staged table could not be swapped in (it changed while the restore ran); nothing was restored."""


def eligible(cur: Any, tables: list[str]) -> dict[int, str]:
    """Which of these tables (quoted, qualified names) can be staged: their place in the list -> the quoted
    schema they live in."""
    if not tables:
        return {}
    cur.execute(_ELIGIBLE_SQL, {"t": tables})
    return {int(k) - 1: str(nsp) for k, nsp in cur.fetchall()}


def _signature(cur: Any, table: str, *, keys: bool) -> tuple[Any, ...]:
    cur.execute(_SIGNATURE_SQL, {"t": table, "keys": keys})
    row = cur.fetchone()
    return tuple(row) if row else ()


@dataclass
class Staged:
    """One table loaded through a staging table."""

    table: str  # quoted, qualified
    name: str  # the table's own name (unquoted)
    nsp: str  # its quoted schema
    stage: str  # quoted, qualified staging table
    signature: tuple[Any, ...] = ()  # the table as it read when its staging table was made (keys left out)
    build: list[str] = field(default_factory=list)  # the staging table's keys and indexes, under the run's names
    names: list[tuple[str, str]] = field(default_factory=list)  # (run's index name, the table's index name)


class _Abort(Exception):
    """The run is being abandoned: a worker stops reading."""


@dataclass
class _Member:
    name: str
    size: int
    stream: Any


class _QueueStream:
    """One segment's chunks, as a worker's COPY reads them from its queue."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.ended = False

    def read(self, _size: int = -1) -> bytes:
        if self.ended:
            return b""
        item = self.worker.take()
        if item is None:
            self.ended = True
            return b""
        return bytes(item)


_DONE = object()


class _Worker(threading.Thread):
    """A connection of its own: loads the segments dealt to it into staging tables in one transaction, which
    commits once the archive pass has been verified (rolls back on anything else), then builds keys and
    indexes of staging tables taken from the run's list, each in a transaction of its own."""

    def __init__(self, stager: Stager, n: int) -> None:
        super().__init__(name=f"statekit-restore-{n}", daemon=True)
        self.stager = stager
        self.conn = stager.target.psycopg_connect(f"statekit-restore-{n}")
        self.q: queue.Queue[Any] = queue.Queue(maxsize=_WORKER_CHUNKS)
        self.error: BaseException | None = None
        self.loaded: dict[str, int] = {}
        self.counted: list[tuple[list[str], int]] = []
        self.nbytes = 0
        self.load_done = threading.Event()
        prepare_session(self.conn)
        with self.conn.cursor() as cur:
            # Nothing a worker does should wait for a lock: one that does waits for the restore's own transaction
            # (a check constraint reading a locked table), which waits for the worker. Give up instead.
            cur.execute(f"SET lock_timeout = '{_LOCK_TIMEOUT_S}s'")

    # -- the router's side ----------------------------------------------------------------------------------
    def give(self, item: Any) -> None:
        """Queue an item (a segment start, a chunk, None at a segment's end, _DONE); raises the worker's error."""
        pgload.put_checked(self.q, item, self._check)

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        self._aborted()

    # -- the worker's side ----------------------------------------------------------------------------------
    def take(self) -> Any:
        return pgload.get_checked(self.q, self._aborted)

    def _aborted(self) -> None:
        if self.stager.aborted.is_set():
            raise _Abort

    def _segments(self) -> Iterator[tuple[Any, str, Any]]:
        while True:
            item = self.take()
            if item is _DONE:
                return
            plan, ext, name, size = item
            yield plan, ext, _Member(name, size, _QueueStream(self))

    def _tick(self, done: dict[str, int], nbytes: int) -> None:
        self.loaded = done
        self.nbytes = nbytes

    def run(self) -> None:
        try:
            stages = self.stager.by_key
            with self.conn.cursor() as cur:
                self.loaded, self.counted = pgload.copy_segments(
                    cur,
                    self._segments(),
                    destination=lambda plan, _size: stages[plan.src.key].stage,
                    finished=lambda _plan, _dest: None,
                    tick=self._tick,
                    wires=self.stager.wires,
                    estimate=self.stager.estimate,
                )
            self.conn.commit()
            self.load_done.set()
            self.stager.build_go.wait()
            with self.conn.cursor() as cur:
                while not self.stager.aborted.is_set() and (task := self.stager.take_build()) is not None:
                    stmt, cap = task
                    try:
                        pgload.raise_maintenance_memory(cur)
                        if cap is not None:  # at most this many parallel workers (fewer if the server says so)
                            cur.execute(_SHARED_BUILD, (cap,))
                        cur.execute(stmt)
                        self.conn.commit()
                    finally:
                        self.stager.build_done()
        except BaseException as exc:
            self.error = exc
            try:
                self.conn.rollback()
            except Exception:
                pass
        finally:
            self.load_done.set()


@dataclass
class Stager:
    """The staging tables of one restore, the connection that made them and the workers that load them."""

    target: Any  # DbTarget
    jobs: int
    estimate: bool = True  # rows estimated from bytes mid-COPY, for a progress line (pgload.copy_segments)
    wires: Callable[[Any, str, list[str]], list[str | None]] = pgload.target_wire
    candidates: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # key -> name, table, schema
    decided: set[str] = field(default_factory=set)  # candidates whose first segment has been seen
    by_key: dict[str, Staged] = field(default_factory=dict)  # the staged tables, in the order they were staged
    aborted: threading.Event = field(default_factory=threading.Event)
    build_go: threading.Event = field(default_factory=threading.Event)
    tasks: queue.Queue[str] = field(default_factory=queue.Queue)
    _building: int = 0  # key and index builds in progress
    _build_lock: threading.Lock = field(default_factory=threading.Lock)
    workers: list[_Worker] = field(default_factory=list)
    _admin: Any = None
    _run: str = ""

    # -- before the restore's transaction --------------------------------------------------------------------
    def open(self, plans: list[Any], tables: list[str]) -> None:
        """Find the tables among `plans` (`tables`: their quoted names) that may be staged; a table is staged when
        the load pass reaches its first segment and that is STAGE_FROM_BYTES or more."""
        self._admin = self.target.psycopg_connect("statekit-restore-stage")
        self._admin.autocommit = True
        self._run = secrets.token_hex(4)
        with self._admin.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s, %s)", (_LOCK_SPACE, _lock_key(self._run)))
            self._drop_leftovers(cur)
            for i, nsp in sorted(eligible(cur, tables).items()):
                self.candidates[plans[i].src.key] = (plans[i].src.name, tables[i], nsp)

    def _stage(self, key: str, first_size: int) -> bool:
        """Decide for a candidate table, at its first segment: make its staging table (True) or leave it to the
        restore's own connection (False: a small table, or one whose staging table would not read the same)."""
        name, table, nsp = self.candidates[key]
        self.decided.add(key)
        if first_size < STAGE_FROM_BYTES:
            return False
        s = Staged(table, name, nsp, f"{nsp}.{qident(f'{STAGE_PREFIX}{self._run}_{len(self.decided)}')}")
        with self._admin.cursor() as cur:
            if not self._create(cur, s):
                return False
        self.by_key[key] = s
        if not self.workers:
            for n in range(1, self.jobs + 1):
                worker = _Worker(self, n)
                self.workers.append(worker)
                worker.start()
        return True

    def _drop_leftovers(self, cur: Any) -> None:
        cur.execute(_LEFTOVER_SQL, {"p": STAGE_PREFIX})
        by_run: dict[str, list[str]] = {}
        for table, run in cur.fetchall():
            by_run.setdefault(str(run), []).append(str(table))
        for run, names in by_run.items():
            key = _lock_key(run)
            cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_SPACE, key))
            row = cur.fetchone()
            if row and row[0]:  # its run is over: nobody holds its lock
                try:
                    cur.execute(f"DROP TABLE IF EXISTS {', '.join(names)}")
                finally:
                    cur.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_SPACE, key))

    def _create(self, cur: Any, s: Staged) -> bool:
        """Make the staging table of s.table and the statements of its keys; False (and no staging table) when
        it does not read as the table does in the catalogue or an index cannot be carried over."""
        cur.execute(
            f"CREATE TABLE {s.stage} (LIKE {s.table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED "
            "INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING COMMENTS)"
        )
        try:
            cur.execute(_OWNER_SQL, {"t": s.table})
            row = cur.fetchone()
            owner, comment, has_acl = row if row else (None, None, False)
            cur.execute(f"ALTER TABLE {s.stage} OWNER TO {owner}")
            if has_acl:  # the same privileges, granted by the same owner (eligible() saw to that)
                cur.execute(f"REVOKE ALL ON {s.stage} FROM {owner}")
                cur.execute(_GRANTS_SQL, {"t": s.table})
                for privilege, grantee, option in cur.fetchall():
                    grant = f"GRANT {privilege} ON {s.stage} TO {grantee}"
                    cur.execute(grant + (" WITH GRANT OPTION" if option else ""))
            if comment is not None:
                cur.execute(f"COMMENT ON TABLE {s.stage} IS {comment}")  # a literal quoted by the server
            s.signature = _signature(cur, s.table, keys=False)
            if self._keys(cur, s) and _signature(cur, s.stage, keys=False) == s.signature:
                return True
        except Exception:
            pass
        cur.execute(f"DROP TABLE IF EXISTS {s.stage}")
        return False

    def _keys(self, cur: Any, s: Staged) -> bool:
        """The statements that give the staging table the table's keys and indexes, under the run's names."""
        cur.execute(_KEYS_SQL, {"t": s.table})
        for k, (index_name, con_name, con_def, index_def, start) in enumerate(cur.fetchall()):
            temp = f"{s.stage.rpartition('.')[2][1:-1]}_{k}"
            if con_name is not None:
                if con_name != index_name:
                    return False
                s.build.append(f"ALTER TABLE {s.stage} ADD CONSTRAINT {qident(temp)} {con_def}")
            else:
                if not str(index_def).startswith(str(start)):
                    return False
                unique = "UNIQUE " if str(start).startswith("CREATE UNIQUE ") else ""
                s.build.append(f"CREATE {unique}INDEX {qident(temp)} ON {s.stage} USING {index_def[len(start) :]}")
            s.names.append((temp, str(index_name)))
        return True

    # -- during the load pass --------------------------------------------------------------------------------
    def route(
        self,
        segments: Iterator[tuple[Any, str, Any]],
        wires: Callable[[Any, str, list[str]], list[str | None]],
        on_segment: Callable[[], None],
    ) -> Iterator[tuple[Any, str, Any]]:
        """The archive's segments, the staged tables' dealt out in turn to the workers (`jobs` connections, each
        in a transaction of its own, started with the first staged table) and the others passed on to the
        restore's own connection. `wires` answers the workers' binary-format questions, `on_segment` runs each
        time a segment has been handed to a worker (the progress line). Once the pass has ended, verified,
        every worker is told so and commits."""
        self.wires = wires
        turn = 0
        for plan, ext, member in segments:
            key = plan.src.key
            if key in self.candidates and key not in self.decided:
                self._stage(key, member.size)
            if key not in self.by_key:
                yield plan, ext, member
                continue
            worker = self.workers[turn % len(self.workers)]
            turn += 1
            worker.give((plan, ext, member.name, member.size))
            while chunk := member.stream.read(pgload.CHUNK_BYTES):
                worker.give(chunk)
            worker.give(None)
            on_segment()
        for worker in self.workers:
            worker.give(_DONE)

    def finish(self) -> tuple[dict[str, int], list[tuple[list[str], int]]]:
        """Once every worker has committed its load, the staging tables' keys and indexes are built (in parallel);
        returns the workers' rows per table and their COPYs' server counts."""
        for worker in self.workers:
            worker.load_done.wait()
        self._raise()
        for s in self.by_key.values():
            for stmt in s.build:
                self.tasks.put(stmt)
        self.build_go.set()
        for worker in self.workers:
            worker.join()
        self._raise()
        return self.progress()[0], [c for worker in self.workers for c in worker.counted]

    def take_build(self) -> tuple[str, int | None] | None:
        """The next key or index statement for a worker (None: none left) and the most parallel workers of the
        server's it may use: None (the server's setting) for a build alone; next to others, its share of the N
        processes --jobs asks for, less itself (N // builds at once - 1: none for two with --jobs 2)."""
        with self._build_lock:
            try:
                stmt = self.tasks.get_nowait()
            except queue.Empty:
                return None
            together = min(self.jobs, self._building + 1 + self.tasks.qsize())
            self._building += 1
            return stmt, (None if together == 1 else max(0, self.jobs // together - 1))

    def build_done(self) -> None:
        with self._build_lock:
            self._building -= 1

    def _raise(self) -> None:
        for worker in self.workers:
            if worker.error is not None:
                raise worker.error

    def progress(self) -> tuple[dict[str, int], int]:
        """Rows per table and bytes the workers have loaded so far (for the progress line)."""
        loaded: dict[str, int] = {}
        nbytes = 0
        for worker in self.workers:
            for key, rows in dict(worker.loaded).items():
                loaded[key] = loaded.get(key, 0) + rows
            nbytes += worker.nbytes
        return loaded, nbytes

    # -- in the restore's transaction, last ------------------------------------------------------------------
    def swap(self, cur: Any) -> None:
        """Put each staging table in its table's place (the restore's transaction holds the table locked)."""
        for s in self.by_key.values():
            cur.execute(f"LOCK TABLE {s.table} IN ACCESS EXCLUSIVE MODE")  # held in EXCLUSIVE mode until now
            if not eligible(cur, [s.table]) or _signature(cur, s.table, keys=False) != s.signature:
                raise StageError(f"db table {s.table} changed while the restore loaded it; nothing was restored")
            before = _signature(cur, s.table, keys=True)
            cur.execute(_NOT_NULL_SQL, {"t": s.table})
            not_null = dict(cur.fetchall())
            cur.execute(_SERIALS_SQL, {"t": s.table})
            for seq, column in cur.fetchall():
                cur.execute(f"ALTER SEQUENCE {seq} OWNED BY {s.stage}.{qident(column)}")
            cur.execute(f"DROP TABLE {s.table}")
            cur.execute(f"ALTER TABLE {s.stage} RENAME TO {qident(s.name)}")
            for temp, name in s.names:
                cur.execute(f"ALTER INDEX {s.nsp}.{qident(temp)} RENAME TO {qident(name)}")
            cur.execute(_NOT_NULL_SQL, {"t": s.table})
            for column, name in cur.fetchall():
                if column in not_null and not_null[column] != name:
                    cur.execute(f"ALTER TABLE {s.table} RENAME CONSTRAINT {qident(name)} TO {qident(not_null[column])}")
            if _signature(cur, s.table, keys=True) != before:
                raise StageError(
                    f"db table {s.table} did not come out of its staging table as it was; nothing was restored "
                    "(restore it without --jobs)"
                )

    # -- at the end, whatever happened -----------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers (rolling back whatever did not commit), drop the staging tables still there (none
        after a commit), release the run's lock."""
        self.aborted.set()
        self.build_go.set()
        for worker in self.workers:
            if worker.is_alive():
                try:
                    worker.conn.cancel()  # a COPY or an index build in progress stops now
                except Exception:
                    pass
        for worker in self.workers:
            worker.join()
            try:
                worker.conn.close()
            except Exception:
                pass
        if self._admin is None:
            return
        try:
            left = [s.stage for s in self.by_key.values()]
            if left:
                with self._admin.cursor() as cur:
                    cur.execute(f"DROP TABLE IF EXISTS {', '.join(left)}")
        finally:
            try:
                self._admin.close()
            except Exception:
                pass


def _lock_key(run: str) -> int:
    """The run's advisory lock key (an int4) from its hex name."""
    return int(run, 16) - (1 << 31)
