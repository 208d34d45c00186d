"""``/ws``: the participant's job events in ComfyUI's own WebSocket message format.

On connect the socket gets ``status`` (with ``sid``, the client id the frontend sends back with each
prompt); a first ``feature_flags`` message from the frontend is answered with the server's flags.
Then every event of this participant's jobs arrives as ComfyUI sends it (``execution_start``,
``executing``, ``progress``, ``progress_state``, ``executed``, ``execution_success`` /
``execution_error`` / ``execution_interrupted``, then ``executing`` with ``node: null``, which is
what makes the frontend end the run), and a fresh ``status`` (``queue_remaining`` = the
participant's unfinished jobs) whenever one of their jobs is queued, starts or ends. Binary preview
frames (``b_preview`` events whose data carries base64 ``image`` and ``format``) are re-encoded as
ComfyUI's binary frame: 4-byte type 1, 4-byte format (1 JPEG, 2 PNG), image bytes.
Only the owner's sockets ever receive an event: the stream is per user.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.websockets import WebSocketState

from services.protocol.events import EventType, UserEvent
from services.queue_manager.workspaces.deps import Context, session_user
from services.queue_manager.workspaces.routes_info import server_features

router = APIRouter()
STATUS_EVENTS = {EventType.STARTED, EventType.FINISHED, EventType.POSITION}  # QUEUED carries its own
PREVIEW_FORMATS = {"jpeg": 1, "jpg": 1, "png": 2}


async def status_message(ctx: Context, user: str, sid: str | None = None) -> dict[str, Any]:
    jobs = await ctx.store.list_jobs(user)
    queue_remaining = sum(1 for job in jobs if not job.state.finished)
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid:
        data["sid"] = sid
    return {"type": "status", "data": data}


def idle_message(job_id: str) -> dict[str, Any]:
    """ComfyUI's last word on every job, success or not: the frontend ends the run on it."""
    return {"type": "executing", "data": {"node": None, "display_node": None, "prompt_id": job_id}}


def preview_frame(data: dict[str, Any]) -> bytes | None:
    """ComfyUI's binary preview frame from a forwarded ``b_preview`` event, or None if malformed."""
    try:
        image = base64.b64decode(data["image"], validate=True)
    except (KeyError, ValueError, TypeError):
        return None
    kind = PREVIEW_FORMATS.get(str(data.get("format", "jpeg")).lower(), 1)
    return struct.pack(">II", 1, kind) + image


async def forward(websocket: WebSocket, ctx: Context, user: str, event: UserEvent) -> None:
    comfy = event.comfy
    if comfy and comfy.get("type") == "b_preview":
        frame = preview_frame(comfy.get("data") or {})
        if frame is not None:
            await websocket.send_bytes(frame)
    elif comfy:
        await websocket.send_text(json.dumps(comfy))
    if event.type is EventType.FINISHED:
        await websocket.send_text(json.dumps(idle_message(event.job_id)))
    if event.type in STATUS_EVENTS:
        await websocket.send_text(json.dumps(await status_message(ctx, user)))


async def pump_events(
    websocket: WebSocket, ctx: Context, user: str, stream: AsyncIterator[UserEvent]
) -> None:
    async for event in stream:
        await forward(websocket, ctx, user, event)


async def read_client(websocket: WebSocket, ctx: Context) -> None:
    """Answer the frontend's ``feature_flags``; ignore anything else it says."""
    flags = json.dumps({"type": "feature_flags", "data": server_features(ctx.store.settings)})
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            text = await websocket.receive_text()
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                if json.loads(text).get("type") == "feature_flags":
                    await websocket.send_text(flags)


@router.websocket("/ws")
async def workspace_socket(websocket: WebSocket, user: str, ctx: Context) -> None:
    if await session_user(websocket) != user:
        await websocket.close(code=4401, reason=f"log in as {user} first: open /w/login")
        return
    await websocket.accept()
    sid = websocket.query_params.get("clientId") or uuid.uuid4().hex
    async with ctx.store.events.subscribe(user) as stream:
        await websocket.send_text(json.dumps(await status_message(ctx, user, sid)))
        tasks = {
            asyncio.create_task(read_client(websocket, ctx)),
            asyncio.create_task(pump_events(websocket, ctx, user, stream)),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    if websocket.client_state is WebSocketState.CONNECTED:
        with contextlib.suppress(RuntimeError):
            await websocket.close()
