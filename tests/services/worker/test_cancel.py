"""A participant's cancel reaches the GPU's ComfyUI at once, not at the worker's next heartbeat:
the worker holds its heartbeat open and the queue manager answers it the moment the owner cancels.
The lease here lasts two minutes, so the next regular heartbeat would be 40 s away."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import JobState
from services.protocol.workers import HeartbeatReply
from services.storage.local import LocalStorage
from services.worker import lease as lease_keeper
from services.worker import push
from services.worker.agent import Agent
from services.worker.queue_client import QueueClient
from tests.support.jobs import finished, graph, submit, submit_running, until
from tests.support.queue_manager_app import LiveServer
from tests.support.worker_agent import RunBeginning, lease_for, pull_worker, worker_settings

LEASE_SECONDS = 120.0
PROMPTLY = 10.0  # seconds: far below the 40 s to the next regular heartbeat


@pytest.fixture
def qm(qm_factory: Callable[..., LiveServer]) -> LiveServer:
    return qm_factory(lease_seconds=LEASE_SECONDS)


async def cancel_while_running(comfy: ComfyUIDouble, alice: httpx.AsyncClient, job_id: str) -> None:
    await until(lambda: comfy.state.running is not None, "job running")
    reply = await alice.post(f"/api/jobs/{job_id}/cancel")
    assert reply.json()["outcome"] == "requested"
    await until(lambda: job_id in comfy.state.history, "ComfyUI interrupted the job", timeout=PROMPTLY)
    assert comfy.state.history[job_id]["status"]["messages"][-1][0] == "execution_interrupted"


async def test_a_cancel_reaches_a_pull_workers_comfyui_long_before_its_next_heartbeat(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job_id = await submit_running(comfy, alice, graph(color=71), seconds=60.0)
        await cancel_while_running(comfy, alice, job_id)
        job = await finished(alice, job_id, timeout=PROMPTLY)
    assert job.state == JobState.CANCELLED


async def test_a_cancel_reaches_a_push_containers_comfyui_long_before_its_next_heartbeat(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    agent = Agent(worker_settings(comfy, qm.url, tmp_path), LocalStorage(tmp_path / "files"))
    await agent.start()
    try:
        comfy.knobs.node_seconds, comfy.knobs.progress_steps = 60.0, 600
        lease = await lease_for(qm, alice, color=72)
        pushed = asyncio.create_task(push.run_pushed(agent, lease))
        await cancel_while_running(comfy, alice, lease.job.id)
        assert (await asyncio.wait_for(pushed, PROMPTLY))["jobs"][0]["outcome"] == "failed"
    finally:
        await agent.stop()
    job = await finished(alice, lease.job.id, timeout=PROMPTLY)
    assert job.state == JobState.CANCELLED


async def test_a_cancel_whose_interrupt_comfyui_clears_as_the_run_begins_still_stops_the_job(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, monkeypatch: Any
) -> None:
    """ComfyUI lists a prompt as running before its run begins, and the run begins by clearing the
    interrupt flag: the worker's interrupt lands in between, and it interrupts again once it hears
    the run begin (``execution_start``), so the job is cancelled, not run to its end."""
    beginning = RunBeginning(monkeypatch)
    comfy.knobs.node_seconds, comfy.knobs.progress_steps = 2.0, 20
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        beginning.arm()
        job_id = await submit(alice, graph(color=75, prefix="late"))
        await until(beginning.entered.is_set, "the prompt is off ComfyUI's queue, its run not begun")
        (await alice.post(f"/api/jobs/{job_id}/cancel")).raise_for_status()
        await until(lambda: comfy.state.interrupt, "the worker's interrupt reached ComfyUI", PROMPTLY)
        beginning.release()
        job = await finished(alice, job_id, timeout=PROMPTLY)
    assert job.state == JobState.CANCELLED and job.outputs == []
    assert comfy.state.history[job_id]["status"]["messages"][-1][0] == "execution_interrupted"
    assert not list((tmp_path / "files" / "users" / "alice").glob("output/late_*"))  # nothing stored


async def test_a_job_done_within_its_first_moment_costs_the_queue_manager_no_heartbeat(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, monkeypatch: Any
) -> None:
    """A no-model job is over before the first heartbeat is due: no call is made and cut off, while a
    longer job still holds its heartbeat open for a cancel (the tests above)."""
    beats: list[str] = []
    original = QueueClient.heartbeat

    async def counted(self: QueueClient, job_id: str, *args: Any, **kwargs: Any) -> HeartbeatReply:
        beats.append(job_id)
        return await original(self, job_id, *args, **kwargs)

    monkeypatch.setattr(lease_keeper, "FIRST_CALL_SECONDS", 5.0)  # jobs under 5 s are "short" here
    monkeypatch.setattr(QueueClient, "heartbeat", counted)
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        jobs = [await finished(alice, await submit(alice, graph(color=color))) for color in (73, 74)]
    assert [job.state for job in jobs] == [JobState.SUCCEEDED, JobState.SUCCEEDED] and beats == []
