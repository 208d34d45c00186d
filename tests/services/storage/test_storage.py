"""Both storage implementations behave the same: a local directory and an S3 bucket (moto server)."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ResponseStreamingError

from devkit.s3 import make_bucket, s3_settings
from devkit.servers import free_port
from services.storage import (
    S3Settings,
    Storage,
    StorageError,
    StorageUnavailableError,
    aiter_chunks,
    open_storage,
)
from services.storage.base import FileMissingError, KeyTakenError
from services.storage.s3 import PART_SIZE, S3Storage


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(f"file://{tmp_path}/files")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"files-{tmp_path.name.lower().replace('_', '-')}"[:60]
    make_bucket(endpoint, bucket)
    return open_storage(f"s3://{bucket}/workshop", s3_settings(endpoint))


async def read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def test_a_stored_file_reads_back_with_its_size(storage: Storage) -> None:
    written = await storage.put("users/ada/output/cat.png", aiter_chunks(b"meow" * 1000), "image/png")
    assert written == 4000
    assert await storage.exists("users/ada/output/cat.png")
    assert await storage.size("users/ada/output/cat.png") == 4000
    assert await read_all(storage.get("users/ada/output/cat.png")) == b"meow" * 1000


async def test_reading_from_an_offset_resumes_a_download(storage: Storage) -> None:
    await storage.put("models/x.bin", aiter_chunks(bytes(range(256)) * 4))
    assert await read_all(storage.get("models/x.bin", start=1000)) == (bytes(range(256)) * 4)[1000:]


async def test_a_replaced_file_has_another_version_at_once(storage: Storage) -> None:
    """The models sync remembers a file that failed its checksum by its version: a re-upload, of
    the same size, right after, must read as another one (else the fixed file is never tried)."""
    assert await storage.version("models/x.bin") is None
    await storage.put("models/x.bin", aiter_chunks(b"a" * 1000))
    first = await storage.version("models/x.bin")
    await storage.put("models/x.bin", aiter_chunks(b"b" * 1000))
    assert first is not None and await storage.version("models/x.bin") not in (None, first)


async def test_missing_files_are_reported_not_invented(storage: Storage) -> None:
    assert not await storage.exists("users/ada/input/none.png")
    assert await storage.size("users/ada/input/none.png") is None
    with pytest.raises(FileMissingError, match=r"none\.png"):
        await read_all(storage.get("users/ada/input/none.png"))
    await storage.delete("users/ada/input/none.png")


async def test_list_is_per_prefix_and_delete_removes(storage: Storage) -> None:
    for key in ("users/ada/output/a.png", "users/ada/input/b.png", "users/bob/output/c.png"):
        await storage.put(key, aiter_chunks(b"x"))
    assert await storage.list("users/ada/") == ["users/ada/input/b.png", "users/ada/output/a.png"]
    await storage.delete("users/ada/output/a.png")
    assert await storage.list("users/ada/") == ["users/ada/input/b.png"]
    assert await storage.list("users/bob/") == ["users/bob/output/c.png"]


async def test_sizes_lists_the_keys_that_begin_so_with_their_sizes(storage: Storage) -> None:
    for key, data in (("users/ada/input/image.png", b"xx"), ("users/ada/input/image (1).png", b"xyz")):
        await storage.put(key, aiter_chunks(data))
    await storage.put("users/ada/input/other.png", aiter_chunks(b"o"))
    assert await storage.sizes("users/ada/input/image") == {
        "users/ada/input/image.png": 2,
        "users/ada/input/image (1).png": 3,
    }
    assert await storage.sizes("users/bob/") == {}


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/x", "users/../x", "users//x", ""])
async def test_keys_that_escape_the_root_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(StorageError, match="invalid storage key"):
        await storage.put(key, aiter_chunks(b"x"))


async def test_a_large_file_is_streamed_not_held_in_memory(storage: Storage) -> None:
    size, chunk = 40 * 1024 * 1024, 256 * 1024
    digest = hashlib.sha256()

    async def produce() -> AsyncIterator[bytes]:
        for index in range(size // chunk):
            data = bytes([index % 251]) * chunk
            digest.update(data)
            yield data

    tracemalloc.start()
    try:
        assert await storage.put("users/ada/output/film.mp4", produce(), "video/mp4") == size
        check = hashlib.sha256()
        async for part in storage.get("users/ada/output/film.mp4"):
            check.update(part)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert check.hexdigest() == digest.hexdigest()
    assert peak < 6 * 1024 * 1024, f"peak {peak} bytes for a {size} byte file: it was held in memory"


@pytest.mark.parametrize("size", [PART_SIZE, PART_SIZE + 1, 2 * PART_SIZE + 3])
async def test_files_at_and_around_the_part_size_arrive_whole(storage: Storage, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert await storage.put("users/ada/output/edge.bin", aiter_chunks(data, 300_000)) == size
    assert await storage.size("users/ada/output/edge.bin") == size
    assert hashlib.sha256(await read_all(storage.get("users/ada/output/edge.bin"))).digest() == (
        hashlib.sha256(data).digest()
    )


def test_an_unknown_url_names_the_accepted_forms() -> None:
    with pytest.raises(StorageError, match=r"file:///absolute/path.*s3://bucket"):
        open_storage("ftp://host/x")


async def test_multipart_uploads_use_equal_parts_whatever_the_chunk_sizes(
    s3_endpoint: str, tmp_path: Path
) -> None:
    make_bucket(s3_endpoint, "parts-bucket")
    storage = open_storage("s3://parts-bucket", s3_settings(s3_endpoint))
    assert isinstance(storage, S3Storage)
    sizes: list[int] = []
    call = storage._call

    async def spy(method: str, **kwargs: Any) -> Any:
        if method == "upload_part":
            body = kwargs["Body"]
            sizes.append(body.seek(0, 2))
            body.seek(0)
        return await call(method, **kwargs)

    storage._call = spy  # type: ignore[method-assign]
    await storage.put("big.bin", aiter_chunks(b"z" * (2 * PART_SIZE + 3), 300_007))
    assert sizes == [PART_SIZE, PART_SIZE, 3]


@pytest.mark.parametrize("size", [10, PART_SIZE + 1], ids=["one put", "multipart"])
async def test_a_create_only_put_never_replaces_a_stored_file(storage: Storage, size: int) -> None:
    """Two writers picking one name: the second is refused and the first file stays as it was; a
    free name is written as by any put. No part of the refused upload stays in the bucket."""
    key = "users/ada/output/cat_00001_.png"
    first = b"first" * 3
    await storage.put(key, aiter_chunks(first), "image/png")
    later = b"L" * size
    with pytest.raises(KeyTakenError, match=r"cat_00001_\.png"):
        await storage.put(key, aiter_chunks(later, 300_000), "image/png", create_only=True)
    assert await read_all(storage.get(key)) == first
    assert await storage.list("users/ada/") == [key]  # nothing half-written beside it
    assert await storage.put("users/ada/output/cat_00002_.png", aiter_chunks(later), create_only=True) == size
    assert await read_all(storage.get("users/ada/output/cat_00002_.png")) == later
    if isinstance(storage, S3Storage):
        uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket)
        assert uploads.get("Uploads", []) == []


async def test_a_plain_put_still_replaces(storage: Storage) -> None:
    """A node's fixed name (no counter) is written over, as ComfyUI writes over it."""
    await storage.put("users/ada/output/fixed.png", aiter_chunks(b"old"))
    await storage.put("users/ada/output/fixed.png", aiter_chunks(b"new"))
    assert await read_all(storage.get("users/ada/output/fixed.png")) == b"new"


async def test_a_bucket_that_does_not_answer_is_told_apart_from_a_refusal() -> None:
    """Nothing listens at the endpoint: every call says the store is unavailable (try again later),
    a StorageError as any storage failure, not a botocore error the caller cannot know."""
    dead = f"http://127.0.0.1:{free_port()}"
    settings = S3Settings(endpoint_url=dead, access_key_id="t", secret_access_key="t", region="us-east-1")
    storage = open_storage("s3://nowhere/files", settings)
    with pytest.raises(StorageUnavailableError, match="no answer"):
        await storage.put("users/ada/output/x.png", aiter_chunks(b"x"))
    with pytest.raises(StorageUnavailableError):
        await storage.list("users/ada/")
    with pytest.raises(StorageUnavailableError):
        await storage.size("users/ada/output/x.png")


async def test_a_download_cut_off_midway_is_told_apart_from_a_missing_file() -> None:
    """The bucket answered, then the connection broke while the file streamed: the store is
    unavailable (a later try may do), not a failure botocore's caller cannot know."""

    class CutOff:
        def __init__(self) -> None:
            self.reads = 0

        def read(self, size: int) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise ResponseStreamingError(error="connection reset by peer")
            return b"x" * size

        def close(self) -> None:
            return None

    class Bucket:
        def get_object(self, **_: Any) -> dict[str, Any]:
            return {"Body": CutOff()}

    storage = S3Storage(Bucket(), "b")  # type: ignore[arg-type]  # the one call get makes
    with pytest.raises(StorageUnavailableError, match="connection reset"):
        async for _ in storage.get("users/ada/input/x.png"):
            pass
