"""``/upload/image``, ``/upload/mask`` and ``/view`` (with ComfyUI's ``channel`` and ``preview``
conversions, see ``images``) on the participant's own files."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile as ReceivedFile

from services.protocol.jobs import FileRef, split_annotation
from services.queue_manager.workspaces.deps import UserFilesDep
from services.queue_manager.workspaces.files import (
    USER_FILE_POLICY,
    FileProblem,
    content_type,
    disposition,
    file_ref,
    upload_chunks,
    upload_ref,
    upload_size,
)
from services.queue_manager.workspaces.images import (
    MAX_IMAGE_BYTES,
    ImageProblem,
    convert,
    merge_mask,
    wants_conversion,
)

router = APIRouter()
UPLOADS = "/upload/"
"""Every upload route is under this path: ``BodyLimit`` gives those ``QM_MAX_UPLOAD_BYTES``, not
``QM_MAX_BODY_BYTES`` (``workspaces.UPLOAD_PATH``), declared or streamed, before any is read."""


NO_FILE = (  # as ComfyUI: 400, not a validation error
    "no file: send it as the multipart field 'image' with a file name "
    '(Content-Disposition: form-data; name="image"; filename="cat.png")'
)
"""What an upload without a file gets. A part without a file name is a text field to the form
parser, so it counts as none (it got 422, a validation dump echoing the bytes)."""


async def upload(
    files: UserFilesDep, image: UploadFile | str | None, kind: str, subfolder: str, overwrite: str
) -> Response:
    if not isinstance(image, ReceivedFile):  # see NO_FILE (the form's own class, not FastAPI's)
        return JSONResponse({"error": NO_FILE}, status_code=400)
    try:
        ref = upload_ref(image.filename or "", subfolder, kind or "input")
        saved = await files.save_upload(image, ref, overwrite in ("true", "1"))
    except FileProblem as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    return JSONResponse({"name": saved.filename, "subfolder": saved.subfolder, "type": saved.type})


@router.post(UPLOADS + "image")
async def upload_image(
    files: UserFilesDep,
    image: Annotated[UploadFile | str | None, File()] = None,
    type: Annotated[str, Form()] = "input",
    subfolder: Annotated[str, Form()] = "",
    overwrite: Annotated[str, Form()] = "",
) -> Response:
    """Store an image (or audio, video, 3D file) in the participant's input folder."""
    return await upload(files, image, type, subfolder, overwrite)


@router.post(UPLOADS + "mask")
async def upload_mask(
    files: UserFilesDep,
    image: Annotated[UploadFile | str | None, File()] = None,
    original_ref: Annotated[str, Form()] = "",
    type: Annotated[str, Form()] = "input",
    subfolder: Annotated[str, Form()] = "",
    overwrite: Annotated[str, Form()] = "",
) -> Response:
    """The mask editor's save: as ComfyUI, the mask's alpha goes onto the colours of the image it
    was painted on (``original_ref``, one of the participant's files), stored as a new input."""
    if not isinstance(image, ReceivedFile):  # see NO_FILE (the form's own class, not FastAPI's)
        return JSONResponse({"error": NO_FILE}, status_code=400)
    try:
        source = original_file(original_ref)
        original = await files.read(source, MAX_IMAGE_BYTES)
        await upload_size(image, files.max_upload_bytes)
        mask = b"".join([chunk async for chunk in upload_chunks(image)])
        merged = await merge_mask(original, mask, source.filename)
        ref = upload_ref(image.filename or "", subfolder, type or "input")
        saved = await files.save(merged, ref, overwrite in ("true", "1"))
    except (FileProblem, ImageProblem) as exc:
        status = exc.status if isinstance(exc, FileProblem) else 400
        return JSONResponse({"error": str(exc)}, status_code=status)
    return JSONResponse({"name": saved.filename, "subfolder": saved.subfolder, "type": saved.type})


def original_file(original_ref: str) -> FileRef:
    """The image a mask was painted on: ``{"filename", "subfolder", "type"}`` (type ``output``
    unless given or annotated, as in ComfyUI)."""
    try:
        original = json.loads(original_ref)
    except json.JSONDecodeError:
        original = None
    if not isinstance(original, dict) or not isinstance(original.get("filename"), str):
        raise FileProblem(
            400,
            "original_ref must name the image the mask was painted on, as JSON like "
            '{"filename": "cat.png", "subfolder": "", "type": "input"}',
        )
    filename, kind = split_annotation(original["filename"], str(original.get("type") or "output"))
    return file_ref(filename, str(original.get("subfolder") or ""), kind)


@router.get("/view")
@router.get("/viewvideo")
async def view(request: Request, files: UserFilesDep) -> Response:
    """A file of the participant: ``filename`` (``"x.png [output]"`` allowed), ``subfolder``, ``type``."""
    query = request.query_params
    if "filename" not in query:
        return Response(status_code=404)  # as ComfyUI: no file named, none found
    if not query["filename"]:
        return JSONResponse({"error": "filename is empty: name the file to view"}, status_code=400)
    if ".." in query.get("subfolder", "").replace("\\", "/").split("/"):
        return JSONResponse({"error": "subfolder must stay inside your folder (no '..')"}, status_code=403)
    filename, kind = split_annotation(query.get("filename", ""), query.get("type", "output") or "output")
    try:
        ref = file_ref(filename, query.get("subfolder", ""), kind)
        size, chunks = await files.open(ref)
    except FileProblem as exc:
        if exc.status == 404:
            return Response(status_code=404)  # as ComfyUI answers a file it does not have: no body
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    channel, preview = query.get("channel", ""), query.get("preview", "")
    if wants_conversion(channel, preview):
        return await converted(ref.filename, size, chunks, channel, preview)
    media_type = content_type(ref.filename)
    headers = {**file_headers(ref.filename, media_type), "Content-Length": str(size)}
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


def file_headers(filename: str, media_type: str) -> dict[str, str]:
    """A participant's file is never a page of the site: attachment unless media, sandboxed anyway."""
    return {
        "Content-Disposition": disposition(filename, media_type),
        "Content-Security-Policy": USER_FILE_POLICY,
        "X-Content-Type-Options": "nosniff",
    }


async def converted(
    filename: str,
    size: int,
    chunks: AsyncIterator[bytes],
    channel: str,
    preview: str,
) -> Response:
    """The image with only some channels, or as a smaller preview (ComfyUI's ``channel``/``preview``)."""
    if size > MAX_IMAGE_BYTES:
        message = (
            f"{filename} is {size} bytes, too large to convert: ask for it without 'channel' or 'preview'"
        )
        return JSONResponse({"error": message}, status_code=413)
    data = b"".join([chunk async for chunk in chunks])
    try:
        body, media_type = await convert(data, filename, channel, preview)
    except ImageProblem as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return Response(body, media_type=media_type, headers=file_headers(filename, media_type))
