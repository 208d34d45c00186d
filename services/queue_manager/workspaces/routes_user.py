"""``/users``, ``/settings`` and ``/userdata``: each participant's own profile, settings and saved workflows.

The workspace runs the frontend in ComfyUI's single-user mode (``/users`` has no ``users`` list), so
it never shows ComfyUI's user picker: the participant is whoever logged in to the queue manager.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from services.queue_manager.workspaces.deps import Participant, UserDataDep, UserSettingsDep
from services.queue_manager.workspaces.settings import SettingsError
from services.queue_manager.workspaces.userdata import TEMPLATES_FILE, FileInfo, UserDataError

router = APIRouter()
USERDATA_PATH = re.compile(r"^/w/[^/]+(?:/api)?/userdata/")


def flag(request: Request, name: str) -> bool:
    """ComfyUI's query flags: only ``true`` is true (the frontend also sends ``undefined``)."""
    return request.query_params.get(name, "").lower() == "true"


def overwrite_flag(request: Request) -> bool:
    """``overwrite`` is on unless it is exactly ``false``, as in ComfyUI."""
    return request.query_params.get("overwrite", "true").lower() != "false"


def problem(exc: UserDataError | SettingsError) -> Response:
    status = exc.status if isinstance(exc, UserDataError) else 400
    return JSONResponse({"error": str(exc)}, status_code=status)


def file_answer(info: FileInfo, full_info: bool) -> dict[str, Any] | str:
    return info.as_json() if full_info else info.path


def raw_userdata_path(request: Request) -> str:
    """The still-encoded part after ``/userdata/``: ``%2F`` inside a name must not split it."""
    raw: str = request.scope.get("raw_path", request.url.path.encode()).decode()
    return USERDATA_PATH.sub("", raw, count=1)


def decoded(name: str) -> str:
    """A ``/userdata`` name as the participant meant it; 400 for one that is no UTF-8 (decoded with
    replacement, ``%FF`` and ``%FE`` would name one file, and saving one would overwrite the other)."""
    try:
        return unquote(name, errors="strict")
    except UnicodeDecodeError:
        raise UserDataError(
            400, f"{name[:80]!r} is not UTF-8 once decoded: encode the name as UTF-8"
        ) from None


@router.get("/users")
async def users(user: Participant) -> dict[str, Any]:
    """Single-user mode: the frontend keeps everything on the server, for this participant."""
    return {"storage": "server", "migrated": True}


@router.post("/users")
async def create_user(user: Participant) -> Response:
    return JSONResponse({"error": "participants are created by the organizer"}, status_code=400)


@router.get("/settings")
async def all_settings(settings: UserSettingsDep) -> dict[str, Any]:
    return await settings.all()


@router.post("/settings")
async def store_settings(request: Request, settings: UserSettingsDep) -> Response:
    try:
        values = json.loads(await request.body() or b"{}")
        if not isinstance(values, dict):
            raise SettingsError("settings must be a JSON object of id -> value")
        await settings.update(values)
    except ValueError as exc:  # a SettingsError, no JSON, or no UTF-8
        return JSONResponse({"error": f"cannot store settings: {exc}"}, status_code=400)
    return Response(status_code=200)


@router.get("/settings/{setting}")
async def one_setting(setting: str, settings: UserSettingsDep) -> Any:
    return await settings.get(setting)


@router.post("/settings/{setting}")
async def store_setting(setting: str, request: Request, settings: UserSettingsDep) -> Response:
    try:
        await settings.update({setting: json.loads(await request.body())})
    except ValueError as exc:  # a SettingsError, no JSON, or no UTF-8
        return JSONResponse({"error": f"cannot store setting {setting!r}: {exc}"}, status_code=400)
    return Response(status_code=200)


@router.get("/userdata")
async def list_userdata(request: Request, data: UserDataDep) -> Response:
    """Files under ``dir``: names, ``[name, *parts]`` (``split``) or full info objects."""
    directory = request.query_params.get("dir", "")
    if not directory:
        return PlainTextResponse("Directory not provided", status_code=400)
    try:
        found = await data.listing(directory, recurse=flag(request, "recurse"))
    except UserDataError as exc:
        return PlainTextResponse(str(exc), status_code=exc.status)
    if flag(request, "full_info"):
        return JSONResponse([f.as_json() for f in found])
    if flag(request, "split"):
        return JSONResponse([[f.path, *f.path.split("/")] for f in found])
    return JSONResponse([f.path for f in found])


@router.get("/userdata/{path:path}")
async def read_userdata(request: Request, data: UserDataDep) -> Response:
    try:
        path = decoded(raw_userdata_path(request))
        body = await data.read(path)
    except UserDataError as exc:
        return problem(exc)
    css = path == "user.css"
    if body is None and css:
        return Response("", media_type="text/css")  # the page always asks for it; none is fine
    if body is None and path == TEMPLATES_FILE:
        return JSONResponse([])
    if body is None:
        return Response(f"no file {path!r}", status_code=404)
    headers = {"X-Content-Type-Options": "nosniff", "Content-Disposition": "inline" if css else "attachment"}
    media = (
        "text/css" if css else ("application/json" if path.endswith(".json") else "application/octet-stream")
    )
    return Response(body, media_type=media, headers=headers)


@router.post("/userdata/{path:path}")
async def write_userdata(request: Request, data: UserDataDep) -> Response:
    """Save a file (``overwrite=false``: 409 when it exists) or move one (``<src>/move/<dest>``)."""
    source, moving, dest = raw_userdata_path(request).partition("/move/")
    overwrite = overwrite_flag(request)
    try:
        if moving and not dest:
            raise UserDataError(400, "a move names its destination: POST /userdata/<file>/move/<new name>")
        if moving:
            info = await data.move(decoded(source), decoded(dest), overwrite=overwrite)
        else:
            info = await data.write(decoded(source), await request.body(), overwrite=overwrite)
    except UserDataError as exc:
        return problem(exc)
    return JSONResponse(file_answer(info, flag(request, "full_info")))


@router.delete("/userdata/{path:path}")
async def delete_userdata(request: Request, data: UserDataDep) -> Response:
    try:
        await data.delete(decoded(raw_userdata_path(request)))
    except UserDataError as exc:
        return problem(exc)
    return Response(status_code=204)
