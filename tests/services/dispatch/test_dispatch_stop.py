"""Stopping push dispatch never hangs the queue manager's shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace
from typing import Any

import pytest
from redis.asyncio import Redis

from devkit.push_platform import Platform, serving, simulated_worker
from devkit.servers import free_port
from services.protocol.jobs import JobState, JobSubmit
from services.queue_manager.dispatch import PoolDispatcher, PushPool
from services.queue_manager.keys import Keys
from services.queue_manager.push_requests import Chain
from services.queue_manager.store import Store
from tests.support.dispatch_rig import queue_manager

PROMPT = {"1": {"class_type": "KSampler", "inputs": {}}}


async def until_state(store: Store, job_id: str, state: JobState, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (job := await store.get(job_id)) is None or job.state != state:
        assert time.monotonic() < deadline, f"job {job_id} not {state}: {job and job.state}"
        await asyncio.sleep(0.02)


class NoChains:
    """Redis with no push request left open by an earlier dispatcher."""

    async def scan_iter(self, **_: Any) -> Any:
        for key in ():
            yield key


class SwallowingStore:
    """A claim that swallows its cancellation and returns nothing, as redis-py's asyncio client can
    while it waits for a connection."""

    settings = SimpleNamespace(heartbeat_seconds=1.0, job_limit=lambda pool: 3600.0)
    keys, redis = Keys("qm"), NoChains()

    def __init__(self) -> None:
        self.waiting = asyncio.Event()

    async def claim(self, worker_id: str, pool: str, wait: float, behind: bool = False) -> Any:
        self.waiting.set()
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            return None
        return None


async def test_a_dispatcher_stops_even_when_its_claim_swallows_the_cancel() -> None:
    store = SwallowingStore()
    pool = PushPool(name="gpu", style="runpod", url="http://127.0.0.1:9", api_key="k", capacity=1)
    dispatcher = PoolDispatcher(store, pool, None, "http://127.0.0.1:9")  # type: ignore[arg-type]
    task = asyncio.create_task(dispatcher.run([]))
    await asyncio.wait_for(store.waiting.wait(), 5)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_a_queue_manager_that_stops_leaves_the_jobs_its_requests_run_to_their_containers(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart while a container runs its job: the dispatcher carrying the request stops, and
    the job stays the container's (it reports it to the queue manager that comes next), even when
    the stop's cancel is swallowed (by redis-py, or asyncio.wait_for on Python 3.11) and the
    dispatcher looks at the request once more after its HTTP client closed."""
    platform = Platform(runner=simulated_worker(3.0, heartbeat_seconds=0.5), max_replicas=1)
    async with serving(platform.app()) as platform_url:
        async with queue_manager(redis_url, "runpod", platform, platform_url, free_port(), capacity=1) as qm:
            job = await qm.store.submit("a", JobSubmit.model_validate({"prompt": PROMPT}))
            await until_state(qm.store, job.id, JobState.RUNNING)
            chains, get = qm.dispatcher.chains, qm.dispatcher.chains.get
            stopping = asyncio.Event()

            async def swallowing_get(chain_id: str) -> Chain | None:
                if stopping.is_set():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.Event().wait()  # until cancelled, which it swallows
                    stopping.clear()
                return await get(chain_id)

            monkeypatch.setattr(chains, "get", swallowing_get)
            stopping.set()
        deadline = time.monotonic() + 5.0
        while any(
            getattr(task.get_coro(), "__qualname__", "") == "PoolDispatcher._carry"
            for task in asyncio.all_tasks()
        ):
            assert time.monotonic() < deadline, "a request's dispatcher task outlived the queue manager"
            await asyncio.sleep(0.02)
        redis = Redis.from_url(redis_url, decode_responses=True)
        record = await redis.hmget(qm.store.keys.job(job.id), ["state", "attempts", "error"])
        await redis.aclose()

    assert record[:2] == ["running", "1"] and not record[2], record  # not failed as a dispatch error
