"""Jobs as participants submit them to a real queue manager: a no-model graph, an authenticated client,
uploaded inputs, submitting and waiting (bounded) for the end, for a condition on the way, or for
ComfyUI to be running a slow job."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import Job
from tests.support.queue_manager_app import LiveServer, password


def graph(color: int = 0, batch: int = 1, prefix: str = "t") -> dict[str, Any]:
    """A fresh (uncached) no-model graph: vary ``color`` to defeat ComfyUI's cache."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": batch, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def sleeping(color: int, seconds: float) -> dict[str, Any]:
    """A graph whose image waits ``seconds`` in ComfyUI's own TestSleep node (it heeds an interrupt)."""
    slow = graph(color=color)
    slow["4"] = {"class_type": "TestSleep", "inputs": {"value": ["2", 0], "seconds": seconds}}
    slow["3"]["inputs"]["images"] = ["4", 0]
    return slow


# The graph the workspace tests submit: its outputs are named inverted_00001_.png, ...
GRAPH: dict[str, Any] = graph(prefix="inverted")


def participant(qm: LiveServer, user: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=qm.url, auth=(user, password(user)), timeout=10)


def put_input(files: Path, user: str, name: str, data: bytes) -> None:
    """A participant's uploaded input file, as the queue manager stores it."""
    path = files / "users" / user / "input" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def submit(client: httpx.AsyncClient, prompt: dict[str, Any], **extra: Any) -> str:
    reply = await client.post("/api/jobs", json={"prompt": prompt, **extra})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


async def job_of(client: httpx.AsyncClient, job_id: str) -> Job:
    """The job as its owner's API shows it now."""
    return Job.model_validate((await client.get(f"/api/jobs/{job_id}")).json())


async def finished(client: httpx.AsyncClient, job_id: str, timeout: float = 20.0) -> Job:
    """Wait (bounded) until the job reaches a final state and return it."""
    async with asyncio.timeout(timeout):
        while True:
            job = Job.model_validate((await client.get(f"/api/jobs/{job_id}")).json())
            if job.state.finished:
                return job
            await asyncio.sleep(0.05)  # polling the participant API for a state change


async def submit_running(
    comfy: ComfyUIDouble, client: httpx.AsyncClient, prompt: dict[str, Any], seconds: float
) -> str:
    """Submit ``prompt`` with every node of the ComfyUI double taking ``seconds`` (ten progress steps
    a second) and wait until ComfyUI runs it; returns the job's id."""
    comfy.knobs.node_seconds, comfy.knobs.progress_steps = seconds, round(seconds * 10)
    job_id = await submit(client, prompt)
    await until(lambda: comfy.state.running is not None, "the job running in ComfyUI")
    return job_id


async def until(check: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Wait (bounded by ``timeout``) until ``check()`` holds, e.g. a condition in the ComfyUI double's
    state (or what a coroutine ``check`` returns, e.g. an answer of the queue manager); ``what``
    names it for whoever reads the failure."""

    async def holds() -> object:
        result = check()
        return await result if inspect.isawaitable(result) else result

    try:
        async with asyncio.timeout(timeout):
            while not await holds():
                await asyncio.sleep(0.01)  # polling a condition in the double's state
    except TimeoutError:
        raise TimeoutError(f"{what}: not within {timeout}s") from None
