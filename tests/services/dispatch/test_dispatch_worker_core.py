"""The whole push path: queue manager -> dispatcher -> serverless endpoint double -> the worker's own
push front door (agent + ComfyUI double) -> lease routes -> outputs in the participant's files."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
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
from tests.support.queue_manager_app import POOL, build_app, settings_for


def graph(color: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "pushed"}},
    }


@pytest.fixture
def comfy(tmp_path: Path) -> Iterator[ComfyUIDouble]:
    with ComfyUIDouble(tmp_path / "comfy") as double:
        yield double


def worker_core(agent: Agent) -> Runner:
    """A replica running the worker's push front door on each request it takes."""

    async def run(lease: dict[str, Any]) -> bool:
        outcome = await run_pushed(agent, Lease.model_validate(lease))
        return outcome["outcome"] == "succeeded"

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
async def test_pushed_jobs_run_on_the_worker_core_and_their_outputs_land(
    redis_url: str, comfy: ComfyUIDouble, tmp_path: Path, style: str
) -> None:
    files, port = tmp_path / "files", free_port()
    app = build_app(settings_for(redis_url, public_url=f"http://127.0.0.1:{port}", lease_seconds=3.0), files)
    async with agent_on(comfy, files, tmp_path) as agent, serving(app, port):
        platform = Platform(runner=worker_core(agent), max_replicas=1)
        async with serving(platform.app()) as url:
            endpoint = f"{url}/{platform.deployment}" if style == "verda" else url
            pool = PushPool(name=POOL, style=style, url=endpoint, api_key=platform.api_key, capacity=1,
                            poll_seconds=0.1)  # fmt: skip
            async with dispatching(app.state.store, app.state.settings, [pool]):
                jobs = [await app.state.store.submit("alice", JobSubmit(prompt=graph(c))) for c in (3, 4)]
                done = await finished(app.state.store, [job.id for job in jobs], timeout=30)

    assert [job.state for job in done] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert all(job.outputs for job in done)
    assert all((files / "users" / "alice" / "output" / job.outputs[0].filename).exists() for job in done)
    assert len(platform.requests) == 2
