"""Forward a job's ComfyUI events to the queue manager: progress throttled, everything batched.

``progress`` is limited to ``rate`` events per second per job (the latest value wins: a value held
back is sent when its window opens, unless a newer node event made it stale). Other events pass
in order. Sending happens on a background task, so a slow queue manager never slows the job;
events are gathered for ``linger`` seconds into one batch, so a short job costs one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from services.protocol.workers import JobEvent

log = logging.getLogger(__name__)
Sink = Callable[[list[JobEvent]], Awaitable[None]]
MAX_BATCH = 256


class EventForwarder:
    def __init__(self, sink: Sink, rate: float = 10.0, linger: float = 0.05) -> None:
        self.sink = sink
        self.interval = 1.0 / rate
        self.linger = linger
        self._closed = asyncio.Event()
        self._buffer: list[JobEvent] = []
        self._held: JobEvent | None = None
        self._last_progress = -1e9
        self._wake = asyncio.Event()
        self._closing = False
        self._sender = asyncio.create_task(self._send_loop(), name="event-forwarder")
        self._release: asyncio.TimerHandle | None = None

    def add(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "progress":
            self._progress(JobEvent(type=kind, data=data))
            return
        self._drop_held()
        self._push(JobEvent(type=kind, data=data))

    def _progress(self, event: JobEvent) -> None:
        wait = self._last_progress + self.interval - time.monotonic()
        if wait <= 0 and self._held is None:
            self._last_progress = time.monotonic()
            self._push(event)
            return
        self._held = event
        if self._release is None:
            self._release = asyncio.get_running_loop().call_later(max(wait, 0), self._let_held_go)

    def _let_held_go(self) -> None:
        self._release = None
        held, self._held = self._held, None
        if held is not None:
            self._last_progress = time.monotonic()
            self._push(held)

    def _drop_held(self) -> None:
        self._held = None

    def _push(self, event: JobEvent) -> None:
        self._buffer.append(event)
        self._wake.set()

    async def _send_loop(self) -> None:
        while not (self._closing and not self._buffer):
            await self._wake.wait()
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), timeout=self.linger)
            self._wake.clear()
            while self._buffer:
                batch, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
                try:
                    await self.sink(batch)
                except Exception as exc:  # events are best effort; the outcome is reported separately
                    log.warning("could not forward %d events: %s", len(batch), exc)

    async def close(self) -> None:
        """Send what is buffered (a held progress value is dropped) and stop."""
        if self._release is not None:
            self._release.cancel()
        self._drop_held()
        self._closing = True
        self._closed.set()
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender
