"""How busy the platform keeps a GPU: ``python -m bench.gpu`` prints one JSON object.

The same jobs run twice, side by side in one run: submitted straight to a ComfyUI double
(``direct``), and through the platform (a real queue manager process on a real redis-server,
one pull worker in this process attached to that double, user files in an S3 on loopback: moto
in server mode). The double records when each prompt starts and stops executing
(``/__double__/timings``), which is when its one GPU slot is busy.

* ``noop_makespan_ratio``: 100 no-op jobs (``EmptyImage -> ImageInvert -> SaveImage``) from two
  participants; platform makespan over direct makespan.
* ``video_makespan_ratio``: 20 jobs that take 2 s each and write a 50 MB output; the platform
  stores every output in the bucket before it reports the job done.
* ``gap_ms_p50`` / ``gap_ms_p99``: in the platform runs, the time the double's GPU slot sits idle
  between the end of one job and the start of the next (every job is queued beforehand, so work
  always waits), both kinds of job together.

Makespans: direct, from the first submit to the end of the last execution (the outputs are
already on the double's disk). Platform, from the worker's first claim (the jobs were queued
before it started, as participants queue them ahead of a GPU) until the queue manager has
acknowledged the last completion, which waits for the job's outputs to be in the bucket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
from pydantic import SecretStr

from bench.worker import comfyui
from devkit.qm_server import qm_env
from devkit.qm_server import queue_manager as qm_process
from devkit.s3 import make_bucket, moto_server
from devkit.servers import redis_server
from services.storage import Storage
from services.storage.open import S3Settings, open_storage
from services.worker.agent import Agent
from services.worker.pull import PullWorker
from services.worker.queue_client import QueueClient
from services.worker.settings import WorkerSettings

TOKEN = "bench-token-0123456789"
PARTICIPANTS = {"alice": "alice-password", "bob": "bob-password"}
BUCKET = "bench-gpu"
VIDEO_BYTES = 50_000_000


@dataclass(frozen=True)
class Phase:
    """One kind of job: how many, how long each node runs on the double, how big the output."""

    name: str
    jobs: int
    node_seconds: float
    output_bytes: int
    first_color: int

    def graph(self, index: int, offset: int) -> dict[str, Any]:
        """A graph no other job shares (the double would replay a repeated one from its cache)."""
        size = {"width": 64, "height": 64, "batch_size": 1}
        graph: dict[str, Any] = {
            "1": {"class_type": "EmptyImage", "inputs": {**size, "color": self.first_color + offset + index}}
        }
        last = "1"
        if self.node_seconds == 0:  # no-op: three instant nodes
            graph["2"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
            last = "2"
        # otherwise two nodes of node_seconds each (a 2 s job)
        save = {"images": [last, 0], "filename_prefix": self.name}
        graph[str(int(last) + 1)] = {"class_type": "SaveImage", "inputs": save}
        return graph


NOOP = Phase("noop", 100, 0.0, 0, 0)
VIDEO = Phase("video", 20, 1.0, VIDEO_BYTES, 100_000)


@dataclass
class Servers:
    qm_url: str
    comfy_url: str
    s3: S3Settings


@contextlib.contextmanager
def servers(root: Path) -> Iterator[Servers]:
    env = qm_env(
        "",
        PARTICIPANTS,
        {"gpu": TOKEN},
        QM_MAX_QUEUED_PER_USER="1000",
        QM_FILES_URL=(root / "files").as_uri(),
    )
    with redis_server(root / "redis") as redis, moto_server() as endpoint, comfyui(root / "comfy") as comfy:
        make_bucket(endpoint, BUCKET)
        env["QM_REDIS_URL"] = redis.url
        with qm_process(env, log_path=root / "qm.log") as qm:
            keys = SecretStr("test")
            yield Servers(
                qm.url, comfy, S3Settings(endpoint_url=endpoint, access_key_id=keys, secret_access_key=keys)
            )


async def timings(http: httpx.AsyncClient, comfy_url: str) -> dict[str, tuple[float, float]]:
    reply = await http.get(f"{comfy_url}/__double__/timings")
    return {job_id: (span[0], span[1]) for job_id, span in reply.json().items()}


async def direct(http: httpx.AsyncClient, comfy_url: str, phase: Phase) -> float:
    """Submit every job to the double at once; seconds until the last one stopped executing."""
    started = time.perf_counter()
    ids = []
    for index in range(phase.jobs):
        reply = await http.post(f"{comfy_url}/prompt", json={"prompt": phase.graph(index, 0)})
        reply.raise_for_status()
        ids.append(reply.json()["prompt_id"])
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        spans = await timings(http, comfy_url)
        if all(spans.get(job_id, (0.0, 0.0))[1] > 0 for job_id in ids):
            return max(spans[job_id][1] for job_id in ids) - started
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the double did not run the {phase.name} jobs within 600 s")


async def submit(http: httpx.AsyncClient, qm_url: str, phase: Phase) -> list[str]:
    """Queue every job with the queue manager, the two participants taking turns."""
    ids = []
    users = list(PARTICIPANTS.items())
    for index in range(phase.jobs):
        user, password = users[index % len(users)]
        body = {"prompt": phase.graph(index, phase.jobs)}
        reply = await http.post(f"{qm_url}/api/jobs", json=body, auth=(user, password))
        reply.raise_for_status()
        ids.append(reply.json()["id"])
    return ids


async def through_platform(agent: Agent, queue: QueueClient, phase: Phase) -> float:
    """Run the queued jobs with one pull worker; seconds from its first claim to the last report."""
    worker = PullWorker(agent, queue)
    outcomes: list[str] = []
    run_lease = agent.run_lease

    async def counted(*args: Any, **kwargs: Any) -> str:
        outcome = await run_lease(*args, **kwargs)
        outcomes.append(outcome)
        return outcome

    with patch.object(agent, "run_lease", counted):
        await worker.run(max_jobs=phase.jobs)
    ended = time.monotonic()
    if outcomes.count("succeeded") != phase.jobs:
        raise RuntimeError(f"{phase.name}: the worker's outcomes were {outcomes}: the measurement is void")
    assert worker.first_claim_at is not None
    return ended - worker.first_claim_at


def gaps_ms(spans: list[tuple[float, float]]) -> list[float]:
    """Idle time of the GPU slot between consecutive executions."""
    ordered = sorted(spans)
    return [(ordered[i + 1][0] - ordered[i][1]) * 1000 for i in range(len(ordered) - 1)]


async def run_phase(
    http: httpx.AsyncClient, found: Servers, agent: Agent, queue: QueueClient, phase: Phase
) -> tuple[float, list[float]]:
    knobs = {"node_seconds": phase.node_seconds, "output_bytes": phase.output_bytes}
    (await http.post(f"{found.comfy_url}/__double__/knobs", json=knobs)).raise_for_status()
    direct_s = await direct(http, found.comfy_url, phase)
    ids = await submit(http, found.qm_url, phase)
    platform_s = await through_platform(agent, queue, phase)
    spans = await timings(http, found.comfy_url)
    return platform_s / direct_s, gaps_ms([spans[job_id] for job_id in ids])


def worker_agent(root: Path, found: Servers) -> tuple[Agent, QueueClient]:
    settings = WorkerSettings(
        queue_url=found.qm_url,
        token=SecretStr(TOKEN),
        pool="gpu",
        worker_id="bench-gpu",
        comfyui_url=found.comfy_url,
        data_dir=root / "comfy",  # the folders the ComfyUI double was started with
        storage_url=f"s3://{BUCKET}",
    )
    storage: Storage = open_storage(settings.storage_url, found.s3)
    return Agent(settings, storage), QueueClient(found.qm_url, TOKEN)


def percentile(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2)


async def measure(root: Path, found: Servers, phases: list[Phase]) -> dict[str, float]:
    agent, queue = worker_agent(root, found)
    await agent.start()
    result: dict[str, float] = {}
    gaps: list[float] = []
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            for phase in phases:
                ratio, phase_gaps = await run_phase(http, found, agent, queue, phase)
                result[f"{phase.name}_makespan_ratio"] = round(ratio, 3)
                gaps += phase_gaps
    finally:
        await agent.stop()
        await queue.aclose()
    result["gap_ms_p50"] = percentile(gaps, 50)
    result["gap_ms_p99"] = percentile(gaps, 99)
    return result


def run(phases: list[Phase]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, servers(Path(tmp)) as found:
        return asyncio.run(measure(Path(tmp), found, phases))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noop-jobs", type=int, default=NOOP.jobs)
    parser.add_argument("--video-jobs", type=int, default=VIDEO.jobs)
    args = parser.parse_args()
    phases = [
        Phase(NOOP.name, args.noop_jobs, NOOP.node_seconds, NOOP.output_bytes, NOOP.first_color),
        Phase(VIDEO.name, args.video_jobs, VIDEO.node_seconds, VIDEO.output_bytes, VIDEO.first_color),
    ]
    print(json.dumps(run([phase for phase in phases if phase.jobs > 0])))


if __name__ == "__main__":
    main()
