"""Progress on a terminal: a live line per tier with items of the expected total, bytes and rate; without a
terminal nothing but the summary line."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

STATEKIT = str(Path(sys.executable).parent / "statekit")


def _recipient(tmp_path: Path) -> str:
    out = subprocess.run([STATEKIT, "keygen", "-o", str(tmp_path / "id.txt")], capture_output=True, text=True)
    return out.stdout.split()[-1]


def test_progress_shows_items_of_total_on_a_terminal_only(redis_url: str, tmp_path: Path) -> None:
    if shutil.which("script") is None:
        pytest.fail("`script` (util-linux/bsdutils) is needed to give statekit a terminal")
    with redis.Redis.from_url(redis_url) as r:
        r.mset({f"k{i}": b"v" for i in range(20_000)})
    rec = _recipient(tmp_path)
    args = [STATEKIT, "snapshot", "--redis-url", redis_url, "--to", str(tmp_path), "-r", rec, "--name", "tty"]
    on_tty = subprocess.run(
        ["script", "-qec", shlex.join(args), "/dev/null"], capture_output=True, text=True, timeout=120
    )
    assert on_tty.returncode == 0, on_tty.stdout
    assert "redis" in on_tty.stdout and "/20,000 items" in on_tty.stdout  # the live line, with the total
    off_tty = subprocess.run([*args, "--name", "pipe"], capture_output=True, text=True, timeout=120)
    assert off_tty.returncode == 0, off_tty.stderr
    assert off_tty.stderr == ""
    assert len(off_tty.stdout.strip().splitlines()) == 1 and "/20,000" not in off_tty.stdout


def test_totals_reach_only_a_progress_that_takes_them() -> None:
    from statekit.model import Progress, ProgressWithTotals, announce_total, wants_totals

    calls: list[tuple[str, int, int]] = []

    def plain(tier: str, items: int, nbytes: int) -> None:
        calls.append((tier, items, nbytes))

    class WithTotals(ProgressWithTotals):
        def __init__(self) -> None:
            self.totals: dict[str, int] = {}

        def __call__(self, tier: str, items: int, nbytes: int) -> None:
            calls.append((tier, items, nbytes))

        def set_total(self, tier: str, total: int) -> None:
            self.totals[tier] = total

    display = WithTotals()
    progresses: list[Progress] = [plain, display]
    assert [wants_totals(p) for p in progresses] == [False, True]
    for p in progresses:
        announce_total(p, "redis", 7)
        p("redis", 1, 2)
    assert display.totals == {"redis": 7} and calls == [("redis", 1, 2), ("redis", 1, 2)]
