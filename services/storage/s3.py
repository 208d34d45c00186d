"""User files in an S3-compatible bucket (Cloudflare R2 in the cloud, moto in the tests).

boto3 is synchronous, so every call runs in a thread. Uploads go up as a multipart upload in
parts of ``PART_SIZE``: at most one part is held in memory, whatever the file's size.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from services.storage.base import CHUNK_SIZE, FileMissingError, StorageError, check_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PART_SIZE = 8 * 1024 * 1024  # S3 wants >= 5 MiB for every part but the last


class S3Storage:
    def __init__(self, client: S3Client, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(getattr(self.client, method), Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileMissingError(f"no stored file {kwargs.get('Key')!r} in {self.url}") from exc
            raise StorageError(f"{self.url}: {method} failed with {code}: {exc}") from exc

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], content_type: str = "application/octet-stream"
    ) -> int:
        full = self._key(key)
        parts: list[dict[str, Any]] = []
        upload_id: str | None = None
        buffer = bytearray()
        total = 0
        try:
            async for chunk in chunks:
                buffer += chunk
                total += len(chunk)
                if len(buffer) >= PART_SIZE:
                    upload_id = upload_id or await self._start_multipart(full, content_type)
                    parts.append(await self._upload_part(full, upload_id, len(parts) + 1, bytes(buffer)))
                    buffer.clear()
            if upload_id is None:
                await self._call("put_object", Key=full, Body=bytes(buffer), ContentType=content_type)
                return total
            if buffer or not parts:
                parts.append(await self._upload_part(full, upload_id, len(parts) + 1, bytes(buffer)))
            await self._call(
                "complete_multipart_upload", Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            if upload_id is not None:
                await self._call("abort_multipart_upload", Key=full, UploadId=upload_id)
            raise
        return total

    async def _start_multipart(self, key: str, content_type: str) -> str:
        reply = await self._call("create_multipart_upload", Key=key, ContentType=content_type)
        return str(reply["UploadId"])

    async def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        reply = await self._call("upload_part", Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        return {"ETag": reply["ETag"], "PartNumber": number}

    async def get(self, key: str, start: int = 0) -> AsyncIterator[bytes]:
        extra = {"Range": f"bytes={start}-"} if start else {}
        reply = await self._call("get_object", Key=self._key(key), **extra)
        body = reply["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, CHUNK_SIZE):
                yield chunk
        finally:
            body.close()

    async def exists(self, key: str) -> bool:
        return await self.size(key) is not None

    async def size(self, key: str) -> int | None:
        try:
            reply = await self._call("head_object", Key=self._key(key))
        except FileMissingError:
            return None
        return int(reply["ContentLength"])

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Key=self._key(key))

    async def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            reply = await self._call("list_objects_v2", Prefix=self.prefix + prefix, **token)
            keys.extend(item["Key"][len(self.prefix) :] for item in reply.get("Contents", []))
            if not reply.get("IsTruncated"):
                return sorted(keys)
            token = {"ContinuationToken": reply["NextContinuationToken"]}
