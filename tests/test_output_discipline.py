"""One output discipline for every command: JSON logs that are all JSON, exit codes by cause, one number format,
progress that ends on the final counts, and warnings where something is silently different."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from statekit import textfmt

STATEKIT = str(Path(sys.executable).parent / "statekit")


def sk(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_")} | (env or {})
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=full,
                          stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture
def world(tmp_path: Path) -> dict[str, str]:
    """An identity, a key folder of 1,200 files and one archive of it."""
    assert sk("keygen", "-o", str(tmp_path / "id.txt")).returncode == 0
    rec = next(w for w in (tmp_path / "id.txt").read_text().split() if w.startswith("age1"))
    root = tmp_path / "keys"
    for i in range(1200):
        folder = root / "instances" / f"i{i:04d}"
        folder.mkdir(parents=True)
        (folder / "creds.json").write_text(json.dumps({"n": i}))
    archive = tmp_path / "a.statekit"
    assert sk("snapshot", "--files-root", str(root), "--to", str(archive), "-r", rec).returncode == 0
    return {"id": str(tmp_path / "id.txt"), "rec": rec, "root": str(root), "archive": str(archive)}


def test_numbers_look_the_same_everywhere() -> None:
    assert textfmt.count(1_530_000) == "1,530,000" and textfmt.count(12) == "12"
    assert textfmt.counted(1, "finding") == "1 finding" and textfmt.counted(2, "finding") == "2 findings"
    assert textfmt.counted(1_530_000, "key") == "1,530,000 keys"
    assert textfmt.size(812) == "812 B" and textfmt.size(20_378) == "19.9 KiB"
    assert textfmt.duration(0.42) == "0.4s" and textfmt.duration(245) == "4m05s" and textfmt.duration(3720) == "1h02m"


def test_summaries_use_thousands_separators(world: dict[str, str], tmp_path: Path) -> None:
    snap = sk("snapshot", "--files-root", world["root"], "--to", str(tmp_path / "repo"), "-r", world["rec"])
    assert snap.returncode == 0 and "files: 1,200 files" in snap.stdout, snap.stdout
    listed = sk("list", str(tmp_path / "repo"))
    assert "1,200 files" in listed.stdout and "1 archive," in listed.stdout, listed.stdout
    shown = sk("inspect", world["archive"], "-i", world["id"])
    assert "files=1,200" in shown.stdout and "members     1,20" in shown.stdout, shown.stdout
    plan = sk("restore", world["archive"], "-i", world["id"], "--tier", "files", "--target", str(tmp_path / "t"),
              "--dry-run")  # fmt: skip
    assert "create 1,200" in plan.stdout and "and 1,180 more" in plan.stdout, plan.stdout


def test_log_format_json_makes_every_stderr_line_json(world: dict[str, str], tmp_path: Path) -> None:
    Path(world["id"]).chmod(0o644)  # a warning from the key loader
    runs = [
        sk("verify", world["archive"], "-i", world["id"], "--log-format", "json"),  # warning, success
        sk("verify", str(tmp_path / "missing.statekit"), "--log-format", "json"),  # error
        sk("snapshot", "--bogus", "--log-format", "json"),  # usage error from the option parser
        sk(
            "snapshot",
            "--redis-url",
            "redis://127.0.0.1:1/0",
            "--to",
            str(tmp_path / "r"),
            "--no-encryption",
            "--log-format=json",
        ),
    ]
    levels = []
    for proc in runs:
        assert proc.stderr.strip(), proc
        for line in proc.stderr.splitlines():
            doc = json.loads(line)  # every line, not just warnings
            assert {"ts", "level", "message"} <= set(doc)
            levels.append(doc["level"])
    assert {"warning", "error"} <= set(levels)
    assert json.loads(runs[1].stderr.splitlines()[-1])["exit_code"] == runs[1].returncode == 2


def test_exit_codes_by_cause(world: dict[str, str], tmp_path: Path) -> None:
    # an ARCHIVE that is a directory or does not exist is a usage error, never a storage failure
    for bad in (str(tmp_path), str(tmp_path / "nope.statekit")):
        for cmd in ("inspect", "verify"):
            proc = sk(cmd, bad, "-i", world["id"])
            assert proc.returncode == 2 and bad in proc.stderr, (cmd, bad, proc.stderr)
    # init and keygen over an existing file: the same refusal
    init = [sk("init", "-o", str(tmp_path / "c.toml")) for _ in range(2)]
    keygen = sk("keygen", "-o", world["id"])
    assert init[0].returncode == 0 and init[1].returncode == keygen.returncode == 8
    assert "an identity file" in keygen.stderr and "a identity" not in keygen.stderr


def test_a_closed_stdout_is_not_drift(world: dict[str, str], tmp_path: Path) -> None:
    """`statekit restore --dry-run | head -1`: the reader went away before statekit wrote; exit 0, no noise."""
    read, write = os.pipe()
    os.close(read)  # every write now fails with EPIPE, as when `head` has exited
    try:
        proc = subprocess.run([STATEKIT, "restore", world["archive"], "-i", world["id"], "--tier", "files",
                               "--target", str(tmp_path / "t"), "--dry-run"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)  # fmt: skip
    finally:
        os.close(write)
    assert proc.returncode == 0 and proc.stderr == ""
    argv = [STATEKIT, "restore", world["archive"], "-i", world["id"], "--tier", "files", "--target",
            str(tmp_path / "t"), "--dry-run"]  # fmt: skip
    piped = subprocess.run(["bash", "-o", "pipefail", "-c", shlex.join(argv) + " | head -1"], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert piped.returncode == 0 and piped.stdout.startswith("plan (files): create 1,200")


def test_dry_run_plan_lists_changes_first(world: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "t"
    shutil.copytree(world["root"], target)
    (target / "instances" / "i1199" / "creds.json").write_text("changed")
    proc = sk("restore", world["archive"], "-i", world["id"], "--tier", "files", "--target", str(target), "--dry-run")
    lines = proc.stdout.splitlines()[1:]
    assert lines[0].strip() == f"target: {target}", proc.stdout  # the plan names its target first
    items = [ln.strip() for ln in lines[1:] if ln.startswith("  ") and "more" not in ln]
    assert items[0].startswith("~") and "i1199" in items[0], proc.stdout
    assert all(i.startswith("=") for i in items[1:])


def test_passphrase_that_replaces_configured_recipients_warns(world: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "statekit.toml"
    cfg.write_text(f'[archive]\nrecipients = ["{world["rec"]}"]\n[files]\nroot = "{world["root"]}"\n')
    proc = sk("snapshot", "--config", str(cfg), "--to", str(tmp_path / "pp.statekit"),
              env={"STATEKIT_PASSPHRASE": "correct horse"})  # fmt: skip
    assert proc.returncode == 0
    assert re.search(r"warning: STATEKIT_PASSPHRASE replaces the configured \[archive\] recipients", proc.stderr)
    shown = sk("inspect", str(tmp_path / "pp.statekit"), "--json", env={"STATEKIT_PASSPHRASE": "correct horse"})
    assert json.loads(shown.stdout)["encryption"]["type"] == "age-scrypt"


def test_inspect_shows_the_encryption_of_undo_archives(world: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "t"
    shutil.copytree(world["root"], target)
    (target / "instances" / "i0001" / "creds.json").write_text("changed")
    undo_dir = tmp_path / "undo"
    undo_dir.mkdir()
    done = sk("restore", world["archive"], "-i", world["id"], "--tier", "files", "--target", str(target), "--yes",
              "--undo-dir", str(undo_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr
    [undo] = undo_dir.glob("undo-*.statekit")
    shown = sk("inspect", str(undo), "-i", world["id"])
    assert shown.returncode == 0, shown.stderr
    assert "encryption age-x25519" in shown.stdout and "encryption ?" not in shown.stdout


def test_progress_ends_on_the_final_counts(redis_url: str, tmp_path: Path) -> None:
    if shutil.which("script") is None:
        pytest.fail("`script` (util-linux/bsdutils) is needed to give statekit a terminal")
    with redis.Redis.from_url(redis_url) as r:
        r.mset({f"k{i}": b"v" * 50 for i in range(30_000)})
    assert sk("keygen", "-o", str(tmp_path / "id.txt")).returncode == 0
    rec = next(w for w in (tmp_path / "id.txt").read_text().split() if w.startswith("age1"))
    args = [STATEKIT, "snapshot", "--redis-url", redis_url, "--to", str(tmp_path / "repo"), "-r", rec]
    tty = subprocess.run(["script", "-qec", shlex.join(args), "/dev/null"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert tty.returncode == 0, tty.stdout
    frames = [f for f in re.split(r"[\r\n]", tty.stdout) if "items" in f]
    last = frames[-1]
    assert "30,000/30,000 items" in last and "ETA" not in last, frames[-3:]
    [archive] = (tmp_path / "repo").glob("*.statekit")
    restore = [STATEKIT, "restore", str(archive), "-i", str(tmp_path / "id.txt"), "--tier", "redis",
               "--target-url", redis_url, "--flush", "--yes", "--no-undo"]  # fmt: skip
    tty = subprocess.run(["script", "-qec", shlex.join(restore), "/dev/null"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert tty.returncode == 0, tty.stdout
    frames = [f for f in re.split(r"[\r\n]", tty.stdout) if "items" in f]
    assert "30,000/30,000 items" in frames[-1] and " 0 B " not in frames[-1], frames[-3:]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_library_log_records_and_python_warnings_take_statekit_form(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A driver's own log record (psycopg noting an error it ignored while ending a broken COPY) is a detail
    of the one `Error:` line: text mode shows it with -v only, as `warning: …`; a Python warning is one line;
    -q leaves neither; --log-format json has each as a JSON line."""
    import logging
    import warnings

    from statekit.cli._app import App, _stderr_logging

    def emit(**app: object) -> list[str]:
        logging.captureWarnings(False)  # an earlier in-process command of the suite may have captured them
        _stderr_logging(App(log_format=log_format, **app))  # type: ignore[arg-type]
        logging.getLogger("psycopg").warning("error ignored terminating %r: %s", "<Copy>", "connection lost")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("identity file id.txt is accessible by group or others", stacklevel=1)
        return capsys.readouterr().err.splitlines()

    try:
        plain, verbose, quiet = emit(), emit(verbose=1), emit(quiet=True)
    finally:
        logging.captureWarnings(False)
        logging.getLogger().handlers.clear()
    said = "warning: identity file id.txt is accessible by group or others"
    driver = "warning: error ignored terminating '<Copy>': connection lost"
    if log_format == "text":
        assert plain == [said]
        assert verbose == [driver, said]
        assert quiet == []
    else:
        for lines in (plain, verbose, quiet):
            docs = [json.loads(line) for line in lines]
            assert [(d["level"], d["message"]) for d in docs] == [
                ("warning", "error ignored terminating '<Copy>': connection lost"),
                ("warning", "identity file id.txt is accessible by group or others"),
            ]
