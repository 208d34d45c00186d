"""A participant's inputs and outputs in user-file storage: ``/upload/image``, ``/upload/mask``, ``/view``.

Every key is built by ``services.protocol.jobs.storage_key`` from the logged-in participant's name,
so one participant's request can never name another's files.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

from fastapi import UploadFile
from pydantic import ValidationError

from services.protocol.jobs import FileRef, storage_key
from services.queue_manager.api.errors import upload_limit
from services.queue_manager.catalogues import MARKUP
from services.storage import Storage, aiter_chunks, holds
from services.storage.base import CHUNK_SIZE, KeyConflictError, KeyTakenError, StorageError

NAME_TRIES = 5  # uploads of one name at the same moment, each taking the next free one

UNSAFE_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}


class FileProblem(ValueError):
    """A file request a participant can fix; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def file_ref(filename: str, subfolder: str, kind: str) -> FileRef:
    if kind not in ("input", "output", "temp"):
        raise FileProblem(400, f"type must be input, output or temp, not {kind!r}")
    try:
        return FileRef(filename=filename, subfolder=subfolder.strip("/"), type=kind)
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise FileProblem(400, f"invalid file name: {message}") from None


def upload_ref(filename: str, subfolder: str, kind: str) -> FileRef:
    """``file_ref`` for a name a participant gives a new file: one that holds markup is refused. The
    stock frontend lists her uploads in its combo menus as HTML (each entry's content, never an
    attribute), so such a name would put elements on her page, or on anyone's who loads a workflow
    naming it."""
    ref = file_ref(filename, subfolder, kind)
    if MARKUP.search(ref.filename) or MARKUP.search(ref.subfolder):
        shown = f"{ref.subfolder}/{ref.filename}".lstrip("/")
        raise FileProblem(
            400,
            f"{shown[:120]!r} holds markup (a '<' followed by a letter, '/', '!' or '?'), which the "
            "page would show as HTML: rename the file (a '<' followed by a space is fine)",
        )
    return ref


def listable(name: str) -> bool:
    """Whether an input's name may be listed on her page: not one with markup (``upload_ref``),
    which she may have stored before such names were refused."""
    return MARKUP.search(name) is None


INLINE_TYPES = re.compile(r"^(image/(png|jpeg|webp|gif|avif|bmp)|video/[\w.+-]+|audio/[\w.+-]+)$")
"""Media types a browser may show in place: images, video and audio cannot run script. Anything else
(SVG, HTML, PDF, text, unknown) is sent as an attachment, so opening it never renders it in the site."""


USER_FILE_POLICY = (
    "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; sandbox"
)
"""For participants' files served back (``/view``): opened directly, even an SVG or HTML file runs
nothing and reaches nothing (a sandboxed, opaque origin)."""


def content_type(filename: str) -> str:
    guessed = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    return "application/octet-stream" if guessed in UNSAFE_TYPES else guessed


def disposition(filename: str, media_type: str) -> str:
    """``Content-Disposition`` for a participant's file: inline only for images, video and audio;
    the name as RFC 6266 ``filename*`` (UTF-8) with an ASCII fallback, never breaking the header."""
    kind = "inline" if INLINE_TYPES.match(media_type) else "attachment"
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class UserFiles:
    def __init__(
        self, storage: Storage, user: str, max_upload_bytes: int, max_user_bytes: int | None = None
    ) -> None:
        """``max_user_bytes``: what the participant's whole folder may hold (``QM_MAX_USER_FILES_BYTES``;
        None: no quota)."""
        self.storage = storage
        self.user = user
        self.max_upload_bytes = max_upload_bytes
        self.max_user_bytes = max_user_bytes

    def key(self, ref: FileRef) -> str:
        return storage_key(self.user, ref)

    async def open(self, ref: FileRef) -> tuple[int, AsyncIterator[bytes]]:
        """The size and a stream of a stored file; 404 when this participant has no such file."""
        size = await self.storage.size(self.key(ref))
        if size is None:
            raise FileProblem(
                404, f"you have no {ref.type} file {ref.subfolder}/{ref.filename}".replace(" /", " ")
            )
        return size, self.storage.get(self.key(ref))

    async def exists(self, ref: FileRef) -> bool:
        return await self.storage.exists(self.key(ref))

    async def inputs(self) -> list[str]:
        """Names of this participant's uploads, relative to their input folder."""
        prefix = f"users/{self.user}/input/"
        return [key.removeprefix(prefix) for key in await self.storage.list(prefix)]

    async def save_upload(self, upload: UploadFile, ref: FileRef, overwrite: bool) -> FileRef:
        """Store an upload; without ``overwrite`` a different file of that name gets ``name (1).ext``.
        The file goes from the parser's spool to storage chunk by chunk, never whole in memory."""
        size = await upload_size(upload, self.max_upload_bytes)
        return await self._save(ref, overwrite, size, lambda: upload_chunks(upload))

    async def save(self, data: bytes, ref: FileRef, overwrite: bool) -> FileRef:
        """Store bytes made here (a merged mask) as ``save_upload`` stores an upload."""
        return await self._save(ref, overwrite, len(data), lambda: aiter_chunks(data))

    async def read(self, ref: FileRef, limit: int) -> bytes:
        """A stored file's bytes; 404 when there is none, 413 past ``limit`` (nothing read then)."""
        size, chunks = await self.open(ref)
        if size > limit:
            where = f"{ref.subfolder}/{ref.filename}".lstrip("/")
            raise FileProblem(413, f"{where} is {size} bytes, more than the {limit} this can read")
        return b"".join([chunk async for chunk in chunks])

    async def _check_quota(self, size: int) -> None:
        """Refuse (413) a file that would take the participant's folder past ``max_user_bytes``:
        one participant uploading in a loop would fill the file store everyone shares."""
        if self.max_user_bytes is None:
            return
        used = sum((await self.storage.sizes(f"users/{self.user}/")).values())
        if used + size > self.max_user_bytes:
            raise FileProblem(
                413,
                f"your files take {_mib(used)} of the {_mib(self.max_user_bytes)} each participant may keep "
                f"(QM_MAX_USER_FILES_BYTES), and this {_mib(size)} would pass it: nothing was stored. Reuse "
                "a file you uploaded before, or ask the organizer to raise the quota (stack config "
                "queue.maxFilesMbPerUser, then pulumi up)",
            )

    async def _save(
        self, ref: FileRef, overwrite: bool, size: int, chunks: Callable[[], AsyncIterator[bytes]]
    ) -> FileRef:
        """With ``overwrite`` the file is stored under ``ref``; else under the first of ``ref``,
        ``name (1).ext``, ... that is free or holds these very bytes, the name taken in one step
        with the write (an upload that takes it meanwhile sends this one on to the next)."""
        await self._check_quota(size)
        if overwrite:
            await self._put(ref, chunks, create_only=False)
            return ref
        for _ in range(NAME_TRIES):
            name, stored = await self._free_name(ref, chunks, size)
            try:
                if not stored:
                    await self._put(name, chunks, create_only=True)
                return name
            except KeyTakenError:
                continue
        raise FileProblem(
            409,
            f"{ref.filename!r} and the names after it were taken by other uploads meanwhile: upload it again",
        )

    async def _put(self, ref: FileRef, chunks: Callable[[], AsyncIterator[bytes]], create_only: bool) -> None:
        try:
            await self.storage.put(
                self.key(ref), chunks(), content_type(ref.filename), create_only=create_only
            )
        except KeyConflictError:
            where = f"{ref.subfolder}/{ref.filename}".lstrip("/")
            raise FileProblem(
                409,
                f"{where!r}: you have a file and a folder of the same name in that place already "
                "(like 'a.png' and 'a.png/b.png'): choose another name or subfolder",
            ) from None
        except KeyTakenError:
            raise
        except StorageError as exc:
            raise FileProblem(502, f"the file store refused the upload: {exc}") from None

    async def _free_name(
        self, ref: FileRef, chunks: Callable[[], AsyncIterator[bytes]], size: int
    ) -> tuple[FileRef, bool]:
        """The first of ``ref``, ``name (1).ext``, ... that is free or holds these bytes (True),
        from one listing of the names that begin as ``ref``'s: as ComfyUI names an upload."""
        stem, dot, ext = ref.filename.rpartition(".")
        stem, ext = (stem, f".{ext}") if dot else (ext, "")
        taken = await self.storage.sizes(f"{self.key(ref).rpartition('/')[0]}/{stem}")
        candidate, number = ref, 1
        while (stored := taken.get(self.key(candidate))) is not None:
            if stored == size and await holds(self.storage, self.key(candidate), chunks(), size):
                return candidate, True
            candidate = ref.model_copy(update={"filename": f"{stem} ({number}){ext}"})
            number += 1
        return candidate, False


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB ({size} bytes)"


async def upload_size(upload: UploadFile, limit: int) -> int:
    """The upload's size, refusing files over ``limit`` (``QM_MAX_UPLOAD_BYTES``) with a message
    that says so (the request's size was checked by ``BodyLimit``; this is the file's own)."""
    size = upload.size
    if size is None:  # not from the multipart parser, which counts it as it spools
        size = 0
        async for chunk in upload_chunks(upload):
            size += len(chunk)
    if size > limit:
        raise FileProblem(413, f"{upload.filename!r}: {upload_limit(limit).message}")
    return size


async def upload_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    """The upload's bytes from its start, a chunk at a time (read again for each use)."""
    await upload.seek(0)
    while chunk := await upload.read(CHUNK_SIZE):
        yield chunk
