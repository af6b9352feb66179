"""--metrics-file output, read back with the real Prometheus text-format parser (prometheus_client)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import parser as prometheus_parser

STATEKIT = str(Path(sys.executable).with_name("statekit"))


def sk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=60)


def parse(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, via prometheus_client's parser."""
    out = {}
    for family in prometheus_parser.text_string_to_metric_families(path.read_text()):
        assert family.type in ("gauge", "counter", "unknown")
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def recipient(tmp_path: Path) -> str:
    assert sk("keygen", "-o", str(tmp_path / "id.txt")).returncode == 0
    return next(w for w in (tmp_path / "id.txt").read_text().split() if w.startswith("age1"))


def test_snapshot_metrics_on_success_then_failure(tmp_path: Path, recipient: str) -> None:
    root = tmp_path / "src"
    root.mkdir()
    for i in range(3):
        (root / f"k{i}.json").write_text("{}")
    repo = tmp_path / "repo"
    repo.mkdir()
    prom = tmp_path / "collector" / "statekit.prom"
    prom.parent.mkdir()
    ok = sk("snapshot", "--files-root", str(root), "--to", str(repo), "-r", recipient, "--metrics-file", str(prom),
            "--json")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    m = parse(prom)
    lab = (("name", "statekit"),)
    assert m[("statekit_snapshot_success", lab)] == 1
    assert m[("statekit_snapshot_result", (("name", "statekit"), ("result", "success")))] == 1
    assert m[("statekit_snapshot_result", (("name", "statekit"), ("result", "failure")))] == 0
    assert m[("statekit_snapshot_exit_code", lab)] == 0
    assert m[("statekit_snapshot_bytes", lab)] == doc["size"]
    assert m[("statekit_snapshot_items", (("kind", "files"), ("name", "statekit"), ("tier", "files")))] == 3
    assert m[("statekit_snapshot_duration_seconds", lab)] > 0
    success_ts = m[("statekit_snapshot_last_success_timestamp_seconds", lab)]
    assert success_ts == pytest.approx(doc["finished_at"], abs=0.001)  # the same instant, as each prints it
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert not list(prom.parent.glob(".*.tmp"))  # written by rename, nothing left over

    # a failing run (pre-hook) keeps the last success time, and says failure with the exit code
    bad = sk("snapshot", "--files-root", str(root), "--to", str(repo), "-r", recipient, "--metrics-file", str(prom),
             "--pre-hook", "exit 3")  # fmt: skip
    assert bad.returncode == 10
    m = parse(prom)
    assert m[("statekit_snapshot_success", lab)] == 0
    assert m[("statekit_snapshot_result", (("name", "statekit"), ("result", "failure")))] == 1
    assert m[("statekit_snapshot_exit_code", lab)] == 10
    assert m[("statekit_snapshot_last_success_timestamp_seconds", lab)] == success_ts
    assert ("statekit_snapshot_bytes", lab) not in m

    # even a usage error is recorded
    none = sk("snapshot", "--files-root", str(tmp_path / "missing"), "--to", str(repo), "-r", recipient,
              "--metrics-file", str(prom))  # fmt: skip
    assert none.returncode == 5
    assert parse(prom)[("statekit_snapshot_exit_code", lab)] == 5


def test_audit_and_rehearse_families_parse(tmp_path: Path) -> None:
    from statekit.ops.metrics import audit_metrics, rehearse_metrics, write_metrics
    from statekit.profiles.evolution.metrics import EvolutionStatus

    path = tmp_path / "audit.prom"
    write_metrics(
        path,
        audit_metrics(
            findings={("session", "missing"): 2, ("session", "mismatch"): 1, ('we"ird\\ent\nity', "orphan"): 4},
            entity_counts={("session", "db"): 10, ("session", "redis"): 8},
            drift=True,
            finished=1_800_000_000.5,
            gauges=EvolutionStatus(readiness=0.5, db_latency_seconds=0.042, redis_hit_ratio=0.97).gauges(),
        )
        + rehearse_metrics(archive="a.statekit", ok=True, started=1.0, finished=3.5, checks={"db": {"passed": 4}}),
    )
    m = parse(path)
    assert m[("statekit_audit_findings", (("class", "missing"), ("entity", "session")))] == 2
    assert m[("statekit_audit_findings", (("class", "orphan"), ("entity", 'we"ird\\ent\nity')))] == 4
    assert m[("statekit_audit_entities", (("entity", "session"), ("tier", "redis")))] == 8
    assert m[("statekit_audit_drift", ())] == 1
    assert m[("statekit_evolution_session_restore_readiness_ratio", ())] == pytest.approx(0.5)
    assert m[("statekit_db_roundtrip_seconds", ())] == pytest.approx(0.042)
    assert m[("statekit_redis_keyspace_hit_ratio", ())] == pytest.approx(0.97)
    assert m[("statekit_rehearse_duration_seconds", (("archive", "a.statekit"),))] == 2.5
    assert m[("statekit_rehearse_checks", (("archive", "a.statekit"), ("outcome", "failed"), ("tier", "db")))] == 0


def test_metrics_file_in_missing_directory_is_a_warning_counted_next_time(tmp_path: Path, recipient: str) -> None:
    """The backup is what the run is about: a metrics file it cannot write is a warning, not a failed backup,
    and the next metrics file that is written counts the lost one."""
    root = tmp_path / "src"
    root.mkdir()
    (root / "k.json").write_text("{}")
    repo = tmp_path / "repo"
    missing = tmp_path / "nope" / "x.prom"
    out = sk("snapshot", "--files-root", str(root), "--to", str(repo), "-r", recipient,
             "--metrics-file", str(missing), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is True and any(str(missing.parent) in w for w in doc["warnings"])
    assert len(list(repo.glob("statekit-*.statekit"))) == 1
    plain = sk(
        "snapshot", "--files-root", str(root), "--to", str(repo), "-r", recipient, "--metrics-file", str(missing)
    )
    assert plain.returncode == 0 and "warning: metrics file" in plain.stderr  # shown even without a terminal
    good = tmp_path / "good.prom"
    assert sk("snapshot", "--files-root", str(root), "--to", str(repo), "-r", recipient,
              "--metrics-file", str(good)).returncode == 0  # fmt: skip
    m = parse(good)
    assert m[("statekit_snapshot_metrics_write_failures_total", (("name", "statekit"),))] == 2
    assert m[("statekit_snapshot_success", (("name", "statekit"),))] == 1
