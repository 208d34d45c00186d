"""The whole push path: queue manager -> dispatcher -> serverless endpoint double -> the worker's own
push front door (agent + ComfyUI double) -> lease routes -> outputs in the participant's files."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.push_platform import Platform, Runner, serving
from devkit.servers import free_port
from services.protocol.jobs import JobState, JobSubmit
from services.protocol.workers import Lease
from services.queue_manager.dispatch import PushPool, dispatching
from services.storage.local import LocalStorage
from services.worker.agent import Agent
from services.worker.push import run_pushed
from services.worker.settings import WorkerSettings
from tests.support.dispatch_rig import finished
from tests.support.jobs import until
from tests.support.queue_manager_app import POOL, build_app, settings_for


def graph(color: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "pushed"}},
    }


def worker_core(agent: Agent, ran: list[list[str]]) -> Runner:
    """A replica running the worker's push front door on each request it takes; ``ran`` gets the
    jobs each request ran."""

    async def run(lease: dict[str, Any]) -> bool:
        answer = await run_pushed(agent, Lease.model_validate(lease))
        ran.append([job["job_id"] for job in answer["jobs"]])
        return all(job["outcome"] == "succeeded" for job in answer["jobs"])

    return run

    return run


@contextlib.asynccontextmanager
async def agent_on(comfy: ComfyUIDouble, files: Path, tmp_path: Path) -> AsyncIterator[Agent]:
    settings = WorkerSettings(
        queue_url="http://unused", token="", pool=POOL, provider="runpod", worker_id="replica",
        comfyui_url=comfy.url, data_dir=comfy.folders.input.parent, storage_url=f"file://{files}",
        ws_silence_seconds=0.5, poll_seconds=0.1, retry_seconds=10.0, warmup=False,
    )  # fmt: skip
    agent = Agent(settings, LocalStorage(files))
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


@pytest.mark.parametrize("style", ["runpod", "verda"])
async def test_one_request_runs_the_queued_jobs_on_the_worker_core_in_fair_order(
    redis_url: str, comfy: ComfyUIDouble, tmp_path: Path, style: str
) -> None:
    files, port, ran = tmp_path / "files", free_port(), []
    app = build_app(settings_for(redis_url, public_url=f"http://127.0.0.1:{port}", lease_seconds=3.0), files)
    async with agent_on(comfy, files, tmp_path) as agent, serving(app, port):
        platform = Platform(runner=worker_core(agent, ran), max_replicas=2)
        async with serving(platform.app()) as url:
            endpoint = f"{url}/{platform.deployment}" if style == "verda" else url
            pool = PushPool(name=POOL, style=style, url=endpoint, api_key=platform.api_key, capacity=1,
                            poll_seconds=0.1, linger_seconds=0.2)  # fmt: skip
            async with dispatching(app.state.store, app.state.settings, [pool]):
                store = app.state.store
                jobs = [await store.submit(user, JobSubmit(prompt=graph(c))) for user, c in USERS_AND_COLOURS]
                done = await finished(store, [job.id for job in jobs], timeout=30)
                await until(lambda: all(r.status == "COMPLETED" for r in platform.requests.values()), "ended")

    assert [job.state for job in done] == [JobState.SUCCEEDED] * 4
    assert all((files / "users" / job.user / "output" / job.outputs[0].filename).exists() for job in done)
    alice, bob = [job.id for job in done[:2]], [job.id for job in done[2:]]
    assert ran == [[alice[0], bob[0], alice[1], bob[1]]]  # one request, in the queue's fair order
    assert platform.peak_outstanding == 1
    # The admin page's GPU use: every job's GPU time, and the idle gap before each chained one.
    records = [json.loads(r) for r in await store.redis.lrange(store.keys.admin_gpu(POOL), 0, -1)]
    assert len(records) == 4 and all(r["gpu_seconds"] > 0 for r in records)
    assert sum(r["idle_gap_seconds"] is not None for r in records) == 3


USERS_AND_COLOURS = [("alice", 3), ("alice", 4), ("bob", 5), ("bob", 6)]
