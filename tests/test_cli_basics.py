"""What every command shares: help with EXIT STATUS, one-line errors, JSON errors, fail-closed defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from statekit.archive.keys import generate_identity
from statekit.cli import cli as root_group
from statekit.cli import run
from statekit.cli._app import COMMAND_MODULES
from statekit.model import is_glibc

STATEKIT = str(Path(sys.executable).parent / "statekit")
IDENTITY = generate_identity()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, (*prefix, name)))
    return out


COMMANDS = _commands(root_group)


def test_the_expected_commands_exist() -> None:
    names = {c[0] for c in COMMANDS}
    assert {"init", "keygen", "snapshot", "verify", "inspect", "restore", "audit", "reconcile"} <= names


def test_the_lazy_command_map_names_every_command_and_its_module() -> None:
    # Importing every command module registers everything there is; the map must name exactly that.
    import importlib

    for module in set(COMMAND_MODULES.values()):
        importlib.import_module(f"statekit.cli.{module}")
    registered = {name: cmd.callback.__module__ for name, cmd in root_group.commands.items() if cmd.callback}
    assert registered == {name: f"statekit.cli.{module}" for name, module in COMMAND_MODULES.items()}


def test_a_command_does_not_import_the_others() -> None:
    code = (
        "import sys; from statekit.cli import run; run(['audit', '--help']);"
        "print(sorted(m for m in sys.modules if m.startswith('statekit.cli.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = out.strip().splitlines()[-1]
    assert "statekit.cli.audit_cmd" in loaded and "statekit.cli.repo_cmd" not in loaded


@pytest.mark.parametrize("command", [(), *COMMANDS], ids=lambda c: " ".join(c) or "statekit")
def test_every_command_has_help_with_exit_status(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, *command, "--help")
    assert code == 0
    assert "EXIT STATUS" in out


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    root = tmp_path / "keys"
    root.mkdir()
    (root / "creds.json").write_text("{}")
    return root


def test_errors_are_one_line_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (
        ["verify", "missing.statekit"],
        ["snapshot", "--to", "."],
        ["restore", "missing.statekit", "--tier", "files", "--yes"],
        ["snapshot", "--bogus-flag"],
        ["inspect", str(tmp_path)],
    ):
        code, out, err = cli(capsys, *args)
        assert code != 0, args
        assert err.startswith("Error: ") and err.count("\n") == 1, (args, err)
        assert "Traceback" not in out + err


def test_json_error_document(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = cli(capsys, "verify", "missing.statekit", "--json")
    assert code == 2
    doc = json.loads(out)
    assert doc["ok"] is False and doc["error"]["exit_code"] == 2 and "missing.statekit" in doc["error"]["message"]


def test_snapshot_refuses_without_a_key(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "snapshot", "--files-root", str(keys), "--to", "a.statekit")
    assert code == 8 and "--no-encryption" in err
    assert not list(Path(".").glob("*.statekit*")) and not [p for p in Path(".").iterdir() if p.name.endswith(".tmp")]
    code, _, err = cli(capsys, "snapshot", "--files-root", str(keys), "--to", "a.statekit", "--no-encryption")
    assert code == 0, err
    assert Path("a.statekit").read_bytes()[:4] == b"\x28\xb5\x2f\xfd"


def test_no_passphrase_on_the_command_line(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "snapshot", "--files-root", str(keys), "--to", ".", "--passphrase", "hunter2")
    assert code == 2 and "No such option" in err
    assert "hunter2" not in err


def test_restore_without_tty_and_without_yes_refuses(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ident = tmp_path / "id.txt"
    ident.write_text(IDENTITY.to_string() + "\n")
    ident.chmod(0o600)
    code, _, err = cli(capsys, "snapshot", "--files-root", str(keys), "--to", "a.statekit",
                       "-r", IDENTITY.recipient().to_string())  # fmt: skip
    assert code == 0, err
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run(
        [STATEKIT, "restore", "a.statekit", "-i", str(ident), "--tier", "files", "--target", "out"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: ") and "--yes" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no target dir, no undo archive


def test_world_readable_identity_draws_a_warning(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ident = tmp_path / "id.txt"
    ident.write_text(IDENTITY.to_string() + "\n")
    ident.chmod(0o644)
    assert cli(capsys, "snapshot", "--files-root", str(keys), "--to", "a.statekit",
               "-r", IDENTITY.recipient().to_string())[0] == 0  # fmt: skip
    code, _, err = cli(capsys, "verify", "a.statekit", "-i", str(ident))
    assert code == 0
    assert "warning:" in err and "chmod 600" in err
    ident.chmod(0o600)
    code, _, err = cli(capsys, "verify", "a.statekit", "-i", str(ident))
    assert code == 0 and "warning" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and "statekit" in out


def test_no_args_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    _code, out, err = cli(capsys)
    assert "Usage" in out + err and "Traceback" not in out + err


_OPENSSL_MODULES = ("_ssl", "_hashlib", "cryptography")


def _ia32cap_of_the_command(env_value: str | None) -> list[str]:
    """In a fresh interpreter: OPENSSL_ia32cap after `import statekit.cli`, which OpenSSL modules that import
    loaded, and (whether OpenSSL is loaded, OPENSSL_ia32cap) once the entry point ran a command that loads it."""
    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_ia32cap"}
    if env_value is not None:
        env["OPENSSL_ia32cap"] = env_value
    code = (
        "import os, sys\n"
        "import statekit, statekit.cli\n"
        "print(os.environ.get('OPENSSL_ia32cap', '<unset>'))\n"
        f"print(','.join(m for m in {_OPENSSL_MODULES!r} if m in sys.modules) or '<none>')\n"
        "sys.argv = ['statekit', 'inspect', '--help']\n"
        "try:\n"
        "    statekit.cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        f"loaded = any(m in sys.modules for m in {_OPENSSL_MODULES!r})\n"
        "print(loaded, os.environ.get('OPENSSL_ia32cap', '<unset>'), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return [*proc.stdout.splitlines()[:2], proc.stderr.strip()]


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "amd64"), reason="x86-64 only")
def test_openssl_stays_off_avx512_unless_the_user_says_otherwise() -> None:
    # importing statekit changes nothing; the command's entry point sets the variable before OpenSSL is loaded
    assert _ia32cap_of_the_command(None) == ["<unset>", "<none>", "True :~0xd0230000"]
    assert _ia32cap_of_the_command("~0x200000000000000") == [
        "~0x200000000000000",
        "<none>",
        "True ~0x200000000000000",
    ]


_PAGE_FAULT_PROBE = """
import resource, sys
import statekit.cli
sys.argv = ["statekit", "--version"]
try:
    statekit.cli.main()
except SystemExit:
    pass

def buffers():
    # what a stream does: a 1 MiB buffer made, part of it handed on, the buffer dropped, the next one made
    for _ in range(100):
        block = b"x" * (1 << 20)
        kept = block[: 1 << 19]
        del block

buffers()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buffers()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not is_glibc(), reason="glibc's malloc only")
def test_the_command_reuses_stream_buffers_without_page_faults() -> None:
    # after the entry point ran, 100 fresh 1 MiB buffers come out of malloc's heap: no page is mapped and zeroed
    # again for each (glibc's defaults unmap and trim them, a few hundred faults for the same loop)
    proc = subprocess.run([sys.executable, "-c", _PAGE_FAULT_PROBE], capture_output=True, text=True, check=True)
    assert int(proc.stdout.strip().splitlines()[-1]) < 50, proc.stdout


def test_malloc_is_left_alone_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit import model

    monkeypatch.setattr(os, "confstr", lambda name: "musl 1.2.4")
    assert model.tune_malloc() is False

    def no_confstr(name: str) -> str:
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(os, "confstr", no_confstr)
    assert model.tune_malloc() is False
    monkeypatch.undo()
    assert model.tune_malloc() is is_glibc()


def test_python_dash_m_statekit_is_the_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "statekit", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("statekit"), proc.stdout + proc.stderr
