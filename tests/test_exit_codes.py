"""One test per exit code in statekit.errors.EXIT_CODES that a user can provoke, through the CLI only.

Each asserts the code, the one-line `Error: …` on stderr, and the JSON error document with --json.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from statekit.errors import EXIT_CODES

STATEKIT = str(Path(sys.executable).with_name("statekit"))


def sk(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_error(out: subprocess.CompletedProcess[str], code: int, kind: str | None = None) -> dict[str, object]:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if line.startswith("Error: ")], out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is False and doc["schema"] == "statekit.cli/v1" and doc["error"]["exit_code"] == code
    if kind:
        assert doc["error"]["kind"] == kind
    return dict(doc["error"])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A key pair, a files root with one file, an empty repository and one archive in it."""
    assert sk("keygen", "-o", str(tmp_path / "id.txt")).returncode == 0
    rec = next(w for w in (tmp_path / "id.txt").read_text().split() if w.startswith("age1"))
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.json").write_text("{}")
    repo = tmp_path / "repo"
    repo.mkdir()
    out = sk("snapshot", "--files-root", str(root), "--to", str(repo), "-r", rec, "--json")
    assert out.returncode == 0, out.stderr
    return {"id": str(tmp_path / "id.txt"), "rec": rec, "root": str(root), "repo": str(repo),
            "archive": json.loads(out.stdout)["path"]}  # fmt: skip


def test_every_code_is_in_help() -> None:
    out = sk("snapshot", "--help")
    for code, _ in EXIT_CODES:
        assert f"  {code:<4} " in out.stdout


def test_0_success_with_json(env: dict[str, str]) -> None:
    out = sk("list", env["repo"], "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["ok"] is True


def test_1_drift(tmp_path: Path, env: dict[str, str]) -> None:
    # two archives of different file sets differ: `diff` reports drift
    other = tmp_path / "other"
    other.mkdir()
    (other / "b.json").write_text("{}")
    second = sk("snapshot", "--files-root", str(other), "--to", str(tmp_path / "b.statekit"), "-r", env["rec"])
    assert second.returncode == 0, second.stderr
    out = sk("diff", env["archive"], str(tmp_path / "b.statekit"), "-i", env["id"], "--json")
    assert out.returncode == 1, out.stderr


def test_2_usage(env: dict[str, str]) -> None:
    assert_error(sk("prune", env["repo"], "--json"), 2, "usage")  # no retention rule
    assert_error(sk("list", "--no-such-flag", "--json"), 2, "usage")


def test_3_corrupt_archive(tmp_path: Path, env: dict[str, str]) -> None:
    data = bytearray(Path(env["archive"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.statekit"
    bad.write_bytes(bytes(data))
    assert_error(sk("verify", str(bad), "-i", env["id"], "--json"), 3, "corrupt-archive")


def test_4_wrong_identity(tmp_path: Path, env: dict[str, str]) -> None:
    assert sk("keygen", "-o", str(tmp_path / "other.txt")).returncode == 0
    assert_error(sk("verify", env["archive"], "-i", str(tmp_path / "other.txt"), "--json"), 4)


def test_5_tier_unreachable(tmp_path: Path, env: dict[str, str]) -> None:
    out = sk("snapshot", "--files-root", str(tmp_path / "missing"), "--to", env["repo"], "-r", env["rec"], "--json")
    assert_error(out, 5, "tier-unavailable")


# Without CAP_DAC_OVERRIDE even root gets EACCES on a mode-000 directory: a real unlistable folder.
_NO_DAC = ("setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search")


def test_6_tier_failed(tmp_path: Path, env: dict[str, str]) -> None:
    import os
    import shutil

    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.fail("running as root: setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE")
        prefix = (*_NO_DAC, "--")
    locked = Path(env["root"]) / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        args = ("snapshot", "--files-root", env["root"], "--to", env["repo"], "-r", env["rec"], "--json")
        out = subprocess.run([*prefix, STATEKIT, *args], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)  # fmt: skip
        assert_error(out, 6, "tier-failed")
        assert "locked" in out.stderr
    finally:
        locked.chmod(0o700)


def test_7_lock_held(env: dict[str, str]) -> None:
    locks = Path(env["repo"]) / "locks"
    locks.mkdir(exist_ok=True)
    now = time.time()
    (locks / "statekit.lock").write_text(json.dumps({"lock_id": "b" * 32, "name": "statekit", "host": "db-backup-2",
                                                     "pid": 7, "started_at": now, "heartbeat_at": now}))  # fmt: skip
    out = sk("snapshot", "--files-root", env["root"], "--to", env["repo"], "-r", env["rec"], "--json")
    assert "db-backup-2 pid 7" in str(assert_error(out, 7, "lock-held")["message"])


def test_8_refused_without_confirmation(tmp_path: Path, env: dict[str, str]) -> None:
    target = tmp_path / "t"
    target.mkdir()
    out = sk("restore", env["archive"], "--tier", "files", "--target", str(target), "-i", env["id"], "--json")
    assert_error(out, 8, "refused")


def test_9_storage(tmp_path: Path, env: dict[str, str]) -> None:
    out = sk("snapshot", "--files-root", env["root"], "--to", str(tmp_path / "no" / "dir" / "a.statekit"),
             "-r", env["rec"], "--json")  # fmt: skip
    assert_error(out, 9, "storage")
    assert_error(sk("list", str(tmp_path / "nowhere"), "--json"), 9, "storage")


def test_10_hook_failed(env: dict[str, str]) -> None:
    out = sk("snapshot", "--files-root", env["root"], "--to", env["repo"], "-r", env["rec"], "--pre-hook", "false",
             "--json")  # fmt: skip
    assert_error(out, 10, "hook-failed")


def test_11_signature(tmp_path: Path, env: dict[str, str]) -> None:
    made = sk("keygen", "--sign", "-o", str(tmp_path / "sign.key"), "--json")
    if made.returncode != 0:
        pytest.skip(f"signing keys not available: {made.stderr.strip()}")
    public = json.loads(made.stdout)["public_key"]
    # the archive from the fixture has no signature
    assert_error(sk("verify", env["archive"], "-i", env["id"], "--signer", public, "--json"), 11, "bad-signature")
    signed = sk("snapshot", "--files-root", env["root"], "--to", str(tmp_path / "s.statekit"), "-r", env["rec"],
                "--sign-key", str(tmp_path / "sign.key"))  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    ok = sk("verify", str(tmp_path / "s.statekit"), "-i", env["id"], "--signer", public, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["signature"]["public_key"] == public


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_13_newer_format(tmp_path: Path, env: dict[str, str]) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "format.json", json.dumps({"format": "statekit-archive", "format_version": 99}).encode())
    future = tmp_path / "future.statekit"
    future.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    assert_error(sk("verify", str(future), "--json"), 13, "unsupported-format")


def test_130_interrupted_by_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    started = tmp_path / "hook-started"
    proc = subprocess.Popen([STATEKIT, "snapshot", "--files-root", env["root"], "--to", env["repo"], "-r", env["rec"],
                             "--pre-hook", f"touch {started}; sleep 20", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    lock = Path(env["repo"]) / "locks" / "statekit.lock"
    deadline = time.monotonic() + 60  # only turns a hang into a failure
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lock.exists() and proc.poll() is None  # inside the lock, in its pre-hook
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert json.loads(stdout)["error"]["kind"] == "interrupted"
    assert not lock.exists()  # released on the way out
    assert len(list(Path(env["repo"]).glob("*.statekit"))) == 1  # only the fixture's archive
