"""Reconcile on Evolution-shaped state: plan, apply with compare-and-set, undo archive, guards, saved plans."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import redis

from fixtures.evolution.generate import generate
from fixtures.evolution.harness import invoke, write_config

pytestmark = pytest.mark.private_redis


NOENC = ("--yes", "--no-encryption")


def _setup(pg_url: str, redis_url: str, root: Path, **kw: object) -> object:
    gen = generate(pg_url, redis_url, root, **kw)  # type: ignore[arg-type]
    write_config(Path("statekit.toml"), db_url=pg_url, redis_url=redis_url, files_root=str(root))
    return gen


def _audit_classes() -> list[tuple[str, str]]:
    res = invoke("audit", "--json", "--recheck-rounds", "0")
    return [(f["class"], f["entity"]) for f in res.json()["findings"]]


def test_db_to_redis_repairs_creds_then_plans_nothing(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    _setup(pg_url, redis_url, tmp_path / "i", instances=10, keys_per_instance=6, inject={"creds_differ": 2})
    plan = invoke("reconcile", "--from", "db", "--to", "redis")
    assert plan.code == 8  # no --yes and no terminal: refused, nothing written
    assert "~2 update" in plan.out
    assert "~ update creds" in plan.out
    assert sorted(_audit_classes()) == [("mismatch", "creds")] * 2
    done = invoke("reconcile", "--from", "db", "--to", "redis", *NOENC)
    assert done.code == 0, done.err
    assert "applied: +0 created  ~2 updated" in done.out
    assert invoke("audit", "--recheck-rounds", "0").code == 0
    again = invoke("reconcile", "--from", "db", "--to", "redis", "--json")
    assert again.code == 0
    assert again.json()["plan"]["counts"] == {"create": 0, "update": 0, "delete": 0}


def test_rebuilds_creds_into_an_empty_redis(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    _setup(pg_url, redis_url, tmp_path / "i", instances=5, keys_per_instance=4, redis_creds=False)
    res = invoke("reconcile", "--from", "db", "--to", "redis", "--entity", "creds", *NOENC)
    assert res.code == 0, res.err
    assert "+5 created" in res.out
    client = redis.Redis.from_url(redis_url)
    assert sum(1 for k in client.scan_iter("evolution:instance:*") if client.hexists(k, "creds")) == 5


def test_undo_archive_puts_redis_back(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    gen = _setup(pg_url, redis_url, tmp_path / "i", instances=6, keys_per_instance=4,
                 inject={"creds_differ": 1, "orphan_hash": 1})  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    before = {k: client.hgetall(k) for k in client.scan_iter("evolution:instance:*")}
    res = invoke("reconcile", "--from", "db", "--to", "redis", "--prune-orphans", *NOENC, "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["applied"] == {"create": 0, "update": 1, "delete": 1}
    assert not client.exists(f"evolution:instance:{gen.injected['orphan_hash'][0]}")  # type: ignore[attr-defined]
    assert _audit_classes() == []
    undo = doc["undo_archive"]
    restored = invoke("restore", undo, "--tier", "redis", "--yes", "--no-undo")
    assert restored.code == 0, restored.err
    assert {k: client.hgetall(k) for k in client.scan_iter("evolution:instance:*")} == before


def test_files_and_redis_in_both_directions_with_undo(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "i"
    gen = _setup(pg_url, redis_url, root, instances=6, keys_per_instance=8,
                 inject={"key_not_in_hash": 1, "key_differs": 1, "orphan_folder": 1})  # fmt: skip
    to_redis = invoke("reconcile", "--from", "files", "--to", "redis", "--entity", "keys", *NOENC)
    assert to_redis.code == 0, to_redis.err
    assert "+1 created  ~1 updated" in to_redis.out
    # the created field got its Redis name back (`::`, not the file name's `--`)
    iid = gen.injected["key_not_in_hash"][0]  # type: ignore[attr-defined]
    fields = [f for f in redis.Redis.from_url(redis_url).hkeys(f"evolution:instance:{iid}") if isinstance(f, bytes)]
    assert any(b"::" in f and f.startswith(b"sender-key-") and b"memory" not in f for f in fields)
    assert sorted(_audit_classes()) == [("orphan", "instance")]
    # now break a file and let Redis repair it; prune the orphan folder
    changed = iid = gen.ids[0]  # type: ignore[attr-defined]
    pre_key = root / changed / "pre-key-1.json"
    original = pre_key.read_bytes()
    pre_key.write_text('{"private":{"type":"Buffer","data":"AAAA"},"public":{"type":"Buffer","data":"AAAA"}}')
    os.chmod(pre_key, 0o640)
    to_files = invoke("reconcile", "--from", "redis", "--to", "files", "--prune-orphans", *NOENC, "--json")
    assert to_files.code == 0, to_files.err
    doc = to_files.json()
    assert doc["applied"] == {"create": 0, "update": 1, "delete": 1}
    assert pre_key.read_bytes() == original
    assert not (root / gen.injected["orphan_folder"][0]).exists()  # type: ignore[attr-defined]
    assert _audit_classes() == []
    restored = invoke("restore", doc["undo_archive"], "--tier", "files", "--yes", "--no-undo")
    assert restored.code == 0, restored.err
    assert b'"AAAA"' in pre_key.read_bytes()
    assert oct(pre_key.stat().st_mode & 0o777) == oct(0o640)
    assert (root / gen.injected["orphan_folder"][0] / "pre-key-1.json").exists()  # type: ignore[attr-defined]


def test_orphans_are_kept_without_prune(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    _setup(pg_url, redis_url, tmp_path / "i", instances=3, keys_per_instance=3, inject={"orphan_hash": 1})
    res = invoke("reconcile", "--from", "db", "--to", "redis", "--json")
    assert res.json()["plan"]["counts"]["delete"] == 0
    assert res.json()["plan"]["kept_without_prune"] == 1


def test_max_change_ratio_guard(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    _setup(pg_url, redis_url, tmp_path / "i", instances=4, keys_per_instance=2, inject={"creds_differ": 3})
    res = invoke("reconcile", "--from", "db", "--to", "redis", "--max-change-ratio", "0.1", *NOENC)
    assert res.code == 8
    assert "--max-change-ratio" in res.err
    assert _audit_classes().count(("mismatch", "creds")) == 3  # nothing written
    forced = invoke("reconcile", "--from", "db", "--to", "redis", "--max-change-ratio", "0.1", "--force", *NOENC)
    assert forced.code == 0, forced.err


def test_saved_plan_applies_and_a_stale_one_is_refused(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    gen = _setup(pg_url, redis_url, tmp_path / "i", instances=5, keys_per_instance=3, inject={"creds_differ": 2})
    out = invoke("reconcile", "--from", "db", "--to", "redis", "--plan-out", "plan.json")
    assert out.code == 0, out.err
    saved = json.loads(Path("plan.json").read_text())
    assert oct(Path("plan.json").stat().st_mode & 0o777) == oct(0o600)
    assert "Buffer" not in Path("plan.json").read_text()  # digests only, never values
    assert saved["counts"]["update"] == 2
    client = redis.Redis.from_url(redis_url)
    victim = f"evolution:instance:{gen.injected['creds_differ'][0]}"  # type: ignore[attr-defined]
    client.hset(victim, "creds", b'"{}"')
    stale = invoke("apply", "plan.json", *NOENC)
    assert stale.code == 8
    assert "changed since the plan" in stale.err
    invoke("reconcile", "--from", "db", "--to", "redis", "--plan-out", "plan.json")
    ok = invoke("apply", "plan.json", *NOENC)
    assert ok.code == 0, ok.err
    assert _audit_classes() == []


def test_authority_is_never_written_and_undo_needs_a_key(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    _setup(pg_url, redis_url, tmp_path / "i", instances=2, keys_per_instance=2, inject={"creds_differ": 1})
    assert invoke("reconcile", "--from", "redis", "--to", "db").code == 2
    res = invoke("reconcile", "--from", "db", "--to", "redis", "--yes")
    assert res.code == 8
    assert "undo archive" in res.err
    assert _audit_classes() == [("mismatch", "creds")]


def test_encrypted_undo_archive(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    _setup(pg_url, redis_url, tmp_path / "i", instances=2, keys_per_instance=2, inject={"creds_differ": 1})
    assert invoke("keygen", "-o", "id.txt").code == 0
    recipient = next(ln.split(": ")[1] for ln in Path("id.txt").read_text().splitlines() if "public key" in ln)
    res = invoke("reconcile", "--from", "db", "--to", "redis", "--yes", "-r", recipient, "--json")
    assert res.code == 0, res.err
    undo = res.json()["undo_archive"]
    assert Path(undo).read_bytes().startswith(b"age-encryption.org/v1")
    assert invoke("restore", undo, "--tier", "redis", "--yes", "--no-undo", "-i", "id.txt").code == 0
    assert _audit_classes() == [("mismatch", "creds")]


def test_a_value_changed_between_plan_and_write_is_skipped(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    from statekit.audit.engine import Locations, ReconcileOptions, plan_reconcile, reconcile
    from statekit.config import load_config
    from statekit.profiles import load_model

    gen = _setup(pg_url, redis_url, tmp_path / "i", instances=3, keys_per_instance=2, inject={"creds_differ": 2})
    cfg = load_config(None)
    where = Locations(cfg.db.url, cfg.redis.url, cfg.files.root)
    plan = plan_reconcile(load_model(cfg), where, ReconcileOptions("db", "redis"))
    assert plan.counts["update"] == 2
    victim = f"evolution:instance:{gen.injected['creds_differ'][0]}"  # type: ignore[attr-defined]
    client = redis.Redis.from_url(redis_url)
    client.hset(victim, "creds", b'"{\\"someone\\":\\"else\\"}"')
    result = reconcile(plan, where, undo_dir=None, undo_recipients=[])
    assert result.counts["update"] == 1
    assert len(result.conflicts) == 1 and victim in result.conflicts[0]
    assert client.hget(victim, "creds") == b'"{\\"someone\\":\\"else\\"}"'  # never forced
