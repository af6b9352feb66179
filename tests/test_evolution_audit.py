"""The evolution-api profile on Evolution-shaped state: every injected inconsistency is reported with the right
class, entity, id and field, and nothing else is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from fixtures.evolution.generate import INJECTIONS, generate
from fixtures.evolution.harness import invoke, write_config

pytestmark = pytest.mark.private_redis


def _found(doc: dict[str, Any]) -> set[tuple[object, ...]]:
    return {
        (f["class"], f["entity"], f["id"], f["key"], f["tier"], f["fields"][0] if f["fields"] else None)
        for f in doc["findings"]
    }


def _expected(gen: object) -> set[tuple[object, ...]]:
    return {(e.cls, e.entity, e.id, e.key, e.tier, e.field) for e in gen.expected}  # type: ignore[attr-defined]


def test_clean_state_audits_clean(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    generate(pg_url, redis_url, tmp_path / "instances", instances=8, keys_per_instance=12)
    write_config(Path("statekit.toml"), db_url=pg_url, redis_url=redis_url, files_root=str(tmp_path / "instances"))
    res = invoke("audit")
    assert res.code == 0, res.err
    assert "clean" in res.out
    assert "creds: ok" in res.out


def test_every_injected_inconsistency_is_reported_exactly(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    gen = generate(pg_url, redis_url, tmp_path / "instances", instances=24, keys_per_instance=10,
                   inject=dict.fromkeys(INJECTIONS, 1))  # fmt: skip
    write_config(Path("statekit.toml"), db_url=pg_url, redis_url=redis_url, files_root=str(tmp_path / "instances"))
    res = invoke("audit", "--json", "--recheck-delay", "0.05")
    assert res.code == 1, res.err
    doc = res.json()
    assert doc["audit_schema"] == "statekit.audit/v1"
    assert doc["clean"] is False
    assert _found(doc) == _expected(gen)
    # the human summary groups by entity and class with counts
    human = invoke("audit", "--recheck-rounds", "0")
    assert human.code == 1
    assert "instance: missing 1, orphan 2, mismatch 1, unparseable 1" in human.out
    assert "creds: missing 3, mismatch 1" in human.out
    assert "$.registrationId" in human.out


def test_values_never_appear_in_findings(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    generate(pg_url, redis_url, tmp_path / "i", instances=4, inject={"creds_differ": 1, "key_differs": 1})
    res = invoke("audit", "--json", "--recheck-rounds", "0", "--db-url", pg_url, "--redis-url", redis_url,
                 "--files-root", str(tmp_path / "i"), "--profile", "evolution-api")  # fmt: skip
    assert res.code == 1
    client = redis.Redis.from_url(redis_url)
    some_creds = client.hget(next(iter(client.scan_iter("evolution:instance:*"))), "creds")
    assert isinstance(some_creds, bytes)
    assert b'"Buffer"' not in res.out.encode()
    assert some_creds[10:40].decode() not in res.out


def test_jsonl_and_keys_only(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    gen = generate(pg_url, redis_url, tmp_path / "i", instances=6, inject={"key_not_in_hash": 1, "key_differs": 1})
    write_config(Path("statekit.toml"), db_url=pg_url, redis_url=redis_url, files_root=str(tmp_path / "i"))
    res = invoke("audit", "--jsonl", "--recheck-rounds", "0")
    assert res.code == 1
    lines = [__import__("json").loads(x) for x in res.out.splitlines()]
    assert [x["type"] for x in lines] == ["finding", "finding", "summary"]
    keys_only = invoke("audit", "--keys-only", "--json", "--recheck-rounds", "0")
    assert keys_only.code == 1
    # keys-only sees the missing key but not the changed value
    assert {f["class"] for f in keys_only.json()["findings"]} == {"missing"}
    assert gen.injected["key_not_in_hash"][0] == keys_only.json()["findings"][0]["id"]


def _half_written_creds(pg_url: str, redis_url: str, root: Path) -> tuple[str, bytes, redis.Redis]:
    """Evolution state whose first instance's creds in Redis are caught half written: (id, good creds, client)."""
    gen = generate(pg_url, redis_url, root / "instances", instances=3, keys_per_instance=5)
    client = redis.Redis.from_url(redis_url)
    key = f"evolution:instance:{gen.ids[0]}"
    good = client.hget(key, "creds")
    assert isinstance(good, bytes)
    client.hset(key, "creds", b'"{\\"registrationId\\":1}"')
    return gen.ids[0], good, client


def test_a_value_caught_mid_write_is_transient(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """The write finishes between the pass and its re-check: transient, not drift."""
    instance, good, client = _half_written_creds(pg_url, redis_url, tmp_path)
    waits: list[float] = []

    def writer_finishes(delay: float) -> None:
        waits.append(delay)
        client.hset(f"evolution:instance:{instance}", "creds", good)

    result = _live_audit(pg_url, redis_url, tmp_path, recheck_delay=1.5, pause=writer_finishes)
    assert waits == [1.5]
    assert not result.drift  # type: ignore[attr-defined]
    [finding] = result.findings  # type: ignore[attr-defined]
    assert (finding.cls, finding.entity, finding.id) == ("transient", "creds", instance)


def test_a_value_still_wrong_at_the_recheck_is_drift(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """Nothing changes between the pass and its re-checks: the mismatch stands."""
    instance, _, _ = _half_written_creds(pg_url, redis_url, tmp_path)
    waits: list[float] = []
    result = _live_audit(pg_url, redis_url, tmp_path, recheck_rounds=2, recheck_delay=0.25, pause=waits.append)
    assert waits == [0.25, 0.25]
    assert result.drift  # type: ignore[attr-defined]
    [finding] = result.findings  # type: ignore[attr-defined]
    assert (finding.cls, finding.entity, finding.id) == ("mismatch", "creds", instance)


def test_mysql_profile_works_too(mysql_url: str, redis_url: str, tmp_path: Path) -> None:
    gen = generate(mysql_url, redis_url, tmp_path / "i", instances=6, inject={"no_session": 1, "null_creds": 1})
    write_config(Path("statekit.toml"), db_url=mysql_url, redis_url=redis_url, files_root=str(tmp_path / "i"))
    res = invoke("audit", "--json", "--recheck-rounds", "0")
    assert res.code == 1, res.err
    assert _found(res.json()) == _expected(gen)


def test_prefix_comes_from_profile_options(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    generate(pg_url, redis_url, tmp_path / "i", instances=3, prefix="evo2", inject={"creds_differ": 1})
    write_config(Path("statekit.toml"), db_url=pg_url, redis_url=redis_url, files_root=str(tmp_path / "i"),
                 extra='[profile_options]\nprefix = "evo2"')  # fmt: skip
    res = invoke("audit", "--json", "--recheck-rounds", "0")
    assert res.code == 1
    assert [f["class"] for f in res.json()["findings"]] == ["mismatch"]


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
    write_config(Path("statekit.toml"), db_url=pg_url, redis_url=redis_url, files_root=str(tmp_path / "i"))
    redis.Redis.from_url(redis_url).hset("evolution:instance:abc:extra", "pre-key-1", '"{}"')
    res = invoke("audit", "--json", "--recheck-rounds", "0")
    assert res.code == 1
    [f] = res.json()["findings"]
    assert (f["class"], f["tier"], f["where"]) == ("unparseable", "redis", "evolution:instance:abc:extra")


def test_audit_metrics_file(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """--metrics-file: findings by entity and class, entity counts per tier, session-restore readiness (the
    share of instances complete in the authority), database round trip and Redis hit ratio; it parses."""
    from prometheus_client.parser import text_string_to_metric_families

    generate(pg_url, redis_url, tmp_path / "instances", instances=4, keys_per_instance=6,
             inject={"no_session": 1})  # fmt: skip
    write_config(Path("statekit.toml"), db_url=pg_url, redis_url=redis_url, files_root=str(tmp_path / "instances"))
    redis.Redis.from_url(redis_url).get("warm-the-hit-ratio")
    res = invoke("audit", "--metrics-file", "audit.prom", "--recheck-rounds", "0")
    assert res.code == 1, res.err
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(Path("audit.prom").read_text())
        for s in fam.samples
    }
    assert samples[("statekit_audit_drift", ())] == 1
    assert samples[("statekit_audit_findings", (("class", "missing"), ("entity", "creds")))] >= 1
    assert samples[("statekit_audit_entities", (("entity", "instance"), ("tier", "db")))] == 4
    readiness = samples[("statekit_evolution_session_restore_readiness_ratio", ())]
    assert readiness == pytest.approx(3 / 4)  # the instance without a Session row cannot restore
    assert samples[("statekit_db_roundtrip_seconds", ())] > 0  # measured; its arithmetic is pinned below
    assert 0 <= samples[("statekit_redis_keyspace_hit_ratio", ())] <= 1


def test_db_roundtrip_is_the_median_select_1_in_seconds(pg_url: str) -> None:
    """The round-trip figure is the median of five timed `SELECT 1`s, on a clock that says how long each took."""
    from statekit.audit.health import db_roundtrip_seconds

    ticks = iter([0.0, 0.004, 1.0, 1.002, 2.0, 2.009, 3.0, 3.003, 4.0, 4.001])
    assert db_roundtrip_seconds(pg_url, clock=lambda: next(ticks)) == pytest.approx(0.003)
    assert next(ticks, None) is None  # two readings per query, five queries
    assert db_roundtrip_seconds(None) is None


def _live_audit(pg_url: str, redis_url: str, root: Path, **opts: object) -> object:
    from statekit.audit.diff import AuditOptions
    from statekit.audit.engine import Locations, audit_live
    from statekit.config import load_config
    from statekit.profiles import load_model

    model = load_model(load_config(str(write_config(root / "statekit.toml", db_url=pg_url, redis_url=redis_url,
                                                    files_root=str(root / "instances")))))  # fmt: skip
    return audit_live(model, Locations(pg_url, redis_url, str(root / "instances")), AuditOptions(**opts))  # type: ignore[arg-type]


@pytest.mark.parametrize("keys_only", [False, True])
def test_worker_processes_find_exactly_what_one_process_finds(
    pg_url: str, redis_url: str, tmp_path: Path, keys_only: bool
) -> None:
    from statekit.audit.diff import AuditOptions, _worker_count

    gen = generate(pg_url, redis_url, tmp_path / "instances", instances=30, keys_per_instance=6,
                   inject=dict.fromkeys(INJECTIONS, 1))  # fmt: skip
    common = {"keys_only": keys_only, "recheck_rounds": 0, "batch": 3, "tally": True}
    assert _worker_count(AuditOptions(jobs=3, batch=3), 12) == 3  # this test process can fork
    one = _live_audit(pg_url, redis_url, tmp_path, jobs=1, **common)
    three = _live_audit(pg_url, redis_url, tmp_path, jobs=3, **common)
    key = lambda f: (f.cls, f.entity, f.id, f.key, f.tier, tuple(f.fields), f.where)  # noqa: E731
    assert sorted(map(key, three.findings)) == sorted(map(key, one.findings))  # type: ignore[attr-defined]
    for attr in ("values", "scopes", "entity_counts", "roots", "complete"):
        assert getattr(three, attr) == getattr(one, attr), attr
    if not keys_only:
        assert {(f.cls, f.entity, f.id, f.key, f.tier, f.fields[0] if f.fields else None)
                for f in three.findings} == _expected(gen)  # type: ignore[attr-defined]  # fmt: skip


def test_an_error_in_a_worker_is_raised_with_its_exit_code(tmp_path: Path) -> None:
    from statekit.audit.diff import AuditOptions, compare_scopes
    from statekit.audit.entities import build_model
    from statekit.audit.readers import TierData
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
    from statekit.audit.files_reader import FilesReader
    from statekit.config import load_config
    from statekit.profiles import load_model

    root = tmp_path / "instances"
    for name in ("a1", "b2"):
        (root / name).mkdir(parents=True)
        (root / name / "creds.json").write_text("{}")
        (root / name / "pre-key-1.json").write_text("{}")
    model = load_model(load_config(str(write_config(tmp_path / "statekit.toml", db_url="", redis_url="",
                                                    files_root=str(root)))))  # fmt: skip
    reader = FilesReader(str(root), model, keys_only=True)
    assert reader.list_scopes() == {"a1", "b2"}
    import shutil

    shutil.rmtree(root / "b2")
    data = reader.load(["a1", "b2"])
    assert set(data.records["keys"]) == {"a1"} and set(data.records["creds"]) == {"a1"}
    assert not data.unparseable
