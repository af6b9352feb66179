"""open_for_reading: O_NOATIME where the kernel allows it, a plain read-only open where it does not."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from statekit.fsio import O_NOATIME, open_for_reading

pytestmark = pytest.mark.skipif(not O_NOATIME, reason="no O_NOATIME on this platform")


def test_a_file_of_another_owner_is_still_read() -> None:
    # O_NOATIME is refused (EPERM) on a file the reader does not own: the open is retried without it.
    if os.geteuid() == 0:
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)
            target = Path(tmp) / "rootfile"
            target.write_bytes(b"hello")
            target.chmod(0o644)
            os.seteuid(65534)  # read as another user (root may switch back: its real uid stays 0)
            try:
                with pytest.raises(PermissionError):
                    os.close(os.open(target, os.O_RDONLY | O_NOATIME))
                fd = open_for_reading(str(target))
            finally:
                os.seteuid(0)
    else:
        if os.stat("/etc/passwd").st_uid == os.geteuid():
            pytest.skip("/etc/passwd belongs to this user")
        fd = open_for_reading("/etc/passwd")
    try:
        assert os.read(fd, 1)
    finally:
        os.close(fd)


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError) as info:
        open_for_reading(str(tmp_path / "link"))
    assert info.value.errno == errno.ELOOP


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_for_reading(str(tmp_path / "absent"))
