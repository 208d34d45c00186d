"""Forward a job's ComfyUI events to the queue manager: frequent ones throttled, everything batched,
nothing reordered.

``progress`` and ``progress_state`` may each go ``rate`` times a second, ``b_preview`` (preview
images) ``preview_rate`` times, after a burst of a few (``throttle``): a short node's steps and images
pass as ComfyUI sent them. What must wait is held, the newest of each kind, and goes out in the
order it arrived, so a preview never overtakes the step's ``progress`` nor falls behind the next
one (a held preview that would hold up newer progress is dropped). A node event makes a held
``progress`` (unless it is the node's first) or preview stale (dropped), but a held
``progress_state`` is sent before it: each one is ComfyUI's whole picture of the job's nodes, and
the last one (every node ``finished``) is what lets the participant's page stop showing the job as
running, so it is never dropped, not even at ``close``. Only the steps inside a node are throttled:
a ``progress_state`` in which a node starts or finishes goes out at once, in order, in place of a
held one (it carries every node's newer state), so the page hears every node's start and end as
ComfyUI sends them. Sending happens on a background task, so a slow queue manager never slows the
job; events are gathered for ``linger`` seconds into one batch. A job that ends with a completion or
failure takes what is still unsent with it (``hand_over``): a short job costs no round trip of its own.
Once ComfyUI is done with the job (``hold``), nothing more goes out on the timer: the report follows
within moments and carries it, however long the worker waits before reporting (the next job's
submit, the upload); ``close`` still sends it all when the job ends without a report.

A job submitted to ComfyUI before the queue manager said it is this worker's (a prepared job whose
``start`` is still being answered) has a ``gate``, that answer: nothing goes out before it is True,
and then everything held goes, in order; when it is False (or never comes), everything is dropped,
then and later, so nothing of a job that was not this worker's to run is ever seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from services.protocol.workers import MAX_EVENTS, JobEvent
from services.worker.throttle import Throttle

log = logging.getLogger(__name__)
Sink = Callable[[list[JobEvent]], Awaitable[None]]
KEPT = frozenset({"progress_state"})


class EventForwarder:
    def __init__(
        self,
        sink: Sink,
        rate: float = 10.0,
        linger: float = 0.05,
        preview_rate: float = 2.0,
        gate: asyncio.Future[bool] | None = None,
    ) -> None:
        self.sink = sink
        self.linger = linger
        self.gate = gate
        self._closed = asyncio.Event()
        self._buffer: list[JobEvent] = []
        rates = {"progress": rate, "progress_state": rate, "b_preview": preview_rate}
        self._steps = Throttle(rates, self._push, droppable={"b_preview"})
        self._wake = asyncio.Event()
        self._closing = False
        self._keep = 0  # how many of the last events the sender leaves unsent when it stops
        self._node_states: dict[str, str] = {}
        self._progressed: set[str] = set()  # nodes whose progress the queue manager has had
        self._sender = asyncio.create_task(self._send_loop(), name="event-forwarder")

    def add(self, kind: str, data: dict[str, Any]) -> None:
        event = JobEvent(type=kind, data=data)
        if kind == "progress_state" and self._changes_nodes(data):
            for held in self._steps.take():  # superseded: this state has every node's newer one
                if self._first_progress(held):
                    self._push(held)
            self._push(event)
            return
        if self._steps.handles(kind):
            self._steps.offer(event)
            return
        self._settle()
        self._push(event)

    def _changes_nodes(self, data: dict[str, Any]) -> bool:
        """Whether a node started or finished since the last ``progress_state`` (not just a step)."""
        nodes = data.get("nodes")
        items = nodes.items() if isinstance(nodes, dict) else ()
        shape = {str(n): str(s.get("state")) if isinstance(s, dict) else "" for n, s in items}
        changed, self._node_states = shape != self._node_states, shape
        return changed

    def _settle(self) -> None:
        """Before a node event or the end: held states go out first, held progress and previews are
        stale (but a node's first progress, which says the node reports steps, is kept)."""
        for event in self._steps.take():
            if event.type in KEPT or self._first_progress(event):
                self._push(event)

    def _first_progress(self, event: JobEvent) -> bool:
        return event.type == "progress" and str(event.data.get("node")) not in self._progressed

    def _push(self, event: JobEvent) -> None:
        if event.type == "progress":
            self._progressed.add(str(event.data.get("node")))
        self._buffer.append(event)
        self._wake.set()

    async def _send_loop(self) -> None:
        while not (self._closing and len(self._buffer) <= self._keep):
            await self._wake.wait()
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), timeout=self.linger)
            self._wake.clear()
            if not await self._open():
                self._buffer = []  # not this worker's job: none of it is seen
                continue
            while len(self._buffer) > self._keep:
                size = min(MAX_EVENTS, len(self._buffer) - self._keep)
                batch, self._buffer = self._buffer[:size], self._buffer[size:]
                try:
                    await self.sink(batch)
                except Exception as exc:  # events are best effort; the outcome is reported separately
                    log.warning("could not forward %d events: %s", len(batch), exc)

    async def _open(self) -> bool:
        """Whether the job's events may go out: at once without a ``gate``, otherwise once it is True.
        A gate that was cancelled or failed is no answer: nothing goes."""
        if self.gate is None:
            return True
        await asyncio.wait({self.gate})  # never cancels the gate, whatever happens to this wait
        return not self.gate.cancelled() and self.gate.exception() is None and self.gate.result()

    def hold(self) -> None:
        """ComfyUI is done with the job: what is buffered from now on waits for ``hand_over`` (or
        ``close``); only what one report could not carry still goes out."""
        self._keep = MAX_EVENTS

    async def close(self) -> None:
        """Send what is buffered and the last held ``progress_state`` (held progress is dropped unless
        it is its node's first), and stop."""
        self._keep = 0
        await self._stop()

    async def _stop(self) -> None:
        self._settle()
        self._closing = True
        self._closed.set()
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender

    async def hand_over(self) -> list[JobEvent]:
        """Stop as ``close`` does, but hand back the last events instead of sending them (at most
        ``MAX_EVENTS``, what one call may carry): the job's completion or failure takes them. What
        is already on its way, and any older overflow, is sent first, so nothing is reordered."""
        self._keep = MAX_EVENTS
        await self._stop()
        trailing, self._buffer = self._buffer, []
        return trailing
