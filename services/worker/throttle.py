"""A rate limit for frequent job events that never reorders them.

Each throttled kind has a token bucket: ``BURST`` events of it go out at once (ComfyUI sends a node's
steps and images back to back), then one every ``1 / rate`` seconds. An event that cannot go yet is
held: only the newest event of each kind, in the order they arrived. Held events go out from the
oldest as their kinds' tokens come, so what is sent is always a subsequence of what arrived, in
ComfyUI's order. A held event of a ``droppable`` kind (a preview image: a newer frame follows) that
would hold up newer events is dropped instead. ``take`` hands the held events back to a caller that
must decide about them now (a node event that makes them stale, or the end of the job).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection

from services.protocol.workers import JobEvent

BURST = 2


class Bucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int = BURST) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = self.burst, time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> bool:
        """Spend a token if there is one."""
        self._refill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def wait(self) -> float:
        """Seconds until the next token."""
        self._refill()
        return max(0.0, (1 - self.tokens) / self.rate)


class Throttle:
    def __init__(
        self,
        rates: dict[str, float],
        release: Callable[[JobEvent], None],
        droppable: Collection[str] = (),
    ) -> None:
        self.buckets = {kind: Bucket(rate) for kind, rate in rates.items()}
        self.droppable = frozenset(droppable)
        self._release = release
        self._held: list[JobEvent] = []
        self._timer: asyncio.TimerHandle | None = None

    def handles(self, kind: str) -> bool:
        return kind in self.buckets

    def offer(self, event: JobEvent) -> None:
        """Send the event now, or hold it (in place of a held one of its kind) until it may go."""
        self._held = [held for held in self._held if held.type != event.type]
        self._held.append(event)
        self._pump()

    def _pump(self) -> None:
        self.stop()
        while self._held:
            head = self._held[0]
            if self.buckets[head.type].take():
                self._release(self._held.pop(0))
            elif head.type in self.droppable and len(self._held) > 1:
                self._held.pop(0)  # it would hold up newer events: a newer one of its kind follows
            else:
                break
        if self._held:
            wait = self.buckets[self._held[0].type].wait()
            self._timer = asyncio.get_running_loop().call_later(wait, self._pump)

    def take(self) -> list[JobEvent]:
        """The held events, oldest first; they are no longer held."""
        self.stop()
        held, self._held = self._held, []
        return held

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
