"""Each participant's ComfyUI user data (saved workflows, templates, settings), kept in Redis.

ComfyUI keeps these as files under ``user/<user>/``; here each participant has two Redis hashes, so
the data survives restarts (AOF) and travels with the queue snapshot, and no participant's key can
name another's. Workflows are small JSON documents; caps on each file, on the number of files and on
their bytes together (``QM_MAX_SAVED_BYTES``) keep one participant from filling the Redis that holds
everyone's queue.

| key | type | holds |
|---|---|---|
| ``{p}:ws:ud:{user}`` | hash | relative path -> file bytes |
| ``{p}:ws:udmeta:{user}`` | hash | relative path -> ``"<size> <modified ms>"`` |
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from services.queue_manager.errors import WorkshopClosed
from services.queue_manager.keys import Keys
from services.queue_manager.scripts import DeleteFileArgs, SaveFileArgs, Scripts

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_FILES_PER_USER = 2000
TEMPLATES_FILE = "comfy.templates.json"
"""The frontend's saved node templates: none yet reads as an empty list, not a missing file."""
ACCOUNT_FOLDERS = frozenset({"workflows", "subgraphs"})
"""Folders the frontend lists on every start: an account without files has them, empty."""


class UserDataError(ValueError):
    """A request a participant can fix: ``status`` is the HTTP answer ComfyUI would give."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    modified: int

    def relative_to(self, directory: str) -> FileInfo:
        prefix = f"{directory.rstrip('/')}/" if directory else ""
        return FileInfo(self.path.removeprefix(prefix), self.size, self.modified)

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "modified": self.modified, "created": self.modified}


def clean_path(path: str) -> str:
    """A user-data path as stored: relative, ``/``-separated, without ``..`` or empty parts."""
    parts = path.replace("\\", "/").strip("/").split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UserDataError(403, f"{path!r} is not a valid file name: use a relative path without '..'")
    if len(path) > 512 or any(ord(ch) < 32 for ch in path):
        raise UserDataError(400, f"{path[:60]!r} is too long or has control characters")
    return "/".join(parts)


class UserData:
    """One participant's files. Every method takes paths relative to that participant's root."""

    def __init__(self, redis: Redis, user: str, prefix: str, max_bytes: int, scripts: Scripts) -> None:
        self._redis, self._max_bytes, self._scripts = redis, max_bytes, scripts
        self._user, self._prefix = user, prefix
        self._files = Keys(prefix).user_data(user)
        self._meta = Keys(prefix).user_data_meta(user)

    async def read(self, path: str) -> bytes | None:
        value = await self._redis.hget(self._files, clean_path(path))
        return _bytes(value) if value is not None else None

    async def info(self, path: str) -> FileInfo | None:
        path = clean_path(path)
        raw = await self._redis.hget(self._meta, path)
        return _parse_meta(path, raw) if raw is not None else None

    async def write(self, path: str, body: bytes, overwrite: bool = True, source: str = "") -> FileInfo:
        """Save ``body`` at ``path`` (``overwrite`` False: 409 when it exists), or with ``source``
        move that file there in the same step: its bytes and place count no more (a rename near
        the budget stays allowed). The caps are checked and the file written in one Lua step
        (save_file.lua), so saves sent at once cannot pass them together."""
        if path.replace("\\", "/").endswith("/"):
            raise UserDataError(
                400, f"{path!r} names a folder: save the file under a name after the last '/'"
            )
        path = clean_path(path)
        if len(body) > MAX_FILE_BYTES:
            raise UserDataError(413, f"{path!r} is {len(body)} bytes; at most {MAX_FILE_BYTES} are kept")
        info = FileInfo(path, len(body), int(time.time() * 1000))
        args = SaveFileArgs(
            self._prefix,
            self._user,
            path,
            body,
            f"{info.size} {info.modified}",
            int(overwrite),
            source,
            MAX_FILES_PER_USER,
            self._max_bytes,
        )
        outcome, *total = await self._scripts.run(args)
        if outcome == "closed":
            raise WorkshopClosed()
        if outcome != "ok":
            raise self._refusal(str(outcome), path, source, total)
        return info

    def _refusal(self, outcome: str, path: str, source: str, total: list[Any]) -> UserDataError:
        """What save_file.lua's refusal tells the participant."""
        if outcome == "exists":
            return UserDataError(409, "File already exists")
        if outcome == "missing":
            return UserDataError(404, f"no file {source!r}")
        if outcome == "folder":
            return UserDataError(
                409, f"{path!r} and {total[0]!r}: one is the other's folder, so pick another name"
            )
        if outcome == "files":
            return UserDataError(413, f"you have {MAX_FILES_PER_USER} saved files: delete some first")
        return UserDataError(
            413,
            f"{path!r} would bring your saved files to {total[0]} bytes, more than the {self._max_bytes} "
            "kept per participant (QM_MAX_SAVED_BYTES): delete workflows you no longer need first",
        )

    async def delete(self, path: str) -> None:
        """Delete a file and its listing entry in one step (delete_file.lua)."""
        path = clean_path(path)
        outcome = (await self._scripts.run(DeleteFileArgs(self._prefix, self._user, path)))[0]
        if outcome == "closed":
            raise WorkshopClosed()
        if outcome == "missing":
            raise UserDataError(404, f"no file {path!r}")

    async def move(self, source: str, dest: str, overwrite: bool = True) -> FileInfo:
        body = await self.read(source)
        if body is None:
            raise UserDataError(404, f"no file {source!r}")
        return await self.write(dest, body, overwrite=overwrite, source=clean_path(source))

    async def listing(self, directory: str, recurse: bool) -> list[FileInfo]:
        """Files under ``directory`` (paths relative to it, none with a part starting with '.');
        raises 404 when it holds nothing, except for the folders every account has
        (``ACCOUNT_FOLDERS``), which are just empty."""
        folder = clean_path(directory)
        prefix = f"{folder}/"
        entries = await self._redis.hgetall(self._meta)
        found = [_parse_meta(_text(k), v) for k, v in entries.items() if _text(k).startswith(prefix)]
        if not found and folder not in ACCOUNT_FOLDERS:
            raise UserDataError(404, "Directory not found")
        relative = [f.relative_to(directory) for f in found]
        listed = (f for f in relative if (recurse or "/" not in f.path) and not hidden(f.path))
        return sorted(listed, key=lambda f: glob_order(f.path))


def glob_order(path: str) -> tuple[tuple[str, ...], str]:
    """Where ComfyUI's recursive glob lists ``path``: folder by folder (a folder's own files before
    its subfolders', ``aa/deep`` before ``sub``), each folder's names in order (ComfyUI's are in the
    disk's order, sorted on the recording machine; the frontend sorts its sidebars itself)."""
    *folders, name = path.split("/")
    return tuple(folders), name


def hidden(path: str) -> bool:
    """A name starting with '.' somewhere in ``path``: ComfyUI's listing (a glob) shows none."""
    return any(part.startswith(".") for part in path.split("/"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_meta(path: str, raw: bytes | str) -> FileInfo:
    size, modified = _text(raw).split()
    return FileInfo(path, int(size), int(modified))


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
