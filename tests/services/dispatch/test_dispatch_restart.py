"""A queue manager that crashes or restarts while its push requests run: the one that starts next
counts and follows them, so the pool never has more than its capacity of requests and nothing is
lost. Real queue managers (uvicorn on loopback, one after the other on one port), real Redis, the
serverless platform double."""

from __future__ import annotations

import asyncio
import time

import pytest

from devkit.push_platform import Platform, serving, simulated_worker
from devkit.servers import free_port
from services.protocol.jobs import JobState, JobSubmit
from services.queue_manager.store import Store
from tests.support.dispatch_rig import finished, queue_manager
from tests.support.jobs import until

PROMPT = {"1": {"class_type": "KSampler", "inputs": {}}}


async def running(store: Store, job_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (job := await store.get(job_id)) is None or job.state != JobState.RUNNING:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not running: {job and job.state}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("style", ["runpod", "verda"])
async def test_a_queue_manager_restarted_after_a_crash_follows_the_requests_it_left_running(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, style: str
) -> None:
    # Heartbeats a second apart, so the container's running job does not call the queue manager
    # while it is down; the job takes longer, so the restart happens within it.
    platform = Platform(runner=simulated_worker(1.5, heartbeat_seconds=1.0), max_replicas=3)
    port = free_port()
    async with serving(platform.app()) as platform_url:
        async with queue_manager(redis_url, style, platform, platform_url, port, capacity=1) as first:
            jobs = [await first.store.submit(u, JobSubmit.model_validate({"prompt": PROMPT})) for u in "abcd"]
            await running(first.store, jobs[0].id)

            async def crashed(chain_id: str, pool: str | None = None) -> None:
                return  # the process died: its dispatcher ends no chain on the way out

            monkeypatch.setattr(first.dispatcher.chains, "end", crashed)
        async with queue_manager(redis_url, style, platform, platform_url, port, capacity=1) as second:
            await until(lambda: second.dispatcher.flights, "the running request adopted")
            done = await finished(second.store, [job.id for job in jobs], timeout=30.0)

    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert sorted(job.attempts for job in done) == [1, 1, 1, 1]  # none lost, none run twice
    assert platform.peak_outstanding == 1  # the pool's capacity, across the restart
    assert len(platform.requests) == 1  # the request left running took the queued jobs


async def test_a_request_never_recorded_as_sent_takes_no_more_jobs_after_a_restart(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The crash came between the provider taking the request and its id being recorded: nobody can
    # follow that request, so the restarted queue manager ends its chain and it runs only its job.
    platform = Platform(runner=simulated_worker(1.5, heartbeat_seconds=1.0), max_replicas=3)
    port = free_port()
    async with serving(platform.app()) as platform_url:
        async with queue_manager(redis_url, "runpod", platform, platform_url, port, capacity=1) as first:
            monkeypatch.setattr(first.dispatcher.chains, "sent", lambda *args: asyncio.sleep(0))
            monkeypatch.setattr(first.dispatcher.chains, "end", lambda *args: asyncio.sleep(0))
            job = await first.store.submit("a", JobSubmit.model_validate({"prompt": PROMPT}))
            await running(first.store, job.id)
            [chain_id] = [flight.chain for flight in first.dispatcher.flights.values()]
        async with queue_manager(redis_url, "runpod", platform, platform_url, port, capacity=1) as second:
            later = [await second.store.submit(u, JobSubmit.model_validate({"prompt": PROMPT})) for u in "bc"]
            done = await finished(second.store, [job.id, *[j.id for j in later]], timeout=30.0)
            chain = await second.dispatcher.chains.get(chain_id)

    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert chain is not None and not chain.open and chain.jobs == 1  # its one job, nothing chained
    assert len(platform.requests) == 2  # the later jobs came in a request the new dispatcher follows
