"""A rate limit for frequent job events: at most one release per ``interval``, the latest value of each
kind winning.

An event offered while the window is open goes straight out. Within a closed window the newest event
of each kind is held and all held kinds go out together, in arrival order, when the window opens.
``take`` hands the held events back to a caller that must decide about them now (a node event that
makes them stale, or the end of the job).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from services.protocol.workers import JobEvent


class Throttle:
    def __init__(self, interval: float, release: Callable[[JobEvent], None]) -> None:
        self.interval = interval
        self._release = release
        self._held: dict[str, JobEvent] = {}
        self._last = -1e9
        self._timer: asyncio.TimerHandle | None = None

    def offer(self, event: JobEvent) -> None:
        wait = self._last + self.interval - time.monotonic()
        if wait <= 0 and not self._held:
            self._last = time.monotonic()
            self._release(event)
            return
        self._held.pop(event.type, None)
        self._held[event.type] = event
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(max(wait, 0), self._open)

    def _open(self) -> None:
        self._timer = None
        held = self.take()
        if held:
            self._last = time.monotonic()
        for event in held:
            self._release(event)

    def mark(self) -> None:
        """Count an event sent past the throttle as a release: the next window starts now."""
        self._last = time.monotonic()

    def take(self) -> list[JobEvent]:
        """The held events, oldest first; they are no longer held."""
        held, self._held = list(self._held.values()), {}
        return held

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
