"""The retention policy on synthetic timestamps: restic-style GFS semantics, with hypothesis properties."""

from __future__ import annotations

import calendar
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit.errors import UsageError
from statekit.repo.retention import RetentionPolicy, apply_policy, parse_duration


def ts(text: str) -> float:
    return float(calendar.timegm(dt.datetime.fromisoformat(text).timetuple()))


def kept(items: list[tuple[str, float]], policy: RetentionPolicy) -> set[str]:
    return {d.key for d in apply_policy(items, policy) if d.keep}


def hourly_series(start: str, hours: int) -> list[tuple[str, float]]:
    base = ts(start)
    return [(f"a{i:04d}", base + i * 3600) for i in range(hours)]


def test_keep_last_keeps_the_newest() -> None:
    items = hourly_series("2026-01-01T00:00:00", 10)
    assert kept(items, RetentionPolicy(last=3)) == {"a0009", "a0008", "a0007"}


def test_keep_daily_keeps_newest_of_each_day() -> None:
    # 4 days of hourly archives: the daily rule keeps 23:00 of each of the last 3 days
    items = hourly_series("2026-01-01T00:00:00", 96)
    assert kept(items, RetentionPolicy(daily=3)) == {"a0095", "a0071", "a0047"}


def test_oldest_is_kept_when_buckets_are_not_filled() -> None:
    items = hourly_series("2026-01-01T00:00:00", 30)  # two days
    decisions = apply_policy(items, RetentionPolicy(daily=7))
    reasons = {d.key: d.reasons for d in decisions if d.keep}
    assert set(reasons) == {"a0029", "a0023", "a0000"}
    assert reasons["a0000"] == ["oldest daily"]


def test_weekly_uses_iso_weeks_and_monthly_yearly() -> None:
    items = [
        ("mon", ts("2026-01-05T10:00:00")),  # ISO week 2
        ("sun", ts("2026-01-11T10:00:00")),  # still ISO week 2
        ("next", ts("2026-01-12T10:00:00")),  # ISO week 3
    ]
    assert kept(items, RetentionPolicy(weekly=2)) == {"next", "sun"}
    items = [
        ("dec", ts("2025-12-31T23:00:00")),
        ("jan1", ts("2026-01-01T01:00:00")),
        ("jan2", ts("2026-01-02T01:00:00")),
    ]
    assert kept(items, RetentionPolicy(monthly=2)) == {"jan2", "dec"}
    assert kept(items, RetentionPolicy(yearly=1)) == {"jan2"}


def test_keep_within_is_relative_to_the_newest() -> None:
    items = hourly_series("2020-01-01T00:00:00", 72)
    # the newest is years old: keep-within still keeps the last 2d3h before it (newer than newest - 51h)
    assert kept(items, RetentionPolicy(within="2d3h")) == {f"a{i:04d}" for i in range(72 - 51, 72)}


def test_reasons_are_all_listed() -> None:
    items = hourly_series("2026-01-01T00:00:00", 3)
    d = apply_policy(items, RetentionPolicy(last=1, hourly=1, daily=1, within="1h"))[0]
    assert d.reasons == ["last", "hourly 2026-01-01 02", "daily 2026-01-01", "within 1h"]


def test_no_rule_is_refused_and_durations_parse() -> None:
    with pytest.raises(UsageError):
        apply_policy([("a", 0.0)], RetentionPolicy())
    assert parse_duration("1y2m3w4d5h") == 365 * 86400 + 60 * 86400 + 21 * 86400 + 4 * 86400 + 5 * 3600
    for bad in ("", "5", "2x", "d", "1d 2h"):
        with pytest.raises(UsageError):
            parse_duration(bad)


# -- properties ------------------------------------------------------------------------------------------

_times = st.lists(
    st.integers(min_value=int(ts("2020-01-01T00:00:00")), max_value=int(ts("2027-01-01T00:00:00"))),
    min_size=1,
    max_size=60,
)
_policies = st.builds(
    RetentionPolicy,
    last=st.integers(0, 5),
    hourly=st.integers(0, 5),
    daily=st.integers(0, 5),
    weekly=st.integers(0, 5),
    monthly=st.integers(0, 5),
    yearly=st.integers(0, 3),
    within=st.sampled_from([None, "1h", "2d", "1w3d"]),
).filter(lambda p: not p.empty())


def _items(times: list[int]) -> list[tuple[str, float]]:
    return [(f"s{i:03d}", float(t)) for i, t in enumerate(times)]


@settings(max_examples=300, deadline=None)
@given(_times, _policies)
def test_newest_is_always_kept_and_something_is_kept(times: list[int], policy: RetentionPolicy) -> None:
    items = _items(times)
    decisions = apply_policy(items, policy)
    assert decisions[0].keep
    assert len(decisions) == len(items)


@settings(max_examples=300, deadline=None)
@given(_times, _policies)
def test_policy_is_idempotent(times: list[int], policy: RetentionPolicy) -> None:
    """Pruning what a prune kept removes nothing more (a second cron run is a no-op)."""
    items = _items(times)
    first = {d.key for d in apply_policy(items, policy) if d.keep}
    again = {d.key for d in apply_policy([i for i in items if i[0] in first], policy) if d.keep}
    assert again == first


@settings(max_examples=200, deadline=None)
@given(_times, st.integers(1, 5))
def test_bucket_rule_keeps_one_per_period_at_most_n(times: list[int], n: int) -> None:
    items = _items(times)
    decisions = apply_policy(items, RetentionPolicy(daily=n))
    days = [
        dt.datetime.fromtimestamp(d.ts, dt.UTC).date()
        for d in decisions
        if any(r.startswith("daily ") for r in d.reasons)
    ]
    assert len(days) == len(set(days)) <= n
    distinct = sorted({dt.datetime.fromtimestamp(t, dt.UTC).date() for _, t in items}, reverse=True)
    assert sorted(days, reverse=True) == distinct[:n]
    for d in decisions:  # each kept one is the newest of its day
        if any(r.startswith("daily ") for r in d.reasons):
            same_day = [
                t
                for _, t in items
                if dt.datetime.fromtimestamp(t, dt.UTC).date() == dt.datetime.fromtimestamp(d.ts, dt.UTC).date()
            ]
            assert d.ts == max(same_day)


@settings(max_examples=200, deadline=None)
@given(_times, _policies, _policies)
def test_more_rules_never_keep_less(times: list[int], a: RetentionPolicy, b: RetentionPolicy) -> None:
    """Keeping is monotone in each count: the union of two policies keeps a superset of either."""
    items = _items(times)
    union = RetentionPolicy(
        last=max(a.last, b.last),
        hourly=max(a.hourly, b.hourly),
        daily=max(a.daily, b.daily),
        weekly=max(a.weekly, b.weekly),
        monthly=max(a.monthly, b.monthly),
        yearly=max(a.yearly, b.yearly),
        within=a.within
        if a.within and (not b.within or parse_duration(a.within) >= parse_duration(b.within))
        else b.within,
    )
    both = kept(items, union)
    assert kept(items, a) <= both and kept(items, b) <= both


@settings(max_examples=200, deadline=None)
@given(_times, st.integers(1, 10))
def test_keep_last_is_exactly_the_n_newest(times: list[int], n: int) -> None:
    items = _items(times)
    newest = {k for k, _ in sorted(items, key=lambda kt: (kt[1], kt[0]), reverse=True)[:n]}
    assert kept(items, RetentionPolicy(last=n)) == newest
