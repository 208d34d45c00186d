"""The pull front door (Verda instances, local GPUs): register, long-poll claim, run, repeat.

SIGTERM (or SIGINT) stops claiming at once; a running job gets ``shutdown_grace_seconds`` to
finish, and is otherwise interrupted and released (requeued without counting an attempt). The
loop then returns, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

import httpx

from services.protocol.workers import Lease, RegisterReply
from services.worker.agent import Agent, LeaseResult
from services.worker.queue_client import QueueClient, QueueRefusedError

log = logging.getLogger(__name__)


class PullWorker:
    def __init__(self, agent: Agent, queue: QueueClient) -> None:
        self.agent, self.queue = agent, queue
        self.settings = agent.settings
        self.stopping = asyncio.Event()
        self.jobs_done = 0
        self.first_claim_at: float | None = None

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

    async def register(self) -> RegisterReply:
        reply = await self.agent.register(self.queue)
        log.info("registered as %s in pool %s", reply.worker_id, self.settings.pool)
        return reply

    async def run(self, max_jobs: int | None = None) -> None:
        """Claim and run jobs until stopped (or ``max_jobs`` are done, for tests and benchmarks)."""
        reply = await self.register()
        announce = asyncio.create_task(self._announce_draining(reply.worker_id))
        try:
            while not self.stopping.is_set() and (max_jobs is None or self.jobs_done < max_jobs):
                lease = await self._claim(reply)
                if self.stopping.is_set() and lease is None:
                    break
                released = LeaseResult.RELEASED
                if lease is not None and await self._run(lease, reply.heartbeat_seconds) is not released:
                    self.jobs_done += 1
        finally:
            if self.stopping.is_set():
                await asyncio.wait({announce}, timeout=6.0)
            announce.cancel()

    async def _announce_draining(self, worker_id: str) -> None:
        """As soon as a stop is asked for, the admin page shows this worker as draining."""
        await self.stopping.wait()
        try:
            await self.queue.drain(worker_id)
        except (httpx.HTTPError, QueueRefusedError) as exc:
            log.warning("could not tell the queue manager this worker is draining: %s", exc)

    async def _claim(self, reply: RegisterReply) -> Lease | None:
        await self._until_comfyui_up()
        if self.first_claim_at is None:
            self.first_claim_at = time.monotonic()
        claim = asyncio.create_task(self.queue.claim(reply.worker_id, reply.claim_wait_seconds))
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
            stop = asyncio.create_task(self.stopping.wait())
            up = asyncio.create_task(self.agent.until_comfyui_up())
            await asyncio.wait({up, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            up.cancel()

    async def _run(self, lease: Lease, heartbeat_seconds: float) -> LeaseResult | None:
        """Run one lease to its end; returns what happened (None when it could not be told)."""
        job = asyncio.create_task(self.agent.run_lease(lease, self.queue, heartbeat_seconds))
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
            return None
        log.info("job %s: %s", lease.job.id, result)
        return result


async def run_pull(agent: Agent, queue: QueueClient) -> None:
    worker = PullWorker(agent, queue)
    worker.install_signal_handlers()
    try:
        await agent.start(queue)
        await worker.run()
    finally:
        await agent.stop()
        await queue.aclose()
