"""Push front doors (serverless): a request brings a lease; the agent runs it, reports back, and asks
for the pool's next job within the same request until the queue has none for it.

The queue manager's dispatcher sends a job to the pool's endpoint as an async request carrying
the ``Lease``; ``reply_url``/``reply_token`` in it say where to report (the same lease routes the
pull worker uses) and ``chain`` names the request's chain: the moment ComfyUI is done with a job
the container asks ``POST /api/push/{chain}/next`` for another (the one the queue would give an
idle worker now), so its GPU waits neither for a new request nor for the finished job's upload and
report, which go on while the next job runs (``PushChain``). A 204 ends the request once every job
is reported; the queue manager waits at most the pool's ``linger_seconds`` for work before
answering it. Two shapes:

* Verda serverless containers: ``POST /lease`` with the Lease as JSON body; ``GET /health`` for the
  container's health check (503 until ComfyUI is up and warmed).
* RunPod serverless: ``handler(event)`` with the Lease in ``event["input"]``, started by
  ``runpod.serverless.start`` (the ``runpod`` package is imported only there).

Before its first lease a container syncs the models (a shared volume under its lock) and reports
that to ``WORKER_QUEUE_URL`` with ``WORKER_TOKEN``: for serverless pools the program sets it to the
queue manager's public URL (a container is not on the tailnet), where ``reply_url`` points too. The
admin page then shows the container starting with its sync's progress or why it cannot start, and
idle once it is ready. Each request brings its own ``reply_token``, good for that request's lease
and push calls only; registering always uses ``WORKER_TOKEN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Response
from pydantic import ValidationError

from services.protocol.workers import Lease
from services.worker.agent import Agent, LeaseResult
from services.worker.queue_client import LeaseLostError, QueueClient, QueueRefusedError
from services.worker.runner import Handoff, Relay
from services.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class PushError(Exception):
    """A pushed request that cannot be run as sent."""


# Set once the container is told to stop: the request in progress finishes its job (within the
# shutdown grace) but takes no further one of its chain. One container per process.
DRAINING = threading.Event()


class PushServer(uvicorn.Server):
    """uvicorn for ``verda_app``: a stop signal also ends the running request's chain."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        DRAINING.set()
        super().handle_exit(sig, frame)


async def run_pushed(agent: Agent, lease: Lease) -> dict[str, Any]:
    """Run a pushed lease and then, while its request's chain gives more, the next jobs of the
    pool (each the one the queue would give an idle worker then), reporting each to the queue
    manager named in the lease. Returns each job's outcome, in order, once all are reported."""
    if not lease.reply_url or not lease.reply_token:
        raise PushError(
            f"lease for job {lease.job.id} has no reply_url/reply_token: the dispatcher must fill them in "
            "for push pools, otherwise the outcome has nowhere to go"
        )
    queue = QueueClient(
        lease.reply_url, lease.reply_token, agent.settings.retry_seconds, holder=agent.settings.worker_id
    )
    chain = PushChain(agent, queue, lease)
    try:
        if queue.base_url not in agent.published_to:
            await publish_to(agent, lease.reply_url)
        await announce(queue, lease)  # a chained job's holder is named when the container takes it
        return {"jobs": await chain.run()}
    finally:
        await chain.close()
        await queue.aclose()


class PushChain:
    """The jobs of one push request, back to back on the GPU: the container asks for the next job
    the moment ComfyUI is done with one (``Handoff.gpu_free``), and that one's outputs go to storage
    and its outcome is reported while the next runs. The storing waits until the next job is in
    ComfyUI (``Handoff.next_submitted``, ``NEXT_SUBMIT_SECONDS`` at most), so it never holds up
    the GPU's next start."""

    def __init__(self, agent: Agent, queue: QueueClient, first: Lease) -> None:
        self.agent, self.queue, self.first = agent, queue, first
        self.clock = IdleClock()
        self.jobs: list[tuple[str, asyncio.Task[LeaseResult]]] = []
        self.relay = Relay()  # the last job launched's outputs and report wait for the next one's submit
        self.latest = first  # the last job launched: the next one is asked for after it

    async def run(self) -> list[dict[str, str]]:
        """Run the request's jobs; each one's outcome, in order, once every one is reported (the
        first error one of them raised, if any, is raised once all are done)."""
        current: Lease | None = self.first
        try:
            while current is not None:
                current = await self._next(*self._launch(current))
        except Exception:
            await self._finish_launched()  # a job already on the GPU or on its way to storage is not lost
            raise
        await self._finish_launched()
        return [{"job_id": job_id, "outcome": job.result()} for job_id, job in self.jobs]

    async def _finish_launched(self) -> None:
        """Until every job launched has stored its outputs and reported. Also when asking for the
        next job failed unexpectedly: the jobs launched so far still finish (the request then fails
        with the error) instead of being cancelled with it, which would run them again."""
        self.relay.none_follows()
        await asyncio.wait([job for _, job in self.jobs])

    def _launch(self, lease: Lease) -> tuple[asyncio.Event, asyncio.Task[LeaseResult]]:
        """Run the job in the background; the event is set once ComfyUI is done with it."""
        self.latest = lease
        gpu_free, handoff = self.clock.handoff(lease, *self.relay.link())
        heartbeat = max(lease.lease_seconds / 3, 0.5)
        job = asyncio.create_task(self._run(lease, heartbeat, handoff))
        self.jobs.append((lease.job.id, job))
        return gpu_free, job

    async def _run(self, lease: Lease, heartbeat: float, handoff: Handoff) -> LeaseResult:
        try:
            return await self.agent.run_lease(lease, self.queue, heartbeat, handoff)
        finally:
            handoff.ended()

    async def _next(self, gpu_free: asyncio.Event, job: asyncio.Task[LeaseResult]) -> Lease | None:
        """Once the GPU is free of ``job`` (or it ended without reaching ComfyUI), the request's
        next job, or None: the request takes no more."""
        freed = asyncio.ensure_future(gpu_free.wait())
        try:
            await asyncio.wait({freed, job}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            freed.cancel()
        if not job.done() and not self.agent.runner.comfy_idle:
            # ComfyUI did not say the prompt left its queue (an error, a cancel, or ComfyUI lost):
            # its outcome tells which, and a loss marks ComfyUI down before more is asked for.
            self.relay.none_follows()
            await asyncio.wait({job})
        if any(done.done() and not done.cancelled() and done.exception() for _, done in self.jobs):
            self.relay.none_follows()
            return None  # a job could not be run or reported: the request ends with that error
        outcome = job.result() if job.done() else None
        lease = await next_in_request(self.agent, self.queue, self.first, outcome, self.latest)
        if lease is None:
            self.relay.none_follows()
        return lease

    async def close(self) -> None:
        """When the request is cancelled or fails: its jobs still running give their leases back
        (``Agent.run_lease``) before it ends."""
        self.clock.close()
        self.relay.none_follows()
        running = [job for _, job in self.jobs if not job.done()]
        for job in running:
            job.cancel()
        if running:
            await asyncio.wait(running)


class IdleClock:
    """When this container's GPU last fell idle within the request: a chained job queued by then
    reports the gap from then to its submit (the idle gap the admin page shows per pool)."""

    def __init__(self) -> None:
        self.freed: tuple[float, datetime] | None = None  # monotonic, wall
        self._watch: asyncio.Task[None] | None = None

    def handoff(
        self, lease: Lease, submitted: asyncio.Event, next_submitted: asyncio.Event
    ) -> tuple[asyncio.Event, Handoff]:
        """The job's ``Handoff`` and its ``gpu_free``, set by the runner once ComfyUI is done with it."""
        idle_since = None
        if self.freed is not None and lease.job.queued_at <= self.freed[1]:
            idle_since = self.freed[0]
        gpu_free = asyncio.Event()
        self.close()
        self._watch = asyncio.create_task(self._mark(gpu_free))
        handoff = Handoff(
            gpu_free=gpu_free, idle_since=idle_since, submitted=submitted, next_submitted=next_submitted
        )
        return gpu_free, handoff

    async def _mark(self, gpu_free: asyncio.Event) -> None:
        await gpu_free.wait()
        self.freed = (time.monotonic(), datetime.now(UTC))

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()


async def next_in_request(
    agent: Agent,
    queue: QueueClient,
    first: Lease,
    outcome: LeaseResult | None = None,
    done: Lease | None = None,
) -> Lease | None:
    """The request's next job after ``done`` (the last one it ran, ``first`` by default), or None:
    the request ends (no chain, the queue has nothing for it, or this container cannot go on: its
    ComfyUI is down, it is stopping, the last job was given back, or the queue manager cannot be
    reached). ``outcome``: the last job's, or None while its outputs are still on their way to storage."""
    if first.chain is None:
        return None
    try:
        if outcome is LeaseResult.RELEASED or not agent.comfyui_up or DRAINING.is_set():
            await queue.end_chain(first.chain)
            return None
        lease = await queue.next_in_chain(first.chain, (done or first).token)
    except (httpx.HTTPError, QueueRefusedError, LeaseLostError) as exc:
        log.warning("push request %s ends: asking for its next job failed: %s", first.chain, exc)
        return None
    if lease is None:
        return None
    return lease.model_copy(update={"reply_url": first.reply_url, "reply_token": first.reply_token})


async def publish_to(agent: Agent, url: str) -> None:
    """``publish`` to the queue manager at ``url`` with the container's own pool token
    (``WORKER_TOKEN``): a request's reply token may report on its jobs but not register."""
    token = agent.settings.token.get_secret_value()
    if not token:
        return
    own = QueueClient(url, token, agent.settings.retry_seconds, holder=agent.settings.worker_id)
    try:
        await publish(agent, own)
    finally:
        await own.aclose()


async def publish(agent: Agent, queue: QueueClient) -> None:
    """A serverless container never claims, so its first lease is when it tells the queue manager
    what it runs: a workshop of push pools only still gets its node catalogue. The job matters more:
    a refused registration is logged and the job runs anyway (the next lease tries again)."""
    try:
        await agent.register(queue)
    except (httpx.HTTPError, QueueRefusedError) as exc:
        log.warning("could not publish this worker's catalogue to %s: %s", queue.base_url, exc)


async def announce(queue: QueueClient, lease: Lease) -> None:
    """A first heartbeat as soon as the container has the lease: the admin page shows this
    container busy with the job from its start, not only from its first periodic heartbeat. The
    lease keeper's own heartbeats (and the job's end) follow; a failure here is theirs to handle."""
    try:
        await queue.heartbeat(lease.job.id, lease.token)
    except (httpx.HTTPError, QueueRefusedError, LeaseLostError) as exc:
        log.warning("first heartbeat for job %s failed: %s", lease.job.id, exc)


async def start_agent(agent: Agent) -> None:
    """Start the agent with its models sync shown on the admin page, then register it ready (its
    catalogue published). Without a token (a local try-out) it starts without reporting."""
    settings = agent.settings
    token = settings.token.get_secret_value()
    if not token:
        await agent.start()
        return
    queue = QueueClient(settings.queue_url, token, settings.retry_seconds, holder=settings.worker_id)
    try:
        await agent.start(queue)
        await publish(agent, queue)
    finally:
        await queue.aclose()


def verda_app(settings: WorkerSettings, agent: Agent | None = None) -> FastAPI:
    """The HTTP handler a Verda serverless container runs (``python -m services.worker serve-push``)."""
    worker = agent or Agent(settings)
    ready = asyncio.Event()
    one_at_a_time = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await start_agent(worker)
        ready.set()
        try:
            yield
        finally:
            # uvicorn cancels a job still running after the grace period and goes on at once: let
            # that job stop ComfyUI and release its lease before the agent's clients close.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30), one_at_a_time:
                    pass
            await worker.stop()

    app = FastAPI(title="comfy-workshop worker (push)", lifespan=lifespan)

    @app.get("/health")
    async def health(response: Response) -> dict[str, bool]:
        """200 once ComfyUI is up and warmed, 503 before and while ComfyUI is down (a lease sent
        meanwhile is given back at once, without using an attempt)."""
        up = ready.is_set() and worker.comfyui_up
        response.status_code = 200 if up else 503
        return {"ready": up}

    @app.post("/lease")
    async def run_lease(lease: Lease) -> dict[str, Any]:
        """Run the leased job, then the request's next ones while its chain gives more; each outcome
        also goes to the queue manager."""
        async with one_at_a_time:
            try:
                return await run_pushed(worker, lease)
            except PushError as exc:
                raise HTTPException(status_code=422, detail=str(exc)) from exc

    return app


_runpod_agent: Agent | None = None
_runpod_lock = asyncio.Lock()


async def _shared_agent() -> Agent:
    global _runpod_agent
    async with _runpod_lock:
        if _runpod_agent is None:
            agent = Agent(WorkerSettings())
            await start_agent(agent)
            _runpod_agent = agent
    return _runpod_agent


async def handler(event: dict[str, Any]) -> dict[str, Any]:
    """RunPod serverless handler: ``event["input"]`` is the Lease; a returned ``error`` fails the request."""
    try:
        lease = Lease.model_validate(event.get("input") or {})
    except ValidationError as exc:
        return {"error": f"the request input is not a lease from the comfy-workshop queue manager: {exc}"}
    try:
        return await run_pushed(await _shared_agent(), lease)
    except PushError as exc:
        return {"error": str(exc)}


def start_runpod() -> None:
    """Hand ``handler`` to RunPod's serverless worker loop (inside the RunPod image only)."""
    try:
        import runpod
    except ImportError as exc:
        raise SystemExit(
            "the runpod package is not installed: the worker image installs it (build arg "
            "WITH_RUNPOD=true); to try locally run `uv pip install runpod`"
        ) from exc
    runpod.serverless.start({"handler": handler})
