"""A ComfyUI outage loses no job: the worker stops claiming while its ComfyUI is down or silent,
gives its job back without using an attempt, and claims again once ComfyUI answers. Only a job
that was running in ``QM_MAX_COMFYUI_LOSSES`` ComfyUI deaths fails, as their likely cause."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import Job, JobState
from services.storage.local import LocalStorage
from services.worker.agent import Agent
from services.worker.comfy_client import ComfyClient, ComfyUnavailableError
from services.worker.pull import PullWorker
from services.worker.queue_client import QueueClient
from services.worker.supervisor import ComfyProcess
from tests.support.jobs import finished, graph, job_of, participant, submit, submit_running, until
from tests.support.queue_manager_app import LiveServer
from tests.support.worker_agent import child_worker_settings, pull_worker, worker_settings

LEASE_SECONDS = 3.0  # the ``qm`` fixture's lease term


async def until_given_back(client: httpx.AsyncClient, job_id: str) -> Job:
    """Until the job, once leased (it has a start time), is waiting in the queue again."""
    async with asyncio.timeout(20):
        while True:
            job = await job_of(client, job_id)
            if job.state == JobState.QUEUED and job.started_at is not None:
                return job
            await asyncio.sleep(0.05)  # polling the participant API for a state change


async def stays_queued(client: httpx.AsyncClient, job_ids: list[str], seconds: float) -> list[Job]:
    """The jobs are still waiting after ``seconds`` (the outage's length): none claimed or failed."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            while all(job.state == JobState.QUEUED for job in [await job_of(client, i) for i in job_ids]):
                await asyncio.sleep(0.1)  # polling for a change that must not come
    return [await job_of(client, job_id) for job_id in job_ids]


async def until_running_in(comfyui: ComfyClient, job_id: str) -> None:
    """Until the (child) ComfyUI runs the job, across its restarts."""
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(ComfyUnavailableError):
                if job_id in (await comfyui.queue())[0]:
                    return
            await asyncio.sleep(0.02)  # polling the child ComfyUI's /queue


async def test_an_attached_comfyui_down_longer_than_a_lease_loses_no_job_and_uses_no_attempt(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    # A minute of socket silence would pass before the worker asked ComfyUI: the closed socket
    # makes it ask at once.
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path, ws_silence_seconds=60)) as running:
        first = await submit_running(comfy, alice, graph(color=61), seconds=1.0)
        await asyncio.to_thread(comfy.stop)
        second = await submit(alice, graph(color=62))
        await until_given_back(alice, first)
        assert not running.agent.comfyui_up
        waiting = await stays_queued(alice, [first, second], LEASE_SECONDS * 1.5)
        assert [(j.state, j.attempts, j.error, j.comfyui_losses) for j in waiting] == [
            (JobState.QUEUED, 0, None, 1),
            (JobState.QUEUED, 0, None, 0),
        ]
        comfy.knobs.node_seconds = 0.05
        await asyncio.to_thread(comfy.start)
        jobs = [await finished(alice, job_id, timeout=30) for job_id in (first, second)]
    assert [(j.state, j.attempts, j.comfyui_losses) for j in jobs] == [
        (JobState.SUCCEEDED, 1, 1),
        (JobState.SUCCEEDED, 1, 0),
    ], [j.error for j in jobs]


async def test_a_job_leased_to_a_worker_whose_comfyui_is_down_is_given_back_at_once(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)) as running:
        await until(lambda: running.worker.first_claim_at is not None, "the worker claiming")
        await asyncio.to_thread(comfy.stop)  # the worker is in a long-poll claim meanwhile
        await until(lambda: not running.agent.comfyui_up, "the worker saw ComfyUI go")
        job_id = await submit(alice, graph(color=63))
        await until_given_back(alice, job_id)
        [waiting] = await stays_queued(alice, [job_id], LEASE_SECONDS * 1.5)
        assert (waiting.attempts, waiting.comfyui_losses, waiting.error) == (0, 0, None)
        await asyncio.to_thread(comfy.start)
        job = await finished(alice, job_id, timeout=30)
    assert (job.state, job.attempts) == (JobState.SUCCEEDED, 1), job.error


async def test_a_job_that_kills_comfyui_again_and_again_fails_naming_it(
    comfy: ComfyUIDouble, qm_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    qm = qm_factory(max_comfyui_losses=2)
    async with (
        pull_worker(child_worker_settings(comfy, qm.url, tmp_path)) as running,
        participant(qm, "alice") as alice,
    ):
        supervisor = running.agent.comfy_server
        assert isinstance(supervisor, ComfyProcess)
        job_id = await submit(alice, graph(color=64))
        for _ in range(2):
            await until_running_in(running.agent.comfy, job_id)
            assert supervisor._process is not None
            os.kill(supervisor._process.pid, signal.SIGKILL)
        job = await finished(alice, job_id, timeout=30)
    assert job.state == JobState.FAILED and job.error is not None
    assert job.error.type == "ComfyUIKilled" and "2 times" in job.error.message
    assert (job.attempts, job.comfyui_losses) == (0, 2)


async def test_a_child_comfyui_gone_silent_is_restarted_and_its_job_runs_again(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with pull_worker(child_worker_settings(comfy, qm.url, tmp_path, comfyui_timeout=1.0)) as running:
        supervisor = running.agent.comfy_server
        assert isinstance(supervisor, ComfyProcess)
        job_id = await submit(alice, graph(color=65))
        await until_running_in(running.agent.comfy, job_id)
        assert supervisor._process is not None
        os.kill(supervisor._process.pid, signal.SIGSTOP)  # alive, holding its socket, answering nothing
        job = await finished(alice, job_id, timeout=40)
        restarts = supervisor.restarts
    assert (job.state, job.attempts, job.comfyui_losses) == (JobState.SUCCEEDED, 1, 1), job.error
    assert restarts == 1


async def test_a_worker_whose_comfyui_is_down_as_it_registers_waits_for_it_and_then_runs_jobs(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Its registration carries ComfyUI's device and catalogue: a ComfyUI gone in that moment ended
    the worker's loop (and its process) with the error, instead of waiting for ComfyUI as a claim does."""
    settings = worker_settings(comfy, qm.url, tmp_path)
    agent = Agent(settings, LocalStorage(Path(settings.storage_url.removeprefix("file://"))))
    queue = QueueClient(settings.queue_url, settings.token.get_secret_value(), settings.retry_seconds)
    await agent.start()
    await asyncio.to_thread(comfy.stop)
    worker = PullWorker(agent, queue)
    running = asyncio.create_task(worker.run(max_jobs=1))
    try:
        await until(lambda: not agent.comfyui_up, "the worker saw ComfyUI go")
        assert not running.done(), running
        job_id = await submit(alice, graph(color=64))
        await asyncio.to_thread(comfy.start)
        job = await finished(alice, job_id, timeout=30)
        assert (job.state, job.attempts) == (JobState.SUCCEEDED, 1), job.error
        await asyncio.wait_for(running, timeout=15)
    finally:
        worker.stop()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running
        await agent.stop()
        await queue.aclose()
