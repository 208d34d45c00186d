"""The pull front door (Verda instances, local GPUs): register, long-poll claim, run, repeat.

The GPU never waits for the queue or for storage. While a job runs, the worker prepares the next:
a job the queue manager holds for it (it stays queued, and an idle worker of the pool takes it at
once if one asks), whose files it fetches. The moment ComfyUI is done with the running job, the
worker hands the prepared one to ComfyUI and, once ComfyUI has it, starts it (``start``: the queue
manager leases it, or names a job that ranks ahead of it now, or says an idle worker took it; a
job that is not this worker's after all is stopped in ComfyUI and nothing of it is kept or seen),
while the finished job's outputs stream to storage and its completion is reported. The same
``start`` holds the job after it (``hold_next``), so with work queued the worker goes from start to
start. An idle worker's claim holds the job after the one it leases in the same way
(``claim?hold_next=1``), so the first job of a run is followed by a ``start`` too. The worker
claims ahead (``claim?prepare=1``, long-polling) only when the claim or ``start`` had nothing to
hold, and claims as an idle worker only when nothing was held by the time its GPU fell free.

SIGTERM (or SIGINT) stops claiming at once and gives a prepared job back; a running job gets
``shutdown_grace_seconds`` to finish, and is otherwise interrupted and released (requeued without
counting an attempt). The loop then returns, and the process exits 0. A prepared job is also
given back when ComfyUI goes down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from services.protocol.workers import Lease, RegisterReply, StartReply
from services.worker.agent import Agent, LeaseResult
from services.worker.comfy_client import ComfyUnavailableError
from services.worker.job_files import Prepared
from services.worker.queue_client import LeaseLostError, QueueClient, QueueRefusedError
from services.worker.runner import NEXT_SUBMIT_SECONDS, Handoff, Relay

log = logging.getLogger(__name__)
# What runs next once the GPU is free: the event set when ComfyUI is done with the job launched
# (None: none was, claim as usual), and the job ``start`` held to run after that one.
Next = tuple[asyncio.Event | None, Lease | None]


@dataclass
class Pace:
    """When a prepared job's ``start`` is asked. After the job is in ComfyUI, so the call's own CPU
    on the worker never delays the submit, unless jobs hold the GPU for less than about two of the
    call's round trips: then the answer, which names the job after (``hold_next``), is what the GPU
    waits for, and it is asked at once, while the job is staged."""

    launched: float = 0.0  # when the last job was handed to the runner (``time.monotonic``)
    last_run: float = 0.0  # how long it held the GPU (launched to ComfyUI done with it)
    round_trip: float = 0.0  # how long the last ``start`` took to answer

    def freed(self) -> None:
        self.last_run = time.monotonic() - self.launched

    def at_once(self) -> bool:
        return self.last_run < 2 * self.round_trip


class PullWorker:
    def __init__(self, agent: Agent, queue: QueueClient) -> None:
        self.agent, self.queue = agent, queue
        self.settings = agent.settings
        self.stopping = asyncio.Event()
        self.jobs_started = 0
        self.jobs_done = 0
        self.max_jobs: int | None = None
        self.running: set[asyncio.Task[None]] = set()  # jobs on the GPU or storing their outputs
        self.holding = asyncio.Event()  # the job being prepared is claimed (held for this worker)
        self.held_since = 0.0
        self.freed: tuple[float, datetime] | None = None  # when the GPU last fell idle (monotonic, wall)
        self.first_claim_at: float | None = None
        self.relay = Relay()  # the last job launched's outputs and report wait for the next one's submit
        self.in_comfyui = asyncio.Event()  # the last job launched is in ComfyUI (or never will be)
        self.pace = Pace()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info(
                "stopping: no more claims; the current job gets %.0fs", self.settings.shutdown_grace_seconds
            )
        self.stopping.set()

    async def register(self) -> RegisterReply | None:
        """Register (again), waiting out a ComfyUI that is down or restarting (its catalogue and
        device are part of the registration) and a queue manager out of reach: either used to end
        the worker's loop, and with it the process. None when stopped meanwhile; a refusal
        (``QueueRefusedError``: a wrong token) still stops the worker, naming the setting."""
        while not self.stopping.is_set():
            try:
                reply = await self.agent.register(self.queue)
            except ComfyUnavailableError as exc:
                log.warning("cannot register while ComfyUI does not answer (%s): waiting for it", exc)
                await self._until_comfyui_up()
            except httpx.HTTPError as exc:  # its retries ran out; a refusal (a wrong token) stops the worker
                log.warning("cannot register with the queue manager at %s: %s", self.queue.base_url, exc)
            else:
                log.info("registered as %s in pool %s", reply.worker_id, self.settings.pool)
                return reply
            await self._pause(1.0)  # do not spin while the trouble lasts
        return None

    async def run(self, max_jobs: int | None = None) -> None:
        """Claim and run jobs until stopped (or ``max_jobs`` are done, for tests and benchmarks)."""
        self.max_jobs = max_jobs
        reply = await self.register()
        if reply is None:
            return
        announce = asyncio.create_task(self._announce_draining(reply.worker_id))
        try:
            while True:
                await self._loop(reply)
                if self.running:  # a job given back unrun does not count: maybe claim again
                    await asyncio.wait(self.running)
                if not self._wanted():
                    break
        finally:
            self.relay.none_follows()
            if self.running:
                await asyncio.wait(self.running)
            if self.stopping.is_set():
                await asyncio.wait({announce}, timeout=6.0)
            announce.cancel()

    def _wanted(self, after: int = 0) -> bool:
        """Whether a job is wanted after ``after`` more are launched (not stopping, ``max_jobs``)."""
        wanted = self.max_jobs is None or self.jobs_started + after < self.max_jobs
        return wanted and not self.stopping.is_set()

    async def _loop(self, reply: RegisterReply) -> None:
        gpu_free: asyncio.Event | None = None  # set once ComfyUI is done with the job it runs
        held: Lease | None = None  # the job the last start held for this worker to run next
        while self._wanted():
            if gpu_free is None:
                lease = await self._claim(reply)
                if lease is None:
                    continue
                gpu_free, held = self._launch_claimed(lease, reply)
            self.holding.clear()
            if held is not None:
                self.holding.set()  # nothing to claim ahead, so nothing races the GPU's end
            ahead = asyncio.create_task(self._prepare(reply, held)) if self._wanted() else None
            if ahead is None and held is not None:
                await self._give_back(held)  # stopped since it was held
            await self._until(gpu_free)
            self.freed = (time.monotonic(), datetime.now(UTC))
            self.pace.freed()
            gpu_free, held = await self._next(ahead, reply)
            if gpu_free is None:
                self.relay.none_follows()
        self.relay.none_follows()
        if held is not None:
            await self._give_back(held)  # stopped as start held it

    def _launch_claimed(self, lease: Lease, reply: RegisterReply) -> tuple[asyncio.Event, Lease | None]:
        """Launch what an idle claim leased; the job it held after it (``hold_next``) runs next."""
        if lease.held is not None:
            self.held_since = time.monotonic()  # heartbeats sent from now on know of this hold
        return self._launch(lease.model_copy(update={"held": None}), reply.heartbeat_seconds), lease.held

    def _launch(
        self,
        lease: Lease,
        heartbeat_seconds: float,
        prepared: Prepared | None = None,
        confirmed: asyncio.Future[bool] | None = None,
    ) -> asyncio.Event:
        """Run the job in the background (its outputs are stored while the next one runs); the
        event is set once ComfyUI is done with it."""
        gpu_free = asyncio.Event()
        self.jobs_started += 1
        self.pace.launched = time.monotonic()
        self.in_comfyui, follows = self.relay.link()
        handoff = Handoff(prepared, gpu_free, self._idle_since(lease), self.in_comfyui, follows, confirmed)
        task = asyncio.create_task(self._run(lease, heartbeat_seconds, handoff))
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        task.add_done_callback(lambda _: gpu_free.set())
        return gpu_free

    def _idle_since(self, lease: Lease) -> float | None:
        """When the GPU fell idle, if this job was queued by then (the gap the admin sees)."""
        if self.freed is None or lease.job.queued_at > self.freed[1]:
            return None
        return self.freed[0]

    async def _until(self, event: asyncio.Event) -> None:
        """Wait for ``event`` or a stop."""
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({asyncio.create_task(event.wait()), stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()

    async def _prepare(
        self, reply: RegisterReply, held: Lease | None = None
    ) -> tuple[Lease, Prepared | None] | None:
        """Fetch the files of the job ``start`` held for this worker or, when it held none, claim
        the next job ahead (held, not leased) first; None when none came. A hold granted while
        this is cancelled is given back. The claim and the fetch go once the job just launched is
        in ComfyUI (``NEXT_SUBMIT_SECONDS`` at most), so they never hold up that submit."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.in_comfyui.wait(), NEXT_SUBMIT_SECONDS)
        try:
            while held is None:
                held = await self.queue.claim(reply.worker_id, reply.claim_wait_seconds, prepare=True)
                self.held_since = time.monotonic()
            self.holding.set()
            return held, await self.agent.prepare(held.job)
        except (httpx.HTTPError, QueueRefusedError) as exc:
            log.warning("could not prepare the next job: %s", exc)
        except asyncio.CancelledError:
            if held is not None:
                await asyncio.shield(self._give_back(held))
            raise
        if held is not None:
            await self._give_back(held)
        return None

    async def _give_back(self, held: Lease) -> None:
        """Return a job this worker has not run to the queue (no attempt counted)."""
        self.agent.files.discard(held.job.id)
        with contextlib.suppress(httpx.HTTPError, QueueRefusedError, LeaseLostError):
            await self.queue.release(held.job.id, held.token)
        log.info("prepared job %s given back", held.job.id)

    async def _next(
        self, ahead: asyncio.Task[tuple[Lease, Prepared | None] | None] | None, reply: RegisterReply
    ) -> Next:
        """The GPU is free: launch the prepared job, or what to run instead (None: claim as usual)."""
        if ahead is None:
            return None, None
        if not self.holding.is_set():
            ahead.cancel()  # nothing claimed ahead yet: claim as an idle worker instead
        with contextlib.suppress(asyncio.CancelledError):
            await ahead  # a held job's files are on their way: waiting beats claiming again
        found = None if ahead.cancelled() else ahead.result()
        if found is None:
            return None, None
        held, prepared = found
        if self.stopping.is_set() or not self.agent.comfyui_up:
            await self._give_back(held)  # stopping, or ComfyUI is down: someone else may run it
            return None, None
        if self.agent.lost_hold(held.job.id, self.held_since):
            self.agent.files.discard(held.job.id)  # a heartbeat said it moved on: not worth a try
            log.info("prepared job %s was taken by an idle worker or cancelled", held.job.id)
            return None, None
        return await self._start(held, prepared, reply)

    async def _start(self, held: Lease, prepared: Prepared | None, reply: RegisterReply) -> Next:
        """Start the prepared job, or what the queue manager says to run instead: the prepared job
        is no longer this worker's when an idle worker took it, it was cancelled, or a job queued
        since ranks ahead of it. It is staged and submitted to ComfyUI while the queue manager
        answers; an answer that says no, or none, stops it there (``Handoff.confirmed``), and what
        the answer names instead is launched once ComfyUI is done with it. While another job is
        wanted after it, the same call holds that one for this worker."""
        confirmed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        job = held.job.model_copy(update={"attempts": held.job.attempts + 1})  # as start counts it
        lease = held.model_copy(update={"prepared": False, "job": job})
        gpu_free = self._launch(lease, reply.heartbeat_seconds, prepared, confirmed)
        submitted = None if self.pace.at_once() else self.in_comfyui
        wanted_after = self._wanted()  # this job is launched (counted) already
        asked = asyncio.create_task(self._ask_start(held, reply, wanted_after, submitted))
        asked.add_done_callback(lambda done: confirmed.set_result(self._said_started(done)))
        answer = await asked
        if answer is not None and answer.held is not None:
            self.held_since = time.monotonic()  # heartbeats sent from now on know of this hold
        if answer is not None and answer.started:
            return gpu_free, answer.held
        await gpu_free.wait()  # stopped in ComfyUI, which holds no prompt now; nothing of it kept
        if answer is None:
            await self._give_back(held)
            return None, None
        self.agent.files.discard(held.job.id)
        log.info("prepared job %s moved on (taken by an idle worker, cancelled or outranked)", held.job.id)
        if answer.lease is None:
            return None, None  # nothing to run, so nothing was held either
        return self._launch(answer.lease, reply.heartbeat_seconds), answer.held

    async def _ask_start(
        self, held: Lease, reply: RegisterReply, hold_next: bool, in_comfyui: asyncio.Event | None
    ) -> StartReply | None:
        """The queue manager's answer to starting the prepared job; None when there is none (the job,
        already in ComfyUI, is then stopped there and given back). Asked once the job is in ComfyUI
        (``in_comfyui``, ``NEXT_SUBMIT_SECONDS`` at most), or at once without it (``Pace``)."""
        if in_comfyui is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(in_comfyui.wait(), NEXT_SUBMIT_SECONDS)
        asked = time.monotonic()
        try:
            answer = await self.queue.start(held.job.id, held.token, reply.worker_id, hold_next=hold_next)
            self.pace.round_trip = time.monotonic() - asked
            return answer
        except (httpx.HTTPError, QueueRefusedError, LeaseLostError) as exc:
            log.warning("could not start the prepared job %s: %s", held.job.id, exc)
            return None

    @staticmethod
    def _said_started(asked: asyncio.Task[StartReply | None]) -> bool:
        answer = None if asked.cancelled() or asked.exception() else asked.result()
        return answer is not None and answer.started

    async def _announce_draining(self, worker_id: str) -> None:
        """As soon as a stop is asked for, the admin page shows this worker as draining."""
        await self.stopping.wait()
        try:
            await self.queue.drain(worker_id)
        except (httpx.HTTPError, QueueRefusedError) as exc:
            log.warning("could not tell the queue manager this worker is draining: %s", exc)

    async def _claim(self, reply: RegisterReply) -> Lease | None:
        await self._until_comfyui_up()
        if not self.stopping.is_set():
            await self.agent.warm_up_if_owed()
        if not self.agent.comfyui_up:
            return None  # stopping, or stuck again during the warm-up: wait for it again
        if self.first_claim_at is None:
            self.first_claim_at = time.monotonic()
        hold_next = self._wanted(after=1)  # the job after the one claimed (not launched yet) is wanted
        claim = asyncio.create_task(
            self.queue.claim(reply.worker_id, reply.claim_wait_seconds, hold_next=hold_next)
        )
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({claim, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if claim.done():
            return await self._lease_or_reregister(claim)
        claim.cancel()  # a lease granted in this instant expires and is requeued by the queue manager
        with contextlib.suppress(asyncio.CancelledError):
            await claim
        return None

    async def _lease_or_reregister(self, claim: asyncio.Task[Lease | None]) -> Lease | None:
        try:
            return claim.result()
        except QueueRefusedError as exc:  # e.g. the queue manager forgot this worker: register again
            log.warning("claim refused (%s): registering again", exc)
            await self.register()
            return None
        except httpx.HTTPError as exc:  # retries exhausted: the queue manager is away for long; keep waiting
            log.warning("cannot reach the queue manager at %s: %s", self.queue.base_url, exc)
        await self._pause(1.0)  # do not spin while the trouble lasts
        return None

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def _until_comfyui_up(self) -> None:
        """Never claim a job while ComfyUI is down, restarting or silent: it would only be lost again."""
        if not self.agent.comfyui_up:
            log.info("waiting for ComfyUI to come back before claiming")
            told = bool(self.agent.comfy_server.problem)  # someone must act: the admin page says so
            if told:
                await self._register_again()
            stop = asyncio.create_task(self.stopping.wait())
            up = asyncio.create_task(self.agent.until_comfyui_up())
            await asyncio.wait({up, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            up.cancel()
            if told:
                await self._register_again()  # over: the admin page no longer shows it

    async def _register_again(self) -> None:
        """Registered again, the admin page shows what keeps this worker's ComfyUI from taking jobs
        (``WorkerCapabilities.problem``), or that nothing does any more."""
        with contextlib.suppress(httpx.HTTPError, QueueRefusedError, ComfyUnavailableError):
            await self.agent.register(self.queue)

    async def _run(self, lease: Lease, heartbeat_seconds: float, handoff: Handoff) -> None:
        try:
            await self._run_held(lease, heartbeat_seconds, handoff)
        finally:
            handoff.ended()

    async def _run_held(self, lease: Lease, heartbeat_seconds: float, handoff: Handoff) -> None:
        job = asyncio.create_task(self.agent.run_lease(lease, self.queue, heartbeat_seconds, handoff))
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({job, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not job.done():
            await asyncio.wait({job}, timeout=self.settings.shutdown_grace_seconds)
        if not job.done():
            log.warning("job %s did not finish within the grace period: releasing it", lease.job.id)
            job.cancel()
        try:
            result = await job
        except asyncio.CancelledError:
            return None
        except Exception:  # the outcome could not be reported: the lease expires and the job is requeued
            log.exception("job %s: could not be run or reported", lease.job.id)
            return
        log.info("job %s: %s", lease.job.id, result)
        if result in (LeaseResult.RELEASED, LeaseResult.MOVED):
            self.jobs_started -= 1  # given back unrun (ComfyUI was down), or not ours: it does not count
        else:
            self.jobs_done += 1


async def run_pull(agent: Agent, queue: QueueClient) -> None:
    worker = PullWorker(agent, queue)
    worker.install_signal_handlers()
    try:
        await agent.start(queue)
        await worker.run()
    finally:
        await agent.stop()
        await queue.aclose()
