"""The storage contract both implementations honour, and the key rules they share."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol, runtime_checkable

from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

CHUNK_SIZE = 1024 * 1024
log = logging.getLogger(__name__)


class StorageError(Exception):
    """A storage call failed in a way the caller should report (bad key, missing file, no access)."""


class StorageUnavailableError(StorageError):
    """The store did not answer (unreachable, timed out, or busy): the same call may work later."""


def patiently(patience: float) -> AsyncRetrying:
    """Tries of a storage call (``async for attempt in patiently(p): with attempt: ...``) while the
    store does not answer, with a growing pause, for ``patience`` seconds at most (0: one try);
    then its ``StorageUnavailableError`` is raised. Any other failure is raised at once."""
    return AsyncRetrying(
        retry=retry_if_exception_type(StorageUnavailableError),
        stop=stop_after_delay(patience),
        wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
        reraise=True,
        before_sleep=before_sleep_log(log, logging.WARNING),
    )


class FileMissingError(StorageError, FileNotFoundError):
    """The key names no stored file."""


class KeyTakenError(StorageError, FileExistsError):
    """A ``create_only`` put found a file under the key already: nothing was written."""


class KeyConflictError(StorageError):
    """A local store cannot hold the key: a file stands where it needs a folder, or a folder where
    it needs a file (``a.png`` and ``a.png/b.png``); nothing was written. A bucket has no folders."""


@runtime_checkable
class Storage(Protocol):
    """Keys are relative POSIX paths such as ``users/ada/output/cat_00001_.png``."""

    url: str

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        content_type: str = "application/octet-stream",
        *,
        create_only: bool = False,
    ) -> int:
        """Store the chunks under ``key`` (replacing any file there); return the byte count.

        With ``create_only`` the file is stored only if there is none under ``key`` when it is
        complete, checked and written in one step (no other writer can slip in between); else
        ``KeyTakenError`` is raised, the file there is left as it was and nothing of this one stays."""
        ...

    def get(self, key: str, start: int = 0) -> AsyncIterator[bytes]:
        """Stream the file from byte ``start`` on; raise ``FileMissingError`` when absent."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def size(self, key: str) -> int | None:
        """The stored size in bytes, or ``None`` when there is no such file."""
        ...

    async def version(self, key: str) -> str | None:
        """A tag of the stored file that changes whenever it is replaced (S3's ETag), or ``None``
        when there is no such file."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the file; removing a missing file is not an error."""
        ...

    async def list(self, prefix: str = "") -> list[str]:
        """Every key that starts with ``prefix``, sorted."""
        ...

    async def sizes(self, prefix: str = "") -> dict[str, int]:
        """Every key that starts with ``prefix``, with its stored size (one listing of a bucket)."""
        ...


def check_key(key: str) -> str:
    """Refuse keys that could leave the storage root or name a folder."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise StorageError(
            f"invalid storage key {key!r}: use a relative path like 'users/<name>/input/x.png' "
            "without '..', '.', empty parts or a leading '/'"
        )
    return key


async def aiter_chunks(data: bytes, size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    """Turn bytes already in memory into the chunk stream ``put`` takes."""
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def holds(storage: Storage, key: str, chunks: AsyncIterable[bytes], size: int) -> bool:
    """Whether ``key`` holds exactly the ``size`` bytes ``chunks`` streams: the stored size first
    (no download when it differs), then both streams' sha256."""
    if await storage.size(key) != size:
        return False
    return await _sha256(storage.get(key)) == await _sha256(chunks)


async def _sha256(chunks: AsyncIterable[bytes]) -> bytes:
    digest = hashlib.sha256()
    async for chunk in chunks:
        digest.update(chunk)
    return digest.digest()
