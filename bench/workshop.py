"""Replay a workshop burst through the real queue manager, push dispatcher and worker reporting.

Right after a demo, every participant queues their jobs at once. The queue manager (uvicorn on
loopback, real Redis) dispatches them to a serverless platform double (cold starts, autoscaling up
to the pool's capacity, scale-down delay, billing increments per provider) whose replicas run the
worker's reporting against the queue manager's lease routes. Time is compressed: ``--compression``
simulated seconds pass per real second. Prints one JSON object:

* ``makespan_ratio``: first submit to last finish, over the ideal ``ceil(jobs / capacity) * job``;
* ``gpu_billed_over_busy``: GPU time billed (replica lifetimes in billing increments) over busy time;
* ``p95_wait_s``: 95th percentile of submit-to-start, in simulated seconds.

    python -m bench.workshop [--provider verda-serverless|runpod-serverless] [--capacity 40] ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from devkit.push_platform import Platform, serving, simulated_worker
from devkit.servers import TEST_FILES_URL, free_port, redis_server
from services.protocol.jobs import JobSubmit
from services.queue_manager.main import create_app
from services.queue_manager.settings import Settings
from services.queue_manager.store import Store

# Simulated seconds. Verda containers bill in 10-minute increments, RunPod per second. Assumed:
# Verda starts billing a replica once its container runs (image pull not billed), RunPod at start.
# Scale-down delays are what the pools configure by default (verda-serverless: 60 s).
PROVIDERS: dict[str, dict[str, Any]] = {
    "verda-serverless": {"style": "verda", "cold_start_s": 90, "billing_increment_s": 600,
                         "scale_down_s": 60, "bill_cold_start": False},
    "runpod-serverless": {"style": "runpod", "cold_start_s": 20, "billing_increment_s": 1,
                          "scale_down_s": 60, "bill_cold_start": True},
}  # fmt: skip
POOL = "burst"
PROMPT = {"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="verda-serverless")
    parser.add_argument("--capacity", type=int, default=40)
    parser.add_argument("--participants", type=int, default=20)
    parser.add_argument("--jobs-each", type=int, default=15)
    parser.add_argument("--job-minutes", type=float, default=4.0)
    parser.add_argument("--compression", type=float, default=20.0, help="simulated seconds per real second")
    parser.add_argument("--cold-start-s", type=float, help="override the provider's cold start")
    parser.add_argument("--scale-down-s", type=float, help="override the pool's scale-down delay")
    parser.add_argument("--bill-cold-start", action=argparse.BooleanOptionalAction, default=None)
    return parser.parse_args()


def platform_for(args: argparse.Namespace) -> Platform:
    model, sim = dict(PROVIDERS[args.provider]), 1.0 / args.compression
    overrides = {"cold_start_s": args.cold_start_s, "scale_down_s": args.scale_down_s,
                 "bill_cold_start": args.bill_cold_start}  # fmt: skip
    model.update({key: value for key, value in overrides.items() if value is not None})
    job_s = args.job_minutes * 60 * sim
    return Platform(
        runner=simulated_worker(job_s, heartbeat_seconds=3.0),
        max_replicas=args.capacity,
        cold_start_s=model["cold_start_s"] * sim,
        idle_timeout_s=model["scale_down_s"] * sim,
        billing_increment_s=model["billing_increment_s"] * sim,
        bill_cold_start=model["bill_cold_start"],
    )


def qm_settings(redis_url: str, port: int) -> Settings:
    return Settings(
        env="development", redis_url=redis_url, worker_tokens={POOL: "bench-token"},
        public_url=f"http://127.0.0.1:{port}", lease_seconds=12.0, reap_interval_seconds=0.2,
        max_queued_per_user=100, log_level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        files_url=TEST_FILES_URL,
    )  # fmt: skip


async def burst(store: Store, args: argparse.Namespace) -> dict[str, float]:
    """Every participant queues all their jobs at once; returns job id -> submit time."""
    submitted: dict[str, float] = {}

    async def participant(user: str) -> None:
        for _ in range(args.jobs_each):
            submitted_at = time.monotonic()
            job = await store.submit(user, JobSubmit.model_validate({"prompt": PROMPT}))
            submitted[job.id] = submitted_at

    await asyncio.gather(*(participant(f"participant{p:02d}") for p in range(args.participants)))
    return submitted


async def eventually(check: Callable[[], Awaitable[bool]], limit_s: float, what: str) -> float:
    """Poll ``check`` until true; returns the time it became true."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if await check():
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{what} did not happen within {limit_s:.0f} s")


def all_finished(store: Store, job_ids: list[str]) -> Callable[[], Awaitable[bool]]:
    pending = set(job_ids)

    async def check() -> bool:
        jobs = [await store.get(job_id) for job_id in list(pending)]
        pending.difference_update(job.id for job in jobs if job is not None and job.state.finished)
        return not pending

    return check


def scaled_down(platform: Platform) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return platform.live_replicas() == 0

    return check


def figures(
    args: argparse.Namespace, platform: Platform, submitted: dict[str, float], end: float
) -> dict[str, float]:
    job_s = args.job_minutes * 60
    jobs = len(submitted)
    ideal = math.ceil(jobs / args.capacity) * job_s
    start = min(submitted.values())
    started = {r.lease["job"]["id"]: r.started_at for r in platform.requests.values() if r.started_at}
    waits = sorted((started[j] - t) * args.compression for j, t in submitted.items() if j in started)
    p95 = waits[min(len(waits) - 1, math.ceil(0.95 * len(waits)) - 1)]
    return {
        "makespan_ratio": round((end - start) * args.compression / ideal, 3),
        "gpu_billed_over_busy": round(platform.billed_seconds() / platform.busy_seconds(), 3),
        "p95_wait_s": round(p95, 1),
    }


async def replay(args: argparse.Namespace, redis_url: str) -> dict[str, float]:
    platform = platform_for(args)
    style = PROVIDERS[args.provider]["style"]
    async with serving(platform.app()) as platform_url:
        url = f"{platform_url}/{platform.deployment}" if style == "verda" else platform_url
        pool = {"name": POOL, "style": style, "url": url, "api_key": platform.api_key,
                "capacity": args.capacity, "poll_seconds": 1.0}  # fmt: skip
        os.environ["QM_PUSH_POOLS"] = json.dumps([pool])
        port = free_port()
        app = create_app(qm_settings(redis_url, port))
        async with serving(app, port):
            submitted = await burst(app.state.store, args)
            ideal_real = math.ceil(len(submitted) / args.capacity) * args.job_minutes * 60 / args.compression
            end = await eventually(
                all_finished(app.state.store, list(submitted)), 10 * ideal_real + 60, "the burst"
            )
            await eventually(scaled_down(platform), 60, "scale-down")
    return figures(args, platform, submitted, end)


def main() -> None:
    args = parse()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis:
        result = asyncio.run(replay(args, redis.url))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
