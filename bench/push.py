"""How busy a push pool keeps its serverless GPU: ``python -m bench.push`` prints one JSON object.

The no-op jobs of ``bench.gpu`` (100 by default, two participants taking turns) run through the
platform with one push pool of capacity 1: a real queue manager process on a real redis-server
dispatching to the serverless platform double (``devkit.push_platform``), whose one replica runs
the worker's push front door (``run_pushed``) on an agent attached to a ComfyUI double. Twice in
one run: with requests chaining jobs (the pool's defaults) and with one job per request
(``max_jobs_per_request=1``, push dispatch before chaining). For each it prints the time the
double's GPU slot sat idle between two jobs while work waited (``*_gap_ms_p50``/``_p99``), the
makespan from the first submit to the last job's end (``*_makespan_s``) and how many requests the
platform received (``*_requests``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.gpu import NOOP, PARTICIPANTS, TOKEN, Phase, gaps_ms, percentile, submit, timings
from bench.worker import comfyui
from devkit.push_platform import Platform, Runner, serving
from devkit.qm_server import QueueManagerProcess, qm_env
from devkit.servers import free_port, redis_server
from services.protocol.workers import Lease
from services.storage.local import LocalStorage
from services.worker.agent import Agent
from services.worker.push import run_pushed
from services.worker.settings import WorkerSettings

POOL = "gpu"


def front_door(agent: Agent) -> Runner:
    """The replica's handler: the worker's push front door on the agent."""

    async def run(lease: dict[str, Any]) -> bool:
        answer = await run_pushed(agent, Lease.model_validate(lease))
        return all(job["outcome"] == "succeeded" for job in answer["jobs"])

    return run


async def finished(http: httpx.AsyncClient, qm_url: str, ids: list[str]) -> None:
    """Wait (bounded) until every job has ended, each one successfully."""
    deadline, wanted = time.monotonic() + 600, set(ids)
    while time.monotonic() < deadline:
        states: dict[str, str] = {}
        for user, password in PARTICIPANTS.items():
            reply = await http.get(f"{qm_url}/api/jobs", auth=(user, password))
            states |= {job["id"]: job["state"] for job in reply.json() if job["id"] in wanted}
        if failed := [job_id for job_id, state in states.items() if state in ("failed", "cancelled")]:
            raise RuntimeError(f"jobs {failed} did not succeed: the measurement is void")
        if len(states) == len(wanted) and set(states.values()) == {"succeeded"}:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the jobs did not finish within 600 s")


async def variant(
    root: Path, comfy_url: str, redis_url: str, phase: Phase, max_jobs: int
) -> dict[str, float]:
    """The phase's jobs through one push pool whose requests take up to ``max_jobs`` each."""
    files, port = root / f"files-{max_jobs}", free_port()
    settings = WorkerSettings(
        queue_url="http://unused", token="", pool=POOL, provider="runpod", worker_id=f"replica-{max_jobs}",
        comfyui_url=comfy_url, data_dir=root / "comfy", storage_url=files.as_uri(), warmup=False,
    )  # fmt: skip
    agent = Agent(settings, LocalStorage(files))
    await agent.start()
    platform = Platform(runner=front_door(agent), max_replicas=1, idle_timeout_s=600.0)
    try:
        async with serving(platform.app()) as platform_url, httpx.AsyncClient(timeout=60) as http:
            pool = {"name": POOL, "style": "runpod", "url": platform_url, "api_key": platform.api_key,
                    "capacity": 1, "poll_seconds": 0.5, "max_jobs_per_request": max_jobs}  # fmt: skip
            env = qm_env(
                redis_url, PARTICIPANTS, {POOL: TOKEN}, QM_MAX_QUEUED_PER_USER="1000",
                QM_FILES_URL=files.as_uri(), QM_PUBLIC_URL=f"http://127.0.0.1:{port}",
                QM_KEY_PREFIX=f"bench{max_jobs}", QM_PUSH_POOL_GPU=json.dumps(pool),
            )  # fmt: skip
            qm = QueueManagerProcess(env, port=port, log_path=root / f"qm-{max_jobs}.log")
            await asyncio.to_thread(qm.start)
            try:
                started = time.monotonic()
                ids = await submit(http, qm.url, phase)
                await finished(http, qm.url, ids)
                makespan = time.monotonic() - started
                spans = await timings(http, comfy_url)
            finally:
                await asyncio.to_thread(qm.stop)
    finally:
        await agent.stop()
    gaps = gaps_ms([spans[job_id] for job_id in ids])
    return {
        "gap_ms_p50": percentile(gaps, 50),
        "gap_ms_p99": percentile(gaps, 99),
        "makespan_s": round(makespan, 3),
        "requests": len(platform.requests),
    }


async def measure(root: Path, jobs: int) -> dict[str, float]:
    # Graphs no job of the other variant shares: the double would replay a repeated one from its cache.
    chained_jobs = Phase(NOOP.name, jobs, NOOP.node_seconds, NOOP.output_bytes, NOOP.first_color)
    single_jobs = Phase(NOOP.name, jobs, NOOP.node_seconds, NOOP.output_bytes, NOOP.first_color + 10 * jobs)
    with redis_server(root / "redis") as redis, comfyui(root / "comfy") as comfy_url:
        chained = await variant(root, comfy_url, redis.url, chained_jobs, max_jobs=10_000)
        single = await variant(root, comfy_url, redis.url, single_jobs, max_jobs=1)
    return {f"chained_{k}": v for k, v in chained.items()} | {f"single_{k}": v for k, v in single.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=NOOP.jobs)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(measure(Path(tmp), args.jobs))))


if __name__ == "__main__":
    main()
