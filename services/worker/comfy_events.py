"""The agent's single ``/ws`` connection to ComfyUI, with events routed per ``prompt_id``.

Job events reach only the socket whose ``clientId`` submitted the job, so the agent keeps exactly
one socket under its own client id (a second one would replace the first) and reconnects it
whenever it drops. A runner subscribes to its ``prompt_id`` *before* submitting, so no event is lost
while the socket stays open; ComfyUI drops what it sends while the socket is down, which ``watch``
tells the runner afterwards.
Binary preview frames carry no ``prompt_id``; they go to the job ComfyUI last sent an event about
(until its final ``executing {node: null}``) as ``b_preview`` events (``services.protocol.comfyui``).
When an open socket closes, ``on_drop`` is called: ComfyUI may be gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import websockets

from services.protocol.comfyui import preview_data

log = logging.getLogger(__name__)
Event = tuple[str, dict[str, Any]]


class EventStream:
    def __init__(self, ws_url: str, client_id: str) -> None:
        self.url = f"{ws_url}?clientId={client_id}"
        self.client_id = client_id
        self.connected = asyncio.Event()
        self.dropped = asyncio.Event()  # set while a socket that was open is closed
        self._queues: dict[str, asyncio.Queue[Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._running: str | None = None  # the prompt ComfyUI last reported working on
        self.on_drop: Callable[[], None] | None = None
        self.opened = 0  # sockets opened so far: a reconnect is a new number

    def watch(self) -> Callable[[], bool]:
        """A check that is true while the socket open now has stayed open: every event ComfyUI sent
        this client id since ``watch`` was called has been received (ComfyUI sends an event only to
        the sockets connected at that moment, and drops it for a client id that has none)."""
        opened = self.opened if self.connected.is_set() else None
        return lambda: opened is not None and self.connected.is_set() and self.opened == opened

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
                    self.opened += 1
                    self.connected.set()
                    self.dropped.clear()
                    delay = 0.05
                    async for message in socket:
                        self._route(message)
            except (OSError, websockets.WebSocketException) as exc:
                log.debug("ComfyUI socket down: %r", exc)
            if self.connected.is_set():
                self.dropped.set()
                if self.on_drop is not None:
                    self.on_drop()
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _route(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._route_preview(message)
            return
        event = json.loads(message)
        kind, data = str(event.get("type")), event.get("data") or {}
        prompt_id = str(data.get("prompt_id") or "")
        if prompt_id:
            self._running = None if kind == "executing" and data.get("node") is None else prompt_id
        queue = self._queues.get(prompt_id)
        if queue is not None:
            queue.put_nowait((kind, data))

    def _route_preview(self, frame: bytes) -> None:
        """A preview frame names no job: it belongs to the one running (ComfyUI runs one at a time)."""
        queue = self._queues.get(self._running or "")
        data = preview_data(frame) if queue is not None else None
        if queue is not None and data is not None:
            queue.put_nowait(("b_preview", {**data, "prompt_id": self._running}))
