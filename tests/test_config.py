"""Configuration: where it comes from, what wins, how a bad file is reported; init and keygen."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from statekit.cli import run
from statekit.config import load_config
from tests.tools import require_tool


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_file_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "statekit.toml", '[archive]\nname = "local"\n')
    write(tmp_path / "env.toml", '[archive]\nname = "from-env"\n')
    write(tmp_path / "flag.toml", '[archive]\nname = "from-flag"\n')
    assert load_config().archive.name == "local"
    monkeypatch.setenv("STATEKIT_CONFIG", str(tmp_path / "env.toml"))
    assert load_config().archive.name == "from-env"
    assert load_config(str(tmp_path / "flag.toml")).archive.name == "from-flag"
    assert load_config(str(tmp_path / "flag.toml")).source == tmp_path / "flag.toml"


def test_no_config_file_means_defaults(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.source is None and cfg.archive.name == "statekit" and cfg.files.include == ["**"]


def test_environment_overrides_file_and_flags_override_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("file-root", "env-root", "flag-root"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.json").write_text("{}")
    write(tmp_path / "statekit.toml", '[files]\nroot = "file-root"\nskip_unreadable = false\n[redis]\nscan_count = 5\n')
    monkeypatch.setenv("STATEKIT_FILES_ROOT", "env-root")
    monkeypatch.setenv("STATEKIT_FILES_SKIP_UNREADABLE", "yes")
    monkeypatch.setenv("STATEKIT_REDIS_SCAN_COUNT", "77")
    monkeypatch.setenv("STATEKIT_FILES_EXCLUDE", "a/**, b/**")
    cfg = load_config()
    assert cfg.files.root == "env-root" and cfg.files.skip_unreadable is True
    assert cfg.redis.scan_count == 77 and cfg.files.exclude == ["a/**", "b/**"]

    def archived_root(*flags: str) -> str:
        code, out, err = cli(capsys, "snapshot", "--to", str(tmp_path / "out.statekit"), "--no-encryption",
                             "--json", *flags)  # fmt: skip
        assert code == 0, err
        (tmp_path / "out.statekit").unlink()
        (tmp_path / "out.statekit.meta.json").unlink(missing_ok=True)
        return Path(json.loads(out)["tiers"][0]["details"]["root"]).name

    assert archived_root() == "env-root"
    assert archived_root("--files-root", "flag-root") == "flag-root"


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATEKIT_REDIS_SCAN_COUNT", "lots")
    with pytest.raises(Exception, match="STATEKIT_REDIS_SCAN_COUNT"):
        load_config()


@pytest.mark.parametrize(
    ("text", "must_name"),
    [
        ("[files\nroot = 1\n", "TOML syntax error"),
        ("[files]\nroots = '/x'\n", "files.roots"),
        ("[files]\nskip_unreadable = 'yes'\n", "files.skip_unreadable"),
        ("[redis]\nscan_count = '10'\n", "redis.scan_count"),
        ("[archive]\nrecipients = [1, 2]\n", "archive.recipients"),
        ("files = 3\n", "[files]"),
        ("bogus = 1\n", "bogus"),
        ("[repository]\nlock_wait = true\n", "repository.lock_wait"),
    ],
)
def test_bad_config_file_is_exit_2_with_one_line(
    text: str, must_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path / "bad.toml", text)
    code, out, err = cli(capsys, "snapshot", "--config", str(cfg), "--to", ".", "--no-encryption")
    assert code == 2
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(cfg) in err and must_name in err
    code, out, err = cli(capsys, "snapshot", "--config", str(cfg), "--to", ".", "--no-encryption", "--json")
    assert code == 2 and json.loads(out)["error"]["kind"] == "config"


def test_missing_config_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "snapshot", "--config", "nope.toml", "--to", ".", "--no-encryption")
    assert code == 2 and "nope.toml" in err


def test_init_writes_a_starter_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "init")
    assert code == 0, err
    cfg = load_config()
    assert cfg.source == Path("statekit.toml") and cfg.archive.compression_level == 1
    assert Path("statekit.toml").stat().st_mode & 0o777 == 0o600
    code, _, err = cli(capsys, "init")
    assert code != 0 and "already exists" in err
    assert cli(capsys, "init", "--force")[0] == 0


def test_keygen_writes_0600_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = cli(capsys, "keygen", "-o", "id.txt")
    assert code == 0, err
    assert Path("id.txt").stat().st_mode & 0o777 == 0o600
    first = Path("id.txt").read_text()
    code, _, err = cli(capsys, "keygen", "-o", "id.txt")
    assert code == 8 and "already exists" in err
    assert Path("id.txt").read_text() == first
    code, _, err = cli(capsys, "keygen", "-o", "id.txt", "--force")
    assert code == 0 and Path("id.txt").read_text() != first
    assert Path("id.txt").stat().st_mode & 0o777 == 0o600


def test_keygen_output_works_with_age(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("age", "age-keygen")
    code, out, _ = cli(capsys, "keygen", "-o", "id.txt", "--json")
    assert code == 0
    recipient = json.loads(out)["recipient"]
    derived = subprocess.run(["age-keygen", "-y", "id.txt"], capture_output=True, text=True, check=True).stdout
    assert derived.strip() == recipient
    secret = subprocess.run(["age", "-r", recipient], input=b"hello", capture_output=True, check=True).stdout
    plain = subprocess.run(["age", "-d", "-i", "id.txt"], input=secret, capture_output=True, check=True).stdout
    assert plain == b"hello"
    # And the other way round: an age-keygen identity opens a statekit archive.
    subprocess.run(["age-keygen", "-o", "theirs.txt"], capture_output=True, check=True)
    theirs = subprocess.run(["age-keygen", "-y", "theirs.txt"], capture_output=True, text=True, check=True).stdout
    os.mkdir("keys")
    Path("keys/k.json").write_text("{}")
    code, _, err = cli(capsys, "snapshot", "--files-root", "keys", "--to", "a.statekit", "-r", theirs.strip())
    assert code == 0, err
    assert cli(capsys, "verify", "a.statekit", "-i", "theirs.txt")[0] == 0
