"""MySQL/MariaDB and SQLite snapshot path: server-side cursors, rows in the portable jsonl encoding.

Rows are fetched in batches from an unbuffered cursor (pymysql SSCursor through SQLAlchemy's
stream_results; SQLite cursors step lazily anyway) and cut into segments of about SEGMENT_BYTES, so memory
does not grow with the table.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from statekit.tiers.sql.postgres import SEGMENT_BYTES
from statekit.tiers.sql.schema import TableDesc
from statekit.tiers.sql.values import encode_row

FETCH_ROWS = 5000

AddSegment = Callable[[TableDesc, int, bytes | bytearray, int], None]


def select_sql(conn: sa.Connection, table: TableDesc, schema: str | None) -> str:
    """SELECT of the archived columns, identifiers quoted by the dialect."""
    q = conn.dialect.identifier_preparer.quote
    cols = ", ".join(q(c.name) for c in table.data_columns)
    name = f"{q(schema)}.{q(table.name)}" if schema else q(table.name)
    return f"SELECT {cols} FROM {name}"


def copy_out_rows(
    conn: sa.Connection, tables: list[TableDesc], add: AddSegment, schema_of: Callable[[TableDesc], str | None]
) -> dict[str, int]:
    """Stream every table into jsonl segments; returns row counts by table key."""
    counts: dict[str, int] = {}
    streaming = conn.execution_options(stream_results=True, max_row_buffer=FETCH_ROWS)
    for t in tables:
        if not t.data_columns:
            counts[t.key] = 0
            continue
        result = streaming.exec_driver_sql(select_sql(conn, t, schema_of(t)))
        buf = bytearray()
        rows = seg_rows = seq = 0
        try:
            while batch := result.fetchmany(FETCH_ROWS):
                for row in batch:
                    buf += encode_row(row)
                seg_rows += len(batch)
                if len(buf) >= SEGMENT_BYTES:
                    add(t, seq, bytes(buf), seg_rows)
                    rows += seg_rows
                    seq += 1
                    buf = bytearray()
                    seg_rows = 0
        finally:
            result.close()
        if seg_rows:
            add(t, seq, bytes(buf), seg_rows)
            rows += seg_rows
        counts[t.key] = rows
    return counts
