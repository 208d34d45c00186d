"""The agent's single ``/ws`` connection to ComfyUI, with events routed per ``prompt_id``.

Job events reach only the socket whose ``clientId`` submitted the job, so the agent keeps exactly
one socket under its own client id (a second one would replace the first) and reconnects it
whenever it drops. A runner subscribes to its ``prompt_id`` *before* submitting, so no event is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import websockets

log = logging.getLogger(__name__)
Event = tuple[str, dict[str, Any]]


class EventStream:
    def __init__(self, ws_url: str, client_id: str) -> None:
        self.url = f"{ws_url}?clientId={client_id}"
        self.client_id = client_id
        self.connected = asyncio.Event()
        self._queues: dict[str, asyncio.Queue[Event]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="comfyui-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def subscribe(self, prompt_id: str) -> asyncio.Queue[Event]:
        return self._queues.setdefault(prompt_id, asyncio.Queue())

    def unsubscribe(self, prompt_id: str) -> None:
        self._queues.pop(prompt_id, None)

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                async with websockets.connect(self.url, max_size=None, ping_interval=20) as socket:
                    self.connected.set()
                    delay = 0.05
                    async for message in socket:
                        self._route(message)
            except (OSError, websockets.WebSocketException) as exc:
                log.debug("ComfyUI socket down: %r", exc)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _route(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            return  # preview frames: not forwarded (participants see the outputs)
        event = json.loads(message)
        data = event.get("data") or {}
        queue = self._queues.get(str(data.get("prompt_id", "")))
        if queue is not None:
            queue.put_nowait((str(event.get("type")), data))
