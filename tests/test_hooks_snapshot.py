"""--pre-hook / --post-hook on `statekit snapshot`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

STATEKIT = str(Path(sys.executable).with_name("statekit"))


def sk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def args(tmp_path: Path) -> list[str]:
    assert sk("keygen", "-o", str(tmp_path / "id.txt")).returncode == 0
    rec = next(w for w in (tmp_path / "id.txt").read_text().split() if w.startswith("age1"))
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.json").write_text("{}")
    (tmp_path / "repo").mkdir()
    return ["snapshot", "--files-root", str(root), "--to", str(tmp_path / "repo"), "-r", rec]


def test_failing_pre_hook_aborts_cleanly_without_archive(tmp_path: Path, args: list[str]) -> None:
    out = sk(*args, "--pre-hook", "echo flushing; echo 'app refused' >&2; exit 4", "--json")
    assert out.returncode == 10
    err = json.loads(out.stdout)["error"]
    assert err["kind"] == "hook-failed" and "exited with 4" in err["message"] and "app refused" in err["message"]
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    repo = tmp_path / "repo"
    assert [p.name for p in repo.iterdir()] == ["locks"]  # no archive, no temporary file, lock released
    assert not list((repo / "locks").iterdir())


def test_post_hook_sees_the_result_and_archive(tmp_path: Path, args: list[str]) -> None:
    log = tmp_path / "hook.log"
    post = f'echo "$STATEKIT_HOOK $STATEKIT_RESULT $STATEKIT_EXIT_CODE $STATEKIT_ARCHIVE" >> {log}'
    ok = sk(*args, "--pre-hook", f"echo pre >> {log}", "--post-hook", post)
    assert ok.returncode == 0, ok.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "pre"
    hook, result, code, archive = lines[1].split()
    assert (hook, result, code) == ("post", "success", "0") and Path(archive).is_file()
    # after a failure (the files root is gone) the post-hook still runs and is told so
    bad = sk(*[a if not a.endswith("/src") else str(tmp_path / "gone") for a in args], "--post-hook", post)
    assert bad.returncode == 5
    assert log.read_text().splitlines()[-1].split()[:3] == ["post", "failure", "5"]


def test_hook_timeout_stops_the_hook(tmp_path: Path, args: list[str]) -> None:
    """The hook would sleep for an hour: the run gives up after the timeout and the hook's processes are gone
    when it exits (sk() fails the test if the run itself hangs)."""
    pids = tmp_path / "hook.pids"
    out = sk(*args, "--pre-hook", f"sleep 3600 & echo $! > {pids}; echo $$ >> {pids}; wait", "--hook-timeout", "0.5")
    assert out.returncode == 10
    assert "timed out after 0.5s" in out.stderr
    for pid in map(int, pids.read_text().split()):
        _wait_until_dead(pid)


def _wait_until_dead(pid: int, timeout: float = 30) -> None:
    """A signalled process dies (or lingers as a zombie) soon after the signal; one that was never signalled
    would outlive the timeout, which is there only to turn that into a failure."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + timeout
    while stat.exists():
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        assert time.monotonic() < deadline, f"the hook's process {pid} is still running"
        time.sleep(0.02)


def test_failing_post_hook_exits_10_but_keeps_the_archive(tmp_path: Path, args: list[str]) -> None:
    out = sk(*args, "--post-hook", "exit 1")
    assert out.returncode == 10
    assert len(list((tmp_path / "repo").glob("*.statekit"))) == 1
