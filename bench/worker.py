"""Worker agent overhead: ``python -m bench.worker [--jobs N]`` prints one JSON object.

* ``overhead_ms_p50`` / ``overhead_ms_p99``: per job, the agent's wall time from receiving the
  lease to the queue manager acknowledging the completion, minus ComfyUI's own execution (as the
  ComfyUI double measures it, from dequeue to the final ``executing``) and minus the output upload.
* ``ready_s``: agent start (ComfyUI already up) to its first claim: attach, socket, warmup
  workflow, catalogue, registration.

Everything is real except ComfyUI (the double, in-process, no node delay): the queue manager under
uvicorn on loopback, a real redis-server, local-directory storage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
import uvicorn
from pydantic import SecretStr

from services.protocol.workers import Lease
from services.queue_manager.main import create_app
from services.queue_manager.settings import Settings
from services.storage.local import LocalStorage
from services.worker import runner as runner_module
from services.worker.agent import Agent
from services.worker.outputs import store_outputs
from services.worker.pull import PullWorker
from services.worker.queue_client import QueueClient
from services.worker.settings import WorkerSettings
from tests.doubles.comfyui import ComfyUIDouble
from tests.support.servers import free_port, redis_server, wait_until

TOKEN = "bench-token-0123456789"


def graph(index: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": index},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
    }


def serve(app: Any, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30, what="queue manager")
    return server, thread


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
    async with httpx.AsyncClient(base_url=url, auth=("bench", "bench-password")) as client:
        ids = []
        for index in range(jobs):
            reply = await client.post("/api/jobs", json={"prompt": graph(index)})
            reply.raise_for_status()
            ids.append(reply.json()["id"])
        return ids


async def measure(root: Path, redis_url: str, jobs: int) -> dict[str, float]:
    settings = Settings(
        env="development",
        redis_url=redis_url,
        admin_password=SecretStr("admin-password"),
        session_secret=SecretStr("s" * 32),
        participants={"bench": SecretStr("bench-password")},
        worker_tokens={"gpu": SecretStr(TOKEN)},
        max_queued_per_user=jobs + 10,
    )
    app = create_app(settings)
    app.state.storage = LocalStorage(root / "files")
    qm_port = free_port()
    server, thread = serve(app, qm_port)
    qm_url = f"http://127.0.0.1:{qm_port}"
    try:
        with ComfyUIDouble(root / "comfy") as comfy:
            return await run_worker(root, qm_url, comfy, jobs)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


async def run_worker(root: Path, qm_url: str, comfy: ComfyUIDouble, jobs: int) -> dict[str, float]:
    ids = await submit_all(qm_url, jobs)
    config = WorkerSettings(
        queue_url=qm_url,
        token=SecretStr(TOKEN),
        pool="gpu",
        worker_id="bench",
        comfyui_url=comfy.url,
        data_dir=root / "data",
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
    return summarize(ids, meter, comfy, ready)


def summarize(ids: list[str], meter: Meter, comfy: ComfyUIDouble, ready: float) -> dict[str, float]:
    overheads = []
    for job_id in ids:
        start, end = comfy.state.timings[job_id]
        overheads.append((meter.leases[job_id] - (end - start) - meter.uploads.get(job_id, 0.0)) * 1000)
    cuts = statistics.quantiles(overheads, n=100, method="inclusive")
    return {
        "overhead_ms_p50": round(statistics.median(overheads), 2),
        "overhead_ms_p99": round(cuts[98], 2),
        "ready_s": round(ready, 3),
    }


def run(jobs: int = 200) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp) / "redis") as redis:
        result = asyncio.run(measure(Path(tmp), redis.url, jobs))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=200)
    print(json.dumps(run(parser.parse_args().jobs)))


if __name__ == "__main__":
    main()
