"""A participant's live event stream: ``GET /api/events`` upgraded to a WebSocket.

Text frames are ``UserEvent`` JSON (queued, position, started, progress, node, outputs, finished)
for the logged-in user's jobs only. Log in with the session cookie or HTTP Basic on the upgrade
request; without either the socket is closed with code 1008 (policy violation).
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status

from services.queue_manager.api.deps import logged_in, shared
from services.queue_manager.events import Subscription
from services.queue_manager.socket_slots import CLOSE_CODE, SocketSlots
from services.queue_manager.store import Store

router = APIRouter(tags=["events"])


@router.websocket("/api/events")
async def events(websocket: WebSocket) -> None:
    """Stream the caller's job events until they disconnect."""
    store = shared(websocket, "store", Store)
    principal = await logged_in(websocket)
    if principal is None:
        await websocket.close(status.WS_1008_POLICY_VIOLATION, "log in first (session cookie or HTTP Basic)")
        return
    slots = shared(websocket, "socket_slots", SocketSlots)
    with slots.hold(principal.user) as admitted:
        if not admitted:
            await websocket.accept()
            await websocket.close(CLOSE_CODE, slots.refusal(principal.user))
            return
        await websocket.accept()
        async with store.events.subscribe(principal.user) as stream:
            sender = asyncio.create_task(_forward(websocket, stream))
            try:
                await _until_closed(websocket)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)


async def _until_closed(websocket: WebSocket) -> None:
    """Read until the client leaves; whatever it sends (text or binary) is ignored: clients have
    nothing to say on this stream."""
    with contextlib.suppress(WebSocketDisconnect):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass


async def _forward(websocket: WebSocket, stream: Subscription) -> None:
    async for event in stream:
        await websocket.send_text(event.model_dump_json())
