"""Worker agent overhead: ``python -m bench.worker [--jobs N]`` prints one JSON object.

* ``overhead_ms_p50`` / ``overhead_ms_p99``: per job, the agent's wall time from receiving the
  lease to the queue manager acknowledging the completion, minus ComfyUI's own execution (as the
  ComfyUI double measures it, from dequeue to the final ``executing``) and minus the output upload.
* ``ready_s``: agent start (ComfyUI already up) to its first claim: attach, socket, warmup
  workflow, catalogue, registration.
* ``cancel_ms_p50`` / ``cancel_ms_p99``: a participant's interrupt, as the stock frontend sends it
  (``POST /w/<user>/api/interrupt`` while a sampler-like node reports progress every 50 ms), to
  ``execution_interrupted`` on that participant's workspace socket: queue manager, the worker's
  held-open heartbeat, the interrupt in ComfyUI, the worker's report and the socket.

Everything is real except ComfyUI: the queue manager (``uvicorn services.queue_manager.main:app``)
and the ComfyUI double run as their own processes, as in production; a real redis-server;
local-directory storage. The agent runs in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
import websockets
from pydantic import SecretStr

from devkit.qm_server import qm_env
from devkit.qm_server import queue_manager as qm_process
from devkit.servers import free_port, http_get, redis_server, wait_until
from services.protocol.workers import Lease
from services.storage.local import LocalStorage
from services.worker import runner as runner_module
from services.worker.agent import Agent
from services.worker.outputs import store_outputs
from services.worker.pull import PullWorker
from services.worker.queue_client import QueueClient
from services.worker.settings import WorkerSettings

TOKEN = "bench-token-0123456789"
USER, PASSWORD = "bench", "bench-password"


def graph(index: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": index},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
    }


@contextlib.contextmanager
def process(command: list[str], url: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """A server process answering ``url`` (its readiness probe); yields the base URL, stops it after."""
    child = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: http_get(url).status_code == 200, timeout=60, what=" ".join(command[:3]))
        yield url.rsplit("/", 1)[0] if url.endswith(("/health", "/system_stats")) else url
    finally:
        child.terminate()
        child.wait(timeout=15)


@contextlib.contextmanager
def queue_manager(redis_url: str, jobs: int) -> Iterator[str]:
    env = qm_env(redis_url, {USER: PASSWORD}, {"gpu": TOKEN}, QM_MAX_QUEUED_PER_USER=str(jobs + 10))
    with qm_process(env) as server:
        yield server.url


def comfyui(root: Path) -> contextlib.AbstractContextManager[str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "devkit.doubles.comfyui",
        "--port",
        str(port),
        "--base-directory",
        str(root),
    ]
    return process(command, f"http://127.0.0.1:{port}/system_stats")


class Meter:
    """Times each lease the agent runs and each output upload, through patched entry points."""

    def __init__(self, agent: Agent) -> None:
        self.leases: dict[str, float] = {}
        self.uploads: dict[str, float] = {}
        run_lease = agent.run_lease

        async def timed_lease(lease: Lease, queue: QueueClient, heartbeat_seconds: float, *how: Any) -> str:
            started = time.perf_counter()
            result = await run_lease(lease, queue, heartbeat_seconds, *how)
            self.leases[lease.job.id] = time.perf_counter() - started
            if result != "succeeded":
                raise RuntimeError(f"bench job {lease.job.id} ended {result}: the measurement is void")
            return result

        async def timed_store(folder: Any, storage: Any, user: str, entry: dict[str, Any], *how: Any) -> Any:
            started = time.perf_counter()
            result = await store_outputs(folder, storage, user, entry, *how)
            # the job's outputs wait in its own spool folder (``JobFiles.kept``: <spool>/<job id>/out);
            # the entry may be built from the socket's ``executed`` events, without history's ``prompt``
            self.uploads[Path(folder).parent.name] = time.perf_counter() - started
            return result

        self.patches: list[Any] = [
            patch.object(agent, "run_lease", timed_lease),
            patch.object(runner_module, "store_outputs", timed_store),
        ]
        for patcher in self.patches:
            patcher.start()

    def stop(self) -> None:
        for patcher in self.patches:
            patcher.stop()


async def submit_all(url: str, jobs: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, auth=(USER, PASSWORD)) as client:
        ids = []
        for index in range(jobs):
            reply = await client.post("/api/jobs", json={"prompt": graph(index)})
            reply.raise_for_status()
            ids.append(reply.json()["id"])
        return ids


async def run_worker(
    root: Path, qm_url: str, comfy_url: str, jobs: int, cancel_samples: int
) -> dict[str, float]:
    ids = await submit_all(qm_url, jobs)
    config = WorkerSettings(
        queue_url=qm_url,
        token=SecretStr(TOKEN),
        pool="gpu",
        worker_id="bench",
        comfyui_url=comfy_url,
        data_dir=root / "comfy",  # the folders the ComfyUI double was started with
        storage_url=f"file://{root}/files",
    )
    started = time.monotonic()
    agent = Agent(config, LocalStorage(root / "files"))
    meter = Meter(agent)
    queue = QueueClient(qm_url, TOKEN)
    await agent.start()
    worker = PullWorker(agent, queue)
    await worker.run(max_jobs=jobs)
    assert worker.first_claim_at is not None
    ready = worker.first_claim_at - started
    meter.stop()
    async with httpx.AsyncClient() as client:
        timings = (await client.get(f"{comfy_url}/__double__/timings")).json()
    try:
        cancels = await cancel_times(PullWorker(agent, queue), qm_url, comfy_url, cancel_samples)
    finally:
        await agent.stop()
        await queue.aclose()
    return {**summarize(ids, meter, timings, ready), **percentiles("cancel_ms", cancels)}


async def cancel_times(worker: PullWorker, qm_url: str, comfy_url: str, samples: int) -> list[float]:
    """Interrupt ``samples`` running jobs from the participant's workspace; ms to each interruption."""
    async with httpx.AsyncClient(base_url=qm_url, timeout=30) as client:
        await client.post(f"{comfy_url}/__double__/knobs", json={"node_seconds": 20.0, "progress_steps": 400})
        login = await client.post("/api/auth/login", json={"user": USER, "password": PASSWORD})
        login.raise_for_status()
        headers = {"Cookie": f"qm_session={login.cookies['qm_session']}"}
        running = asyncio.create_task(worker.run())
        try:
            url = f"ws{qm_url[4:]}/w/{USER}/ws?clientId=bench-cancel"
            async with websockets.connect(url, additional_headers=headers) as socket:
                return [await one_cancel(client, socket, headers, index) for index in range(samples)]
        finally:
            worker.stop()
            await running


async def one_cancel(
    client: httpx.AsyncClient, socket: websockets.ClientConnection, headers: dict[str, str], index: int
) -> float:
    body = {"prompt": graph(100_000 + index), "client_id": "bench-cancel"}
    reply = await client.post(f"/w/{USER}/api/prompt", json=body, headers=headers)
    reply.raise_for_status()
    prompt_id = reply.json()["prompt_id"]
    await until_message(socket, "progress", prompt_id)  # the sampler runs
    started = time.perf_counter()
    (
        await client.post(f"/w/{USER}/api/interrupt", json={"prompt_id": prompt_id}, headers=headers)
    ).raise_for_status()
    await until_message(socket, "execution_interrupted", prompt_id)
    return (time.perf_counter() - started) * 1000


async def until_message(socket: websockets.ClientConnection, kind: str, prompt_id: str) -> None:
    """Read the workspace socket until ComfyUI's ``kind`` message for ``prompt_id`` (bounded)."""
    async with asyncio.timeout(60):
        async for frame in socket:
            if isinstance(frame, str):
                message = json.loads(frame)
                if message.get("type") == kind and message.get("data", {}).get("prompt_id") == prompt_id:
                    return
    raise RuntimeError(f"the workspace socket closed before {kind} for {prompt_id}")


def percentiles(name: str, values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {f"{name}_p50": round(statistics.median(values), 2), f"{name}_p99": round(cuts[98], 2)}


def summarize(
    ids: list[str], meter: Meter, timings: dict[str, list[float]], ready: float
) -> dict[str, float]:
    overheads = []
    for job_id in ids:
        start, end = timings[job_id]
        overheads.append((meter.leases[job_id] - (end - start) - meter.uploads.get(job_id, 0.0)) * 1000)
    return {**percentiles("overhead_ms", overheads), "ready_s": round(ready, 3)}


def run(jobs: int = 200, cancels: int = 30) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with (
            redis_server(root / "redis") as redis,
            queue_manager(redis.url, jobs) as qm_url,
            comfyui(root / "comfy") as comfy_url,
        ):
            return asyncio.run(run_worker(root, qm_url, comfy_url, jobs, cancels))


def main() -> None:
    parser = argparse.ArgumentParser(description="worker agent overhead per job, readiness and cancel time")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--cancels", type=int, default=30)
    args = parser.parse_args()
    print(json.dumps(run(args.jobs, args.cancels)))


if __name__ == "__main__":
    main()
