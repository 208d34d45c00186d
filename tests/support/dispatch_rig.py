"""The push dispatcher between the real queue manager (uvicorn on loopback, real Redis) and a
serverless platform double, and waiting (bounded) for its jobs to end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from devkit.push_platform import Platform, serving
from devkit.servers import TEST_FILES_URL, free_port
from services.protocol.jobs import Job
from services.queue_manager.dispatch import PoolDispatcher, PushPool
from services.queue_manager.main import create_app
from services.queue_manager.settings import Settings
from services.queue_manager.store import Store

POOL, POOL_TOKEN = "serverless", "pool-token"


OTHER_POOL, OTHER_TOKEN = "other", "other-token"


@dataclass
class Rig:
    store: Store
    platform: Platform
    dispatcher: PoolDispatcher
    url: str  # the queue manager's


def qm_settings(redis_url: str, port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "development", "redis_url": redis_url,
        "worker_tokens": {POOL: POOL_TOKEN, OTHER_POOL: OTHER_TOKEN},
        "public_url": f"http://127.0.0.1:{port}", "lease_seconds": 2.0, "reap_interval_seconds": 0.05,
        "retry_backoff_seconds": 0.05, "retry_backoff_max_seconds": 0.1, "log_level": "WARNING",
        "files_url": TEST_FILES_URL,
    }  # fmt: skip
    return Settings(**(values | overrides))


@contextlib.asynccontextmanager
async def rig(redis_url: str, style: str, platform: Platform, **pool: Any) -> AsyncIterator[Rig]:
    async with (
        serving(platform.app()) as url,
        queue_manager(redis_url, style, platform, url, free_port(), **pool) as r,
    ):
        yield r


@contextlib.asynccontextmanager
async def queue_manager(
    redis_url: str,
    style: str,
    platform: Platform,
    platform_url: str,
    port: int,
    lease_seconds: float = 2.0,
    max_job_seconds: float | None = None,
    **pool: Any,
) -> AsyncIterator[Rig]:
    """One queue manager on ``port`` and its dispatcher for ``platform``'s endpoint at ``platform_url``
    (two in turn on one port are the same queue manager restarted); ``max_job_seconds``: the pool's
    maximum job time (``QM_POOL_MAX_JOB_SECONDS``)."""
    url = f"{platform_url}/{platform.deployment}" if style == "verda" else platform_url
    spec = {"name": POOL, "style": style, "url": url, "api_key": platform.api_key, "capacity": 2,
            "poll_seconds": 0.05} | pool  # fmt: skip
    # The dispatcher runs in the app's lifespan, as in production: it adopts the requests a queue
    # manager before it left open before this one answers their containers.
    limits = {POOL: max_job_seconds} if max_job_seconds else {}
    pools = [PushPool(**spec)]
    limited = {"lease_seconds": lease_seconds, "pool_max_job_seconds": limits}
    settings = qm_settings(redis_url, port, push_pools=pools, **limited)
    app = create_app(settings)
    async with serving(app, port):
        [dispatcher] = app.state.dispatchers
        yield Rig(app.state.store, platform, dispatcher, f"http://127.0.0.1:{port}")


async def finished(store: Store, job_ids: list[str], timeout: float = 15.0) -> list[Job]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [await store.get(job_id) for job_id in job_ids]
        if all(job is not None and job.state.finished for job in jobs):
            return [job for job in jobs if job is not None]
        await asyncio.sleep(0.02)
    raise TimeoutError(f"jobs not finished: {[(j.id, j.state) for j in jobs if j]}")
