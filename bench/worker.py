"""Worker agent overhead: ``python -m bench.worker [--jobs N]`` prints one JSON object.

* ``overhead_ms_p50`` / ``overhead_ms_p99``: per job, the agent's wall time from receiving the
  lease to the queue manager acknowledging the completion, minus ComfyUI's own execution (as the
  ComfyUI double measures it, from dequeue to the final ``executing``) and minus the output upload.
* ``ready_s``: agent start (ComfyUI already up) to its first claim: attach, socket, warmup
  workflow, catalogue, registration.

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
from pydantic import SecretStr

from services.protocol.workers import Lease
from services.storage.local import LocalStorage
from services.worker import runner as runner_module
from services.worker.agent import Agent
from services.worker.outputs import store_outputs
from services.worker.pull import PullWorker
from services.worker.queue_client import QueueClient
from services.worker.settings import WorkerSettings
from tests.support.qm_server import qm_env
from tests.support.qm_server import queue_manager as qm_process
from tests.support.servers import free_port, redis_server, wait_until

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
        wait_until(lambda: httpx.get(url).status_code == 200, timeout=60, what=" ".join(command[:3]))
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
        "tests.doubles.comfyui",
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

        async def timed_lease(lease: Lease, queue: QueueClient, heartbeat_seconds: float) -> str:
            started = time.perf_counter()
            result = await run_lease(lease, queue, heartbeat_seconds)
            self.leases[lease.job.id] = time.perf_counter() - started
            if result != "succeeded":
                raise RuntimeError(f"bench job {lease.job.id} ended {result}: the measurement is void")
            return result

        async def timed_store(comfy: Any, storage: Any, user: str, entry: dict[str, Any]) -> Any:
            started = time.perf_counter()
            result = await store_outputs(comfy, storage, user, entry)
            self.uploads[entry["prompt"][1]] = time.perf_counter() - started
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


async def run_worker(root: Path, qm_url: str, comfy_url: str, jobs: int) -> dict[str, float]:
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
    await agent.stop()
    await queue.aclose()
    meter.stop()
    async with httpx.AsyncClient() as client:
        timings = (await client.get(f"{comfy_url}/__double__/timings")).json()
    return summarize(ids, meter, timings, ready)


def summarize(
    ids: list[str], meter: Meter, timings: dict[str, list[float]], ready: float
) -> dict[str, float]:
    overheads = []
    for job_id in ids:
        start, end = timings[job_id]
        overheads.append((meter.leases[job_id] - (end - start) - meter.uploads.get(job_id, 0.0)) * 1000)
    cuts = statistics.quantiles(overheads, n=100, method="inclusive")
    return {
        "overhead_ms_p50": round(statistics.median(overheads), 2),
        "overhead_ms_p99": round(cuts[98], 2),
        "ready_s": round(ready, 3),
    }


def run(jobs: int = 200) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with (
            redis_server(root / "redis") as redis,
            queue_manager(redis.url, jobs) as qm_url,
            comfyui(root / "comfy") as comfy_url,
        ):
            return asyncio.run(run_worker(root, qm_url, comfy_url, jobs))


def main() -> None:
    parser = argparse.ArgumentParser(description="worker agent overhead per job and readiness")
    parser.add_argument("--jobs", type=int, default=200)
    print(json.dumps(run(parser.parse_args().jobs)))


if __name__ == "__main__":
    main()
