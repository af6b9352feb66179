"""A corpus of bad inputs, one table: each must give a one-line error naming the problem, its documented exit code,
no traceback, and write nothing.

Covered: empty, truncated, corrupted, non-archive and future-format files; wrong identity and passphrase; hostile
members (path traversal, links, devices, duplicates, unlisted members); broken config files; malformed URLs;
unreachable hosts; conflicting flags.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from statekit.archive.age import encrypt_bytes
from statekit.archive.keys import X25519Recipient, generate_identity
from tests.servers import free_port

STATEKIT = str(Path(sys.executable).parent / "statekit")
PASSPHRASE = "correct horse battery staple"


def run_cli(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed `statekit`, without the developer's STATEKIT_* settings."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_") or k.startswith("STATEKIT_TEST")}
    full.update(env)
    return subprocess.run(
        [STATEKIT, *args], capture_output=True, text=True, cwd=cwd, env=full, timeout=60, stdin=subprocess.DEVNULL
    )


# -- crafted archives -------------------------------------------------------------------------------------------


def _tar_member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    info.type = kind
    info.mode = 0o600
    info.linkname = link
    body = data if info.size else b""
    pad = b"\0" * (-len(body) % 512)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + body + pad


def _entry(name: str, data: bytes) -> dict[str, object]:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": "0600", "mtime": 0}


def craft(
    members: list[tuple[str, bytes]],
    *,
    specials: list[bytes] = (),  # type: ignore[assignment]
    listed: list[tuple[str, bytes]] | None = None,
    fmt: dict[str, object] | None = None,
    after_manifest: bytes = b"",
    recipient: X25519Recipient | None = None,
) -> bytes:
    """A statekit-shaped archive whose content we choose, hostile parts included; `listed` overrides what
    MANIFEST.json lists (default: every regular member, with its real size and hash)."""
    fmt_doc = json.dumps(fmt or {"format": "statekit-archive", "format_version": 1, "snapshot_id": "x"}).encode()
    snap = json.dumps({"format": "statekit-archive", "format_version": 1, "kind": "snapshot",
                       "tiers": [{"tier": "files", "counts": {}}]}).encode()  # fmt: skip
    regular = [("format.json", fmt_doc), *members, ("snapshot.json", snap)]
    manifest = {
        "format": "statekit-archive",
        "format_version": 1,
        "snapshot_id": "x",
        "members": [_entry(n, d) for n, d in (listed if listed is not None else regular)],
        "totals": {},
    }
    stream = b"".join(_tar_member(n, d) for n, d in regular[:-1]) + b"".join(specials)
    stream += _tar_member("snapshot.json", snap)
    stream += _tar_member("MANIFEST.json", json.dumps(manifest).encode()) + after_manifest + b"\0" * 1024
    compressed = zstandard.ZstdCompressor(write_checksum=True).compress(stream)
    return encrypt_bytes(compressed, [recipient]) if recipient else compressed


# -- the shared state every case starts from --------------------------------------------------------------------


@dataclass
class World:
    """Keys and archives made once for the module."""

    base: Path
    identity: Path
    recipient: str
    other_identity: Path
    good: Path  # encrypted to `recipient`, files tier
    plain: Path  # --no-encryption
    scrypt: Path  # passphrase-encrypted
    root: Path  # the files root the archives came from


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("world")
    env = {"HOME": str(base)}
    ident = generate_identity()
    identity = base / "id.txt"
    identity.write_text(ident.to_string() + "\n")
    identity.chmod(0o600)
    other = base / "other.txt"
    other.write_text(generate_identity().to_string() + "\n")
    other.chmod(0o600)
    root = base / "root"
    (root / "inst-1").mkdir(parents=True)
    (root / "inst-1" / "creds.json").write_text('{"noise": "AAAA"}')
    (root / "inst-1" / "pre-key-1.json").write_bytes(os.urandom(3000))
    recipient = ident.recipient().to_string()
    for name, extra, extra_env in [
        ("good.statekit", ["-r", recipient], {}),
        ("plain.statekit", ["--no-encryption"], {}),
        ("scrypt.statekit", [], {"STATEKIT_PASSPHRASE": PASSPHRASE}),
    ]:
        proc = run_cli(["snapshot", "--files-root", str(root), "--to", str(base / name), *extra], cwd=base,
                       env={**env, **extra_env})  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    return World(base, identity, recipient, other, base / "good.statekit", base / "plain.statekit",
                 base / "scrypt.statekit", root)  # fmt: skip


@dataclass
class Ctx:
    """What a case builds on: the shared world and a fresh, otherwise empty working directory."""

    world: World
    work: Path
    env: dict[str, str] = field(default_factory=dict)

    def file(self, name: str, data: bytes | str) -> str:
        path = self.work / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def secret_file(self, name: str, data: str) -> str:
        path = self.file(name, data)
        os.chmod(path, 0o600)
        return path

    def mutated(self, src: Path, change: Callable[[bytearray], bytes | bytearray]) -> str:
        return self.file("bad.statekit", bytes(change(bytearray(src.read_bytes()))))

    def verify(self, path: str, *extra: str) -> list[str]:
        return ["verify", path, "-i", str(self.world.identity), *extra]

    def restore_files(self, path: str) -> list[str]:
        return ["restore", path, "--tier", "files", "--target", str(self.work / "target"), "-i",
                str(self.world.identity), "--yes", "--no-undo"]  # fmt: skip

    def snapshot(self, *extra: str) -> list[str]:
        out = self.work / "out"
        out.mkdir(exist_ok=True)
        return ["snapshot", "--to", str(out), *extra]

    def config(self, text: str) -> str:
        return self.file("statekit.toml", text)


def _flip(at: float) -> Callable[[bytearray], bytearray]:
    def change(data: bytearray) -> bytearray:
        data[int(len(data) * at)] ^= 0x40
        return data

    return change


def _flip_mac(data: bytearray) -> bytearray:
    at = data.index(b"\n--- ") + 6
    data[at] = ord("A") if data[at] != ord("A") else ord("B")
    return data


def _recipient(ctx: Ctx) -> X25519Recipient:
    return X25519Recipient.from_string(ctx.world.recipient)


@dataclass
class Case:
    """One bad input: how to build the command line, the exit code it must give, words the error must contain."""

    id: str
    build: Callable[[Ctx], list[str]]
    code: int
    needle: str
    shows_plan: bool = False  # a refused restore prints its plan first, then the one error line


FILES = "files"
OK_FILE = [("files/a.json", b"{}")]
# fmt: off
CASES: list[Case] = [
    # -- not an archive, or a damaged one ------------------------------------------------------------------------
    Case("empty-file", lambda c: c.verify(c.file("e.statekit", b"")), 3, "empty"),
    Case("missing-file", lambda c: c.verify(str(c.work / "nope.statekit")), 2, "no such archive"),
    Case("directory", lambda c: c.verify(str(c.work)), 2, "is a directory"),
    Case("random-bytes", lambda c: c.verify(c.file("r.statekit", os.urandom(5000))), 3, "not a statekit archive"),
    Case("text-file", lambda c: c.verify(c.file("t.statekit", "hello\n" * 100)), 3, "not a statekit archive"),
    Case("truncated-half", lambda c: c.verify(c.mutated(c.world.good, lambda d: d[: len(d) // 2])), 3, "truncated"),
    Case("truncated-1-byte", lambda c: c.verify(c.mutated(c.world.good, lambda d: d[:-1])), 3, "archive"),
    Case("truncated-to-header", lambda c: c.verify(c.mutated(c.world.good, lambda d: d[:150])), 3, "archive"),
    Case("flipped-payload-byte", lambda c: c.verify(c.mutated(c.world.good, _flip(0.7))), 3, "archive"),
    Case("flipped-header-mac", lambda c: c.verify(c.mutated(c.world.good, _flip_mac)), 3, "header"),
    Case("trailing-garbage", lambda c: c.verify(c.mutated(c.world.good, lambda d: d + b"x" * 100)), 3, "archive"),
    Case("plain-truncated", lambda c: c.verify(c.mutated(c.world.plain, lambda d: d[: len(d) - 40])), 3, "archive"),
    Case("plain-flipped-byte", lambda c: c.verify(c.mutated(c.world.plain, _flip(0.5))), 3, "archive"),
    Case("zstd-of-text", lambda c: c.verify(c.file("z.statekit", zstandard.compress(b"hello" * 999))), 3,
         "archive"),
    Case("zstd-of-foreign-tar", lambda c: c.verify(c.file("f.statekit", zstandard.compress(
        _tar_member("etc/passwd", b"root:x:0:0") + b"\0" * 1024))), 3, "format.json"),
    Case("age-of-random", lambda c: c.verify(c.file("a.statekit", encrypt_bytes(os.urandom(999), [_recipient(c)]))),
         3, "compression"),
    Case("future-format", lambda c: c.verify(c.file("v.statekit", craft(OK_FILE, recipient=_recipient(c),
         fmt={"format": "statekit-archive", "format_version": 99}))), 13, "newer"),
    Case("foreign-format-json", lambda c: c.verify(c.file("o.statekit", craft(OK_FILE, fmt={"format": "other"}))),
         3, "another format"),
    Case("garbage-format-version", lambda c: c.verify(c.file("g.statekit", craft(OK_FILE, fmt={
        "format": "statekit-archive", "format_version": "one"}))), 3, "format_version"),
    # -- keys ----------------------------------------------------------------------------------------------------
    Case("wrong-identity", lambda c: ["verify", str(c.world.good), "-i", str(c.world.other_identity)], 4,
         "identit"),
    Case("no-identity", lambda c: ["verify", str(c.world.good)], 4, "identit"),
    Case("wrong-passphrase", lambda c: (c.env.update(STATEKIT_PASSPHRASE="not the passphrase"),
         ["verify", str(c.world.scrypt)])[1], 4, "passphrase"),
    Case("identity-file-garbage", lambda c: ["verify", str(c.world.good), "-i", c.secret_file("id", "garbage\n")], 4,
         "line 1"),
    Case("identity-file-missing", lambda c: ["verify", str(c.world.good), "-i", str(c.work / "none")], 4,
         "does not exist"),
    Case("recipient-malformed", lambda c: c.snapshot("--files-root", str(c.world.root), "-r", "age1notakey"), 4,
         "recipient"),
    Case("recipient-is-secret", lambda c: c.snapshot("--files-root", str(c.world.root), "-r",
         c.world.identity.read_text().strip()), 4, "secret key"),
    Case("passphrase-file-empty", lambda c: ["verify", str(c.world.scrypt), "--passphrase-file", c.file("p", "")],
         4, "empty"),
    # -- hostile members -----------------------------------------------------------------------------------------
    Case("member-dotdot", lambda c: c.restore_files(c.file("h.statekit", craft([("files/../../evil", b"x")]))), 3,
         "unsafe"),
    Case("member-absolute", lambda c: c.restore_files(c.file("h.statekit", craft([("/tmp/evil", b"x")]))), 3,
         "unsafe"),
    Case("member-symlink", lambda c: c.restore_files(c.file("h.statekit", craft(OK_FILE, specials=[
        _tar_member("files/link", kind=tarfile.SYMTYPE, link="/etc/passwd")]))), 3, "symlink"),
    Case("member-hardlink", lambda c: c.restore_files(c.file("h.statekit", craft(OK_FILE, specials=[
        _tar_member("files/hl", kind=tarfile.LNKTYPE, link="/etc/shadow")]))), 3, "hard link"),
    Case("member-device", lambda c: c.verify(c.file("h.statekit", craft(OK_FILE, specials=[
        _tar_member("files/dev", kind=tarfile.CHRTYPE)]))), 3, "device"),
    Case("member-directory", lambda c: c.verify(c.file("h.statekit", craft(OK_FILE, specials=[
        _tar_member("files/d", kind=tarfile.DIRTYPE)]))), 3, "directory"),
    Case("member-duplicate", lambda c: c.restore_files(c.file("h.statekit", craft(
        [("files/a.json", b"1"), ("files/a.json", b"2")]))), 3, "twice"),
    Case("member-unlisted", lambda c: c.restore_files(c.file("h.statekit", craft(
        OK_FILE, listed=[("format.json", b"")]))), 3, "MANIFEST"),
    Case("member-hash-mismatch", lambda c: c.restore_files(c.file("h.statekit", craft(
        [("files/a.json", b"evil")], listed=[("files/a.json", b"good")]))), 3, "MANIFEST"),
    Case("member-after-manifest", lambda c: c.verify(c.file("h.statekit", craft(
        OK_FILE, after_manifest=_tar_member("files/late", b"x")))), 3, "after MANIFEST"),
    Case("member-backslash", lambda c: c.restore_files(c.file("h.statekit", craft([("files\\..\\x", b"x")]))), 3,
         "unsafe"),
    # -- config files --------------------------------------------------------------------------------------------
    Case("config-syntax", lambda c: c.snapshot("--config", c.config("[files\nroot = 1")), 2, "TOML syntax"),
    Case("config-unknown-key", lambda c: c.snapshot("--config", c.config("[files]\nrooot = '/x'\n")), 2,
         "unknown key 'files.rooot'"),
    Case("config-unknown-section", lambda c: c.snapshot("--config", c.config("[filez]\nroot = '/x'\n")), 2,
         "unknown key 'filez'"),
    Case("config-wrong-type", lambda c: c.snapshot("--config", c.config("[db]\njobs = 'four'\n")), 2,
         "db.jobs"),
    Case("config-section-not-table", lambda c: c.snapshot("--config", c.config("files = 3\n")), 2,
         "must be a table"),
    Case("config-missing-sections", lambda c: c.snapshot("--config", c.config("[archive]\nname = 'x'\n"),
         "--no-encryption"), 2, "nothing to snapshot"),
    Case("config-file-missing", lambda c: c.snapshot("--config", str(c.work / "nope.toml")), 2, "not found"),
    Case("config-env-wrong-type", lambda c: (c.env.update(STATEKIT_DB_JOBS="many"),
         c.snapshot("--files-root", str(c.world.root), "--no-encryption"))[1], 2, "not a number"),
    Case("config-bad-recipient", lambda c: c.snapshot("--config", c.config(
        "[archive]\nrecipients = ['age1bad']\n[files]\nroot = '/'\n")), 4, "recipient"),
    # -- URLs and hosts ------------------------------------------------------------------------------------------
    Case("db-url-malformed", lambda c: c.snapshot("--db-url", "not a url", "--no-encryption"), 2, "db"),
    Case("db-url-unsupported", lambda c: c.snapshot("--db-url", "oracle://x@h/db", "--no-encryption"), 2,
         "unsupported"),
    Case("db-unreachable", lambda c: c.snapshot("--db-url",
         f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres", "--no-encryption"), 5, "127.0.0.1"),
    Case("mysql-unreachable", lambda c: c.snapshot("--db-url",
         f"mysql+pymysql://root@127.0.0.1:{free_port()}/test", "--no-encryption"), 5, "127.0.0.1"),
    Case("redis-url-malformed", lambda c: c.snapshot("--redis-url", "http://127.0.0.1:6379", "--no-encryption"),
         2, "redis"),
    Case("redis-url-bad-db", lambda c: c.snapshot("--redis-url", "redis://127.0.0.1:6379/notanumber",
         "--no-encryption"), 2, "redis"),
    Case("redis-unreachable", lambda c: c.snapshot("--redis-url", f"redis://127.0.0.1:{free_port()}/0",
         "--no-encryption"), 5, "127.0.0.1"),
    Case("files-root-missing", lambda c: c.snapshot("--files-root", str(c.work / "absent"), "--no-encryption"),
         5, "not a directory"),
    Case("target-url-with-files-tier", lambda c: ["restore", str(c.world.good), "--tier", "files", "--target-url",
         "redis://127.0.0.1:1/0", "-i", str(c.world.identity), "--yes"], 2, "--target-url"),
    # -- flags ---------------------------------------------------------------------------------------------------
    Case("no-encryption-with-recipient", lambda c: c.snapshot("--files-root", str(c.world.root), "--no-encryption",
         "-r", c.world.recipient), 2, "conflicts"),
    Case("no-recipient-fails-closed", lambda c: c.snapshot("--files-root", str(c.world.root)), 8,
         "unencrypted"),
    Case("no-destination", lambda c: ["snapshot", "--files-root", str(c.world.root), "--no-encryption"], 2,
         "destination"),
    Case("destination-dir-missing", lambda c: ["snapshot", "--files-root", str(c.world.root), "--no-encryption",
         "--to", str(c.work / "no" / "such" / "x.statekit")], 9, "no such"),
    Case("target-with-db-tier", lambda c: ["restore", str(c.world.good), "--tier", "db", "--target", "/tmp/x",
         "--yes"], 2, "--target"),
    Case("unknown-option", lambda c: ["snapshot", "--bogus"], 2, "--bogus"),
    Case("passphrase-on-argv", lambda c: ["snapshot", "--passphrase", "hunter2", "--to", str(c.work)], 2,
         "--passphrase"),
    Case("bad-tier-choice", lambda c: ["restore", str(c.world.good), "--tier", "mongo"], 2, "mongo"),
    Case("bad-level", lambda c: c.snapshot("--files-root", str(c.world.root), "--level", "0", "--no-encryption"),
         2, "level"),
    Case("bad-db-map", lambda c: ["restore", str(c.world.good), "--tier", "redis", "--db-map", "zero",
         "-i", str(c.world.identity), "--yes"], 2, "db-map"),
    Case("restore-without-confirmation", lambda c: ["restore", str(c.world.good), "--tier", "files", "--target",
         str(c.work / "target"), "-i", str(c.world.identity)], 8, "--yes", shows_plan=True),
    Case("restore-tier-not-in-archive", lambda c: ["restore", str(c.world.good), "--tier", "db", "--target-url",
         "postgresql+psycopg://postgres@127.0.0.1:1/x", "-i", str(c.world.identity), "--yes"], 2,
         "no db tier"),
]
# fmt: on


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def _written(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """Files a failed command left behind. The repository's empty `out/` and `out/locks/` folders do not count
    (a released lock leaves its folder); a lock file or anything else does."""
    new = sorted(set(after) - set(before))
    changed = sorted(k for k in before if k in after and after[k] != before[k] and k != "out")
    return [k for k in new if k not in ("out", "out/locks")] + [k for k in changed if k != "out"]


def run_in_process(args: list[str], *, cwd: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                   capfd: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`statekit.cli.run` as the console script calls it, in this process (a subprocess per case is 5x slower);
    output is captured at the file-descriptor level, so nothing printed by any layer escapes the checks."""
    from statekit.cli._app import run

    monkeypatch.chdir(cwd)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capfd.readouterr()
    code = run(args)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    ctx = Ctx(world, work, {"HOME": str(work)})
    args = case.build(ctx)
    before = _tree(work)
    world_before = _tree(world.base)
    proc = run_in_process(args, cwd=work, env=ctx.env, monkeypatch=monkeypatch, capfd=capfd)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == case.code, f"exit {proc.returncode}, wanted {case.code}: {output}"
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"not one error line: {proc.stderr!r}"
    assert case.shows_plan or len(lines) == 1, f"more than the error line: {proc.stderr!r}"
    assert case.needle.lower() in errors[0].lower(), f"{errors[0]!r} does not name the problem ({case.needle!r})"
    assert proc.stdout == ""
    # Nothing written: the working directory holds what the case put there, and the shared state is untouched.
    assert _written(before, _tree(work)) == [], "the failed command wrote files"
    assert _tree(world.base) == world_before


def test_errors_are_json_with_json_flag(world: World, tmp_path: Path) -> None:
    proc = run_cli(["verify", str(tmp_path / "none.statekit"), "--json"], cwd=tmp_path, env={})
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["error"]["exit_code"] == 2 and "no such archive" in doc["error"]["message"]


def test_the_crafted_archive_is_itself_valid(world: World, tmp_path: Path) -> None:
    """The hostile cases above fail because of the one thing each changes, not because `craft` is broken."""
    good = tmp_path / "ok.statekit"
    good.write_bytes(craft(OK_FILE, recipient=X25519Recipient.from_string(world.recipient)))
    proc = run_cli(["verify", str(good), "-i", str(world.identity)], cwd=tmp_path, env={})
    assert proc.returncode == 0, proc.stderr
    target = tmp_path / "t"
    proc = run_cli(["restore", str(good), "--tier", "files", "--target", str(target), "-i", str(world.identity),
                    "--yes", "--no-undo"], cwd=tmp_path, env={})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (target / "a.json").read_bytes() == b"{}"


def test_tar_of_craft_is_readable_by_tarfile(world: World) -> None:
    """Sanity: the crafted stream is real tar (what the standard tools would see)."""
    data = zstandard.ZstdDecompressor().decompressobj().decompress(craft(OK_FILE))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert "files/a.json" in tf.getnames()
