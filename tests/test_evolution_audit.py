"""The evolution-api profile on state written as Evolution v2.3.6 writes it, in each of its three auth-state
modes and their mode-change histories: every cell of the table "what an audit must say, by mode" is a test in
every mode, every injected fault is reported with its class, and no healthy instance gets a finding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from fixtures.evolution.generate import INJECTABLE, MODES, fix_file_name, generate
from fixtures.evolution.harness import invoke, write_config

pytestmark = pytest.mark.private_redis


def _config(db: str, rurl: str, root: Path, options: str = "") -> None:
    write_config(Path("statekit.toml"), db_url=db, redis_url=rurl, files_root=str(root),
                 extra=f"[profile_options]\n{options}" if options else "")  # fmt: skip


def _found(doc: dict[str, Any]) -> set[tuple[object, ...]]:
    return {
        (f["class"], f["entity"], f["id"], f["key"], f["tier"], f["fields"][0] if f["fields"] else None)
        for f in doc["findings"]
    }


def _expected(*gens: Any) -> set[tuple[object, ...]]:
    return {(e.cls, e.entity, e.id, e.key, e.tier, e.field) for g in gens for e in g.expected}


def _audit(*args: str) -> dict[str, Any]:
    res = invoke("audit", "--json", "--recheck-rounds", "0", *args)
    assert res.code in (0, 1), res.err
    doc: dict[str, Any] = res.json()
    assert res.code == (0 if doc["clean"] else 1)
    return doc


# -- the table, cell by cell, in every mode --------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_healthy_state_in_each_mode_audits_clean(mode: str, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """Paired instances, logged-out ones (close, no auth state; in cache mode the hash keeps its keys), the
    TTL'd baileys/groups keys of the same cache, an empty folder in cache mode: all clean."""
    root = tmp_path / "instances"
    gen = generate(pg_url, redis_url, root, mode=mode, instances=6, logged_out=2)
    _config(pg_url, redis_url, root, f'mode = "{mode}"')
    client = redis.Redis.from_url(redis_url)
    if mode != "files":
        assert list(client.scan_iter("evolution:baileys:*")) and list(client.scan_iter("evolution:groups:*"))
        assert 0 < client.ttl(next(client.scan_iter("evolution:baileys:*"))) <= 300
    if mode == "cache":
        assert all(not any((root / i).iterdir()) for i in gen.ids)  # created, always empty
        assert all(client.exists(f"evolution:instance:{i}") for i in gen.logged_out)
    res = invoke("audit", "--recheck-rounds", "0")
    assert res.code == 0, res.out + res.err
    assert f"server evolution ({mode} mode, prefix evolution, from profile_options.mode): 8 instances" in res.out
    assert "readiness: 6 of 6 instances with a session would boot without a QR code" in res.out
    assert res.out.rstrip().endswith("clean")


@pytest.mark.parametrize("mode,history", [(m, h) for m in MODES for h in (None, *MODES) if h != m])
def test_every_cell_of_the_table_in_each_mode(
    mode: str, history: str | None, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Each fault that applies to the mode, once, on an otherwise healthy set (fresh, or migrated from
    another mode and holding its leftovers): found with its class, entity, tier and field, and nothing else
    (no finding on the healthy and logged-out instances)."""
    root = tmp_path / "instances"
    gen = generate(pg_url, redis_url, root, mode=mode, history=history, instances=14, logged_out=2,
                   inject=dict.fromkeys(INJECTABLE[mode], 1))  # fmt: skip
    _config(pg_url, redis_url, root, f'mode = "{mode}"')
    doc = _audit()
    assert _found(doc) == _expected(gen)
    assert {f["id"] for f in doc["findings"]}.isdisjoint(gen.logged_out)
    by = {(f["class"], f["entity"], f["tier"]): f for f in doc["findings"]}
    stale = by[("mismatch", "creds", "db" if mode == "redis" else "redis")]
    live = "redis" if mode == "redis" else "db"
    assert f"not read in {mode} mode; the live copy is in {live}" in stale["detail"]
    assert stale["repair"] == f"statekit reconcile --from {live} --to {stale['tier']} --entity creds"
    # "where" is the concrete key, path or row, never the template
    for f in doc["findings"]:
        assert "{" not in (f["where"] or ""), f
        assert f["repair"], f
    missing_keys = [f for f in doc["findings"] if f["class"] == "missing" and f["entity"] == "keys"]
    for f in missing_keys:
        assert f["where"] in (f"evolution:instance:{f['id']}", f"{f['id']}/")
    ready = doc["readiness"]
    assert ready["sessions"] == 14
    lost = {f["id"] for f in doc["findings"] if f["class"] == "missing"}
    assert ready["ready"] == 14 - len(lost)


@pytest.mark.parametrize("mode", MODES)
def test_text_output_names_the_repair_of_every_class(mode: str, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "instances"
    generate(pg_url, redis_url, root, mode=mode, instances=12, inject=dict.fromkeys(INJECTABLE[mode], 1))
    _config(pg_url, redis_url, root, f'mode = "{mode}"')
    res = invoke("audit", "--recheck-rounds", "0")
    assert res.code == 1
    lines = res.out.splitlines()
    for i, line in enumerate(lines):
        if (
            line.startswith("  ")
            and ":" in line
            and not line.startswith("    ")
            and any(c in line for c in ("missing ", "orphan ", "mismatch ", "unparseable "))
        ):
            block = []
            for nxt in lines[i + 1 :]:
                if not nxt.startswith("    "):
                    break
                block.append(nxt)
            assert any(b.strip().startswith("repair: ") for b in block), line
    assert "repair: statekit reconcile --from db --to redis --entity instance --prune-orphans" in res.out


def test_one_finding_is_singular(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "instances"
    generate(pg_url, redis_url, root, mode="cache", instances=3, inject={"stale_creds": 1})
    _config(pg_url, redis_url, root)
    res = invoke("audit", "--recheck-rounds", "0")
    assert res.code == 1
    assert "drift: 1 finding" in res.out and "1 findings" not in res.out


# -- histories: a server that changed mode ---------------------------------------------------------------


@pytest.mark.parametrize("old,new", [(a, b) for a in MODES for b in MODES if a != b])
@pytest.mark.parametrize("activity", [False, True])
def test_mode_change_histories(old: str, new: str, activity: bool, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """Written in `old`, migrated, now running in `new`: the leftovers of the old mode are clean while they
    equal the live copy; once the new mode updated the creds, the old copy is a stale mismatch naming the live
    one. Keys left in a place the new mode does not read are never findings."""
    root = tmp_path / "instances"
    gen = generate(pg_url, redis_url, root, mode=new, history=old, activity=activity, instances=5)
    _config(pg_url, redis_url, root, f'mode = "{new}"')
    doc = _audit()
    assert _found(doc) == _expected(gen)
    if activity and {old, new} != {"cache", "files"}:
        assert len(doc["findings"]) == 5
        assert all("stale copy" in f["detail"] for f in doc["findings"])
    else:
        assert doc["clean"] is True


def test_an_unmigrated_flip_is_missing_creds_in_the_new_live_place(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """redis mode data, server now declared cache (SAVE_INSTANCES true → false without the migration): every
    instance would ask for a QR code; the audit says so, names the copy that is not read, and the repair
    names the old mode."""
    root = tmp_path / "instances"
    gen = generate(pg_url, redis_url, root, mode="redis", instances=4)
    _config(pg_url, redis_url, root, 'mode = "cache"')
    doc = _audit()
    assert _found(doc) == {("missing", "creds", i, None, "db", None) for i in gen.ids}
    assert doc["readiness"] == {"ready": 0, "sessions": 4}
    f = doc["findings"][0]
    assert "a copy cache mode does not read is in redis" in f["detail"]
    assert "--mode evolution=redis --from redis --to db --entity creds" in f["repair"]


# -- servers and configuration ---------------------------------------------------------------------------


def test_three_servers_share_one_database_redis_and_volume(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """Instance.clientName picks the server, each server its mode; faults in each are found; a clientName
    with no configured server and a provider-mode server are listed as not audited, never audited as if
    they were another mode."""
    root = tmp_path / "instances"
    # each server also has a history: it ran in another mode before and was migrated
    gens = [
        generate(pg_url, redis_url, root, mode="redis", history="cache", client_name="evo_redis", instances=8,
                 inject={"stale_creds": 1, "keys_lost": 1, "orphan_session": 1}),
        generate(pg_url, redis_url, root, mode="cache", history="redis", client_name="evo_cache", instances=8,
                 logged_out=1, inject={"keys_lost": 1, "stale_creds": 1, "orphan_hash": 1, "open_no_creds": 1}),
        generate(pg_url, redis_url, root, mode="files", history="cache", client_name="evo_files", instances=8,
                 inject={"truncated_key": 1, "open_no_creds": 1, "orphan_folder": 1, "stray_file": 1}),
    ]  # fmt: skip
    generate(pg_url, redis_url, root, mode="cache", client_name="evo_provider", instances=2)
    generate(pg_url, redis_url, root, mode="cache", client_name="stranger", instances=2,
             inject={"stale_creds": 1})  # fmt: skip
    _config(pg_url, redis_url, root, '[profile_options.servers]\nevo_redis = "redis"\nevo_cache = "cache"\n'
            'evo_files = { mode = "files" }\nevo_provider = "provider"\n')  # fmt: skip
    doc = _audit()
    assert _found(doc) == _expected(*gens)
    servers = {s["server"]: s for s in doc["servers"]}
    assert servers["evo_redis"]["mode"] == "redis" and servers["evo_redis"]["instances"] == 8
    assert servers["evo_cache"]["instances"] == 9
    assert servers["evo_provider"]["covered"] is False and servers["stranger"]["covered"] is False
    human = invoke("audit", "--recheck-rounds", "0")
    assert "server evo_files (files mode, prefix evolution, from profile_options.servers)" in human.out
    assert "server evo_provider: 2 instances NOT audited (provider mode is not covered)" in human.out
    assert "server stranger: 2 instances NOT audited (no server configured for this clientName)" in human.out


def test_env_file_gives_mode_prefix_and_client_name_with_evolutions_defaults(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "instances"
    # CACHE_REDIS_PREFIX_KEY unset: Evolution uses evolution-cache; the client name defaults to evolution.
    gen = generate(pg_url, redis_url, root, mode="redis", prefix="evolution-cache", instances=3,
                   inject={"stale_creds": 1})  # fmt: skip
    env = tmp_path / "evolution.env"
    env.write_text("# Evolution\nCACHE_REDIS_ENABLED=true\nCACHE_REDIS_SAVE_INSTANCES=true\n"
                   "DATABASE_SAVE_DATA_INSTANCE=true\nexport CACHE_REDIS_TTL=604800\n")  # fmt: skip
    _config(pg_url, redis_url, root, f'env_file = "{env}"')
    doc = _audit()
    assert _found(doc) == _expected(gen)
    [server] = doc["servers"]
    assert (server["server"], server["mode"], server["prefix"]) == ("evolution", "redis", "evolution-cache")
    assert server["origin"] == f"env_file {env}"
    # Evolution compares with === 'true': "TRUE" is false, so this server is in cache mode
    env.write_text("CACHE_REDIS_ENABLED=true\nCACHE_REDIS_SAVE_INSTANCES=TRUE\nDATABASE_SAVE_DATA_INSTANCE=true\n")
    assert _audit()["servers"][0]["mode"] == "cache"
    env.write_text("CACHE_REDIS_ENABLED=false\n")
    res = invoke("audit")
    assert res.code == 2 and "keeps no auth state" in res.err


def test_servers_with_their_own_env_files(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """Each server's .env gives its mode; the prefix (unset: evolution-cache) is theirs; servers whose .env
    files name different prefixes cannot be audited together."""
    root = tmp_path / "instances"
    a = generate(pg_url, redis_url, root, mode="redis", client_name="a", prefix="evolution-cache", instances=3,
                 inject={"stale_creds": 1})  # fmt: skip
    b = generate(pg_url, redis_url, root, mode="files", client_name="b", prefix="evolution-cache", instances=3,
                 inject={"truncated_key": 1})  # fmt: skip
    (tmp_path / "a.env").write_text("CACHE_REDIS_ENABLED=true\nCACHE_REDIS_SAVE_INSTANCES=true\n")
    (tmp_path / "b.env").write_text("DATABASE_SAVE_DATA_INSTANCE=true\n")
    _config(pg_url, redis_url, root, f'[profile_options.servers]\na = {{ env_file = "{tmp_path / "a.env"}" }}\n'
            f'b = {{ env_file = "{tmp_path / "b.env"}" }}\n')  # fmt: skip
    doc = _audit()
    assert _found(doc) == _expected(a, b)
    assert {(s["server"], s["mode"], s["prefix"]) for s in doc["servers"]} == {
        ("a", "redis", "evolution-cache"), ("b", "files", "evolution-cache")}  # fmt: skip
    (tmp_path / "b.env").write_text("DATABASE_SAVE_DATA_INSTANCE=true\nCACHE_REDIS_PREFIX_KEY=other\n")
    res = invoke("audit")
    assert res.code == 2 and "audit servers with different prefixes with one config each" in res.err


def test_a_prefix_that_matches_nothing_is_named(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "instances"
    generate(pg_url, redis_url, root, mode="cache", prefix="evolution", instances=3)
    _config(pg_url, redis_url, root, 'prefix = "evolution-cache"')
    doc = _audit()
    assert any("'evolution' (3)" in n and "is the prefix right" in n for n in doc["notes"])
    human = invoke("audit", "--recheck-rounds", "0")
    assert "note: no evolution-cache:instance:<id> key in Redis" in human.out


@pytest.mark.parametrize("option", ['mode = "sqlite"', 'servers = { a = "nope" }', 'colour = "red"'])
def test_bad_mode_configuration_is_a_usage_error(option: str, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    _config(pg_url, redis_url, tmp_path, option)
    res = invoke("audit")
    assert res.code == 2, res.err
    assert "profile_options" in res.err and "Traceback" not in res.err


def test_mode_flag_overrides_the_configuration(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "instances"
    generate(pg_url, redis_url, root, mode="files", instances=3)
    _config(pg_url, redis_url, root, 'mode = "cache"')
    assert _audit()["clean"] is False
    assert _audit("--mode", "files")["clean"] is True
    assert _audit("--mode", "evolution=files")["clean"] is True
    assert invoke("audit", "--mode", "bogus").code == 2


# -- emptied tiers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,tier", [("cache", "redis"), ("redis", "redis"), ("files", "files")])
def test_an_emptied_tier_is_one_finding_naming_it(
    mode: str, tier: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "instances"
    generate(pg_url, redis_url, root, mode=mode, instances=50)
    _config(pg_url, redis_url, root, f'mode = "{mode}"')
    if tier == "redis":
        redis.Redis.from_url(redis_url).flushall()
    else:
        shutil.rmtree(root)
        root.mkdir()
    res = invoke("audit", "--recheck-rounds", "0")
    assert res.code == 1
    noun = "instance hash" if tier == "redis" else "instance folder"
    assert f"{tier} holds no {noun} at all; the authority has 50 instances" in res.out
    assert "drift: 1 finding" in res.out
    assert f"repair: statekit restore ARCHIVE --tier {tier}" in res.out
    counts = next(ln for ln in res.out.splitlines() if "records per tier" in ln)
    assert f"{tier} nothing" in counts
    assert ("db creds 50" in counts) == (mode != "redis")


# -- realistic key sets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cache", "files"])
def test_a_real_key_set_is_read_as_evolution_names_it(mode: str, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """812 pre-keys, `_1` LID sessions, sender keys with `::`, app-state keys whose ids hold `/`, the five
    LT-hash versions, lid mappings both ways: every name parses, fixFileName'd on disk."""
    root = tmp_path / "instances"
    gen = generate(pg_url, redis_url, root, mode=mode, instances=2, keys_per_instance=None)
    keys = gen.keys[gen.ids[0]]
    assert sum(k.startswith("pre-key-") for k in keys) == 812
    assert any("_1." in k for k in keys if k.startswith("session-"))
    assert any("::" in k for k in keys) and any("/" in k for k in keys if k.startswith("app-state-sync-key-"))
    assert sum(k.startswith("app-state-sync-version-") for k in keys) == 5
    assert any(k.endswith("_reverse") for k in keys)
    if mode == "files":
        names = {p.name for p in (root / gen.ids[0]).iterdir()}
        assert {f"{fix_file_name(k)}.json" for k in keys} == names
        assert not any("/" in n or ":" in n for n in names)
    _config(pg_url, redis_url, root, f'mode = "{mode}"')
    doc = _audit()
    assert doc["clean"] is True, doc["findings"]
    live = "redis" if mode == "cache" else "files"
    assert doc["tier_counts"][live]["keys"] == 2
    assert doc["tier_records"][live]["keys"] == sum(len(k) for k in gen.keys.values())
    human = invoke("audit", "--recheck-rounds", "0")
    assert f"keys {sum(len(k) for k in gen.keys.values()):,} in 2 ids" in human.out


# -- output, re-checks, metrics, other databases ---------------------------------------------------------


def test_values_never_appear_in_findings(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "i"
    generate(pg_url, redis_url, root, mode="redis", instances=4, inject={"stale_creds": 1})
    res = invoke("audit", "--json", "--recheck-rounds", "0", "--db-url", pg_url, "--redis-url", redis_url,
                 "--files-root", str(root), "--profile", "evolution-api", "--mode", "redis")  # fmt: skip
    assert res.code == 1
    client = redis.Redis.from_url(redis_url)
    some_creds = client.hget(next(iter(client.scan_iter("evolution:instance:*"))), "creds")
    assert some_creds is not None
    assert b'"Buffer"' not in res.out.encode()
    assert isinstance(some_creds, bytes)
    assert some_creds[10:40].decode() not in res.out


def test_jsonl_and_keys_only(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "i"
    gen = generate(pg_url, redis_url, root, mode="cache", instances=6, inject={"keys_lost": 1, "stale_creds": 1})
    _config(pg_url, redis_url, root)
    res = invoke("audit", "--jsonl", "--recheck-rounds", "0")
    assert res.code == 1
    lines = [json.loads(x) for x in res.out.splitlines()]
    assert [x["type"] for x in lines] == ["finding", "finding", "summary"]
    assert lines[-1]["readiness"] == {"ready": 5, "sessions": 6}
    keys_only = invoke("audit", "--keys-only", "--json", "--recheck-rounds", "0")
    assert keys_only.code == 1
    # keys-only sees the lost keys but not the changed value
    [f] = keys_only.json()["findings"]
    assert (f["class"], f["id"]) == ("missing", gen.injected["keys_lost"][0])


def test_a_value_caught_mid_write_is_transient(
    pg_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale copy caught mid-write: the writer finishes during the re-check delay (the delay itself is
    where the write happens, so nothing depends on the clock), and the finding is transient, not drift."""
    root = tmp_path / "i"
    gen = generate(pg_url, redis_url, root, mode="cache", history="redis", instances=3, keys_per_instance=5)
    _config(pg_url, redis_url, root)
    client = redis.Redis.from_url(redis_url)
    key = f"evolution:instance:{gen.ids[0]}"
    good = client.hget(key, "creds")
    client.hset(key, "creds", b'"{\\"registrationId\\":1}"')
    assert isinstance(good, bytes)
    monkeypatch.setattr("statekit.audit.diff.time.sleep", lambda _s: client.hset(key, "creds", good))
    res = invoke("audit", "--json", "--recheck-delay", "1.5")
    assert res.code == 0, res.out
    [finding] = res.json()["findings"]
    assert finding["class"] == "transient"
    assert finding["entity"] == "creds" and finding["id"] == gen.ids[0]


@pytest.mark.parametrize("mode", MODES)
def test_mysql_too(mode: str, mysql_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "i"
    gen = generate(mysql_url, redis_url, root, mode=mode, instances=10, inject=dict.fromkeys(INJECTABLE[mode], 1))
    _config(mysql_url, redis_url, root, f'mode = "{mode}"')
    assert _found(_audit()) == _expected(gen)


@pytest.mark.parametrize(
    "args,code,text",
    [
        (["audit", "--profile", "nope"], 2, "unknown profile"),
        (["audit", "--entity", "nope", "--profile", "evolution-api"], 2, "unknown entity"),
        (["audit", "--profile", "evolution-api", "--redis-url", "redis://127.0.0.1:1/0"], 5, "cannot connect"),
    ],
)
def test_usage_and_unreachable_tiers(args: list[str], code: int, text: str) -> None:
    res = invoke(*args)
    assert res.code == code
    assert text in res.err
    assert "Traceback" not in res.err


def test_a_redis_key_that_does_not_parse_is_reported(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    generate(pg_url, redis_url, tmp_path / "i", instances=2, keys_per_instance=2)
    _config(pg_url, redis_url, tmp_path / "i")
    redis.Redis.from_url(redis_url).hset("evolution:instance:abc:extra", "pre-key-1", '"{}"')
    doc = _audit()
    [f] = doc["findings"]
    assert (f["class"], f["tier"], f["where"]) == ("unparseable", "redis", "evolution:instance:abc:extra")


def test_audit_metrics_file(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """--metrics-file: findings by entity and class, entity counts per tier, session-restore readiness (of the
    instances with a session, those whose creds and keys are where their server's mode reads them),
    database round trip and Redis hit ratio; it parses."""
    from prometheus_client.parser import text_string_to_metric_families

    root = tmp_path / "instances"
    generate(pg_url, redis_url, root, mode="cache", instances=4, logged_out=1, inject={"open_no_creds": 1})
    _config(pg_url, redis_url, root)
    redis.Redis.from_url(redis_url).get("warm-the-hit-ratio")
    res = invoke("audit", "--metrics-file", "audit.prom", "--recheck-rounds", "0")
    assert res.code == 1, res.err
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(Path("audit.prom").read_text())
        for s in fam.samples
    }
    assert samples[("statekit_audit_drift", ())] == 1
    assert samples[("statekit_audit_findings", (("class", "missing"), ("entity", "creds")))] == 1
    assert samples[("statekit_audit_entities", (("entity", "instance"), ("tier", "db")))] == 5
    assert samples[("statekit_evolution_session_restore_readiness_ratio", ())] == pytest.approx(3 / 4)
    assert samples[("statekit_evolution_instances_ready", ())] == 3
    assert samples[("statekit_evolution_instances_with_session", ())] == 4
    assert samples[("statekit_db_roundtrip_seconds", ())] > 0  # measured; its arithmetic is pinned elsewhere
    assert 0 <= samples[("statekit_redis_keyspace_hit_ratio", ())] <= 1


def _live_audit(pg_url: str, redis_url: str, root: Path, **opts: Any) -> object:
    from statekit.audit.engine import Locations, audit_live
    from statekit.audit.findings import AuditOptions
    from statekit.config import load_config
    from statekit.profiles import load_model

    model = load_model(load_config(str(write_config(root / "statekit.toml", db_url=pg_url, redis_url=redis_url,
                                                    files_root=str(root / "instances"),
                                                    extra='[profile_options]\nmode = "files"'))))  # fmt: skip
    return audit_live(
        model, Locations({"db": pg_url, "redis": redis_url, "files": str(root / "instances")}), AuditOptions(**opts)
    )


@pytest.mark.parametrize("keys_only", [False, True])
def test_worker_processes_find_exactly_what_one_process_finds(
    pg_url: str, redis_url: str, tmp_path: Path, keys_only: bool
) -> None:
    from statekit.audit.diff import _worker_count
    from statekit.audit.findings import AuditOptions

    gen = generate(pg_url, redis_url, tmp_path / "instances", mode="files", instances=30, keys_per_instance=6,
                   logged_out=2, inject=dict.fromkeys(INJECTABLE["files"], 1))  # fmt: skip
    common = {"keys_only": keys_only, "recheck_rounds": 0, "batch": 3, "tally": True}
    assert _worker_count(AuditOptions(jobs=3, batch=3), 12) == 3  # this test process can fork
    one = _live_audit(pg_url, redis_url, tmp_path, jobs=1, **common)
    three = _live_audit(pg_url, redis_url, tmp_path, jobs=3, **common)
    key = lambda f: (f.cls, f.entity, f.id, f.key, f.tier, tuple(f.fields), f.where, f.repair)  # noqa: E731
    assert sorted(map(key, three.findings)) == sorted(map(key, one.findings))  # type: ignore[attr-defined]
    for attr in ("values", "scopes", "entity_counts", "roots", "complete", "readiness"):
        assert getattr(three, attr) == getattr(one, attr), attr
    if not keys_only:
        assert {(f.cls, f.entity, f.id, f.key, f.tier, f.fields[0] if f.fields else None)
                for f in three.findings} == _expected(gen)  # type: ignore[attr-defined]  # fmt: skip


def test_an_error_in_a_worker_is_raised_with_its_exit_code(tmp_path: Path) -> None:
    from statekit.audit.diff import compare_scopes
    from statekit.audit.entities import build_model
    from statekit.audit.findings import AuditOptions
    from statekit.audit.sources.records import TierData
    from statekit.errors import TierError

    class Failing:
        tier = "files"

        def __init__(self) -> None:
            self.unparseable: list[object] = []

        def list_scopes(self) -> set[str]:
            return {f"s{i}" for i in range(20)}

        def load(self, scopes: list[str]) -> TierData:
            if "s13" in scopes:
                raise TierError("files: cannot list s13: Input/output error")
            return TierData("files")

    model = build_model({"e": {"authority": "files", "files": {"path": "{id}/x"}}})
    with pytest.raises(TierError, match="cannot list s13") as info:
        compare_scopes(model, {"files": Failing()}, sorted(Failing().list_scopes()), AuditOptions(batch=2, jobs=2))  # type: ignore[dict-item]
    assert info.value.exit_code == 6


def test_a_folder_removed_after_the_root_was_listed_holds_nothing(tmp_path: Path) -> None:
    # Folders are listed when their batch loads: one deleted in between is simply empty, not an error.
    import shutil

    from statekit.audit.sources.files import FilesReader
    from statekit.config import load_config
    from statekit.profiles import load_model

    root = tmp_path / "instances"
    for name in ("a1", "b2"):
        (root / name).mkdir(parents=True)
        (root / name / "pre-key-1.json").write_text("{}")
    model = load_model(load_config(str(write_config(tmp_path / "statekit.toml", db_url="", redis_url="",
                                                    files_root=str(root)))))  # fmt: skip
    reader = FilesReader(str(root), model, keys_only=True)
    assert reader.list_scopes() == {"a1", "b2"}
    shutil.rmtree(root / "b2")
    data = reader.load(["a1", "b2"])
    assert set(data.records["keys"]) == {"a1"}
    assert not data.unparseable
