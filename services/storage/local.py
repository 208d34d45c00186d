"""User files in a local directory (the local stack, and tests)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

from services.storage.base import CHUNK_SIZE, FileMissingError, check_key


class LocalStorage:
    """Writes go to a temporary sibling first and are renamed into place, so readers never see halves."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], content_type: str = "application/octet-stream"
    ) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        written = 0
        try:
            with partial.open("wb") as handle:
                async for chunk in chunks:
                    handle.write(chunk)
                    written += len(chunk)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return written

    async def get(self, key: str, start: int = 0) -> AsyncIterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise FileMissingError(f"no stored file {key!r} in {self.url}")
        with path.open("rb") as handle:
            handle.seek(start)
            while chunk := handle.read(CHUNK_SIZE):
                yield chunk
                await asyncio.sleep(0)

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    async def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    async def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    async def list(self, prefix: str = "") -> list[str]:
        keys = (
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file() and not path.name.endswith(".part")
        )
        return sorted(key for key in keys if key.startswith(prefix))
