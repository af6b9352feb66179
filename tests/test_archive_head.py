"""The head of an archive: format.json says what the archive is (kind, tiers and an undo archive's target) before
any member, so a restore learns its target without a pass; every pass checks the head against snapshot.json."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import pytest

from statekit.archive.keys import generate_identity
from statekit.archive.reader import Archive, ArchiveIndex
from statekit.archive.writer import ArchiveWriter
from statekit.cli import run
from statekit.config import Config
from statekit.errors import CorruptArchive, Refused
from statekit.model import RestoreOptions
from statekit.undo import recorded_target, resolve_target, target_record

IDENTITY = generate_identity()
RECIPIENT = IDENTITY.recipient().to_string()


class _NoPass(Archive):
    """An archive that fails the test if anything asks for a verifying pass."""

    def index(self) -> ArchiveIndex:
        raise AssertionError("a verifying pass was asked for")


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> None:
    code = run(list(args))
    _out, err = capsys.readouterr()
    assert code == 0, err


def _files_undo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, Path]:
    """A snapshot of a files root, restored into another directory: (snapshot, undo archive, that directory)."""
    src, target, undo_dir = tmp_path / "keys", tmp_path / "target", tmp_path / "undo"
    for d in (src, target, undo_dir):
        d.mkdir()
    (src / "creds.json").write_bytes(b'{"k": 1}')
    (target / "creds.json").write_bytes(b'{"k": 0}')
    identity = tmp_path / "id.txt"
    identity.write_text(IDENTITY.to_string() + "\n")
    identity.chmod(0o600)
    snap = tmp_path / "a.statekit"
    _cli(capsys, "snapshot", "--files-root", str(src), "--to", str(snap), "-r", RECIPIENT)
    _cli(capsys, "restore", str(snap), "-i", str(identity), "--tier", "files", "--target", str(target),
         "--undo-dir", str(undo_dir), "--yes")  # fmt: skip
    (undo,) = undo_dir.glob("undo-files-*.statekit")
    return snap, undo, target


def test_new_archives_say_at_the_head_what_they_are(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap, undo, target = _files_undo(tmp_path, capsys)
    head = _NoPass(snap, [IDENTITY]).head()
    assert (head["kind"], head["tiers"]) == ("snapshot", ["files"])
    assert "restore_target" not in head
    head = _NoPass(undo, [IDENTITY]).head()
    assert (head["kind"], head["tiers"]) == ("undo", ["files"])
    assert head["restore_target"] == {"tier": "files", "root": str(target)}
    # the verified snapshot.json says the same
    index = Archive(undo, [IDENTITY]).index()
    assert index.format == head
    assert index.snapshot["restore_target"] == head["restore_target"]


def test_the_target_is_resolved_from_the_head_without_a_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap, undo, target = _files_undo(tmp_path, capsys)
    cfg = Config()
    cfg.files.root = str(target)
    resolved = resolve_target(target_record(_NoPass(undo, [IDENTITY])), RestoreOptions(tier="files"), cfg)
    assert resolved.options.target == str(target)
    assert resolved.note == "the directory the undo archive was saved from"
    # the recorded target is only a claim: another configured root refuses it, unless the archive is signed
    cfg.files.root = str(tmp_path / "configured")
    with pytest.raises(Refused, match=f"pass --target {target} to restore it there"):
        resolve_target(target_record(_NoPass(undo, [IDENTITY])), RestoreOptions(tier="files"), cfg)
    resolved = resolve_target(target_record(_NoPass(undo, [IDENTITY])), RestoreOptions(tier="files"), cfg,
                              trusted=True)  # fmt: skip
    assert resolved.options.target == str(target)
    # a snapshot records no target: the configured one, also without a pass
    record = target_record(_NoPass(snap, [IDENTITY]))
    assert recorded_target(record, "files") is None
    assert resolve_target(record, RestoreOptions(tier="files"), cfg).options.target is None


def _write(path: Path, snapshot: dict[str, Any], head: dict[str, Any] | None = None) -> Path:
    with open(path, "wb") as fh:
        writer = ArchiveWriter(fh, recipients=None, head=head)
        writer.add("files/a.json", b"{}")
        writer.finish(snapshot)
    return path


UNDO_SNAPSHOT: dict[str, Any] = {
    "kind": "undo",
    "undo_of": {"snapshot_id": "x", "archive": "a.statekit", "target": "/srv/old"},
    "restore_target": {"tier": "files", "root": "/srv/keys"},
    "tiers": [{"tier": "files", "counts": {}, "details": {}}],
}


def test_an_archive_without_head_fields_is_read_the_old_way(tmp_path: Path) -> None:
    # What statekit wrote before format.json carried kind, tiers and restore_target.
    path = _write(tmp_path / "old.statekit", UNDO_SNAPSHOT)
    archive = Archive(path)
    assert set(archive.head()) == {"format", "format_version", "snapshot_id"}
    record = target_record(archive)
    assert record == archive.snapshot
    cfg = Config()
    cfg.files.root = "/srv/keys"
    resolved = resolve_target(record, RestoreOptions(tier="files"), cfg)
    assert resolved.options.target == "/srv/keys"
    assert resolved.note == "the directory the undo archive was saved from"


def test_an_undo_archive_whose_target_is_settled_at_the_end_reads_snapshot_json(tmp_path: Path) -> None:
    # A redis undo archive: its databases and flush are known only when it is sealed.
    snapshot = dict(UNDO_SNAPSHOT, restore_target={"tier": "redis", "url": "redis://h/0", "dbs": [0], "flush": False})
    snapshot["tiers"] = [{"tier": "redis", "counts": {}, "details": {}}]
    path = _write(tmp_path / "r.statekit", snapshot, head={"kind": "undo", "tiers": ["redis"]})
    archive = Archive(path)
    assert target_record(archive) == archive.snapshot
    assert recorded_target(target_record(archive), "redis") == snapshot["restore_target"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("kind", "snapshot"), ("tiers", ["db"]), ("restore_target", {"tier": "files", "root": "/elsewhere"})],
)
def test_a_head_that_snapshot_json_contradicts_is_corrupt(
    field: str, value: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = {"kind": "undo", "tiers": ["files"], "restore_target": UNDO_SNAPSHOT["restore_target"]}
    with pytest.raises(ValueError, match=field):
        _write(tmp_path / "refused.statekit", dict(UNDO_SNAPSHOT, **{field: value}), head=head)
    if field == "tiers":
        value = [{"tier": "db", "counts": {}, "details": {}}]
    monkeypatch.setattr("statekit.archive.writer.head_mismatch", lambda head, snapshot: None)
    path = _write(tmp_path / "crafted.statekit", dict(UNDO_SNAPSHOT, **{field: value}), head=head)
    with pytest.raises(CorruptArchive, match=f"disagree on {field}"):
        Archive(path).index()
    archive = Archive(path)
    assert archive.head()["restore_target"] == head["restore_target"]  # readable before verification ...
    with pytest.raises(CorruptArchive, match=f"disagree on {field}"):
        list(archive.members())  # ... and refused at the end of every pass


def test_a_malformed_head_is_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="cannot carry"):
        ArchiveWriter(io.BytesIO(), recipients=None, head={"tiers": "files"})
    monkeypatch.setattr("statekit.archive.writer.check_head", lambda head: None)
    monkeypatch.setattr("statekit.archive.writer.head_mismatch", lambda head, snapshot: None)
    path = _write(tmp_path / "bad.statekit", UNDO_SNAPSHOT, head={"tiers": "files"})
    with pytest.raises(CorruptArchive, match=r"format\.json is damaged"):
        Archive(path).head()


def test_an_archive_swapped_after_its_head_was_read_is_refused(tmp_path: Path) -> None:
    head = {"kind": "undo", "tiers": ["files"], "restore_target": UNDO_SNAPSHOT["restore_target"]}
    path = _write(tmp_path / "a.statekit", UNDO_SNAPSHOT, head=head)
    other = _write(tmp_path / "b.statekit", UNDO_SNAPSHOT, head=head)  # same content, another snapshot_id
    archive = Archive(path)
    archive.head()
    shutil.copyfile(other, path)
    with pytest.raises(CorruptArchive, match="changed while it was being read"):
        list(archive.members())
    with pytest.raises(CorruptArchive, match="changed while it was being read"):
        archive.index()


@pytest.mark.parametrize(
    ("tier", "target", "in_head"),
    [
        ("db", {"tier": "db", "url": "postgresql+psycopg://app:***@db/app"}, True),
        ("files", {"tier": "files", "root": "/srv/keys"}, True),
        ("redis", {"tier": "redis", "url": "redis://h:6379/0", "dbs": []}, False),  # settled when sealed
    ],
)
def test_an_undo_archive_carries_its_target_at_the_head_when_complete_at_the_start(
    tier: str, target: dict[str, Any], in_head: bool, tmp_path: Path
) -> None:
    from statekit.model import TierSummary
    from statekit.undo import UndoArchive

    undo = UndoArchive(tmp_path, tier, [], source={"snapshot_id": "x"}, allow_unencrypted=True, target=target)
    path = Path(undo.seal(TierSummary(tier)))
    index = Archive(path).index()
    assert (index.format["kind"], index.format["tiers"]) == ("undo", [tier])
    assert ("restore_target" in index.format) is in_head
    assert index.snapshot["restore_target"]["tier"] == tier
    if in_head:
        assert index.format["restore_target"] == index.snapshot["restore_target"] == target
    else:
        assert "dbs" in index.snapshot["restore_target"] and "flush" in index.snapshot["restore_target"]
    assert target_record(Archive(path)) == (index.format if in_head else index.snapshot)
