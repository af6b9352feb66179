"""Retention: which archives a restic-style grandfather-father-son policy keeps, and why.

Archives are grouped by name and each group is judged on its own, newest first:

- keep-last N: the N newest archives;
- keep-hourly/daily/weekly/monthly/yearly N: walking from the newest, the first (newest) archive of each
  distinct UTC hour/day/ISO week/month/year, for the N most recent periods that have an archive; when fewer
  than N periods have one, the oldest archive is kept too (so a young repository keeps its first archive);
- keep-within DURATION (e.g. `2d3h`, units y m w d h): every archive younger than DURATION, measured back
  from the newest archive of the group (not from now: a stopped backup job never empties its repository).

An archive is kept if any rule keeps it; every reason is reported.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from statekit.errors import UsageError

_DURATION_RE = re.compile(r"(\d+)([ymwdh])")
_UNIT_S = {"h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in a restic-style duration such as `1y5m7d2h` (y=365d, m=30d, w=7d, d, h)."""
    compact = text.strip().lower()
    if not compact or _DURATION_RE.sub("", compact):
        raise UsageError(f"duration {text!r}: expected numbers with units y, m, w, d, h (e.g. 2d3h)")
    return float(sum(int(n) * _UNIT_S[u] for n, u in _DURATION_RE.findall(compact)))


@dataclass
class RetentionPolicy:
    """How many archives of each kind to keep; None or 0 means the rule is off."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: str | None = None

    def __post_init__(self) -> None:
        for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            value = getattr(self, rule)
            if value is None:
                setattr(self, rule, 0)
            elif value < 0:
                raise UsageError(f"--keep-{rule} must be 0 or more, not {value}")
        if self.within is not None:
            parse_duration(self.within)

    def empty(self) -> bool:
        """True when no rule is set (pruning would delete everything, so it is refused)."""
        return not any((self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly, self.within))

    def to_json(self) -> dict[str, Any]:
        """The policy as given."""
        return {
            "keep_last": self.last,
            "keep_hourly": self.hourly,
            "keep_daily": self.daily,
            "keep_weekly": self.weekly,
            "keep_monthly": self.monthly,
            "keep_yearly": self.yearly,
            "keep_within": self.within,
        }


def _hour(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H", time.gmtime(ts))


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _week(ts: float) -> str:
    iso = datetime.datetime.fromtimestamp(ts, datetime.UTC).isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def _month(ts: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(ts))


def _year(ts: float) -> str:
    return time.strftime("%Y", time.gmtime(ts))


BUCKETS: list[tuple[str, Callable[[float], str]]] = [
    ("hourly", _hour),
    ("daily", _day),
    ("weekly", _week),
    ("monthly", _month),
    ("yearly", _year),
]


@dataclass
class Decision:
    """One archive's fate: kept (with every reason) or removed."""

    key: str
    ts: float
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        """True if any rule keeps the archive."""
        return bool(self.reasons)


def apply_policy(items: Sequence[tuple[str, float]], policy: RetentionPolicy) -> list[Decision]:
    """Judge one group of archives given as (key, UTC timestamp); returns decisions newest first."""
    if policy.empty():
        raise UsageError(
            "no retention rule given: pass --keep-last/--keep-hourly/--keep-daily/--keep-weekly/"
            "--keep-monthly/--keep-yearly N or --keep-within DURATION (or set keep_* in [repository])"
        )
    decisions = [Decision(k, ts) for k, ts in sorted(items, key=lambda kt: (kt[1], kt[0]), reverse=True)]
    if not decisions:
        return []
    for d in decisions[: policy.last]:
        d.reasons.append("last")
    for rule, bucket_of in BUCKETS:
        limit = getattr(policy, rule)
        if not limit:
            continue
        seen: set[str] = set()
        for d in decisions:
            bucket = bucket_of(d.ts)
            if bucket in seen:
                continue
            if len(seen) >= limit:
                break
            seen.add(bucket)
            d.reasons.append(f"{rule} {bucket}")
        if len(seen) < limit and not any(r.startswith(rule) for r in decisions[-1].reasons):
            decisions[-1].reasons.append(f"oldest {rule}")
    if policy.within:
        span = parse_duration(policy.within)
        newest = decisions[0].ts
        for d in decisions:
            if newest - d.ts < span:
                d.reasons.append(f"within {policy.within}")
    return decisions
