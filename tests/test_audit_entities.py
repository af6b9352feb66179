"""Entity models from statekit.toml: validation with exit code 2, and a generic model on real tiers."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from fixtures.evolution.harness import invoke

pytestmark = pytest.mark.private_redis


MODEL = """
[entity.user]
authority = "db"
db = {{ table = "users", key = "id", value = "profile", codec = "json" }}
redis = {{ key = "app:user:{{id}}", codec = "json", role = "cache" }}
files = {{ path = "users/{{id}}.b64", codec = "base64", role = "optional" }}

[db]
url = "{db}"
[redis]
url = "{redis}"
[files]
root = "{root}"
"""


def _setup(pg_url: str, redis_url: str, root: Path) -> redis.Redis:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE users (id int primary key, profile text)")
        for i in range(1, 4):
            conn.exec_driver_sql(f"""INSERT INTO users VALUES ({i}, '{{"name": "u{i}", "age": {i}}}')""")
    engine.dispose()
    client = redis.Redis.from_url(redis_url)
    (root / "users").mkdir(parents=True)
    for i in range(1, 4):
        # key order and whitespace differ from the database: never drift
        client.set(f"app:user:{i}", json.dumps({"age": i, "name": f"u{i}"}, indent=1))
        (root / "users" / f"{i}.b64").write_bytes(base64.b64encode(json.dumps({"name": f"u{i}", "age": i}).encode()))
    Path("statekit.toml").write_text(MODEL.format(db=pg_url, redis=redis_url, root=root))
    return client


def test_generic_model_and_canonical_json(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    client = _setup(pg_url, redis_url, tmp_path / "root")
    assert invoke("audit").code == 0
    client.set("app:user:2", json.dumps({"age": 20, "name": "u2"}))
    client.set("app:user:9", "{}")
    (tmp_path / "root" / "users" / "3.b64").write_bytes(b"!!not base64!!")
    (tmp_path / "root" / "users" / "README").write_text("hi")
    res = invoke("audit", "--json", "--recheck-rounds", "0")
    assert res.code == 1
    found = {(f["class"], f["id"], f["tier"], tuple(f["fields"])) for f in res.json()["findings"]}
    assert ("mismatch", "2", "redis", ("$.age",)) in found
    assert ("orphan", "9", "redis", ()) in found
    assert ("unparseable", "3", "files", ()) in found
    assert any(c == "unparseable" and t == "files" for c, _, t, _ in found)
    # reconcile db -> redis rebuilds what the cache holds, prunes the orphans on request
    done = invoke("reconcile", "--from", "db", "--to", "redis", "--prune-orphans", "--yes", "--no-encryption")
    assert done.code == 0, done.err
    assert json.loads(client.get("app:user:2") or b"null") == {"name": "u2", "age": 2}
    assert client.get("app:user:9") is None


@pytest.mark.parametrize(
    "toml,text",
    [
        ('[entity.x]\ndb = { table = "t", key = "id", value = "v", codec = "yaml" }', "codec"),
        ('[entity.x]\ndb = { table = "t", key = "id", value = "v", role = "sometimes" }', "role"),
        ('[entity.x]\nauthority = "redis"\ndb = { table = "t", key = "id", value = "v" }', "authority"),
        ('[entity.x]\nredis = { key = "a:{id" }', "template"),
        ('[entity.x]\nfiles = { path = "../{id}" }', "relative"),
        ('[entity.x]\nparent = "nope"\ndb = { table = "t", key = "id", value = "v" }', "parent"),
        ('[entity.x]\ncolour = "red"\ndb = { table = "t", key = "id", value = "v" }', "unknown key"),
        ("", "no entity model"),
    ],
)
def test_bad_models_are_config_errors(toml: str, text: str) -> None:
    Path("statekit.toml").write_text(toml + "\n")
    res = invoke("audit")
    assert res.code == 2
    assert text in res.err


def test_each_tier_locator_names_its_records() -> None:
    from statekit.audit.entities import build_model

    model = build_model(
        {
            "user": {
                "authority": "db",
                "db": {"table": "users", "key": "id", "value": "profile"},
                "redis": {"key": "app:user:{id}", "role": "cache"},
                "files": {"path": "users/{id}.json", "role": "optional"},
            },
            "key": {
                "authority": "redis",
                "parent": "user",
                "redis": {"key": "app:keys:{id}", "field": "{name}"},
                "files": {"path": "keys/{id}/{name}.json", "role": "cache"},
            },
        }
    )
    user, key = model.entities["user"], model.entities["key"]
    db, cache, file = user.locators["db"], user.locators["redis"], user.locators["files"]
    assert (db.describe(), cache.describe(), file.describe()) == (
        'db "users".profile',
        "redis app:user:{id}",
        "files users/{id}.json",
    )
    assert db.where_of(user, "7") == '"users" id=7.profile'
    assert cache.where_of(user, "7") == "app:user:7"
    assert file.where_of(user, "7") == "users/7.json"
    assert key.locators["redis"].describe() == "redis app:keys:{id} [{name}]"
    assert key.locators["redis"].where_of(key, "7", ("a",)) == "app:keys:7 [a]"
    assert key.locators["redis"].where_of(key, "7") == "app:keys:7"  # the field needs its name
    assert key.locators["files"].where_of(key, "7", ("a",)) == "keys/7/a.json"
    assert key.locators["files"].where_of(key, "7") == "keys/7/"  # the scope's directory
    # only rows can hold a NULL value; only reconcile into the db writes rows of one table
    assert [loc.nullable for loc in (db, cache, file)] == [True, False, False]
    assert (db.row_loc(), cache.row_loc(), file.row_loc()) == (("db", "users", "id"), None, None)
    assert db.holds_one_value(user) and key.locators["redis"].holds_one_value(key)


@pytest.mark.parametrize(
    "table,text",
    [
        (
            {"files": {"path": "{id}.json", "field": "x"}},
            "entity.x.files: unknown key 'field' (known: codec, path, role)",
        ),
        ({"db": {"table": "t", "key": ["a", "b"], "value": "v"}}, "entity.x.db.key: more key columns than"),
        ({"redis": {"key": "k:{id}", "field": "{f}"}, "files": {"path": "{id}.json"}}, "entity.x.files: the template"),
        ({"files": {"path": "{id}/"}}, "needs presence = true"),
    ],
)
def test_a_tier_section_is_checked_by_its_own_kind(table: dict[str, object], text: str) -> None:
    from statekit.audit.entities import build_model
    from statekit.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        build_model({"x": table})
    assert text in str(err.value)


def test_the_audit_reads_the_registered_tiers_in_their_order() -> None:
    """Every registered tier the audit can read live has a locator kind, every locator kind is a registered
    tier, and the audit's list of tiers is the registry's, in its order."""
    from statekit.audit.entities import LOCATOR_KINDS, TIERS
    from statekit.tiers import TIERS as REGISTRY

    registered = [t.name for t in REGISTRY]
    assert [t.name for t in REGISTRY if t.live_audit] == [t for t in registered if t in LOCATOR_KINDS]
    assert set(LOCATOR_KINDS) <= set(registered)
    assert list(TIERS) == [t for t in registered if t in LOCATOR_KINDS]
    assert all(kind.kind == name for name, kind in LOCATOR_KINDS.items())


def test_every_locator_kind_has_its_reader_writer_and_archive_collector() -> None:
    """The live reader, the reconcile writer, the archive collector and the raw digester of each tier are
    found by the tier's name, and each says it is that tier's."""
    from statekit.audit.engine import WRITERS
    from statekit.audit.entities import LOCATOR_KINDS, TIERS
    from statekit.audit.plan import RECONCILE_PAIRS
    from statekit.audit.raw_diff import _DIGESTS
    from statekit.audit.sources import LIVE_SOURCES
    from statekit.audit.sources.archive import _COLLECTORS

    tables: tuple[Mapping[str, Any], ...] = (LIVE_SOURCES, _COLLECTORS, _DIGESTS)
    for table in tables:
        assert set(table) == set(TIERS)
        assert all(kind.tier == name for name, kind in table.items())
    assert set(WRITERS) == {target for _, target in RECONCILE_PAIRS}
    assert all(w.tier == name for name, w in WRITERS.items())
    assert {t for pair in RECONCILE_PAIRS for t in pair} <= set(LOCATOR_KINDS)
    supported = {("db", "redis"), ("db", "files"), ("files", "redis"), ("redis", "files"), ("redis", "db")}
    assert supported == RECONCILE_PAIRS


def test_each_locator_kind_writes_its_own_locations() -> None:
    from statekit.audit.plan import Operation
    from statekit.audit.repairs import _other_source
    from statekit.audit.sources.records import Record

    assert Record(None, ("db", "users", '"users" id=7')).where == '"users" id=7'
    assert Record(None, ("redis", "app:keys:7", "a")).where == "app:keys:7 [a]"
    assert Record(None, ("redis", "app:user:7")).where == "app:user:7"
    assert Record(None, ("files", "users/7.json")).where == "users/7.json"

    def op(loc: tuple[str, ...]) -> str:
        return Operation("update", "user", "7", None, loc, None, b"x").where()

    assert op(("db", "users", "id")) == '"users" id=7'
    assert op(("redis", "app:keys:7", "a")) == "app:keys:7 [a]"
    assert op(("files", "keys/7/")) == "keys/7/"
    # an orphan whose root lives in the target itself is pruned from another tier
    assert [_other_source(t, t) for t in ("db", "redis", "files")] == ["redis", "db", "redis"]
    assert _other_source("files", "db") == "db"


def test_locations_come_from_each_tier_and_show_no_password(tmp_path: Path) -> None:
    from statekit.audit.engine import Locations
    from statekit.config import Config

    cfg = Config()
    cfg.db.url = "postgresql://app:secret@host/appdb"
    cfg.redis.url = "redis://:secret@host:6379/5"
    cfg.files.root = str(tmp_path)
    where = Locations.from_config(cfg)
    assert dict(where) == {"db": cfg.db.url, "redis": cfg.redis.url, "files": str(tmp_path)}
    assert where.shown("db") == "postgresql://app:***@host/appdb"
    assert where.shown("redis") == "redis://:***@host:6379/5"
    assert where.shown("files") == str(tmp_path)
    assert Locations.from_config(Config()).get("redis") is None
