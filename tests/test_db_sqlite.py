"""db tier on SQLite: dynamic types round trip exactly; PostgreSQL archives restore into SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from statekit.errors import TierUnavailable
from tests.db_support import execute, restore, snap
from tests.test_db_mysql import PORTABLE_PG

ROWS = [
    (1, None, None, None, None),
    (2, 0, "", b"", 0.0),
    (3, -(2**63), "007", bytes(range(256)), float("inf")),
    (4, 2**63 - 1, "tab\tnl\n\\ 'q' \"dq\" 😀 مرحبا" * 1000, b"\x00", float("-inf")),
    (5, 1.5, 42, "text in a blob column", -0.0),
    (6, "text in an int column", b"blob in text", 17, "str in real"),
    (7, 1.2345678901234567e19, 3.25, None, 1e-310),
]


def _torture(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE "Torture" (id INTEGER PRIMARY KEY, anything, "order" TEXT, b BLOB, r REAL)')
        conn.execute('CREATE TABLE "select" (a INT, "Weird Name" NUMERIC, g INT GENERATED ALWAYS AS (a * 2))')
        conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
        conn.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id) ON DELETE CASCADE)")
        conn.execute('CREATE UNIQUE INDEX "Torture by order" ON "Torture" ("order", r)')
        conn.executemany('INSERT INTO "Torture" VALUES (?, ?, ?, ?, ?)', ROWS)
        conn.executemany('INSERT INTO "select" (a, "Weird Name") VALUES (?, ?)', [(1, "1.50"), (2, None), (None, "x")])
        conn.executemany("INSERT INTO parent (v) VALUES (?)", [("a",), ("b",), ("c",)])
        conn.execute("DELETE FROM parent WHERE id = 3")
        conn.executemany("INSERT INTO child VALUES (?, ?)", [(1, 1), (2, 2)])


def _dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as conn:
        out = {}
        for t in ('"Torture"', '"select"', "parent", "child"):
            cols = [r[1] for r in conn.execute(f"PRAGMA table_xinfo({t})")]
            sel = ", ".join(f'"{c}", typeof("{c}")' for c in cols)
            out[t] = conn.execute(f"SELECT {sel} FROM {t} ORDER BY rowid").fetchall()
        return out


def test_sqlite_dynamic_types_round_trip(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    _torture(src)
    archive, summary = snap(f"sqlite:///{src}", tmp_path / "a.statekit")
    assert summary.details["dialect"] == "sqlite"
    assert summary.details["isolation"] == "one read transaction"
    restore(archive, f"sqlite:///{dst}")
    assert _dump(dst) == _dump(src)
    with sqlite3.connect(dst) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == [("Torture by order",)]
    with sqlite3.connect(dst) as conn:  # AUTOINCREMENT continues past the restored ids
        conn.execute("INSERT INTO parent (v) VALUES ('n')")
        assert conn.execute("SELECT max(id) FROM parent").fetchone() == (3,)
    # replace into the populated target
    with sqlite3.connect(dst) as conn:
        conn.execute('DELETE FROM "Torture" WHERE id < 4')
        conn.execute('INSERT INTO "select" (a) VALUES (99)')
    restore(archive, f"sqlite:///{dst}", tables=["*Torture", "*select"])
    got, exp = _dump(dst), _dump(src)
    assert got['"Torture"'] == exp['"Torture"'] and got['"select"'] == exp['"select"']


def test_postgresql_archive_into_sqlite(pg_url: str, tmp_path: Path) -> None:
    execute(pg_url, *PORTABLE_PG)
    archive, _ = snap(pg_url, tmp_path / "a.statekit")
    dst = tmp_path / "dst.db"
    restore(archive, f"sqlite:///{dst}")
    with sqlite3.connect(dst) as conn:
        rows = conn.execute('SELECT * FROM "Portable" ORDER BY id').fetchall()
    assert rows[0] == (1,) + (None,) * 15
    r = rows[1]
    assert r[:5] == (2, -32768, 2147483647, "tab\tnl\n\\ 'q' 😀 مرحبا", "")
    assert str(r[5]) == "-12345678901234567890.0123456789"
    assert r[6] == 1.5e-300 and r[7] == 1
    assert r[8:11] == ("2024-02-29", "2024-02-29 23:59:59.123456", "2024-02-29 10:00:00.500000")
    assert r[11] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert r[12] == '{"k": [1, "two", null]}' and r[13] == b"\x00\xff\x10" and r[14] == "green" and r[15] == 7


def test_missing_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(TierUnavailable):
        snap(f"sqlite:///{tmp_path / 'nope.db'}", tmp_path / "a.statekit")
