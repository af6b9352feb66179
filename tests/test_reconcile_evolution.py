"""Reconcile on Evolution state in its three modes: repairs only ever copy FROM the live copy of each
instance's mode, the SAVE_INSTANCES flip (and the other mode changes) migrates without losing a session,
"Session" rows are written as saveKey writes them, plus compare-and-set, undo archives, guards, saved plans."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from fixtures.evolution.generate import LIVE_CREDS, LIVE_KEYS, generate, read_as_evolution
from fixtures.evolution.harness import invoke, write_config

pytestmark = pytest.mark.private_redis


NOENC = ("--yes", "--no-encryption")


def _config(db: str, rurl: str, root: Path, options: str = 'mode = "cache"') -> None:
    write_config(Path("statekit.toml"), db_url=db, redis_url=rurl, files_root=str(root),
                 extra=f"[profile_options]\n{options}")  # fmt: skip


def _setup(db: str, rurl: str, root: Path, mode: str = "cache", **kw: Any) -> object:
    gen = generate(db, rurl, root, mode=mode, **kw)
    _config(db, rurl, root, f'mode = "{mode}"')
    return gen


def _audit_classes(*args: str) -> list[tuple[str, str]]:
    res = invoke("audit", "--json", "--recheck-rounds", "0", *args)
    return sorted((f["class"], f["entity"]) for f in res.json()["findings"])


def _boots_identically(gen: Any, db: str, rurl: str, root: Path, mode: str) -> None:
    """Every instance loads, under `mode`, exactly the creds and keys it was written with."""
    for iid in gen.ids:
        creds, keys = read_as_evolution(db, rurl, root, mode, iid, list(gen.keys[iid]))
        assert creds == json.loads(gen.creds[iid]), iid
        assert keys == {k: json.loads(v) for k, v in gen.keys[iid].items()}, iid


def _recipient() -> str:
    assert invoke("keygen", "-o", "id.txt").code == 0
    return next(ln.split(": ")[1] for ln in Path("id.txt").read_text().splitlines() if "public key" in ln)


# -- the flip and the other mode changes, end to end -----------------------------------------------------


def test_save_instances_true_to_false_keeps_every_session(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """redis mode → migrate creds into "Session" as saveKey writes them → flip to cache mode: every instance
    loads identical creds and keys the way cache mode reads them, and the audit (server now cache) is clean."""
    root = tmp_path / "instances"
    gen = _setup(pg_url, redis_url, root, "redis", instances=6, logged_out=1)
    # before the migration, cache mode would lose every session
    assert _audit_classes("--mode", "cache") == [("missing", "creds")] * 6
    recipient = _recipient()
    res = invoke("reconcile", "--from", "redis", "--to", "db", "--entity", "creds", "--yes", "-r", recipient, "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["applied"] == {"create": 6, "update": 0, "delete": 0}
    undo = doc["undo_archive"]
    assert Path(undo).name.startswith("undo-db-") and Path(undo).read_bytes().startswith(b"age-encryption.org/v1")
    # the flag flip: the server is now in cache mode
    _config(pg_url, redis_url, root, 'mode = "cache"')
    _boots_identically(gen, pg_url, redis_url, root, "cache")
    assert _audit_classes() == []
    # the rows look like Prisma's: a cuid id, createdAt set, the creds double-encoded (a JSON string literal)
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text('SELECT id, "sessionId", creds, "createdAt" FROM "Session"')).all()
    engine.dispose()
    assert len(rows) == 6
    for row_id, sid, creds, created in rows:
        assert re.fullmatch(r"c[0-9a-z]{24}", row_id)
        assert created is not None
        assert creds.startswith('"{') and json.loads(json.loads(creds)) == json.loads(gen.creds[sid])  # type: ignore[attr-defined]
    again = invoke("reconcile", "--from", "redis", "--to", "db", "--entity", "creds", "--json", "--mode", "redis")
    assert again.json()["plan"]["counts"] == {"create": 0, "update": 0, "delete": 0}
    # the undo archive holds the "Session" table as it was (empty) in the db tier's format
    listing = invoke("inspect", undo, "-i", "id.txt")
    assert listing.code == 0, listing.err
    assert "tier db     tables=1 rows=0" in listing.out


@pytest.mark.parametrize(
    "old,new",
    [("cache", "redis"), ("files", "cache"), ("cache", "files"), ("redis", "files"), ("files", "redis")],
)
def test_every_mode_change_migrates_without_a_new_qr_code(
    old: str, new: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    """The commands doctor prints, run with the old mode declared: each copies from the old live place, after
    the change every instance boots with identical creds and keys and the audit is clean."""
    from statekit.profiles.evolution.doctor import migration_commands

    root = tmp_path / "instances"
    gen = _setup(pg_url, redis_url, root, old, instances=5)
    commands = migration_commands("evolution", old, new)
    steps = [c for c in commands if c.startswith("statekit reconcile")]
    assert steps
    for command in steps:
        args = [*command.split()[1:-3], "--yes", "--no-encryption"]  # the command without "--yes -r AGE1…"
        res = invoke(*args)
        assert res.code == 0, (command, res.out, res.err)
        assert "skipped" not in res.out
    if LIVE_CREDS[old] != LIVE_CREDS[new] or LIVE_KEYS[old] != LIVE_KEYS[new]:
        _boots_identically(gen, pg_url, redis_url, root, new)
    assert _audit_classes("--mode", new) == []


def test_never_writes_onto_a_live_copy(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """redis mode with a stale "Session" copy: db → redis would overwrite the live creds; the instance is left
    out of the plan and listed with the command that repairs it the right way; --prune-orphans never deletes
    live creds; the right direction repairs it."""
    root = tmp_path / "instances"
    gen = _setup(pg_url, redis_url, root, "redis", instances=4, inject={"stale_creds": 1})
    client = redis.Redis.from_url(redis_url)
    before = {k: client.hgetall(k) for k in client.scan_iter("evolution:instance:*")}
    res = invoke("reconcile", "--from", "db", "--to", "redis", "--entity", "creds", "--prune-orphans", *NOENC)
    assert res.code == 0, res.err
    stale = gen.injected["stale_creds"][0]  # type: ignore[attr-defined]
    assert f"creds {stale} (server evolution, redis mode): redis holds its live creds" in res.out
    assert "to repair the skipped ones: statekit reconcile --from redis --to db --entity creds" in res.out
    assert {k: client.hgetall(k) for k in client.scan_iter("evolution:instance:*")} == before
    doc = invoke("reconcile", "--from", "db", "--to", "redis", "--prune-orphans", "--json").json()["plan"]
    assert doc["counts"] == {"create": 0, "update": 0, "delete": 0}
    # with --prune-orphans, the db's lack of creds would delete every live copy: all are listed, none deleted
    assert sorted(s["id"] for s in doc["skipped"]) == sorted(gen.ids)  # type: ignore[attr-defined]
    # keys from a copy the mode does not read are never copied onto the live hash either
    res = invoke("reconcile", "--from", "files", "--to", "redis", "--entity", "keys", "--json")
    assert res.json()["plan"]["counts"]["create"] == 0
    # the right direction rewrites the one existing "Session" row (100% of the db records: --force)
    fixed = invoke("reconcile", "--from", "redis", "--to", "db", "--entity", "creds", "--force", *NOENC)
    assert fixed.code == 0 and "+3 created  ~1 updated" in fixed.out
    assert _audit_classes() == []


def test_two_servers_one_plan_only_where_the_direction_is_right(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "instances"
    r = generate(pg_url, redis_url, root, mode="redis", client_name="evo_r", instances=3, inject={"stale_creds": 1})
    c = generate(pg_url, redis_url, root, mode="cache", client_name="evo_c", instances=3, inject={"stale_creds": 1})
    _config(pg_url, redis_url, root, '[profile_options.servers]\nevo_r = "redis"\nevo_c = "cache"')
    res = invoke("reconcile", "--from", "db", "--to", "redis", "--entity", "creds", "--json", *NOENC)
    assert res.code == 0, res.err
    assert res.json()["plan"]["target_records"] == 4  # the redis server's live creds count as existing records
    ops = res.json()["plan"]["ops"]
    # the cache server's hash copies are written (created, or the stale one updated); no redis-mode instance is
    stale = c.injected["stale_creds"][0]
    assert sorted((o["op"], o["id"]) for o in ops) == sorted(("update" if i == stale else "create", i) for i in c.ids)
    # only the redis-mode instance whose live creds the direction would have overwritten is listed
    assert [s["id"] for s in res.json()["plan"]["skipped"]] == r.injected["stale_creds"]
    assert _audit_classes() == [("mismatch", "creds")]  # the redis server's stale "Session" copy is left
    assert invoke("reconcile", "--from", "redis", "--to", "db", "--entity", "creds", "--force", *NOENC).code == 0
    assert _audit_classes() == []


def test_orphans_are_pruned_in_every_tier(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "instances"
    gen = _setup(pg_url, redis_url, root, "cache", instances=3,
                 inject={"orphan_hash": 1, "orphan_folder": 1, "orphan_session": 1})  # fmt: skip
    kept = invoke("reconcile", "--from", "db", "--to", "redis", "--entity", "instance", "--json")
    assert kept.json()["plan"]["kept_without_prune"] == 1
    for args in (("--from", "db", "--to", "redis"), ("--from", "redis", "--to", "files"),
                 ("--from", "redis", "--to", "db", "--entity", "creds")):  # fmt: skip
        res = invoke("reconcile", *args, "--prune-orphans", *NOENC)
        assert res.code == 0, res.err
        assert "-1 deleted" in res.out, res.out
    assert _audit_classes() == []
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text('SELECT count(*) FROM "Session"')).scalar() == 3
    engine.dispose()
    assert not (root / gen.injected["orphan_folder"][0]).exists()  # type: ignore[attr-defined]


def test_db_rows_compare_and_set(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """A "Session" row changed (or an instance deleted) between plan and apply is skipped and reported
    (exit 8), never overwritten; the other rows commit in the same transaction."""
    from statekit.audit.engine import Locations, ReconcileOptions, plan_reconcile, reconcile
    from statekit.config import load_config
    from statekit.profiles import load_model

    root = tmp_path / "instances"
    gen = _setup(pg_url, redis_url, root, "redis", instances=4, inject={"stale_creds": 2})
    cfg = load_config(None)
    where = Locations.from_config(cfg)
    model = load_model(cfg)
    plan = plan_reconcile(model, where, ReconcileOptions("redis", "db", ["creds"]))
    assert plan.counts == {"create": 2, "update": 2, "delete": 0}
    victim, other = gen.injected["stale_creds"]  # type: ignore[attr-defined]
    new_one = next(i for i in gen.ids if i not in (victim, other))  # type: ignore[attr-defined]
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text('UPDATE "Session" SET creds = \'"{}"\' WHERE "sessionId" = :i'), {"i": victim})
        conn.execute(sa.text('DELETE FROM "Instance" WHERE id = :i'), {"i": new_one})
    result = reconcile(plan, where, undo_dir=None, undo_recipients=[], model=model)
    assert result.counts == {"create": 1, "update": 1, "delete": 0}
    assert len(result.conflicts) == 2
    assert any(victim in c for c in result.conflicts) and any(new_one in c for c in result.conflicts)
    with engine.connect() as conn:
        assert (
            conn.execute(sa.text('SELECT creds FROM "Session" WHERE "sessionId" = :i'), {"i": victim}).scalar()
            == '"{}"'
        )
    engine.dispose()


def test_db_undo_restores(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "instances"
    _setup(pg_url, redis_url, root, "redis", instances=3, inject={"stale_creds": 1})
    engine = sa.create_engine(pg_url)
    q = 'SELECT "sessionId", creds FROM "Session" ORDER BY 1'
    with engine.connect() as conn:
        before = conn.execute(sa.text(q)).all()
    res = invoke("reconcile", "--from", "redis", "--to", "db", "--entity", "creds", "--force", *NOENC, "--json")
    assert res.code == 0, res.err
    with engine.connect() as conn:
        assert conn.execute(sa.text(q)).all() != before
    restored = invoke("restore", res.json()["undo_archive"], "--tier", "db", "--yes", "--no-undo")
    assert restored.code == 0, restored.err
    with engine.connect() as conn:
        assert conn.execute(sa.text(q)).all() == before
    engine.dispose()


# -- the redis and files directions, undo, guards, saved plans -------------------------------------------


def test_undo_archive_puts_redis_back(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    gen = _setup(pg_url, redis_url, tmp_path / "i", "cache", history="redis", instances=6,
                 inject={"stale_creds": 1, "orphan_hash": 1})  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    before = {k: client.hgetall(k) for k in client.scan_iter("evolution:instance:*")}
    res = invoke("reconcile", "--from", "db", "--to", "redis", "--prune-orphans", *NOENC, "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["applied"] == {"create": 0, "update": 1, "delete": 1}
    assert not client.exists(f"evolution:instance:{gen.injected['orphan_hash'][0]}")  # type: ignore[attr-defined]
    assert _audit_classes() == []
    restored = invoke("restore", doc["undo_archive"], "--tier", "redis", "--yes", "--no-undo")
    assert restored.code == 0, restored.err
    assert {k: client.hgetall(k) for k in client.scan_iter("evolution:instance:*")} == before


def test_files_and_redis_in_both_directions_with_undo(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "i"
    gen = _setup(pg_url, redis_url, root, "files", instances=5, keys_per_instance=8, inject={"orphan_folder": 1})
    to_redis = invoke("reconcile", "--from", "files", "--to", "redis", "--entity", "keys", *NOENC)
    assert to_redis.code == 0, to_redis.err
    assert "+40 created" in to_redis.out  # 5 instances × 8 keys
    # created fields got their Redis names back (`::` and `/`, not the file names' `--` and `__`)
    fields = set(redis.Redis.from_url(redis_url).hkeys(f"evolution:instance:{gen.ids[0]}"))  # type: ignore[attr-defined]
    assert {k.encode() for k in gen.keys[gen.ids[0]]} == fields  # type: ignore[attr-defined]
    # the server moves to cache mode: redis is live now, a broken file is a stale copy redis repairs
    _config(pg_url, redis_url, root, 'mode = "cache"')
    pre_key = root / gen.ids[0] / "pre-key-1.json"  # type: ignore[attr-defined]
    original = pre_key.read_bytes()
    pre_key.write_text('{"private":{"type":"Buffer","data":"AAAA"},"public":{"type":"Buffer","data":"AAAA"}}')
    os.chmod(pre_key, 0o640)
    assert _audit_classes() == [("mismatch", "keys"), ("orphan", "instance")]
    to_files = invoke("reconcile", "--from", "redis", "--to", "files", "--prune-orphans", *NOENC, "--json")
    assert to_files.code == 0, to_files.err
    doc = to_files.json()
    assert doc["applied"] == {"create": 0, "update": 1, "delete": 1}
    assert pre_key.read_bytes() == original
    assert _audit_classes() == []
    restored = invoke("restore", doc["undo_archive"], "--tier", "files", "--yes", "--no-undo")
    assert restored.code == 0, restored.err
    assert b'"AAAA"' in pre_key.read_bytes()
    assert oct(pre_key.stat().st_mode & 0o777) == oct(0o600)  # a restored key file: at most 0600
    assert (root / gen.injected["orphan_folder"][0] / "pre-key-1.json").exists()  # type: ignore[attr-defined]


def test_max_change_ratio_guard(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    _setup(pg_url, redis_url, tmp_path / "i", "cache", instances=4, inject={"stale_creds": 3})
    res = invoke("reconcile", "--from", "db", "--to", "redis", "--entity", "creds", "--max-change-ratio", "0.1", *NOENC)
    assert res.code == 8
    assert "--max-change-ratio" in res.err
    assert _audit_classes() == [("mismatch", "creds")] * 3  # nothing written
    forced = invoke("reconcile", "--from", "db", "--to", "redis", "--max-change-ratio", "0.1", "--force", *NOENC)
    assert forced.code == 0, forced.err


def test_saved_plan_applies_and_a_stale_one_is_refused(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    gen = _setup(pg_url, redis_url, tmp_path / "i", "cache", history="redis", instances=5, inject={"stale_creds": 2})
    out = invoke("reconcile", "--from", "db", "--to", "redis", "--plan-out", "plan.json")
    assert out.code == 0, out.err
    saved = json.loads(Path("plan.json").read_text())
    assert oct(Path("plan.json").stat().st_mode & 0o777) == oct(0o600)
    assert "Buffer" not in Path("plan.json").read_text()  # digests only, never values
    assert saved["counts"]["update"] == 2
    client = redis.Redis.from_url(redis_url)
    victim = f"evolution:instance:{gen.injected['stale_creds'][0]}"  # type: ignore[attr-defined]
    good = client.hget(victim, "creds")
    client.hset(victim, "creds", b'"{}"')
    stale = invoke("apply", "plan.json", *NOENC)
    assert stale.code == 8
    assert "changed since the plan" in stale.err
    client.hset(victim, "creds", good)
    ok = invoke("apply", "plan.json", *NOENC)
    assert ok.code == 0, ok.err
    assert _audit_classes() == []


def test_apply_takes_its_guards_from_its_own_options(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """A plan file that says force / a high max_change_ratio / prune_orphans changes nothing: `apply` uses
    its own command line."""
    _setup(pg_url, redis_url, tmp_path / "i", "cache", history="redis", instances=4,
           inject={"stale_creds": 3, "orphan_hash": 1})  # fmt: skip
    assert invoke("reconcile", "--from", "db", "--to", "redis", "--entity", "creds", "--prune-orphans",
                  "--plan-out", "plan.json", "--force").code == 0  # fmt: skip
    doc = json.loads(Path("plan.json").read_text())
    assert "force" not in doc and "max_change_ratio" not in doc
    doc.update(force=True, max_change_ratio=1.0)
    Path("plan.json").write_text(json.dumps(doc))
    refused = invoke("apply", "plan.json", "--prune-orphans", *NOENC)
    assert refused.code == 8 and "--max-change-ratio" in refused.err  # the file's force is ignored
    without = invoke("apply", "plan.json", "--force", *NOENC)
    assert without.code == 8 and "--prune-orphans" in without.err
    assert len(_audit_classes()) == 4  # nothing written so far
    ok = invoke("apply", "plan.json", "--prune-orphans", "--force", *NOENC)
    assert ok.code == 0, ok.err
    assert _audit_classes() == []


def test_apply_needs_the_modes_the_plan_was_made_with(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "i"
    _setup(pg_url, redis_url, root, "redis", instances=3)
    made = invoke("reconcile", "--mode", "evolution=redis", "--from", "redis", "--to", "db", "--entity", "creds",
                  "--plan-out", "plan.json")  # fmt: skip
    assert made.code == 0, made.err
    _config(pg_url, redis_url, root, 'mode = "cache"')  # the flag flipped in the configuration meanwhile
    refused = invoke("apply", "plan.json", *NOENC)
    assert refused.code == 8 and "--mode evolution=redis" in refused.err
    ok = invoke("apply", "plan.json", "--mode", "evolution=redis", *NOENC)
    assert ok.code == 0, ok.err
    assert _audit_classes() == []  # cache mode now: every instance has its creds in "Session"


def test_undo_needs_a_key_and_instance_rows_are_never_written(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    _setup(pg_url, redis_url, tmp_path / "i", "cache", instances=2, inject={"stale_creds": 1})
    res = invoke("reconcile", "--from", "redis", "--to", "db", "--entity", "instance")
    assert res.code == 8 and "never writes the authority" in res.err
    # the one creds copy there is rewritten (100 % of the creds: --force), but not without an undo archive
    res = invoke("reconcile", "--from", "db", "--to", "redis", "--yes", "--force")
    assert res.code == 8
    assert "undo archive" in res.err
    assert _audit_classes() == [("mismatch", "creds")]


def test_one_entity_s_changes_are_not_diluted_by_another_s_records(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """The one creds copy the target holds, rewritten, is 100 % of the creds however many keys the target also
    holds: refused without --force, and the refusal names the entity."""
    _setup(pg_url, redis_url, tmp_path / "i", "cache", instances=2, inject={"stale_creds": 1})
    res = invoke("reconcile", "--from", "db", "--to", "redis", "--json")  # the plan, then the refusal
    doc = json.JSONDecoder().raw_decode(res.out)[0]["plan"]
    assert doc["change_ratio"] == 1.0 and doc["records_by_entity"]["creds"] == 1, doc
    assert doc["records_by_entity"]["keys"] > 1, doc
    refused = invoke("reconcile", "--from", "db", "--to", "redis", "--yes", *NOENC)
    assert refused.code == 8 and "100% of the redis creds records (1 of 1)" in refused.err, refused.err


def test_orphans_are_measured_against_every_instance_hash(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """Pruning one orphan hash next to four live ones is a fifth of the instance hashes: the printed repair
    runs without --force, deletes the orphan and nothing else."""
    _setup(pg_url, redis_url, tmp_path / "i", "cache", instances=4)
    client = redis.Redis.from_url(redis_url)
    live = sorted(client.scan_iter("evolution:instance:*"))
    client.hset("evolution:instance:gone", "creds", '"{}"')
    args = ["reconcile", "--from", "db", "--to", "redis", "--entity", "instance", "--prune-orphans"]
    doc = json.JSONDecoder().raw_decode(invoke(*args, "--json").out)[0]["plan"]  # then "not confirmed"
    assert doc["counts"] == {"create": 0, "update": 0, "delete": 1}, doc
    assert doc["records_by_entity"]["instance"] == len(live) + 1 and doc["change_ratio"] == 0.2, doc
    done = invoke(*args, "--yes", *NOENC)
    assert done.code == 0, done.err
    assert sorted(client.scan_iter("evolution:instance:*")) == live


def test_a_value_changed_between_plan_and_write_is_skipped(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    from statekit.audit.engine import Locations, ReconcileOptions, plan_reconcile, reconcile
    from statekit.config import load_config
    from statekit.profiles import load_model

    gen = _setup(pg_url, redis_url, tmp_path / "i", "cache", history="redis", instances=3, inject={"stale_creds": 2})
    cfg = load_config(None)
    where = Locations.from_config(cfg)
    plan = plan_reconcile(load_model(cfg), where, ReconcileOptions("db", "redis"))
    assert plan.counts["update"] == 2
    victim = f"evolution:instance:{gen.injected['stale_creds'][0]}"  # type: ignore[attr-defined]
    client = redis.Redis.from_url(redis_url)
    client.hset(victim, "creds", b'"{\\"someone\\":\\"else\\"}"')
    result = reconcile(plan, where, undo_dir=None, undo_recipients=[])
    assert result.counts["update"] == 1
    assert len(result.conflicts) == 1 and victim in result.conflicts[0]
    assert client.hget(victim, "creds") == b'"{\\"someone\\":\\"else\\"}"'  # never forced


@pytest.mark.parametrize("mode", ["redis", "cache", "files"])
def test_no_direction_ever_writes_a_live_copy(mode: str, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """Every pair and entity, with --prune-orphans and --force, on state with stale copies and orphans: what
    each instance loads at boot under its mode is the same before and after."""
    from statekit.audit.plan import RECONCILE_PAIRS

    root = tmp_path / "instances"
    faults = {"stale_creds": 2, "orphan_hash": 1, "orphan_folder": 1, "orphan_session": 1}
    gen = _setup(pg_url, redis_url, root, mode, history="files" if mode == "cache" else None, instances=6,
                 logged_out=1, inject=faults)  # fmt: skip

    def boot() -> dict[str, Any]:
        return {
            i: read_as_evolution(pg_url, redis_url, root, mode, i, list(gen.keys[i]))  # type: ignore[attr-defined]
            for i in gen.ids  # type: ignore[attr-defined]
        }

    before = boot()
    assert all(creds is not None for creds, _ in before.values())
    for source, target in sorted(RECONCILE_PAIRS):
        for entity in ("instance", "creds", "keys", None):
            args = ["reconcile", "--from", source, "--to", target, "--prune-orphans", "--force", *NOENC]
            res = invoke(*args, *(["--entity", entity] if entity else []))
            assert res.code in (0, 2, 8), res.err  # 2/8: a pair or entity that cannot be written there
            assert "Traceback" not in res.err
            assert boot() == before, (source, target, entity)
    assert _audit_classes() == []  # and every stale copy and orphan was repaired from the live side
