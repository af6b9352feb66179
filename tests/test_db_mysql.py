"""db tier on real MariaDB: type torture round trip, modes, and PostgreSQL archives restored into MariaDB."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from statekit.config import DbConfig
from statekit.errors import Refused
from statekit.model import RestoreOptions
from statekit.tiers.sql import plan_db_restore
from tests.db_support import execute, fetch, nan_safe, restore, snap

TORTURE = """CREATE TABLE `Torture` (
    id BIGINT AUTO_INCREMENT PRIMARY KEY, t LONGTEXT, vc VARCHAR(50), `order` INT, `Select` TEXT,
    dt6 DATETIME(6), ts6 TIMESTAMP(6) NULL DEFAULT NULL, d DATE, tm TIME(6), flag TINYINT(1),
    ti TINYINT, si SMALLINT, mi MEDIUMINT, ii INT, bi BIGINT, ubi BIGINT UNSIGNED, num DECIMAL(65,30),
    f FLOAT, dbl DOUBLE, j JSON, bl LONGBLOB, vb VARBINARY(300), e ENUM('a','b','c d'), yr YEAR, bits BIT(8),
    gen BIGINT AS (ii * 10) STORED
) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"""

COLS = (
    "id, t, vc, `order`, `Select`, dt6, ts6, d, tm, flag, ti, si, mi, ii, bi, ubi, num, f, dbl, j, bl, vb, e, yr, bits"
)


def _torture(url: str) -> None:
    engine = sa.create_engine(url)
    rows: list[dict[str, Any]] = [
        {"id": 1},
        {
            "id": 2, "t": "", "vc": "", "order": -2147483648, "Select": "", "dt6": dt.datetime(1000, 1, 1),
            "ts6": dt.datetime(1970, 1, 2, 0, 0, 0, 1), "d": dt.date(1000, 1, 1), "tm": dt.timedelta(hours=-838),
            "flag": 0, "ti": -128, "si": -32768, "mi": -8388608, "ii": -2147483648, "bi": -(2**63), "ubi": 0,
            "num": decimal.Decimal("-" + "9" * 35 + "." + "9" * 30), "f": -1.5, "dbl": -1.7976931348623157e308,
            "j": "[]", "bl": b"", "vb": b"", "e": "a", "yr": 1901, "bits": b"\x00",
        },
        {
            "id": 3, "t": "tab\there\nnew\r\\ 'q' \"dq\" 😀 مرحبا עברית" + "long 😀 " * 100000,
            "vc": "émoji 😀😀", "order": 2147483647, "Select": "from",
            "dt6": dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
            "ts6": dt.datetime(2038, 1, 1, 0, 0, 0, 999999), "d": dt.date(9999, 12, 31),
            "tm": dt.timedelta(hours=838, minutes=59, seconds=59), "flag": 1, "ti": 127, "si": 32767,
            "mi": 8388607, "ii": 2147483647, "bi": 2**63 - 1, "ubi": 2**64 - 1,
            "num": decimal.Decimal("9" * 35 + "." + "0" * 29 + "1"), "f": 3.5, "dbl": 2.2250738585072014e-308,
            "j": '{"a": [1, 2.5, null, "😀"], "b": {"c": true}}', "bl": bytes(range(256)) * 3,
            "vb": bytes(range(256)), "e": "c d", "yr": 2155, "bits": b"\xff",
        },
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.exec_driver_sql(TORTURE)
        conn.exec_driver_sql("CREATE TABLE nokey (a INT, b TEXT)")
        conn.exec_driver_sql("CREATE TABLE parent (id INT PRIMARY KEY)")
        conn.exec_driver_sql(
            "CREATE TABLE child (id INT PRIMARY KEY, p INT, FOREIGN KEY (p) REFERENCES parent(id) ON DELETE CASCADE)"
        )
        conn.exec_driver_sql("INSERT INTO nokey VALUES (1, 'a'), (1, 'a'), (NULL, NULL)")
        conn.exec_driver_sql("INSERT INTO parent VALUES (1), (2)")
        conn.exec_driver_sql("INSERT INTO child VALUES (10, 1), (11, 2), (12, NULL)")
        meta = sa.MetaData()
        t = sa.Table("Torture", meta, autoload_with=conn)
        for r in rows:
            conn.execute(t.insert().values(**r))
    engine.dispose()


def _all(url: str) -> dict[str, list[tuple[object, ...]]]:
    return {
        "Torture": fetch(url, f"SELECT {COLS}, gen FROM `Torture` ORDER BY id"),
        "nokey": fetch(url, "SELECT * FROM nokey ORDER BY a, b"),
        "parent": fetch(url, "SELECT * FROM parent ORDER BY id"),
        "child": fetch(url, "SELECT * FROM child ORDER BY id"),
    }


def test_mariadb_torture_round_trip(mysql_url: str, mysql_url2: str, tmp_path: Path) -> None:
    _torture(mysql_url)
    archive, summary = snap(mysql_url, tmp_path / "a.statekit")
    assert summary.details["dialect"] == "mysql"
    assert summary.details["isolation"].startswith("REPEATABLE READ")
    assert sorted(t.split(".")[-1] for t in summary.details["tables"]) == ["Torture", "child", "nokey", "parent"]
    restore(archive, mysql_url2)
    assert _all(mysql_url2) == _all(mysql_url)
    # AUTO_INCREMENT continues past the restored ids
    execute(mysql_url2, "INSERT INTO `Torture` (t, ii) VALUES ('new', 5)")
    assert fetch(mysql_url2, "SELECT id, gen FROM `Torture` WHERE t = 'new'") == [(4, 50)]
    # replace into the now populated target, then merge
    execute(mysql_url2, "DELETE FROM child WHERE id = 10", "INSERT INTO nokey VALUES (5, 'target')")
    restore(archive, mysql_url2, tables=["*.nokey", "*.child", "*.parent"])
    assert _all(mysql_url2)["nokey"] == _all(mysql_url)["nokey"]
    assert _all(mysql_url2)["child"] == _all(mysql_url)["child"]
    execute(mysql_url2, "DELETE FROM child", "UPDATE parent SET id = 5 WHERE id = 2")
    restore(archive, mysql_url2, tables=["*.parent"], mode="merge")
    assert fetch(mysql_url2, "SELECT id FROM parent ORDER BY id") == [(1,), (2,), (5,)]


PORTABLE_PG = [
    """CREATE TYPE color AS ENUM ('red', 'green')""",
    """CREATE TABLE "Portable" (
        id bigint PRIMARY KEY, i2 smallint, i4 int, t text, vc varchar(40), num numeric(30,10), f8 float8,
        b boolean, d date, ts timestamp(6), tstz timestamptz, u uuid, jb jsonb, by bytea, c color,
        "order" int)""",
    """INSERT INTO "Portable" VALUES
        (1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (2, -32768, 2147483647, E'tab\\tnl\\n\\\\ ''q'' 😀 مرحبا', '', '-12345678901234567890.0123456789',
         1.5e-300, true, '2024-02-29', '2024-02-29 23:59:59.123456', '2024-02-29 12:00:00.5+02',
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"k": [1, "two", null]}', '\\x00ff10', 'green', 7),
        (3, 0, 0, '', 'x', 0, -0.25, false, '1970-01-01', '1970-01-01 00:00:00', '1970-01-01 00:00:00+00',
         '00000000-0000-0000-0000-000000000000', '[]', '\\x', 'red', 0)""",
]


def _expected_portable() -> list[tuple[object, ...]]:
    return [
        (1, None, None, None, None, None, None, None, None, None, None, None, None, None, None, None),
        (2, -32768, 2147483647, "tab\tnl\n\\ 'q' 😀 مرحبا", "", decimal.Decimal("-12345678901234567890.0123456789"),
         1.5e-300, 1, dt.date(2024, 2, 29), dt.datetime(2024, 2, 29, 23, 59, 59, 123456),
         dt.datetime(2024, 2, 29, 10, 0, 0, 500000), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
         {"k": [1, "two", None]}, b"\x00\xff\x10", "green", 7),
        (3, 0, 0, "", "x", decimal.Decimal("0E-10"), -0.25, 0, dt.date(1970, 1, 1), dt.datetime(1970, 1, 1),
         dt.datetime(1970, 1, 1), "00000000-0000-0000-0000-000000000000", [], b"", "red", 0),
    ]  # fmt: skip


def test_postgresql_archive_into_mariadb(pg_url: str, mysql_url: str, tmp_path: Path) -> None:
    import json

    execute(pg_url, *PORTABLE_PG)
    archive, _ = snap(pg_url, tmp_path / "a.statekit")
    plan = plan_db_restore(archive, RestoreOptions(tier="db", target=mysql_url), DbConfig())
    assert plan.problems == [] and plan.plan[0]["action"] == "create"
    restore(archive, mysql_url)
    rows = fetch(mysql_url, "SELECT * FROM `Portable` ORDER BY id")
    got = [tuple(json.loads(v) if i == 12 and v is not None else v for i, v in enumerate(r)) for r in rows]
    exp = _expected_portable()
    assert nan_safe(got) == nan_safe(exp)
    uuid.UUID(str(got[1][11]))


def test_non_portable_columns_are_refused_before_writing(pg_url: str, mysql_url: str, tmp_path: Path) -> None:
    execute(pg_url, "CREATE TABLE np (id int PRIMARY KEY, iv interval, arr int[], ok text)")
    execute(pg_url, "INSERT INTO np VALUES (1, '1 day', '{1}', 'x')")
    archive, _ = snap(pg_url, tmp_path / "a.statekit")
    plan = plan_db_restore(archive, RestoreOptions(tier="db", target=mysql_url), DbConfig())
    assert len(plan.problems) == 2
    assert any("public.np.iv (interval)" in p for p in plan.problems)
    assert any("public.np.arr (integer[])" in p for p in plan.problems)
    with pytest.raises(Refused):
        restore(archive, mysql_url)
    assert fetch(mysql_url, "SHOW TABLES") == []


def test_mariadb_undo_archive_puts_the_target_back(mysql_url: str, mysql_url2: str, tmp_path: Path) -> None:
    from statekit.archive.reader import Archive
    from tests.db_support import FileUndo

    ddl = "CREATE TABLE kv (k INT PRIMARY KEY, v VARCHAR(20))"
    execute(mysql_url, ddl, "INSERT INTO kv VALUES (1, 'archived')")
    archive, _ = snap(mysql_url, tmp_path / "a.statekit")
    execute(mysql_url2, ddl, "INSERT INTO kv VALUES (2, 'before'), (3, 'before')")
    restore(archive, mysql_url2, undo=FileUndo(tmp_path / "undo.statekit"))
    assert fetch(mysql_url2, "SELECT * FROM kv ORDER BY k") == [(1, "archived")]
    restore(Archive(tmp_path / "undo.statekit"), mysql_url2)
    assert fetch(mysql_url2, "SELECT * FROM kv ORDER BY k") == [(2, "before"), (3, "before")]
