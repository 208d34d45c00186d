"""The worker agent in tests: its settings against the ComfyUI double (in-process or as the agent's
child process, as on a GPU box), an agent pulling from a real queue manager, and the lease a push
pool is sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.doubles.comfyui_engine import Item
from devkit.servers import free_port
from services.protocol.workers import Lease, WorkerCapabilities, WorkerRegistration
from services.storage import Storage
from services.storage.local import LocalStorage
from services.worker.agent import Agent
from services.worker.pull import PullWorker
from services.worker.queue_client import QueueClient
from services.worker.settings import WorkerSettings
from tests.support.jobs import graph, submit
from tests.support.queue_manager_app import POOL, POOL_TOKEN, LiveServer


class GatedStorage(LocalStorage):
    """Local storage whose uploads wait until ``gate`` opens: storage as slow as a test needs."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], content_type: str = "", *, create_only: bool = False
    ) -> int:
        self.waiting.set()
        await self.gate.wait()
        return await super().put(key, chunks, content_type, create_only=create_only)


class Gates:
    """Jobs the ComfyUI doubles keep running until the test opens their gate (by job id: the
    worker submits each job under its id; ``on``: in that double only), so what a test waits for
    happens while they run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.closed: dict[str, tuple[threading.Event, ComfyUIDouble | None]] = {}
        original = ComfyUIDouble._work

        async def gated(double: ComfyUIDouble, item: Item, nid: str, class_type: str) -> None:
            gate, on = self.closed.get(item.prompt_id, (None, None))
            if gate is not None and on in (None, double):  # the double runs on its own thread and loop
                assert await asyncio.to_thread(gate.wait, 30), f"gate of {item.prompt_id} never opened"
            await original(double, item, nid, class_type)

        monkeypatch.setattr(ComfyUIDouble, "_work", gated)

    def close(self, job_id: str, on: ComfyUIDouble | None = None) -> None:
        self.closed[job_id] = (threading.Event(), on)

    def open(self, job_id: str) -> None:
        self.closed[job_id][0].set()


class RunBeginning:
    """Holds the ComfyUI double between taking the next prompt off its queue (listed as running
    from then on) and beginning its run, once ``arm``ed: the moment in which ComfyUI 0.3.64 loses an
    interrupt. ``entered`` is set when a prompt is held there; ``release`` lets it begin."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed, self.entered, self.go = False, threading.Event(), threading.Event()
        original = ComfyUIDouble._status

        async def status(double: ComfyUIDouble, sid: str | None = None) -> None:
            running = double.state.running
            if self.armed and running is not None and running.prompt_id not in double.state.timings:
                self.armed = False  # the prompt just taken off the queue: its run has not begun
                self.entered.set()
                assert await asyncio.to_thread(self.go.wait, 30), "the held prompt was never released"
            await original(double, sid)

        monkeypatch.setattr(ComfyUIDouble, "_status", status)

    def arm(self) -> None:
        self.armed = True

    def release(self) -> None:
        self.go.set()


def hold_of(held_by: redis.Redis, job_id: str) -> str:
    """The worker the job is held for (prepared, not leased yet), or ""."""
    return str(held_by.hget(f"qm:job:{job_id}", "hold_worker") or "")


def worker_settings(comfy: ComfyUIDouble, qm_url: str, tmp_path: Path, **extra: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "queue_url": qm_url,
        "token": POOL_TOKEN,
        "pool": POOL,
        "provider": "local",
        "worker_id": "w-test",
        "comfyui_url": comfy.url,
        "data_dir": comfy.folders.input.parent,  # the folders ComfyUI uses
        "storage_url": f"file://{tmp_path}/files",
        "ws_silence_seconds": 0.5,
        "poll_seconds": 0.1,
        "retry_seconds": 30.0,
        "shutdown_grace_seconds": 5.0,
    }
    return WorkerSettings(**{**values, **extra})


def child_worker_settings(comfy: ComfyUIDouble, qm_url: str, tmp_path: Path, **extra: Any) -> WorkerSettings:
    """A worker that starts the ComfyUI double as its own child process, as on a GPU box."""
    double = [
        sys.executable,
        "-m",
        "devkit.doubles.comfyui",
        "--node-seconds",
        "0.3",
        "--progress-steps",
        "3",
    ]
    values: dict[str, Any] = {
        "comfyui_url": None,
        "comfyui_command": double,
        "comfyui_port": free_port(),
        "warmup": False,
        "ready_timeout": 30,
    }
    return worker_settings(comfy, qm_url, tmp_path, **{**values, **extra})


class LeaseCalls:
    """What a worker's queue client sent: each lease call's route and JSON body, and the answers."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.answered: list[tuple[str, int]] = []

    def watch(self, client: httpx.AsyncClient) -> None:
        client.event_hooks["request"].append(self._request)
        client.event_hooks["response"].append(self._response)

    async def _request(self, request: httpx.Request) -> None:
        if request.url.path.startswith("/api/leases/"):
            self.sent.append((request.url.path, json.loads(request.content or b"{}")))

    async def _response(self, response: httpx.Response) -> None:
        self.answered.append((response.request.url.path, response.status_code))

    def bodies(self, job_id: str, call: str) -> list[dict[str, Any]]:
        return [body for path, body in self.sent if path == f"/api/leases/{job_id}/{call}"]

    def events_sent(self, job_id: str) -> list[dict[str, Any]]:
        """Every event the worker sent in ``/events`` calls for the job, in order."""
        return [event for body in self.bodies(job_id, "events") for event in body["events"]]


class RunningWorker:
    def __init__(self, agent: Agent, worker: PullWorker, task: asyncio.Task[None]) -> None:
        self.agent, self.worker, self.task = agent, worker, task


@contextlib.asynccontextmanager
async def pull_worker(
    settings: WorkerSettings, storage: Storage | None = None, max_jobs: int | None = None
) -> AsyncIterator[RunningWorker]:
    """An agent attached to the double, pulling from the queue manager until the block ends (or,
    with ``max_jobs``, until it has run that many: ``task`` ends then)."""
    agent = Agent(settings, storage or LocalStorage(Path(settings.storage_url.removeprefix("file://"))))
    queue = QueueClient(settings.queue_url, settings.token.get_secret_value(), settings.retry_seconds)
    await agent.start()
    worker = PullWorker(agent, queue)
    task = asyncio.create_task(worker.run(max_jobs))
    try:
        yield RunningWorker(agent, worker, task)
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=15)
        await agent.stop()
        await queue.aclose()


async def lease_for(qm: LiveServer, alice: httpx.AsyncClient, color: int, slot: str = "dispatcher") -> Lease:
    """What the dispatcher sends a push pool: a claimed lease plus where and how to report
    (``slot``: the dispatcher's slot it is claimed under; one per request in flight)."""
    job_id = await submit(alice, graph(color=color))
    queue = QueueClient(qm.url, POOL_TOKEN)
    caps = WorkerCapabilities(pool=POOL, provider="runpod")
    await queue.register(WorkerRegistration(worker_id=slot, capabilities=caps))
    lease = await queue.claim(slot, wait=5)
    await queue.aclose()
    assert lease is not None and lease.job.id == job_id
    return lease.model_copy(update={"reply_url": qm.url, "reply_token": POOL_TOKEN})


class LosesFirstReply(httpx.AsyncBaseTransport):
    """The network between a container and the queue manager: the first call to a path ending in
    ``ending`` reaches the queue manager, which answers it, but the answer never reaches the container."""

    def __init__(self, ending: str = "/next") -> None:
        self.inner, self.lost, self.ending = httpx.AsyncHTTPTransport(), 0, ending

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith(self.ending) and not self.lost:
            await response.aread()
            self.lost += 1
            raise httpx.ReadError("connection reset by peer", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
