"""A job's last events ride in its completion or failure: through the real queue manager the
participant hears them (the final ``executed`` naming the stored files first) before the job's end,
with no ``/events`` call of their own, once even when the completion is retried, and a queue
manager whose body limit refuses the report with its events still gets the outcome."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.comfyui import TERMINAL
from services.protocol.jobs import JobState, OutputFile
from services.protocol.workers import JobEvent, WorkerCapabilities, WorkerRegistration
from services.worker.queue_client import QueueClient
from tests.support.jobs import finished, graph, participant, put_input, submit
from tests.support.queue_manager_app import POOL, POOL_TOKEN, LiveServer, password
from tests.support.worker_agent import LeaseCalls, pull_worker, worker_settings


def participant_stream(qm: LiveServer) -> Any:
    """Alice's ``/api/events`` socket."""
    basic = base64.b64encode(f"alice:{password('alice')}".encode()).decode()
    url = qm.url.replace("http://", "ws://") + "/api/events"
    return websockets.connect(url, additional_headers={"Authorization": f"Basic {basic}"})


@pytest.fixture
async def stream(qm: LiveServer) -> AsyncIterator[ClientConnection]:
    async with participant_stream(qm) as socket:
        yield socket


async def heard_until(stream: ClientConnection, done: tuple[str, str]) -> list[dict[str, Any]]:
    """Alice's events up to (not including) the first of type ``done[0]`` for job ``done[1]``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        while True:
            event = json.loads(await stream.recv())
            if (event["type"], event["job_id"]) == done:
                return seen
            seen.append(event)


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


async def test_a_failed_jobs_last_events_ride_in_its_failure_and_arrive_before_it(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    stream: ClientConnection,
    tmp_path: Path,
    files: Path,
) -> None:
    put_input(files, "alice", "cat.png", b"GIF89a not a png")  # LoadImage fails on it
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "out"}},
    }
    calls = LeaseCalls()
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)) as running:
        calls.watch(running.worker.queue.http)
        job_id = await submit(alice, prompt, inputs=[{"filename": "cat.png"}])
        heard = [e for e in await heard_until(stream, ("finished", job_id)) if e["job_id"] == job_id]
        job = await finished(alice, job_id)
    assert job.state == JobState.FAILED and job.error is not None and job.error.node_type == "LoadImage"
    (failure,) = calls.bodies(job_id, "fail")
    carried = [(e["type"], e["data"]) for e in failure["events"] if e["type"] not in TERMINAL]
    assert carried, f"the failure carried no events: {failure['events']}"
    sent = [(e["type"], e["data"]) for e in calls.events_sent(job_id) if e["type"] not in TERMINAL]
    told = [(e["comfy"]["type"], e["comfy"]["data"]) for e in heard if e.get("comfy")]
    assert told == sent + carried, "every event the worker sent, then those the failure carried, then the end"


class LoseFirstReply(httpx.AsyncBaseTransport):
    """Loopback HTTP whose first answer to a ``complete`` call is lost after the queue manager acted."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.completes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        reply = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/complete"):
            self.completes += 1
            if self.completes == 1:
                await reply.aclose()
                raise httpx.ReadError("connection reset before the reply arrived", request=request)
        return reply

    async def aclose(self) -> None:
        await self.inner.aclose()


async def leased_queue(qm: LiveServer, transport: httpx.AsyncBaseTransport | None = None) -> QueueClient:
    queue = QueueClient(qm.url, POOL_TOKEN, retry_seconds=10)
    if transport is not None:
        await queue.http.aclose()
        queue.http = httpx.AsyncClient(base_url=qm.url, headers=queue.http.headers, transport=transport)
    caps = WorkerCapabilities(pool=POOL, provider="local")
    await queue.register(WorkerRegistration(worker_id="w-direct", capabilities=caps))
    return queue


def executed(job_id: str) -> JobEvent:
    image = {"filename": "t_00001_.png", "subfolder": "", "type": "output"}
    return JobEvent(type="executed", data={"node": "3", "output": {"images": [image]}, "prompt_id": job_id})


async def test_a_retried_completion_whose_first_reply_was_lost_publishes_its_events_once(
    qm: LiveServer, alice: httpx.AsyncClient, stream: ClientConnection
) -> None:
    transport = LoseFirstReply()
    queue = await leased_queue(qm, transport)
    try:
        job_id = await submit(alice, graph(color=52))
        lease = await queue.claim("w-direct", wait=5)
        assert lease is not None and lease.job.id == job_id
        output = OutputFile(node_id="3", kind="images", filename="t_00001_.png")
        await queue.complete(job_id, lease.token, [output], None, [executed(job_id)])
        later = await submit(alice, graph(color=53))  # heard after whatever the completion published
        heard = [e for e in await heard_until(stream, ("queued", later)) if e["job_id"] == job_id]
    finally:
        await queue.aclose()
    assert transport.completes == 2, "the first reply was lost and the completion retried"
    assert kinds(heard) == ["queued", "started", "outputs", "finished"]
    assert heard[-1]["data"]["state"] == JobState.SUCCEEDED


async def test_a_report_too_large_for_the_queue_managers_limit_sends_its_events_first_and_completes(
    qm_factory: Any,
) -> None:
    qm = qm_factory(max_body_bytes=4096)
    calls = LeaseCalls()
    queue = await leased_queue(qm)
    calls.watch(queue.http)
    try:
        async with participant(qm, "alice") as alice, participant_stream(qm) as stream:
            job_id = await submit(alice, graph(color=54))
            lease = await queue.claim("w-direct", wait=5)
            assert lease is not None
            preview = JobEvent(type="b_preview", data={"image": "A" * 3000, "format": "png"})
            outputs = [
                OutputFile(node_id="3", kind="images", filename=f"t_{n:05}_.png") for n in range(1, 11)
            ]
            await queue.complete(job_id, lease.token, outputs, None, [preview, executed(job_id)])
            heard = [e for e in await heard_until(stream, ("finished", job_id)) if e["job_id"] == job_id]
            job = await finished(alice, job_id)
    finally:
        await queue.aclose()
    base = f"/api/leases/{job_id}"
    assert [a for a in calls.answered if a[0].startswith(base)] == [
        (f"{base}/complete", 413),
        (f"{base}/events", 204),
        (f"{base}/complete", 204),
    ]
    assert job.state == JobState.SUCCEEDED and len(job.outputs) == 10
    assert kinds(heard)[-2:] == ["node", "outputs"], "the preview, then the executed, then the end"
