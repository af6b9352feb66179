"""Database URLs are parsed without SQLAlchemy, exactly as SQLAlchemy's make_url parses them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from statekit.errors import ConfigError
from statekit.tiers.sql.connect import DbTarget, DbUrl

URLS = [
    "postgresql://localhost/app",
    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "postgresql+psycopg://bob:s%40cr%3At%2Fx@db.example:5433/my%20db?sslmode=require&application_name=x",
    "postgresql+psycopg://:only-password@host/db",
    "postgresql+psycopg://user@[::1]:5432/db",
    "postgresql+psycopg://user@[fe80::1%25eth0]/db",
    "postgresql+psycopg:///db?host=/var/run/postgresql",
    "postgresql+psycopg://host/db?options=-c%20search_path%3Dx&options=-c%20a%3Db&empty=",
    "postgresql+psycopg://host",
    "postgresql+psycopg://host/",
    "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4",
    "mariadb://root:pw@localhost/test",
    "sqlite:///relative/path.db",
    "sqlite:////absolute/path.db",
    "sqlite://",
    "sqlite:///:memory:",
    "postgresql://us%2Fer@h%2Fost/d",
]


@pytest.mark.parametrize("text", URLS)
def test_parse_matches_sqlalchemy(text: str) -> None:
    ours = DbUrl.parse(text)
    theirs = make_url(text)
    assert ours.to_sqlalchemy() == theirs
    assert (ours.backend, ours.driver) == (
        theirs.get_backend_name(),
        theirs.drivername.partition("+")[2] or None,
    )
    assert (ours.username, ours.password, ours.host, ours.port, ours.database) == (
        theirs.username,
        theirs.password,
        theirs.host,
        theirs.port,
        theirs.database,
    )


BAD = ["", "localhost/db", "postgresql:/x", "post gres://h/d", "postgresql://h:port/d", "postgresql://u:p@ss:w@rd@h/d"]


@pytest.mark.parametrize("text", [*BAD, "postgresql://h:/d"])
def test_not_a_url_is_a_config_error_without_the_text_of_a_password(text: str) -> None:
    with pytest.raises((ValueError, ArgumentError)):
        make_url(text)
    with pytest.raises(ValueError):
        DbUrl.parse(text)
    if text:
        with pytest.raises(ConfigError, match="not a valid database URL"):
            DbTarget(text)


def test_conninfo_carries_every_part() -> None:
    t = DbTarget("postgresql+psycopg://bob:s%40cret@[::1]:5433/my%20db?sslmode=disable&connect_timeout=3")
    info = t.psycopg_conninfo()
    for part in ("dbname='my db'", "host=::1", "port=5433", "user=bob", "password=s@cret", "sslmode=disable"):
        assert part in info
    assert "connect_timeout=3" in info
    assert "s@cret" not in repr(t.parts) and "s@cret" not in str(t.parts)
    assert t.url.render_as_string(hide_password=False).startswith("postgresql+psycopg://bob:s%40cret@[::1]:5433/")


def test_parsing_a_postgresql_url_does_not_load_sqlalchemy() -> None:
    code = (
        "import sys\n"
        "from statekit.tiers.sql.connect import DbTarget\n"
        "t = DbTarget('postgresql://bob:pw@db.example:5433/app?sslmode=require')\n"
        "assert t.psycopg_conninfo()\n"
        "print('sqlalchemy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
