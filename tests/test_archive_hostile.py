"""Hostile archives, built by hand (tarfile + zstd + age): every one is refused with a one-line error and
nothing is written outside the staging directory — not in the target, not beside it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from statekit.archive.age import Encryptor
from statekit.archive.keys import generate_identity
from statekit.archive.reader import Archive
from statekit.cli import run
from statekit.errors import CorruptArchive, UnsupportedFormat

IDENTITY = generate_identity()


def _info(name: str, data: bytes, kind: bytes = tarfile.REGTYPE, mode: int = 0o600, **extra: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.type = kind
    info.mode = mode
    info.mtime = 1_700_000_000
    for k, v in extra.items():
        setattr(info, k, v)
    return info


def build(
    path: Path,
    members: list[tuple[tarfile.TarInfo, bytes]],
    *,
    fix_manifest: Callable[[dict[str, Any]], None] | None = None,
    after_manifest: list[tuple[tarfile.TarInfo, bytes]] = (),  # type: ignore[assignment]
    trailer: bytes = b"",
    format_version: int = 1,
    encrypt: bool = True,
) -> Path:
    """A statekit-looking archive around `members`, with a manifest that lists them correctly (then
    `fix_manifest` may lie)."""
    fmt = json.dumps({"format": "statekit-archive", "format_version": format_version}).encode()
    snap = json.dumps({"format_version": format_version, "snapshot_id": "x", "tiers": [{"tier": "files"}]}).encode()
    listed = [(_info("format.json", fmt), fmt), *members, (_info("snapshot.json", snap), snap)]
    manifest: dict[str, Any] = {
        "format": "statekit-archive",
        "format_version": format_version,
        "snapshot_id": "x",
        "members": [
            {
                "name": info.name,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "mode": f"{info.mode:04o}",
                "mtime": info.mtime,
            }
            for info, data in listed
            if info.type == tarfile.REGTYPE
        ],
    }
    if fix_manifest:
        fix_manifest(manifest)
    body = json.dumps(manifest).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in [*listed, (_info("MANIFEST.json", body), body), *after_manifest]:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    plain = zstandard.ZstdCompressor().compress(buf.getvalue() + trailer)
    with open(path, "wb") as fh:
        if encrypt:
            with Encryptor(fh, [IDENTITY.recipient()]) as enc:
                enc.write(plain)
        else:
            fh.write(plain)
    return path


GOOD = (_info("files/a.json", b"{}"), b"{}")


def _case(name: str, tmp: Path) -> Path:
    p = tmp / f"{name}.statekit"
    if name == "dotdot":
        return build(p, [GOOD, (_info("files/../x", b"evil"), b"evil")])
    if name == "dotdot-top":
        return build(p, [(_info("../x", b"evil"), b"evil")])
    if name == "absolute":
        return build(p, [(_info("/tmp/abs-statekit-x", b"evil"), b"evil")])
    if name == "symlink":
        return build(p, [GOOD, (_info("files/link", b"", tarfile.SYMTYPE, linkname="/etc/passwd"), b"")])
    if name == "hardlink":
        return build(p, [GOOD, (_info("files/hl", b"", tarfile.LNKTYPE, linkname="files/a.json"), b"")])
    if name == "device":
        return build(p, [GOOD, (_info("files/dev", b"", tarfile.CHRTYPE, devmajor=1, devminor=3), b"")])
    if name == "fifo":
        return build(p, [GOOD, (_info("files/fifo", b"", tarfile.FIFOTYPE), b"")])
    if name == "directory":
        return build(p, [GOOD, (_info("files/d", b"", tarfile.DIRTYPE, mode=0o755), b"")])
    if name == "duplicate":
        return build(p, [GOOD, (_info("files/a.json", b"[]"), b"[]")])
    if name == "unlisted":

        def drop(m: dict[str, Any]) -> None:
            m["members"] = [e for e in m["members"] if e["name"] != "files/b.json"]

        return build(p, [GOOD, (_info("files/b.json", b"1"), b"1")], fix_manifest=drop)
    if name == "missing":

        def add(m: dict[str, Any]) -> None:
            m["members"].append({"name": "files/ghost", "size": 0, "sha256": hashlib.sha256(b"").hexdigest()})

        return build(p, [GOOD], fix_manifest=add)
    if name in ("size", "sha", "mode"):

        def lie(m: dict[str, Any]) -> None:
            entry = next(e for e in m["members"] if e["name"] == "files/a.json")
            if name == "size":
                entry["size"] += 1
            elif name == "sha":
                entry["sha256"] = hashlib.sha256(b"other").hexdigest()
            else:
                entry["mode"] = "0644"

        return build(p, [GOOD], fix_manifest=lie)
    if name == "after-manifest":
        return build(p, [GOOD], after_manifest=[(_info("files/late", b"x"), b"x")])
    if name == "trailing-data":
        return build(p, [GOOD], trailer=b"\0" * 1024 + b"garbage")
    if name == "manifest-not-json":

        def garble(m: dict[str, Any]) -> None:
            m["members"] = "nope"

        return build(p, [GOOD], fix_manifest=garble)
    if name == "future":
        return build(p, [GOOD], format_version=2)
    if name == "not-an-archive":
        p.write_bytes(os.urandom(4096))
        return p
    if name == "empty":
        p.write_bytes(b"")
        return p
    if name == "age-not-zstd":
        with open(p, "wb") as fh, Encryptor(fh, [IDENTITY.recipient()]) as enc:
            enc.write(b"just some text, not zstd")
        return p
    if name == "zstd-not-tar":
        p.write_bytes(zstandard.ZstdCompressor().compress(b"hello" * 300))
        return p
    if name == "tar-without-format":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_info("files/a.json", b"{}"), io.BytesIO(b"{}"))
        p.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
        return p
    if name == "pax-bomb":
        info = _info("files/a.json", b"{}")
        info.pax_headers = {"comment": "x" * (2 << 20)}
        return build(p, [(info, b"{}")])
    if name == "negative-size":
        info = _info("files/a.json", b"")
        info.pax_headers = {"size": "-5"}

        def neg(m: dict[str, Any]) -> None:
            next(e for e in m["members"] if e["name"] == "files/a.json")["size"] = -5

        return build(p, [(info, b"")], fix_manifest=neg)
    raise AssertionError(name)


CASES = [
    "dotdot", "dotdot-top", "absolute", "symlink", "hardlink", "device", "fifo", "directory", "duplicate",
    "unlisted", "missing", "size", "sha", "mode", "after-manifest", "trailing-data", "manifest-not-json",
    "future", "not-an-archive", "empty", "age-not-zstd", "zstd-not-tar", "tar-without-format", "pax-bomb",
    "negative-size",
]  # fmt: skip


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("case", CASES)
def test_hostile_archive_is_refused(
    case: str, tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archives = tmp_path / "archives"
    archives.mkdir()
    path = _case(case, archives)
    with pytest.raises(CorruptArchive) as info:
        Archive(path, [IDENTITY]).index()
    if case == "future":
        assert isinstance(info.value, UnsupportedFormat)

    parent = tmp_path / "parent"
    target = parent / "target"
    target.mkdir(parents=True)
    (target / "keep.json").write_text("old")
    before_parent = _tree(parent)
    before_top = sorted(p.name for p in tmp_path.iterdir())
    code = run(["restore", str(path), "-i", str(identity_file), "--tier", "files", "--target", str(target), "--yes"])
    out, err = capsys.readouterr()
    assert code == (13 if case == "future" else 3), err
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + out
    assert _tree(parent) == before_parent  # nothing in the target, no staging left, nothing beside it
    assert (target / "keep.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == before_top
    assert not Path("/tmp/abs-statekit-x").exists()


def test_well_formed_hand_built_archive_restores(tmp_path: Path, identity_file: Path) -> None:
    """The builder itself is sound: without a lie in it, the same archive restores."""
    path = build(tmp_path / "ok.statekit", [GOOD, (_info("files/sub/b.json", b"[1]", mode=0o640), b"[1]")])
    code = run(["restore", str(path), "-i", str(identity_file), "--tier", "files", "--target", "t", "--yes"])
    assert code == 0
    assert (Path("t") / "sub/b.json").read_bytes() == b"[1]"
    assert (Path("t") / "sub/b.json").stat().st_mode & 0o7777 == 0o600  # at most 0600: owner bits only


def test_setuid_bits_are_not_restored(tmp_path: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = build(tmp_path / "suid.statekit", [(_info("files/run", b"#!/bin/sh\n", mode=0o4755), b"#!/bin/sh\n")])
    code = run(["restore", str(path), "-i", str(identity_file), "--tier", "files", "--target", "t", "--yes"])
    assert code == 0
    assert (Path("t") / "run").stat().st_mode & 0o7777 == 0o600
    assert "setuid" in capsys.readouterr().err


def test_unencrypted_hostile_archive_is_refused_too(tmp_path: Path) -> None:
    path = build(tmp_path / "p.statekit", [GOOD, (_info("files/../x", b"e"), b"e")], encrypt=False)
    with pytest.raises(CorruptArchive, match="unsafe archive member name"):
        Archive(path).index()
