"""`statekit audit --against ARCHIVE` and `statekit diff A B` on snapshots of Evolution-shaped state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from fixtures.evolution.generate import generate
from fixtures.evolution.harness import invoke, write_config

pytestmark = pytest.mark.private_redis


def _snapshot(name: str) -> None:
    res = invoke("snapshot", "--to", name, "--no-encryption", "-q")
    assert res.code == 0, res.err


def _classes(doc: dict[str, Any]) -> set[tuple[object, ...]]:
    return {(f["class"], f["entity"], f["tier"], f["key"]) for f in doc["findings"]}


def test_against_and_diff_find_what_changed(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "i"
    # files mode after redis mode: creds and keys in all three tiers
    gen = generate(pg_url, redis_url, root, mode="files", history="redis", instances=5, keys_per_instance=6)
    write_config(Path("statekit.toml"), db_url=pg_url, redis_url=redis_url, files_root=str(root))
    _snapshot("a.statekit")
    clean = invoke("audit", "--against", "a.statekit")
    assert clean.code == 0, clean.out + clean.err
    # change one value in each tier
    iid = gen.ids[0]
    client = redis.Redis.from_url(redis_url)
    creds = json.loads(json.loads(client.hget(f"evolution:instance:{iid}", "creds") or b"null"))
    creds["registrationId"] += 1
    client.hset(f"evolution:instance:{iid}", "creds", json.dumps(json.dumps(creds)))
    (root / iid / "pre-key-1.json").unlink()
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text('DELETE FROM "Session" WHERE "sessionId" = :i'), {"i": gen.ids[1]})
    engine.dispose()
    res = invoke("audit", "--against", "a.statekit", "--json")
    assert res.code == 1, res.err
    expected = {("mismatch", "creds", "redis", None), ("missing", "keys", "files", "pre-key-1"),
                ("missing", "creds", "db", None)}  # fmt: skip
    assert _classes(res.json()) == expected
    mismatch = next(f for f in res.json()["findings"] if f["class"] == "mismatch")
    assert mismatch["fields"] == ["$.registrationId"]
    _snapshot("b.statekit")
    diff = invoke("diff", "a.statekit", "b.statekit", "--json")
    assert diff.code == 1, diff.err
    assert _classes(diff.json()) == expected
    same = invoke("diff", "b.statekit", "b.statekit")
    assert same.code == 0
    assert "clean" in same.out


def test_diff_of_a_damaged_archive_is_an_error(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    generate(pg_url, redis_url, tmp_path / "i", instances=2, keys_per_instance=2)
    write_config(Path("statekit.toml"), db_url=pg_url, redis_url=redis_url, files_root=str(tmp_path / "i"))
    _snapshot("a.statekit")
    data = bytearray(Path("a.statekit").read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path("bad.statekit").write_bytes(bytes(data))
    res = invoke("diff", "a.statekit", "bad.statekit")
    assert res.code == 3
    assert "Traceback" not in res.err


def test_diff_without_a_model_compares_what_is_stored(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "i"
    gen = generate(pg_url, redis_url, root, mode="files", history="redis", instances=3, keys_per_instance=3)
    Path("statekit.toml").write_text(
        f'[db]\nurl = "{pg_url}"\n[redis]\nurl = "{redis_url}"\n[files]\nroot = "{root}"\n'
    )
    _snapshot("a.statekit")
    iid = gen.ids[0]
    redis.Redis.from_url(redis_url).hset(f"evolution:instance:{iid}", "pre-key-1", '"{}"')
    (root / iid / "pre-key-1.json").write_text("{}")
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text('UPDATE "Instance" SET "profileName" = \'x\' WHERE id = :i'), {"i": iid})
    engine.dispose()
    _snapshot("b.statekit")
    res = invoke("diff", "a.statekit", "b.statekit", "--json")
    assert res.code == 1, res.err
    found = {(f["class"], f["entity"], f["tier"], tuple(f["fields"])) for f in res.json()["findings"]}
    assert found == {
        ("mismatch", "redis", "redis", ('$["pre-key-1"]',)),
        ("mismatch", "files", "files", ("$",)),
        ("mismatch", "db:Instance", "db", ("$",)),
    }
    assert invoke("diff", "a.statekit", "a.statekit").code == 0
