"""Keep a lease alive while its job runs, and carry the owner's cancel request back to the runner.

Heartbeats go every ``heartbeat_seconds`` (a third of the lease by default), each held open by
the queue manager until the next one is due (``wait``), or answered the moment the owner cancels:
a cancel reaches the runner at once, not at the next heartbeat, with no more calls than before.
A reply with ``cancel: true`` sets ``cancel``; a 409 (the lease expired and the job moved on, or
the job was ended at its pool's maximum job time, answered at once too) sets ``lost``, after which
the worker must stop the job and report nothing.

The first call goes ``FIRST_CALL_SECONDS`` after the lease was granted: a job done sooner (a no-model
graph) costs the queue manager no call and no connection torn down mid-reply, and a cancel made in
that moment is in the first reply. For a prepared job staged while the queue manager answers its
start (``confirmed``), the first call waits for that answer, and none is made when it says no.

Once ComfyUI is done with the job (``ran``: its outputs may still be on their way to storage, which
may be slow or away) the job holds no GPU, and the next call says so (``ran=true``) at once, cutting
short the one held open: the pool's maximum job time, which frees GPUs from hung nodes, must not end
a job whose outputs are being stored, losing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from services.protocol.workers import HeartbeatReply
from services.worker.queue_client import LeaseLostError, QueueClient

log = logging.getLogger(__name__)
FIRST_CALL_SECONDS = 0.25


class LeaseKeeper:
    def __init__(
        self,
        queue: QueueClient,
        job_id: str,
        token: str,
        every: float,
        heard: Callable[[HeartbeatReply, float], None] | None = None,
        confirmed: Awaitable[bool] | None = None,
        ran: asyncio.Event | None = None,
    ) -> None:
        self.queue, self.job_id, self.token, self.every = queue, job_id, token, every
        self.confirmed = confirmed
        self.ran = ran or asyncio.Event()  # never set: nothing to say
        # every reply and when its call was sent (time.monotonic): is the prepared job still held?
        self.heard = heard
        self.cancel = asyncio.Event()
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LeaseKeeper:
        self._task = asyncio.create_task(self._beat(), name=f"lease-{self.job_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        renew = False  # the lease was just granted: the first call only listens for a cancel
        if self.confirmed is not None and not await self.confirmed:
            return  # never this worker's lease
        await asyncio.sleep(min(FIRST_CALL_SECONDS, self.every))
        said_ran = False
        while True:
            due = loop.time() + self.every
            hold = 0.0 if self.cancel.is_set() else self.every  # nothing more to wait for once cancelled
            sent = time.monotonic()
            ran = self.ran.is_set()
            try:
                call = self.queue.heartbeat(self.job_id, self.token, hold, renew, ran=ran)
                reply = await (call if said_ran or ran else self._until_ran(call))
            except _Ran:
                renew = True
                continue  # the call held open is cut short: say it at once
            except LeaseLostError:
                log.warning("lease on job %s lost: stopping it", self.job_id)
                self.lost.set()
                return
            except Exception as exc:  # retries are exhausted: keep trying while the job runs
                log.warning("heartbeat for job %s failed: %s", self.job_id, exc)
            else:
                if self.heard is not None:
                    self.heard(reply, sent)
                if reply.cancel and not self.cancel.is_set():
                    log.info("job %s: cancel requested", self.job_id)
                    self.cancel.set()
            renew, said_ran = True, said_ran or ran
            if said_ran:
                await asyncio.sleep(max(0.0, due - loop.time()))
            else:  # or at once when ComfyUI is done with the job
                await self._until_ran_or(max(0.0, due - loop.time()))

    async def _until_ran_or(self, seconds: float) -> None:
        """Wait ``seconds``, or until ``ran``. asyncio.wait, not wait_for: on Python 3.11 wait_for
        swallows the keeper's own cancel when ``ran`` is set in that moment (the run's end sets
        both), and the keeper beat on for ever while its job waited to be reported."""
        ran = asyncio.ensure_future(self.ran.wait())
        try:
            await asyncio.wait({ran}, timeout=seconds)
        finally:
            ran.cancel()

    async def _until_ran(self, call: Awaitable[HeartbeatReply]) -> HeartbeatReply:
        """The call's reply, or ``_Ran`` (the call cancelled) when ComfyUI is done with the job first."""
        replied = asyncio.ensure_future(call)
        ran = asyncio.ensure_future(self.ran.wait())
        try:
            await asyncio.wait({replied, ran}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ran.cancel()
            if not replied.done():
                replied.cancel()  # cut short (``_Ran``), or the keeper is cancelled
        if not replied.done() or replied.cancelled():
            raise _Ran
        return replied.result()


class _Ran(Exception):
    """ComfyUI was done with the job while a heartbeat was held open: it is sent again saying so."""
