"""``/upload/image``, ``/upload/mask`` and ``/view`` on the participant's own files."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.queue_manager.workspaces.deps import UserFilesDep
from services.queue_manager.workspaces.files import (
    MAX_UPLOAD_BYTES,
    FileProblem,
    content_type,
    file_ref,
)
from services.queue_manager.workspaces.prompts import split_annotation

router = APIRouter()


def refuse_large(request: Request) -> None:
    """Refuse an upload by its announced size before reading it."""
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > MAX_UPLOAD_BYTES + 64 * 1024:
        raise FileProblem(
            413, f"uploads are limited to {MAX_UPLOAD_BYTES // (1024 * 1024)} MB: scale the image down first"
        )


async def upload(
    request: Request, files: UserFilesDep, image: UploadFile, kind: str, subfolder: str, overwrite: str
) -> Response:
    try:
        refuse_large(request)
        ref = file_ref(image.filename or "", subfolder, kind or "input")
        saved = await files.save_upload(image, ref, overwrite in ("true", "1"))
    except FileProblem as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    return JSONResponse({"name": saved.filename, "subfolder": saved.subfolder, "type": saved.type})


@router.post("/api/upload/image")
async def upload_image(
    request: Request,
    files: UserFilesDep,
    image: UploadFile,
    type: Annotated[str, Form()] = "input",
    subfolder: Annotated[str, Form()] = "",
    overwrite: Annotated[str, Form()] = "",
) -> Response:
    """Store an image (or audio, video, 3D file) in the participant's input folder."""
    return await upload(request, files, image, type, subfolder, overwrite)


@router.post("/api/upload/mask")
async def upload_mask(
    request: Request,
    files: UserFilesDep,
    image: UploadFile,
    original_ref: Annotated[str, Form()] = "{}",
    type: Annotated[str, Form()] = "input",
    subfolder: Annotated[str, Form()] = "",
    overwrite: Annotated[str, Form()] = "",
) -> Response:
    """The mask editor's save: the painted image (with its alpha mask) stored as a new input.

    ComfyUI merges the mask into the original's alpha channel itself; the 1.27 mask editor already
    uploads the merged RGBA image, so it is stored as sent.
    """
    try:
        json.loads(original_ref)
    except json.JSONDecodeError:
        return JSONResponse({"error": "original_ref must be JSON"}, status_code=400)
    return await upload(request, files, image, type, subfolder, overwrite)


@router.get("/api/view")
@router.get("/api/viewvideo")
async def view(request: Request, files: UserFilesDep) -> Response:
    """A file of the participant: ``filename`` (``"x.png [output]"`` allowed), ``subfolder``, ``type``."""
    query = request.query_params
    filename, kind = split_annotation(query.get("filename", ""), query.get("type", "output") or "output")
    try:
        ref = file_ref(filename, query.get("subfolder", ""), kind)
        size, chunks = await files.open(ref)
    except FileProblem as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    headers = {"Content-Disposition": f'filename="{ref.filename}"', "Content-Length": str(size)}
    return StreamingResponse(chunks, media_type=content_type(ref.filename), headers=headers)
