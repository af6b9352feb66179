"""What only s3:// repositories have, against a real SeaweedFS (`weed server -s3`) on loopback (conftest's
s3_bucket): multipart memory, credentials. What every backend does is in test_repository_contract.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import S3_SECRET_KEY

STATEKIT = str(Path(sys.executable).with_name("statekit"))


def sk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], capture_output=True, text=True, timeout=timeout)


def test_multipart_upload_memory_is_one_part(s3_bucket: str, tmp_path: Path) -> None:
    from statekit.repo.s3 import S3Repository

    repo = S3Repository.from_url(f"s3://{s3_bucket}/mp")
    repo.part_size = 5 << 20
    data = os.urandom(1 << 20)
    with repo.open_write("big.bin") as up:
        for _ in range(13):  # 13 MiB in 1 MiB writes: three parts
            up.write(data)
    assert up.peak_buffer <= 5 << 20
    assert repo.list_keys()["big.bin"] == 13 << 20
    with repo.open_read("big.bin") as fh:
        head = fh.read(1 << 20)
    assert head == data
    # a failed upload leaves nothing behind
    with pytest.raises(RuntimeError), repo.open_write("broken.bin") as up:
        up.write(os.urandom(6 << 20))
        raise RuntimeError("disk on fire")
    assert "broken.bin" not in repo.list_keys()


def test_bad_s3_credentials_exit_9_without_the_secret(
    tmp_path: Path, s3_bucket: str, age_keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + S3_SECRET_KEY)
    out = sk("list", f"s3://{s3_bucket}/x", "--json")
    assert out.returncode == 9
    assert json.loads(out.stdout)["error"]["kind"] == "storage"
    assert S3_SECRET_KEY not in out.stdout + out.stderr
