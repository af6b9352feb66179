"""The `s3://bucket/prefix` repository, through boto3.

Credentials, region and endpoint come from the usual AWS places (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
AWS_PROFILE, ~/.aws/config and credentials, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for S3-compatible
stores). Uploads are multipart and stream: memory holds one part, whatever the archive size. Locks use
conditional writes (`If-None-Match: *`), which AWS S3 and SeaweedFS honour.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from statekit.errors import StorageError, UsageError
from statekit.repo.base import Repository

T = TypeVar("T")
_MAX_PARTS = 10_000
# S3 allows at most 10,000 parts; 16 MiB parts cover 160 GiB, and the part size grows past that.
DEFAULT_PART_SIZE = 16 << 20
_MIN_PART_SIZE = 5 << 20


def require_boto3() -> None:
    """Fail with one line, never a ModuleNotFoundError, when boto3 (a normal dependency) was removed."""
    try:
        import boto3  # noqa: F401
        import botocore  # noqa: F401
    except ImportError:
        raise UsageError("s3:// repositories need boto3, which a normal install includes: pip install boto3") from None


def s3_client() -> Any:
    """A boto3 S3 client configured from the standard AWS environment variables and files."""
    require_boto3()
    import boto3
    from botocore.config import Config as BotoConfig

    session = boto3.session.Session()
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = session.region_name or "us-east-1"
    cfg = BotoConfig(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
        # S3-compatible stores differ in their support of the newer default checksums; only send them
        # where the API requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=cfg)


def _translate(where: str, exc: BaseException) -> StorageError:
    """A one-line StorageError for a botocore failure (never including credentials)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return StorageError(
            f"{where}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws)"
        )
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "error")
        msg = err.get("Message") or ""
        return StorageError(f"{where}: S3 {code}{': ' + msg if msg else ''}")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{where}: S3 request failed: {exc}")
    return StorageError(f"{where}: S3 request failed: {type(exc).__name__}")


def _error_code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


class S3Repository(Repository):
    """Archives under `s3://bucket/prefix/`."""

    def __init__(self, url: str, bucket: str, prefix: str, client: Any = None) -> None:
        super().__init__(url)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self.part_size = DEFAULT_PART_SIZE

    @classmethod
    def from_url(cls, url: str) -> S3Repository:
        """Parse `s3://bucket[/prefix]`."""
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UsageError(f"{url}: expected s3://bucket[/prefix]")
        require_boto3()
        return cls(url.rstrip("/"), bucket, prefix)

    @property
    def client(self) -> Any:
        """The boto3 client, created on first use."""
        if self._client is None:
            self._client = s3_client()
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, where: str, fn: Callable[[], T]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except (BotoCoreError, ClientError) as exc:
            raise _translate(where, exc) from None

    def list_keys(self, folder: str = "") -> dict[str, int]:
        base = self._key(folder) if folder else self.prefix
        start = f"{base}/" if base else ""
        out: dict[str, int] = {}
        paginator = self.client.get_paginator("list_objects_v2")

        def run() -> None:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start, Delimiter="/"):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(start) :]
                    if name:  # not the folder's own marker (SeaweedFS lists one once a folder is emptied)
                        out[name] = int(obj["Size"])

        self._call(self.describe(folder), run)
        return out

    def read_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(resp["Body"].read())
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise _translate(self.describe(key), exc) from None
        except Exception as exc:
            raise _translate(self.describe(key), exc) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call(
            self.describe(key), lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        )

    def create_exclusive(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            # 409 ConditionalRequestConflict: a concurrent conditional write to the same key is in flight
            if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise _translate(self.describe(key), exc) from None
        except Exception as exc:
            raise _translate(self.describe(key), exc) from None

    def delete(self, key: str) -> None:
        self._call(self.describe(key), lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def open_read(self, key: str) -> IO[bytes]:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise UsageError(f"{self.describe(key)}: no such archive") from None
            raise _translate(self.describe(key), exc) from None
        except Exception as exc:
            raise _translate(self.describe(key), exc) from None
        return _BodyReader(resp["Body"], self.describe(key))  # type: ignore[return-value]

    def upload_file(self, local: Path, key: str) -> None:
        size = local.stat().st_size
        with open(local, "rb") as src, self.open_write(key, expected_size=size) as out:
            while True:
                block = src.read(1 << 20)
                if not block:
                    break
                out.write(block)

    @contextmanager
    def open_write(self, key: str, *, expected_size: int | None = None) -> Iterator[MultipartUpload]:
        """A write-only stream that becomes the object `key` when the block ends without error (a failed
        block aborts the upload: nothing appears under `key`)."""
        part = self.part_size
        if expected_size is not None:
            # stay under the 10,000-part limit for big archives
            while expected_size / part > _MAX_PARTS - 1:
                part *= 2
        upload = MultipartUpload(self, key, max(part, _MIN_PART_SIZE))
        try:
            yield upload
            upload.complete()
        except BaseException:
            upload.abort()
            raise


class _BodyReader(io.RawIOBase):
    """A botocore StreamingBody as a raw stream whose network errors become StorageError."""

    def __init__(self, body: Any, where: str) -> None:
        self._body = body
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        try:
            data = self._body.read(len(buf))
        except Exception as exc:
            raise _translate(self._where, exc) from None
        n = len(data)
        buf[:n] = data
        return n

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            super().close()


class MultipartUpload:
    """Buffers one part at a time and sends it with UploadPart; `complete()` publishes the object."""

    def __init__(self, repo: S3Repository, key: str, part_size: int) -> None:
        self._repo = repo
        self._key = key
        self._part_size = part_size
        self._buf = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None
        self.size = 0
        self.peak_buffer = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append data; a full part is uploaded before this returns."""
        view = memoryview(data)
        n = len(view)
        while len(view):
            room = self._part_size - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            self.peak_buffer = max(self.peak_buffer, len(self._buf))
            if len(self._buf) >= self._part_size:
                self._send_part()
        self.size += n
        return n

    def flush(self) -> None:
        """Parts are sent as they fill; nothing to do."""

    def _send_part(self) -> None:
        repo = self._repo
        where = repo.describe(self._key)
        if self._upload_id is None:
            resp = repo._call(
                where, lambda: repo.client.create_multipart_upload(Bucket=repo.bucket, Key=repo._key(self._key))
            )
            self._upload_id = str(resp["UploadId"])
        number = len(self._parts) + 1
        body = bytes(self._buf)
        self._buf.clear()
        resp = repo._call(
            where,
            lambda: repo.client.upload_part(
                Bucket=repo.bucket, Key=repo._key(self._key), UploadId=self._upload_id, PartNumber=number, Body=body
            ),
        )
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def complete(self) -> None:
        """Send the last part and publish the object (a single PUT when it all fit in one part)."""
        repo = self._repo
        where = repo.describe(self._key)
        if self._upload_id is None:
            body = bytes(self._buf)
            self._buf.clear()
            repo._call(where, lambda: repo.client.put_object(Bucket=repo.bucket, Key=repo._key(self._key), Body=body))
            return
        if self._buf:
            self._send_part()
        repo._call(
            where,
            lambda: repo.client.complete_multipart_upload(
                Bucket=repo.bucket,
                Key=repo._key(self._key),
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            ),
        )

    def abort(self) -> None:
        """Drop the uploaded parts (best effort: a failure here must not hide the original error)."""
        self._buf.clear()
        if self._upload_id is None:
            return
        try:
            self._repo.client.abort_multipart_upload(
                Bucket=self._repo.bucket, Key=self._repo._key(self._key), UploadId=self._upload_id
            )
        except Exception:
            pass
