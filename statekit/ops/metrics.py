"""Prometheus text-format metrics for node_exporter's textfile collector, written atomically.

`write_metrics(path, metrics)` is the general writer; `snapshot_metrics`, `rehearse_metrics` and
`audit_metrics` build the families statekit's jobs report. The file is replaced with a rename, so the
collector never reads half a file; give each job its own file (`statekit-snapshot.prom`, …) in the
collector directory. Values never contain secrets: labels are archive names, tiers, entities and results.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from statekit.errors import StatekitError, StorageError
from statekit.fsio import atomic_output

if TYPE_CHECKING:
    from statekit.repo.base import Repository

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass
class Sample:
    """One value of a metric family, with its labels."""

    value: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Metric:
    """A metric family: name, type (gauge, counter or untyped), help text and samples."""

    name: str
    help: str
    samples: list[Sample] = field(default_factory=list)
    type: str = "gauge"

    def add(self, value: float, **labels: str) -> Metric:
        """Append a sample; returns self so families can be built in one expression."""
        self.samples.append(Sample(float(value), dict(labels)))
        return self


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def render(metrics: Sequence[Metric]) -> str:
    """The Prometheus text exposition format (version 0.0.4) for these families."""
    lines: list[str] = []
    for m in metrics:
        if not _NAME_RE.match(m.name):
            raise ValueError(f"invalid metric name {m.name!r}")
        if m.type not in ("gauge", "counter", "untyped"):
            raise ValueError(f"unsupported metric type {m.type!r}")
        lines.append(f"# HELP {m.name} {_escape_help(m.help)}")
        lines.append(f"# TYPE {m.name} {m.type}")
        for s in m.samples:
            for k in s.labels:
                if not _LABEL_RE.match(k) or k.startswith("__"):
                    raise ValueError(f"invalid label name {k!r}")
            labels = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sorted(s.labels.items()))
            lines.append(f"{m.name}{{{labels}}} {_value(s.value)}" if labels else f"{m.name} {_value(s.value)}")
    return "\n".join(lines) + "\n"


def write_metrics(path: str | Path, metrics: Sequence[Metric]) -> None:
    """Atomically replace `path` with these metric families (mode 0644: the collector runs as another user)."""
    target = Path(path)
    try:
        with atomic_output(target, overwrite=True, mode=0o644) as fh:
            fh.write(render(metrics).encode())
    except StorageError as exc:
        raise StorageError(f"metrics file {target}: cannot write: {exc}") from None


# Failed writes of a snapshot's metrics file are remembered in the repository (the metrics directory may be the
# very thing that is missing), so the next file that does get written reports them.
_FAILURES_KEY = "state/metrics-write-failures-{name}.json"


def write_snapshot_metrics_file(
    path: str | Path,
    metrics: Sequence[Metric],
    *,
    name: str,
    repository: Repository | None,
    warn: Callable[[str], None],
) -> bool:
    """Write a snapshot run's metrics plus the count of earlier failed writes; a failure here is a warning
    (the backup is what the run is about), counted for the next file. True when the file was written."""
    count, last = _failures(repository, name)
    extra = Metric(
        "statekit_snapshot_metrics_write_failures_total",
        "Metrics-file writes of this archive name that failed (each reported by the file written after it)",
        type="counter",
    ).add(count, name=name)
    families = [*metrics, extra]
    if last is not None:
        families.append(
            Metric(
                "statekit_snapshot_metrics_last_write_failure_timestamp_seconds",
                "When a metrics-file write of this archive name last failed",
            ).add(last, name=name)
        )
    try:
        write_metrics(path, families)
        return True
    except StorageError as exc:
        warn(f"{exc}: the run's result is unchanged; the next metrics file counts this failure")
        if repository is not None:
            doc = {"failures": count + 1, "last_failure_ts": time.time(), "error": str(exc)}
            try:
                repository.write_bytes(_FAILURES_KEY.format(name=name), json.dumps(doc).encode())
            except StatekitError:
                pass  # nowhere to remember it either; the warning stands
        return False


def _failures(repository: Repository | None, name: str) -> tuple[int, float | None]:
    if repository is None:
        return 0, None
    try:
        raw = repository.read_bytes(_FAILURES_KEY.format(name=name))
        doc = json.loads(raw) if raw else {}
        return int(doc.get("failures", 0)), (float(doc["last_failure_ts"]) if "last_failure_ts" in doc else None)
    except (StatekitError, ValueError, TypeError, AttributeError):
        return 0, None


def read_value(path: str | Path, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """A sample's value from an earlier metrics file (e.g. the last success time to carry over a failure)."""
    want = render([Metric(name, "", [Sample(0.0, dict(labels or {}))])]).splitlines()[-1].rsplit(" ", 1)[0]
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == want:
            try:
                return float(value)
            except ValueError:
                return None
    return None


# -- snapshot --------------------------------------------------------------------------------------------

_COUNT_KINDS = ("rows", "tables", "keys", "files", "bytes")


def snapshot_metrics(
    *,
    name: str,
    result: str,
    exit_code: int,
    started: float,
    finished: float,
    size: int | None,
    tiers: Mapping[str, Mapping[str, int]],
    last_success: float | None,
) -> list[Metric]:
    """The families a snapshot run reports: result, exit code, times, archive size, per-tier counts.

    `result` is `success` or `failure`; `last_success` is this run's finish time on success, else the value
    carried over from the previous file (None: never succeeded)."""
    lab = {"name": name}
    out = [
        Metric("statekit_snapshot_success", "1 if the last snapshot run succeeded, else 0").add(
            1 if result == "success" else 0, **lab
        ),
        Metric("statekit_snapshot_result", "Outcome of the last snapshot run (1 on the current result)")
        .add(1 if result == "success" else 0, **lab, result="success")
        .add(0 if result == "success" else 1, **lab, result="failure"),
        Metric("statekit_snapshot_exit_code", "Exit code of the last snapshot run").add(exit_code, **lab),
        Metric("statekit_snapshot_last_run_timestamp_seconds", "When the last snapshot run ended").add(finished, **lab),
        Metric("statekit_snapshot_duration_seconds", "Duration of the last snapshot run").add(
            max(finished - started, 0.0), **lab
        ),
    ]
    if last_success is not None:
        out.append(
            Metric(
                "statekit_snapshot_last_success_timestamp_seconds", "When the last successful snapshot finished"
            ).add(last_success, **lab)
        )
    if size is not None:
        out.append(Metric("statekit_snapshot_bytes", "Size of the last archive written").add(size, **lab))
    items = Metric("statekit_snapshot_items", "Items in the last archive per tier (rows, tables, keys, files)")
    for tier, counts in sorted(tiers.items()):
        for kind, value in sorted(counts.items()):
            if kind in _COUNT_KINDS and kind != "bytes":
                items.add(value, **lab, tier=tier, kind=kind)
    if items.samples:
        out.append(items)
    return out


# -- rehearsal -------------------------------------------------------------------------------------------


def rehearse_metrics(
    *, archive: str, ok: bool, started: float, finished: float, checks: Mapping[str, Mapping[str, int]]
) -> list[Metric]:
    """The families `verify --rehearse` reports: result, time, and per-tier checks passed/failed."""
    lab = {"archive": archive}
    out = [
        Metric("statekit_rehearse_success", "1 if the last restore rehearsal matched the manifest").add(
            1 if ok else 0, **lab
        ),
        Metric("statekit_rehearse_last_run_timestamp_seconds", "When the last rehearsal ended").add(finished, **lab),
        Metric("statekit_rehearse_duration_seconds", "Duration of the last rehearsal").add(
            max(finished - started, 0.0), **lab
        ),
    ]
    checked = Metric("statekit_rehearse_checks", "Rehearsal comparisons per tier and outcome")
    for tier, counts in sorted(checks.items()):
        for outcome in ("passed", "failed"):
            checked.add(counts.get(outcome, 0), **lab, tier=tier, outcome=outcome)
    if checked.samples:
        out.append(checked)
    return out


# -- audit (called by the audit engine's CLI) ------------------------------------------------------------


def audit_metrics(
    *,
    findings: Mapping[tuple[str, str], int],
    entity_counts: Mapping[tuple[str, str], int],
    drift: bool,
    finished: float,
    gauges: Sequence[Metric] = (),
) -> list[Metric]:
    """The families an audit reports. `findings` maps (entity, class) to a count (class: missing, orphan,
    mismatch, unparseable, transient); `entity_counts` maps (entity, tier) to how many were seen; `gauges` are
    further families a profile supplies (its health figures), appended as they are."""
    out = [
        Metric("statekit_audit_drift", "1 if the last audit found drift, else 0").add(1 if drift else 0),
        Metric("statekit_audit_last_run_timestamp_seconds", "When the last audit ended").add(finished),
    ]
    f = Metric("statekit_audit_findings", "Findings of the last audit by entity and class")
    for (entity, cls), n in sorted(findings.items()):
        f.add(n, entity=entity, **{"class": cls})
    out.append(f)
    e = Metric("statekit_audit_entities", "Entities seen by the last audit per tier")
    for (entity, tier), n in sorted(entity_counts.items()):
        e.add(n, entity=entity, tier=tier)
    out.append(e)
    out.extend(gauges)
    return out
