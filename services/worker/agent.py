"""The agent: one ComfyUI, one socket, one job runner and user-file storage, shared by the front doors.

``start`` brings ComfyUI up (or attaches to it), makes sure the manifest's models are present,
connects the socket and runs a warmup workflow; only then is the worker ready. ``run_lease`` runs
one leased job with heartbeats and reports the outcome on the lease; the pull and push front
doors differ only in how leases arrive.

A job whose ComfyUI died or went silent is given back (released, no attempt counted; the queue
manager counts the ComfyUI loss when ComfyUI had the job), and so is a job leased while ComfyUI
is down: only a job's own error fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from services.protocol.jobs import Job
from services.protocol.own_checks import with_own_checks
from services.protocol.workers import (
    HeartbeatReply,
    Lease,
    RegisterReply,
    WorkerCapabilities,
    WorkerRegistration,
)
from services.storage import Storage, StorageError, open_storage
from services.worker.comfy_client import ComfyClient
from services.worker.comfy_events import EventStream
from services.worker.forwarder import EventForwarder
from services.worker.job_files import ComfyFolders, FoldersMismatchError, JobFiles, Prepared, salted_classes
from services.worker.lease import LeaseKeeper
from services.worker.models import ensure_models, queue_reporter
from services.worker.queue_client import LeaseLostError, QueueClient
from services.worker.runner import Handoff, JobRunner, Outcome
from services.worker.settings import WorkerSettings
from services.worker.supervisor import AttachedComfy, ComfyNotReadyError, ComfyProcess

log = logging.getLogger(__name__)
WARMUP = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
}


# How long past the interrupt grace a job whose lease was lost may take to stop (the runner
# restarts ComfyUI at the grace; a job outside ComfyUI, its files on their way, stops at once).
STOP_MARGIN_SECONDS = 5.0


def client_id_of(worker_id: str) -> str:
    """The client id this run of the worker gives ComfyUI: its id, then 8 hex digits of its own."""
    return f"{worker_id}-{uuid.uuid4().hex[:8]}"


def is_client_of(worker_id: str, client_id: str) -> bool:
    """Whether ``client_id`` is one a run of worker ``worker_id`` gave ComfyUI (``client_id_of``)."""
    worker, _, run = client_id.rpartition("-")
    return worker == worker_id and len(run) == 8 and all(c in "0123456789abcdef" for c in run)


class WarmupFailedError(Exception):
    """The warmup workflow did not succeed: the worker must not report ready."""


class LeaseResult(StrEnum):
    """What running a lease came to (``Agent.run_lease``)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RELEASED = "released"  # given back unfinished: ComfyUI down or lost, or the worker stopping
    LOST = "lost"  # the lease expired first: the queue manager requeues the job
    MOVED = "moved"  # staged ahead of ``start``, which gave it to another worker (or it was cancelled)


def catalogue_hash(
    catalogue: dict[str, Any],
    extensions: dict[str, str] | None = None,
    templates: dict[str, str] | None = None,
) -> str:
    """The catalogue version: its ``/object_info``, web extension files and example workflows together."""
    versioned = {
        "object_info": catalogue,
        "extensions": extensions or {},
        **({"templates": templates} if templates else {}),
    }
    return hashlib.sha256(json.dumps(versioned, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Agent:
    def __init__(self, settings: WorkerSettings, storage: Storage | None = None) -> None:
        self.settings = settings
        self.comfy_server = (
            AttachedComfy(settings.comfyui_url) if settings.comfyui_url else ComfyProcess(settings)
        )
        self.comfy = ComfyClient(self.comfy_server.url, settings.comfyui_timeout)
        self.events = EventStream(self.comfy.ws_url, client_id_of(settings.worker_id))
        self.events.on_drop = lambda: self.comfy_server.lost(self.comfy, "its WebSocket closed")
        self.storage = storage or open_storage(settings.storage_url)
        self.files = JobFiles(
            ComfyFolders.under(settings.data_dir), self.storage, settings.storage_retry_seconds
        )
        self.runner = JobRunner(
            self.comfy,
            self.events,
            self.storage,
            self.files,
            settings.ws_silence_seconds,
            settings.poll_seconds,
            on_lost=lambda reason: self.comfy_server.lost(self.comfy, reason),
            storage_patience=settings.storage_retry_seconds,
            on_stuck=lambda reason: self.comfy_server.stuck(self.comfy, reason),
            interrupt_grace=settings.interrupt_grace_seconds,
        )
        self.models: list[str] = []
        self.catalogue: dict[str, Any] = {}
        self.extensions: dict[str, str] = {}
        self.templates: dict[str, str] = {}  # custom nodes' example workflows, with the catalogue
        self.published_to: set[str] = set()
        self.holding: str | None = None  # the prepared job the last heartbeat said is still held
        self.holding_heard_at = 0.0
        self.warmup_owed = False  # skipped as ComfyUI was stuck: run once it is free (``warm_up_if_owed``)

    async def start(self, queue: QueueClient | None = None) -> None:
        """Models, then ComfyUI, socket and warmup; with ``queue`` the models sync shows on the admin
        page (the worker registers as starting, with its progress or why it cannot start)."""
        report = queue_reporter(self.settings, queue) if queue is not None else None
        self.models = await ensure_models(self.settings, report=report)
        await self.comfy_server.start(self.comfy, self.settings.ready_timeout)
        await self.stop_earlier_runs()
        try:
            await self.files.verify(self.comfy)
        except FoldersMismatchError as exc:
            raise ComfyNotReadyError(str(exc)) from exc
        self.events.start()
        try:
            await asyncio.wait_for(self.events.connected.wait(), timeout=self.settings.ready_timeout)
        except TimeoutError as exc:
            raise ComfyNotReadyError(
                f"ComfyUI answers HTTP but its WebSocket {self.events.url} does not: is a proxy in between "
                "dropping upgrades?"
            ) from exc
        if self.settings.warmup:
            await self.warmup()
        self.catalogue = with_own_checks(await self.comfy.object_info(), await self.comfy.own_checks())
        self.files.output_classes = salted_classes(self.catalogue)
        self.runner.offered = set(self.catalogue)
        self.extensions = await self.comfy.web_extensions()
        self.templates = await self.comfy.workflow_templates()

    async def stop_earlier_runs(self) -> None:
        """Stop the prompts an earlier run of this worker left in ComfyUI (it was killed, and its
        ComfyUI, attached, outlived it): their jobs are back in the queue (the lease lapses, the hold
        ends as the worker registers again) and run again, so those prompts would only hold the GPU
        from the next job, or run a job twice at once. Queued ones go first, then the running one is
        interrupted (one that ignores it is waited for as any stuck prompt is)."""

        def earlier(client_id: str) -> bool:
            return client_id != self.events.client_id and is_client_of(self.settings.worker_id, client_id)

        running, pending = await self.comfy.queued_by(earlier)
        for prompt_id in pending:
            await self.comfy.delete_queued(prompt_id)
        for prompt_id in running:
            await self.comfy.interrupt(prompt_id)
        if running or pending:
            log.warning(
                "stopped %d prompts an earlier run of this worker left in ComfyUI", len(running + pending)
            )

    async def stop(self) -> None:
        """Close the socket and stop a ComfyUI this agent started (safe after a failed start)."""
        await self.events.stop()
        await self.comfy_server.stop()
        await self.comfy.aclose()

    async def warmup(self) -> None:
        """Run a tiny no-model workflow: the first participant's job should not pay ComfyUI's first run."""
        prompt = self.settings.warmup_workflow or WARMUP  # the pool's own, from its stack config
        job = Job(id=str(uuid.uuid4()), user="warmup", prompt=prompt, queued_at=datetime.now(UTC))

        async def discard(_: object) -> None:
            return None

        forwarder = EventForwarder(discard)
        outcome = await self.runner.run(job, forwarder, asyncio.Event(), self.comfy_server.death, store=False)
        await forwarder.close()
        if outcome.lost is not None and (self.comfy_server.problem or self.warmup_owed):
            # an attached ComfyUI stuck in a prompt left before this start: the worker starts, says
            # so (``problem``, the admin page) and takes no job until it is free, as later in life;
            # the warm-up is owed until then (``warm_up_if_owed``), also when it is lost again
            log.warning("warm-up skipped: %s", self.comfy_server.problem or outcome.lost)
            self.warmup_owed = True
            return
        self.warmup_owed = False
        if outcome.lost is not None:
            raise WarmupFailedError(f"ComfyUI went away during the warmup workflow: {outcome.lost}")
        if outcome.error is not None:
            raise WarmupFailedError(
                f"the warmup workflow failed: {outcome.error.type}: {outcome.error.message}"
            )

    async def warm_up_if_owed(self) -> None:
        """Run the warm-up skipped at start (ComfyUI was stuck) now that ComfyUI is free, before a
        job: else her first job would pay ComfyUI's first run (a restarted ComfyUI loads its models
        again). Stuck or lost again, it stays owed; one whose graph fails stops the worker as at start."""
        if self.warmup_owed and self.comfyui_up:
            log.info("ComfyUI is free again: running the warm-up skipped at start")
            await self.warmup()

    async def capabilities(self) -> WorkerCapabilities:
        stats = await self.comfy.system_stats()
        device = (stats.get("devices") or [{}])[0]
        return WorkerCapabilities(
            pool=self.settings.pool,
            provider=self.settings.provider,
            gpu=str(device.get("name", "")),
            device_type=str(device.get("type", "")),
            vram_mb=int(device.get("vram_total", 0)) // (1 << 20),
            comfyui_version=str(stats.get("system", {}).get("comfyui_version", "")),
            catalogue_hash=catalogue_hash(self.catalogue, self.extensions, self.templates),
            models=self.models,
            problem=self.comfy_server.problem,
        )

    async def register(self, queue: QueueClient) -> RegisterReply:
        """Register with the queue manager, sending the node catalogue, its web extensions and example
        workflows when it does not have this version yet: the workspaces offer exactly what this
        ComfyUI runs."""
        capabilities = await self.capabilities()
        registration = WorkerRegistration(worker_id=self.settings.worker_id, capabilities=capabilities)
        reply = await queue.register(registration)
        if not reply.catalogue_known:
            registration.catalogue, registration.extensions = self.catalogue, self.extensions
            registration.templates = self.templates
            reply = await queue.register(registration)
        self.published_to.add(queue.base_url)
        return reply

    @property
    def comfyui_up(self) -> bool:
        """ComfyUI answers and the socket to it is open: a job can run."""
        return self.comfy_server.up.is_set() and self.events.connected.is_set()

    async def until_comfyui_up(self) -> None:
        """Return once ComfyUI answers again and the socket is back (at once when it is up)."""
        while not self.comfyui_up:
            waits = {
                asyncio.ensure_future(self.comfy_server.up.wait()),
                asyncio.ensure_future(self.events.connected.wait()),
            }
            try:
                await asyncio.wait(waits, return_when=asyncio.ALL_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()

    async def prepare(self, job: Job) -> Prepared | None:
        """Fetch a job's files ahead of its start, outside ComfyUI's folders; None when that failed
        (the job then fetches them when it runs, and reports why it cannot)."""
        try:
            return await self.files.prepare(job)
        except (StorageError, OSError) as exc:
            log.info("job %s: its files could not be prepared ahead (%s)", job.id, exc)
            return None

    async def run_lease(
        self, lease: Lease, queue: QueueClient, heartbeat_seconds: float, handoff: Handoff | None = None
    ) -> LeaseResult:
        """Run the leased job and report it; returns what happened: succeeded, failed, lost, released.

        ``handoff`` (``JobRunner.run``): a pull worker starts its next job as soon as ComfyUI is
        done with this one, while this one's outputs are still on their way to storage.
        """
        job = lease.job
        if not self.comfyui_up:
            if handoff is not None and not await handoff.ours():
                return LeaseResult.MOVED
            log.warning("job %s leased while ComfyUI is down: giving it back", job.id)
            await queue.release(job.id, lease.token)
            return LeaseResult.RELEASED

        async def sink(events: list[Any]) -> None:
            await queue.events(job.id, lease.token, events)

        confirmed = handoff.confirmed if handoff is not None else None
        ran = handoff.gpu_free if handoff is not None else None  # then its outputs hold no GPU
        forwarder = EventForwarder(
            sink,
            self.settings.progress_per_second,
            preview_rate=self.settings.previews_per_second,
            gate=confirmed,  # a job in ComfyUI before its start was answered is seen only once it is ours
        )
        try:
            async with LeaseKeeper(
                queue, job.id, lease.token, heartbeat_seconds, self._heard, confirmed, ran
            ) as keeper:
                run = self.runner.run(job, forwarder, keeper.cancel, self.comfy_server.death, handoff=handoff)
                outcome = await self._run_while_held(run, keeper)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(lease, queue, forwarder))
            raise
        if outcome is None or outcome.moved:
            await forwarder.close()
            return LeaseResult.LOST if outcome is None else LeaseResult.MOVED
        return await self._report(lease, queue, outcome, forwarder)

    def _heard(self, reply: HeartbeatReply, sent: float) -> None:
        """``reply.holding`` is as of when the heartbeat was sent (a reply may be held open)."""
        if sent >= self.holding_heard_at:
            self.holding, self.holding_heard_at = reply.holding, sent

    def lost_hold(self, job_id: str, held_since: float) -> bool:
        """Whether a heartbeat since ``held_since`` said this worker no longer holds the prepared
        job ``job_id`` (an idle worker took it, or it was cancelled)."""
        return self.holding_heard_at > held_since and self.holding != job_id

    async def _run_while_held(
        self, job_run: Coroutine[Any, Any, Outcome], keeper: LeaseKeeper
    ) -> Outcome | None:
        """The job's outcome, or None when the lease was lost first (its pool's maximum job time,
        or it expired): the job is then stopped as a cancelled one is, so a node that ignores the
        interrupt has its child ComfyUI restarted after ``interrupt_grace_seconds``."""
        run = asyncio.create_task(job_run)
        lost = asyncio.create_task(keeper.lost.wait())
        try:
            await asyncio.wait({run, lost}, return_when=asyncio.FIRST_COMPLETED)
            if not run.done():
                keeper.cancel.set()  # the runner interrupts ComfyUI, and after the grace restarts it
                await asyncio.wait({run}, timeout=self.settings.interrupt_grace_seconds + STOP_MARGIN_SECONDS)
        finally:
            lost.cancel()
            if not run.done():
                run.cancel()  # still not stopped, or we are being cancelled (shutdown): abandon it
                with contextlib.suppress(asyncio.CancelledError):
                    await run
        return None if keeper.lost.is_set() else run.result()

    async def _report(
        self, lease: Lease, queue: QueueClient, outcome: Outcome, forwarder: EventForwarder
    ) -> LeaseResult:
        """Report the outcome; a completion or failure carries the events not sent yet (the last
        ``executed`` with the stored files among them, named as stored), a release sends them
        first as ever."""
        job_id = lease.job.id
        try:
            if outcome.lost is not None:  # the runner told ``comfy_server`` as it found ComfyUI gone
                await forwarder.close()
                log.warning("job %s: ComfyUI lost (%s): giving the job back", job_id, outcome.lost)
                await queue.release(job_id, lease.token, comfyui_lost=outcome.submitted)
                return LeaseResult.RELEASED
            trailing = await forwarder.hand_over()
            if outcome.error is None:
                await queue.complete(job_id, lease.token, outcome.outputs, outcome.timing, trailing)
                return LeaseResult.SUCCEEDED
            await queue.fail(job_id, lease.token, outcome.error, outcome.timing, trailing)
            return LeaseResult.FAILED
        except LeaseLostError:
            log.warning("job %s: the lease was lost before the outcome could be reported", job_id)
            return LeaseResult.LOST

    async def _release(self, lease: Lease, queue: QueueClient, forwarder: EventForwarder) -> None:
        await forwarder.close()
        with contextlib.suppress(Exception):
            await queue.release(lease.job.id, lease.token)
        log.info("job %s released", lease.job.id)
