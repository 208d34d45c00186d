"""``/ws`` (and ``/api/ws``): the participant's job events as ComfyUI's own WebSocket messages.

On connect the socket gets ``status`` (with ``sid``, the client id the frontend sends back with each
prompt), and, when the job that client id submitted runs (a tab reconnecting), ``executing {node}``
naming its running node, as ComfyUI does; a first ``feature_flags`` message from the frontend is
answered with the server's flags.
As in ComfyUI, a job's events reach only the socket whose ``clientId`` submitted it
(``execution_start``, ``execution_cached``, ``executing``, ``progress``, ``progress_state``,
``executed``, previews, the job's end, then ``executing`` with ``node: null``, which is what makes
the frontend end the run); for a prompt sent without a ``client_id`` every socket of the user gets
its ``progress``, ``progress_state``, previews and ``execution_interrupted``, and nobody the rest.
``status`` (``queue_remaining`` = the participant's unfinished jobs) goes to every socket of the
user whenever one of their jobs is queued, starts on its GPU (just before its ``execution_start``,
where ComfyUI takes the prompt from its queue: a worker leases the next job while the last one
still runs, so the lease is not the start) or ends (before the last ``executing``, as ComfyUI
orders them). Messages are built by ``services.protocol.comfyui``.

One message is not ComfyUI's: ``comfy-workshop.place`` ``{prompt_id, place, waiting}`` when the
participant's next waiting job moves in the shared line (``background.position_loop``). The stock
frontend hands a message type it does not know only to an extension that listens for it, as it
does custom nodes' messages; the workshop's ``notice.js`` redraws "My place in line" on it.
Only the owner's sockets ever receive an event: the stream is per user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.websockets import WebSocketState

from services.protocol import comfyui
from services.protocol.events import EventType, UserEvent
from services.protocol.jobs import Job, JobError, JobState
from services.queue_manager.workspaces.deps import Context, session_user
from services.queue_manager.workspaces.routes_info import server_features

router = APIRouter()
STARTS = "execution_start"
UNADDRESSED = frozenset({"progress", "progress_state", "b_preview"})
"""What ComfyUI sends every socket for a prompt that came without a ``client_id``."""
MAX_REMEMBERED = 256


class Audience:
    """What this socket knows of the participant's jobs: which client id submitted each (looked up
    once per job), and which are unfinished as far as its stream has told. A ``status`` counts
    those, so it says what ComfyUI's would say at that point of the stream, also when the jobs have
    moved on since (a short job's events come with its completion, and the next job may have ended
    by the time the last one's end is sent)."""

    def __init__(self, ctx: Context, sid: str, unfinished: set[str]) -> None:
        self.ctx, self.sid = ctx, sid
        self.unfinished = unfinished
        self._clients: dict[str, str | None] = {}

    async def client_of(self, job_id: str) -> str | None:
        if job_id not in self._clients:
            if len(self._clients) >= MAX_REMEMBERED:
                self._clients.pop(next(iter(self._clients)))
            job = await self.ctx.store.get(job_id)
            self._clients[job_id] = job.client_id if job is not None else None
        return self._clients[job_id]

    async def hears(self, job_id: str, kind: str) -> bool:
        """Whether this socket gets ``kind`` of that job, as ComfyUI addresses its messages."""
        client = await self.client_of(job_id)
        return client == self.sid if client is not None else kind in UNADDRESSED

    def status(self) -> dict[str, Any]:
        return comfyui.status(len(self.unfinished))

    def ended(self, job_id: str) -> None:
        self.unfinished.discard(job_id)
        self._clients.pop(job_id, None)


async def tell_running_node(websocket: WebSocket, ctx: Context, sid: str, jobs: list[Job]) -> None:
    """A tab that (re)connects while the job it submitted runs hears the node that runs, as ComfyUI
    tells it (``executing {node}``, no prompt id): the frontend redraws that node as running."""
    for job in jobs:
        node = ctx.store.events.running_nodes.of(job.id) if job.state is JobState.RUNNING else None
        if node is not None and job.client_id == sid:
            await send(websocket, comfyui.message("executing", {"node": node}))


async def send(websocket: WebSocket, message: dict[str, Any]) -> None:
    await websocket.send_text(json.dumps(message))


async def send_event(websocket: WebSocket, audience: Audience, event: UserEvent) -> None:
    """A GPU's ComfyUI event, to the socket that submitted the job; previews as binary frames."""
    comfy = event.comfy or {}
    kind = str(comfy.get("type"))
    if not await audience.hears(event.job_id, kind):
        return
    if kind == "b_preview":
        frame = comfyui.preview_frame(comfy.get("data") or {})
        if frame is not None:
            await websocket.send_bytes(frame)
    else:
        await send(websocket, comfy)


async def statuses_for(ctx: Context, user: str, data: dict[str, Any]) -> int:
    """How many ``status`` messages ComfyUI sends for this end: one, but for a deleted waiting
    prompt two when it was the last one waiting, and one for a whole cleared queue."""
    if data.get("ran", True):
        return 1
    if "statuses" in data:
        return int(data["statuses"])
    jobs = await ctx.store.list_jobs(user)
    return 1 if any(job.state is JobState.QUEUED for job in jobs) else 2


async def send_end(
    websocket: WebSocket, ctx: Context, user: str, audience: Audience, event: UserEvent
) -> None:
    """The job's end, the new ``status``, then ``executing {node: null}``. A job deleted while it
    waited ends with the status only (``statuses_for``)."""
    data = event.data
    ran = data.get("ran", True)
    end = comfyui.ending(
        event.job_id,
        JobState(data["state"]),
        JobError.model_validate(data["error"]) if data.get("error") else None,
        int(data.get("timestamp") or 0),
    )
    if ran and await audience.hears(event.job_id, end["type"]):
        await send(websocket, end)
    idle = ran and await audience.client_of(event.job_id) == audience.sid
    audience.ended(event.job_id)
    for _ in range(await statuses_for(ctx, user, data)):
        await send(websocket, audience.status())
    if idle:
        await send(websocket, comfyui.idle(event.job_id))


def place_message(event: UserEvent) -> dict[str, Any]:
    """Where the participant's next waiting job is in the shared line (the workshop's own message)."""
    data = {
        "prompt_id": event.job_id,
        "place": event.data.get("position"),
        "waiting": event.data.get("waiting"),
    }
    return comfyui.message(comfyui.PLACE, data)


async def forward(
    websocket: WebSocket, ctx: Context, user: str, audience: Audience, event: UserEvent
) -> None:
    if event.type is EventType.FINISHED:
        await send_end(websocket, ctx, user, audience, event)
    elif event.type is EventType.QUEUED:
        audience.unfinished.add(event.job_id)
        await send(websocket, audience.status())
    elif event.type is EventType.POSITION:
        await send(websocket, place_message(event))
    elif event.comfy:
        if event.comfy.get("type") == STARTS:
            await send(websocket, audience.status())
        await send_event(websocket, audience, event)


async def pump_events(
    websocket: WebSocket, ctx: Context, user: str, audience: Audience, stream: AsyncIterator[UserEvent]
) -> None:
    async for event in stream:
        await forward(websocket, ctx, user, audience, event)


async def read_client(websocket: WebSocket, ctx: Context) -> None:
    """Answer the frontend's ``feature_flags``; ignore anything else it says (binary frames too,
    as ComfyUI does)."""
    flags = json.dumps({"type": "feature_flags", "data": server_features(ctx.store.settings)})
    with contextlib.suppress(WebSocketDisconnect):
        while (message := await websocket.receive())["type"] != "websocket.disconnect":
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                if json.loads(message.get("text") or "null").get("type") == "feature_flags":
                    await websocket.send_text(flags)


@router.websocket("/ws")
async def workspace_socket(websocket: WebSocket, user: str, ctx: Context) -> None:
    if await session_user(websocket) != user:
        await websocket.close(code=4401, reason=f"log in as {user} first: open /w/login")
        return
    await websocket.accept()
    sid = websocket.query_params.get("clientId") or uuid.uuid4().hex
    async with ctx.store.events.subscribe(user) as stream:
        jobs = await ctx.store.list_jobs(user)
        audience = Audience(ctx, sid, {job.id for job in jobs if not job.state.finished})
        await send(websocket, comfyui.status(len(audience.unfinished), sid))
        await tell_running_node(websocket, ctx, sid, jobs)
        tasks = {
            asyncio.create_task(read_client(websocket, ctx)),
            asyncio.create_task(pump_events(websocket, ctx, user, audience, stream)),
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
