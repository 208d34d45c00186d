"""User files in a local directory (the local stack, and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from pathlib import Path

from services.storage.base import CHUNK_SIZE, FileMissingError, KeyConflictError, KeyTakenError, check_key

PARTIAL = re.compile(r"\..+\.[0-9a-f]{32}\.part")
"""A write still under way: ``.<name>.<uuid hex>.part`` beside the file it becomes (``put``). Only
such names are left out of listings: a participant's own ``notes.part`` is listed like any file."""


class LocalStorage:
    """Writes go to a temporary sibling first and are renamed into place, so readers never see halves.
    A ``create_only`` write is hard-linked into place instead: the link fails when the name exists."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        content_type: str = "application/octet-stream",
        *,
        create_only: bool = False,
    ) -> int:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a file stands where a folder of the key goes
            raise self._conflict(key) from None
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        written = 0
        try:
            with partial.open("wb") as handle:
                async for chunk in chunks:
                    handle.write(chunk)
                    written += len(chunk)
            self._place(partial, key, create_only)
        finally:
            partial.unlink(missing_ok=True)
        return written

    def _place(self, partial: Path, key: str, create_only: bool) -> None:
        """Put the finished ``partial`` file in place under ``key``."""
        if not create_only:
            try:
                os.replace(partial, self._path(key))
            except IsADirectoryError:
                raise self._conflict(key) from None
            return
        try:
            os.link(partial, self._path(key))
        except FileExistsError as exc:
            if self._path(key).is_dir():  # a folder of other keys, not a file of this one
                raise self._conflict(key) from None
            raise KeyTakenError(f"{key!r} is stored already in {self.url}: nothing was written") from exc

    def _conflict(self, key: str) -> KeyConflictError:
        return KeyConflictError(
            f"{key!r} cannot be stored in {self.url}: a file and a folder would have the same name "
            "there (like 'a.png' and 'a.png/b.png'); nothing was written"
        )

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

    async def version(self, key: str) -> str | None:
        """Its inode, size and modification time: a ``put`` renames a new file into place, whose
        inode differs from the one it replaces even when both are written within one clock tick."""
        try:
            stat = self._path(key).stat()
        except FileNotFoundError:
            return None
        return f"{stat.st_ino}-{stat.st_size}-{stat.st_mtime_ns}"

    async def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    async def list(self, prefix: str = "") -> list[str]:
        """Walks only the folder that ``prefix`` names (``users/ada/in`` walks ``users/ada``)."""
        folder, _, _ = prefix.rpartition("/")
        start = self._folder(folder)
        if start is None:
            return []
        base = f"{folder}/" if folder else ""
        return sorted(key for key in _walk(start, base) if key.startswith(prefix))

    async def sizes(self, prefix: str = "") -> dict[str, int]:
        found = {}
        for key in await self.list(prefix):
            with contextlib.suppress(FileNotFoundError):  # removed since the walk
                found[key] = self._path(key).stat().st_size
        return found

    def _folder(self, folder: str) -> Path | None:
        """The real folder under the root for ``folder``, or None when no stored key can lie in it.

        Like the whole-root walk it replaces, it never enters a symlinked folder.
        """
        if not folder:
            return self.root
        parts = folder.split("/")
        if any(part in ("", ".", "..") for part in parts):
            return None
        path = self.root
        for part in parts:
            path = path / part
            if path.is_symlink() or not path.is_dir():
                return None
        return path


def _walk(folder: Path | str, base: str) -> Iterator[str]:
    """Keys of the finished files below ``folder`` (partial uploads and unreadable folders skipped)."""
    try:
        with os.scandir(folder) as scan:
            entries = list(scan)
    except OSError:
        return
    for entry in entries:
        key = base + entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path, f"{key}/")
        elif entry.is_file() and not PARTIAL.fullmatch(entry.name):
            yield key
