"""PostgreSQL domains over other domains are created after them, whatever their names.

db/schema.json lists the domains by name; `lvl AS posint` used to be created before `posint` and the restore
failed with `type "posint" does not exist`. A domain is now created only after the archived domain it is
defined over (directly or as an array of it); a forged archive whose domains are defined over each other is
refused as corrupt (exit 3) before anything changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from statekit.archive.reader import Archive
from tests.db_support import restore
from tests.test_sql_trust import IDENTITY, _exec, rewrite, snapshot
from tests.test_untrusted_ddl import _restore, _rows


def _source(url: str, tmp_path: Path) -> Path:
    # names sort against the order they must be created in: alist, lvl < posint < zbase
    _exec(url, "CREATE DOMAIN zbase AS integer CHECK (VALUE < 1000)",
          "CREATE DOMAIN posint AS zbase CHECK (VALUE > 0)", "CREATE DOMAIN lvl AS posint",
          "CREATE DOMAIN alist AS posint[]",
          "CREATE TABLE t (id integer PRIMARY KEY, l lvl, a alist)",
          "INSERT INTO t VALUES (1, 5, '{1,2}'), (2, 7, NULL)")  # fmt: skip
    return snapshot(url, tmp_path / "good.statekit", IDENTITY.recipient().to_string())


_ROWS = [(1, 5, "{1,2}"), (2, 7, None)]
_SELECT = "SELECT id, l, a::text FROM t ORDER BY id"


def test_unsigned_archive_creates_domains_in_dependency_order(
    pg_url: str, pg_url2: str, tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _source(pg_url, tmp_path)
    code, _, err = _restore(archive, pg_url2, identity_file, capsys, "--no-undo")
    assert code == 0, err
    assert _rows(pg_url2, _SELECT) == _ROWS
    bases = _rows(pg_url2, "SELECT typname, format_type(typbasetype, NULL) FROM pg_type WHERE typtype = 'd' "
                           "AND typnamespace = 'public'::regnamespace ORDER BY 1")  # fmt: skip
    assert bases == [("alist", "posint[]"), ("lvl", "posint"), ("posint", "zbase"), ("zbase", "integer")]


def test_trusted_archive_creates_domains_in_dependency_order(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    archive = _source(pg_url, tmp_path)
    restore(Archive(archive, [IDENTITY]), pg_url2, trusted=True)
    assert _rows(pg_url2, _SELECT) == _ROWS
    with pytest.raises(Exception, match="posint"):  # the trusted archive's checks came along
        _exec(pg_url2, "INSERT INTO t VALUES (3, 0, NULL)")


def _cycle(doc: dict[str, Any]) -> None:
    doc["domains"] += [
        {"schema": "public", "name": "ca", "type": "cb", "nullable": True, "default": None, "checks": []},
        {"schema": "public", "name": "cb", "type": "public.ca[]", "nullable": True, "default": None, "checks": []},
        {"schema": "public", "name": "self", "type": '"self"', "nullable": True, "default": None, "checks": []},
    ]


def test_domains_defined_over_each_other_are_refused(
    pg_url: str, pg_url2: str, tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forged = rewrite(_source(pg_url, tmp_path), tmp_path / "forged.statekit", _cycle)
    _exec(pg_url2, "CREATE TABLE victim (id int PRIMARY KEY)", "INSERT INTO victim VALUES (1)")
    for extra in (["--dry-run"], []):
        code, _, err = _restore(forged, pg_url2, identity_file, capsys, *extra)
        assert code == 3, err
        assert err.startswith("Error: ") and err.count("\n") == 1 and "is defined over itself" in err, err
    domains = "SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace AND typtype = 'd'"
    assert _rows(pg_url2, domains) == []
    assert _rows(pg_url2, "SELECT id FROM victim") == [(1,)]
