"""Repository commands as a cron job sees them: one summary line without a TTY, JSON that parses, errors as
JSON, and listing without an identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

STATEKIT = str(Path(sys.executable).with_name("statekit"))


def sk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_cron_output_json_everywhere_and_prune_reasons(tmp_path: Path) -> None:
    assert sk("keygen", "-o", str(tmp_path / "id.txt")).returncode == 0
    rec = next(w for w in (tmp_path / "id.txt").read_text().split() if w.startswith("age1"))
    root = tmp_path / "src"
    root.mkdir()
    (root / "x.json").write_text("{}")
    os.symlink("/etc/passwd", root / "link")  # gives the files tier a warning to report
    repo = tmp_path / "repo"
    repo.mkdir()
    snap = sk("snapshot", "--files-root", str(root), "--to", str(repo), "-r", rec)
    assert snap.returncode == 0, snap.stderr
    assert snap.stdout.count("\n") == 1 and snap.stdout.startswith(f"snapshot {repo}/statekit-")
    assert snap.stderr == ""  # not a TTY: no progress, warnings only counted in the summary line
    assert "1 warning, -v shows them" in snap.stdout
    assert "warning:" in sk("snapshot", "--files-root", str(root), "--to", str(repo), "-r", rec, "-v").stderr
    quiet = sk("snapshot", "--files-root", str(root), "--to", str(repo), "-r", rec, "-q", "--name", "other")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""

    # one cron line: snapshot + prune, with the sidecar and signature of pruned archives removed too
    archives = sorted(repo.glob("statekit-*.statekit"))
    (archives[0].parent / (archives[0].name + ".sig")).write_text("sig")
    both = sk("snapshot", "--files-root", str(root), "--to", str(repo), "-r", rec, "--prune", "--keep-last", "1",
              "--json")  # fmt: skip
    assert both.returncode == 0, both.stderr
    pruned = json.loads(both.stdout)["prune"]
    assert len(pruned["groups"]) == 1 and pruned["groups"][0]["name"] == "statekit"  # only this name
    assert len(pruned["groups"][0]["keep"]) == 1 and pruned["groups"][0]["keep"][0]["reasons"] == ["last"]
    assert sorted(p.name for p in repo.glob("statekit-*")) == sorted(
        [Path(json.loads(both.stdout)["path"]).name, Path(json.loads(both.stdout)["path"]).name + ".meta.json"]
    )

    listed = sk("list", str(repo), "--json")  # no identity given
    doc = json.loads(listed.stdout)
    assert doc["schema"] == "statekit.cli/v1" and doc["command"] == "list"
    assert {a["name"] for a in doc["archives"]} == {"statekit", "other"}
    assert all(a["tiers"]["files"]["files"] == 1 for a in doc["archives"])
    human = sk("list", str(repo))
    assert "2 archives," in human.stdout and "files: 1 files" in human.stdout

    dry = sk("prune", str(repo), "--keep-daily", "1", "--dry-run", "--json")
    assert dry.returncode == 0 and json.loads(dry.stdout)["dry_run"] is True
    text = sk("prune", str(repo), "--keep-daily", "1", "--dry-run")
    assert "daily 20" in text.stdout and "keep" in text.stdout
    assert json.loads(sk("unlock", str(repo), "--json").stdout)["removed"] == []
    err = sk("prune", str(repo), "--keep-within", "3x", "--json")
    assert err.returncode == 2 and json.loads(err.stdout)["error"]["kind"] == "usage"
