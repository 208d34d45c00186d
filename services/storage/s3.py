"""User files in an S3-compatible bucket (Cloudflare R2 in the cloud, moto in the tests).

boto3 is synchronous, so every call runs in a thread. A file goes up as one ``put_object`` when
it is smaller than ``PART_SIZE``, else as a multipart upload of equal parts; each part is spooled
to a temporary file (only its first ``SPOOL_MEMORY`` bytes stay in memory), so memory stays small
whatever the file's size.

A ``create_only`` put sends ``If-None-Match: *`` with the ``put_object``, or with the
``complete_multipart_upload`` of a large file (S3 and R2 both check it there, atomically): the
bucket answers 412 ``PreconditionFailed`` when the key exists (409 ``ConditionalRequestConflict``
when another conditional write to it is under way), which is ``KeyTakenError``; a refused multipart
upload is aborted, so none of its parts stay in the bucket.

A conditional write is sent once by botocore (``once``, a client with its own retries off): when
its answer is lost (a 5xx or a reset after the bucket stored it), botocore's retry would find the
file it had just written and answer 412, and the caller would take its own file for someone
else's. ``StorageUnavailableError`` goes to the caller instead, whose retry knows the answer was
lost and compares what the name holds (``services.worker.outputs.put_file``).

A read from a byte on (``get(key, start)``) asks for a range; when the answer is the whole file (a
cache or proxy on the way that ignores ranges answers 200 without ``Content-Range``), its first
``start`` bytes are skipped, so the caller still gets the bytes from ``start`` on.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO, TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from services.storage.base import (
    CHUNK_SIZE,
    FileMissingError,
    KeyTakenError,
    StorageError,
    StorageUnavailableError,
    check_key,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PART_SIZE = 8 * 1024 * 1024  # S3 wants >= 5 MiB for every part but the last
SPOOL_MEMORY = 1024 * 1024
TAKEN = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
BUSY = ("InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "500", "502", "503", "504")


class S3Storage:
    def __init__(self, client: S3Client, bucket: str, prefix: str = "", once: S3Client | None = None) -> None:
        """``once``: the same bucket's client with botocore's retries off, for conditional writes
        (``client`` when not given)."""
        self.client = client
        self.once = once or client
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def _call(self, method: str, **kwargs: Any) -> Any:
        client = self.once if "IfNoneMatch" in kwargs else self.client
        try:
            return await asyncio.to_thread(getattr(client, method), Bucket=self.bucket, **kwargs)
        except BotoCoreError as exc:  # no answer: unreachable, timed out, cut off
            raise StorageUnavailableError(f"{self.url}: {method} got no answer: {exc}") from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileMissingError(f"no stored file {kwargs.get('Key')!r} in {self.url}") from exc
            if code in TAKEN and "IfNoneMatch" in kwargs:
                raise KeyTakenError(f"{kwargs.get('Key')!r} is stored already in {self.url}") from exc
            if code in BUSY:
                raise StorageUnavailableError(f"{self.url}: {method} answered {code}: {exc}") from exc
            raise StorageError(f"{self.url}: {method} failed with {code}: {exc}") from exc

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        content_type: str = "application/octet-stream",
        *,
        create_only: bool = False,
    ) -> int:
        upload = _Upload(self, self._key(key), content_type, {"IfNoneMatch": "*"} if create_only else {})
        stream, carry = aiter(chunks), list[bytes]()
        try:
            more = True
            while more:
                with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as part:
                    more = await _fill(part, stream, carry)
                    await upload.send(part, last=not more)
        except BaseException:
            await upload.abort()
            raise
        return upload.total

    async def _start_multipart(self, key: str, content_type: str) -> str:
        reply = await self._call("create_multipart_upload", Key=key, ContentType=content_type)
        return str(reply["UploadId"])

    async def get(self, key: str, start: int = 0) -> AsyncIterator[bytes]:
        extra = {"Range": f"bytes={start}-"} if start else {}
        reply = await self._call("get_object", Key=self._key(key), **extra)
        body = reply["Body"]
        skip = start if start and "ContentRange" not in reply else 0  # the whole file came (200, not 206)
        try:
            while chunk := await asyncio.to_thread(body.read, CHUNK_SIZE):
                if skip:
                    chunk, skip = chunk[skip:], max(0, skip - len(chunk))
                if chunk:
                    yield chunk
        except BotoCoreError as exc:  # cut off midway: reset, timed out, or short of its length
            raise StorageUnavailableError(f"{self.url}: reading {key!r} broke off: {exc}") from exc
        finally:
            body.close()

    async def exists(self, key: str) -> bool:
        return await self.size(key) is not None

    async def _head(self, key: str) -> dict[str, Any] | None:
        try:
            reply: dict[str, Any] = await self._call("head_object", Key=self._key(key))
        except FileMissingError:
            return None
        return reply

    async def size(self, key: str) -> int | None:
        reply = await self._head(key)
        return None if reply is None else int(reply["ContentLength"])

    async def version(self, key: str) -> str | None:
        reply = await self._head(key)
        return None if reply is None else str(reply["ETag"])

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Key=self._key(key))

    async def list(self, prefix: str = "") -> list[str]:
        return sorted(await self.sizes(prefix))

    async def sizes(self, prefix: str = "") -> dict[str, int]:
        found: dict[str, int] = {}
        token: dict[str, str] = {}
        while True:
            reply = await self._call("list_objects_v2", Prefix=self.prefix + prefix, **token)
            found.update(
                (item["Key"][len(self.prefix) :], item["Size"]) for item in reply.get("Contents", [])
            )
            if not reply.get("IsTruncated"):
                return found
            token = {"ContinuationToken": reply["NextContinuationToken"]}


async def _fill(part: IO[bytes], stream: AsyncIterator[bytes], carry: list[bytes]) -> bool:
    """Write exactly ``PART_SIZE`` bytes into ``part`` (R2 wants every part but the last the same
    size); the excess of the last chunk waits in ``carry``. False once the stream has ended."""
    pending = carry.pop() if carry else b""
    while True:
        room = PART_SIZE - part.tell()
        part.write(pending[:room])
        if len(pending) >= room:
            if len(pending) > room:
                carry.append(pending[room:])
            return True
        try:
            pending = await anext(stream)
        except StopAsyncIteration:
            return False


class _Upload:
    """One file on its way into the bucket: a single put, or a multipart upload part by part."""

    def __init__(self, storage: S3Storage, key: str, content_type: str, condition: dict[str, str]) -> None:
        self.storage, self.key, self.content_type = storage, key, content_type
        self.condition = condition  # on the call that makes the file appear: ``IfNoneMatch`` or none
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.total = 0

    async def send(self, part: IO[bytes], last: bool) -> None:
        size = part.tell()
        self.total += size
        part.seek(0)
        if last and self.upload_id is None:
            await self.storage._call(
                "put_object", Key=self.key, Body=part, ContentType=self.content_type, **self.condition
            )
            return
        if self.upload_id is None:
            self.upload_id = await self.storage._start_multipart(self.key, self.content_type)
        if size or not self.parts:
            await self._upload_part(part)
        if last:
            await self.storage._call(
                "complete_multipart_upload",
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
                **self.condition,
            )

    async def _upload_part(self, part: IO[bytes]) -> None:
        number = len(self.parts) + 1
        reply = await self.storage._call(
            "upload_part", Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=part
        )
        self.parts.append({"ETag": reply["ETag"], "PartNumber": number})

    async def abort(self) -> None:
        if self.upload_id is not None:
            await self.storage._call("abort_multipart_upload", Key=self.key, UploadId=self.upload_id)
