"""A queue manager that crashes or restarts while its push requests run: the one that starts next
counts and follows them, so the pool never has more than its capacity of requests and nothing is
lost. Real queue managers (uvicorn on loopback, one after the other on one port), real Redis, the
serverless platform double."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from devkit.push_platform import Platform, serving, simulated_worker
from devkit.servers import free_port
from services.protocol.jobs import JobState, JobSubmit
from services.queue_manager.main import create_app
from services.queue_manager.push_requests import Chain, Chains
from services.queue_manager.settings import PushPool
from services.queue_manager.store import Store
from tests.support.dispatch_rig import POOL, finished, qm_settings, queue_manager
from tests.support.jobs import until

PROMPT = {"1": {"class_type": "KSampler", "inputs": {}}}


async def running(store: Store, job_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (job := await store.get(job_id)) is None or job.state != JobState.RUNNING:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not running: {job and job.state}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("style", "crash"),
    [("runpod", True), ("verda", True), ("runpod", False)],
    ids=["runpod", "verda", "stop"],
)
async def test_a_queue_manager_restarted_after_a_crash_follows_the_requests_it_left_running(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, style: str, crash: bool
) -> None:
    # stop: a restart without a crash (a deploy) leaves its requests to the next one as a crash does.
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

            if crash:
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


async def test_a_restarted_queue_manager_answers_no_container_before_it_decided_on_the_open_requests(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request the queue manager before sent but never recorded as sent: its container asks for
    # its next job the moment the restarted queue manager listens. The request is ended (nobody can
    # follow it) before any container's call is answered, so it takes no job beside the pool's
    # capacity, however slow the look at the open requests is (a Redis under load).
    port = free_port()
    pool = PushPool(name=POOL, style="runpod", url="http://127.0.0.1:9", api_key="k", capacity=1)
    before = create_app(qm_settings(redis_url, port))  # the same queue manager, before its restart
    async with serving(before, port):
        store: Store = before.state.store
        job = await store.submit("a", JobSubmit.model_validate({"prompt": PROMPT}))
        lease = await store.claim(f"push-{pool.name}-0", pool.name, 1.0)
        assert lease is not None and lease.job.id == job.id
        chain_id, reply_token = await Chains(store).open(pool, f"push-{pool.name}-0", lease)
        await store.submit("b", JobSubmit.model_validate({"prompt": PROMPT}))  # work it could take
    adopting, answered = asyncio.Event(), asyncio.Event()
    open_in = Chains.open_in

    async def slow_look(chains: Chains, pool_name: str) -> list[Chain]:
        adopting.set()
        with contextlib.suppress(TimeoutError):  # a container answered meanwhile shows the race
            await asyncio.wait_for(answered.wait(), 2.0)
        return await open_in(chains, pool_name)

    monkeypatch.setattr(Chains, "open_in", slow_look)

    async def container() -> httpx.Response:
        await asyncio.wait_for(adopting.wait(), 10.0)
        body = {"worker_id": "container", "after": lease.token}
        headers = {"Authorization": f"Bearer {reply_token}"}
        deadline = time.monotonic() + 15.0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as http:
            while True:  # bounded: the deadline
                try:
                    reply = await http.post(f"/api/push/{chain_id}/next", json=body)
                except httpx.ConnectError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.02)  # until the restarted queue manager listens
                    continue
                answered.set()
                return reply

    asking = asyncio.create_task(container())
    after = create_app(qm_settings(redis_url, port, push_pools=[pool]))
    async with serving(after, port):
        reply = await asyncio.wait_for(asking, 20.0)
        chain = await Chains(after.state.store).get(chain_id)

    assert reply.status_code == 204, reply.text  # the request ends: it runs only the job it was sent
    # The waiting job is the dispatcher's to send in a new request of the slot, not this one's.
    assert chain is not None and not chain.open and (chain.jobs, chain.job) == (1, job.id)


async def test_a_container_goes_on_with_its_request_through_a_slow_restart_of_the_queue_manager(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The queue manager is down longer than the container's heartbeat interval (a restart under
    # load): the container's calls meanwhile are refused at the port, and it retries them as the
    # worker agent does (for minutes), so its job and the request's next one run once each.
    platform = Platform(runner=simulated_worker(1.5, heartbeat_seconds=1.0), max_replicas=3)
    port = free_port()
    open_in = Chains.open_in

    async def slow_start(chains: Chains, pool_name: str) -> list[Chain]:
        await asyncio.sleep(1.2)  # the restart's own slowness: past the heartbeat, within the lease
        return await open_in(chains, pool_name)

    # The lease outlasts the restart with room to spare on a loaded machine (the restarted queue
    # manager's own start comes on top of its 1.2 s): a lapse would rerun the job, which is not
    # what this test is about.
    lease = {"lease_seconds": 5.0, "capacity": 1}
    async with serving(platform.app()) as platform_url:
        async with queue_manager(redis_url, "runpod", platform, platform_url, port, **lease) as first:
            jobs = [await first.store.submit(u, JobSubmit.model_validate({"prompt": PROMPT})) for u in "ab"]
            await running(first.store, jobs[0].id)
            monkeypatch.setattr(first.dispatcher.chains, "end", lambda *args: asyncio.sleep(0))  # it crashed
        monkeypatch.setattr(Chains, "open_in", slow_start)
        async with queue_manager(redis_url, "runpod", platform, platform_url, port, **lease) as second:
            done = await finished(second.store, [job.id for job in jobs], timeout=30.0)

    assert [(job.state, job.attempts) for job in done] == [(JobState.SUCCEEDED, 1)] * 2  # none run twice
    assert len(platform.requests) == 1  # the request went on with the queued job
