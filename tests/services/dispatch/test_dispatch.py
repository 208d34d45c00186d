"""Push dispatch end to end: real queue manager and Redis, platform doubles, simulated worker core."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from devkit.push_platform import Platform, simulated_worker
from services.protocol.jobs import Job, JobState, JobSubmit
from services.queue_manager.settings import Settings
from services.queue_manager.store import Store
from tests.support.dispatch_rig import OTHER_TOKEN, POOL, POOL_TOKEN, finished, rig
from tests.support.jobs import until

PROMPT = {"1": {"class_type": "KSampler", "inputs": {}}}


async def submit(store: Store, user: str) -> Job:
    return await store.submit(user, JobSubmit.model_validate({"prompt": PROMPT}))


@pytest.mark.parametrize("style", ["runpod", "verda"])
async def test_queued_jobs_run_in_a_chain_within_exactly_capacity_requests(
    redis_url: str, make_platform: Callable[..., Platform], style: str
) -> None:
    platform = make_platform(max_replicas=4)
    async with rig(redis_url, style, platform, capacity=2) as r:
        jobs = [await submit(r.store, user) for user in ("ada", "bo", "cy") for _ in range(2)]

        done = await finished(r.store, [j.id for j in jobs])

    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert platform.peak_outstanding == 2  # both slots busy, never more
    assert len(platform.requests) == 2  # the four other jobs ran inside those two requests


async def test_a_request_runs_one_job_when_the_pool_allows_one_per_request(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = make_platform(max_replicas=1)
    async with rig(redis_url, "runpod", platform, capacity=1, max_jobs_per_request=1) as r:
        jobs = [await submit(r.store, "ada") for _ in range(3)]

        done = await finished(r.store, [j.id for j in jobs])

    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert len(platform.requests) == 3 and platform.peak_outstanding == 1


async def test_a_job_submitted_while_a_request_runs_is_taken_by_that_request(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = make_platform(job_seconds=0.5, max_replicas=2)
    async with rig(redis_url, "runpod", platform, capacity=1) as r:
        first = await submit(r.store, "ada")
        await until(
            lambda: [req.status for req in platform.requests.values()] == ["IN_PROGRESS"],
            "the request running",
        )

        later = await submit(r.store, "bo")
        done = await finished(r.store, [first.id, later.id])

    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert len(platform.requests) == 1


async def test_a_request_ends_once_the_queue_has_nothing_for_it(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = make_platform(max_replicas=1, idle_timeout_s=60.0)
    async with rig(redis_url, "runpod", platform, capacity=1, poll_seconds=60.0, linger_seconds=0.2) as r:
        [job] = [await submit(r.store, "ada")]
        await finished(r.store, [job.id])

        # No new job comes: the request ends within its linger (its GPU is not billed waiting in
        # it), and the slot is free at once, without waiting for the provider's status.
        await until(
            lambda: [req.status for req in platform.requests.values()] == ["COMPLETED"], "the request done"
        )
        await until(lambda: not r.dispatcher.flights, "no request in flight", timeout=5.0)
        assert platform.live_replicas() == 1  # the replica stays up (the provider's idle timeout)
        again = await submit(r.store, "ada")
        [done] = await finished(r.store, [again.id])

    assert done.state == JobState.SUCCEEDED
    assert len(platform.requests) == 2  # the next job came in a new request


async def test_a_container_between_jobs_takes_a_new_job_before_a_new_request_is_made(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = make_platform(max_replicas=2)
    async with rig(redis_url, "runpod", platform, capacity=2, linger_seconds=5.0) as r:
        first = await submit(r.store, "ada")
        await finished(r.store, [first.id])
        # Its container now waits (within its linger) for more, beside the dispatcher's free slot.
        await until(lambda: r.store.wakeups.parked == 2, "two claims parked")

        later = await submit(r.store, "bo")
        [done] = await finished(r.store, [later.id])

    assert done.state == JobState.SUCCEEDED
    assert len(platform.requests) == 1  # the GPU already up took it: no new request, no cold start


async def test_cancelling_a_running_job_stops_only_that_job_and_its_request_goes_on(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = make_platform(job_seconds=2.0, max_replicas=1)
    async with rig(redis_url, "runpod", platform, capacity=1, poll_seconds=0.05) as r:
        running = await submit(r.store, "ada")
        waiting = await submit(r.store, "bo")
        await until(
            lambda: [req.status for req in platform.requests.values()] == ["IN_PROGRESS"],
            "the request running",
        )

        await r.store.cancel(running.id, user="ada")
        done = await finished(r.store, [running.id, waiting.id])

    assert [job.state for job in done] == [JobState.CANCELLED, JobState.SUCCEEDED]
    assert len(platform.requests) == 1 and platform.requests["req-00001"].status == "COMPLETED"


async def test_a_container_dead_holding_a_chained_job_loses_nothing(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = Platform(runner=simulated_worker(0.1, heartbeat_seconds=0.2, crash_in_chain=1), max_replicas=1)
    async with rig(redis_url, "verda", platform, capacity=1) as r:
        jobs = [await submit(r.store, user) for user in ("ada", "bo", "cy")]

        done = await finished(r.store, [j.id for j in jobs])

    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert sorted(job.attempts for job in done) == [1, 1, 2]  # the one it held ran again
    assert [req.status for req in platform.requests.values()] == ["FAILED", "COMPLETED"]
    assert platform.peak_outstanding == 1


async def test_fairness_stays_in_our_queue(redis_url: str, make_platform: Callable[..., Platform]) -> None:
    platform = make_platform(max_replicas=1)
    async with rig(redis_url, "runpod", platform, capacity=1) as r:
        ada = [await submit(r.store, "ada") for _ in range(3)]
        bo = await submit(r.store, "bo")

        done = await finished(r.store, [j.id for j in [*ada, bo]])

    order = [job.user for job in sorted(done, key=lambda job: job.started_at or job.queued_at)]
    assert order == ["ada", "bo", "ada", "ada"]  # bo's first job runs before ada's second
    assert len(platform.requests) == 1  # all in one request: the container took what the queue gave


async def test_a_chain_takes_jobs_only_for_its_own_pool(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = make_platform(cold_start_s=30.0)  # the request waits at the provider: its chain is open
    async with rig(redis_url, "runpod", platform, capacity=1) as r:
        await submit(r.store, "ada")
        await until(lambda: len(platform.requests) == 1, "one request at the provider")
        chain = next(iter(platform.requests.values())).lease["chain"]
        await submit(r.store, "bo")
        async with httpx.AsyncClient(base_url=r.url) as qm:
            after = next(iter(platform.requests.values())).lease["token"]

            async def take(token: str, chain_id: str = chain) -> httpx.Response:
                call = {"worker_id": "container", "after": after}
                return await qm.post(f"/api/push/{chain_id}/next", json=call, headers=auth(token))

            other = await take(OTHER_TOKEN)
            unknown = await take(POOL_TOKEN, "x" * 32)
            nobody = await qm.post(f"/api/push/{chain}/next", json={"worker_id": "container", "after": after})

        assert other.status_code == 403 and "another pool" in other.json()["detail"]
        assert unknown.status_code == 404 and nobody.status_code == 401
        assert [j.state for j in await r.store.list_jobs("bo")] == [JobState.QUEUED]  # nobody took it


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_job_the_platform_loses_is_requeued_and_runs_later(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = make_platform(crash_next=1)  # a replica that dies mid job
    async with rig(redis_url, "verda", platform) as r:
        job = await submit(r.store, "ada")

        [done] = await finished(r.store, [job.id])

    assert done.state == JobState.SUCCEEDED and done.attempts == 2


@pytest.mark.parametrize("style", ["runpod", "verda"])
async def test_an_outage_of_the_provider_costs_the_waiting_jobs_no_attempt(
    redis_url: str, make_platform: Callable[..., Platform], style: str
) -> None:
    # The provider answers 500 to the next eight requests (more than the jobs' three attempts each):
    # each refused request used an attempt of its job, so a short outage dead-lettered every job
    # waiting for the pool. A request the provider did not take ran nothing: its job goes back to
    # its place in line, and the pool's requests pause (growing) until the provider takes one.
    platform = make_platform(refuse_next=8)
    async with rig(redis_url, style, platform) as r:
        jobs = [await submit(r.store, user) for user in ("ada", "bob")]

        done = await finished(r.store, [j.id for j in jobs])

    assert [(j.state, j.attempts) for j in done] == [(JobState.SUCCEEDED, 1)] * 2
    assert platform.refuse_next == 0


@pytest.mark.parametrize("style", ["runpod", "verda"])
async def test_a_submit_answered_too_late_runs_its_job_once_and_costs_it_no_attempt(
    redis_url: str, make_platform: Callable[..., Platform], style: str
) -> None:
    # The provider takes the request but answers after the dispatcher's time limit: the dispatcher
    # cannot know it was taken, so the job goes back (no attempt: it may not have run) and goes out
    # in a new request; the late one's container finds its lease given back at its next heartbeat
    # and stops, so the job is reported once, by the new request's container.
    platform = make_platform(job_seconds=1.0, late_next=1, late_s=1.0)
    async with rig(redis_url, style, platform, request_timeout_seconds=0.3) as r:
        job = await submit(r.store, "ada")

        [done] = await finished(r.store, [job.id])
        await until(lambda: not platform.outstanding(), "the late request ended")

    assert (done.state, done.attempts) == (JobState.SUCCEEDED, 1)
    assert sorted(req.status for req in platform.requests.values()) == ["COMPLETED", "FAILED"]


async def test_a_provider_that_refuses_the_pools_key_fails_the_job_with_its_answer(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    # A refusal that names our mistake (a wrong API key: 401) will not pass: the job's attempts run
    # out and it fails with the provider's answer, where the admin and its owner read what to fix.
    platform = make_platform()
    async with rig(redis_url, "runpod", platform, api_key="not-the-key") as r:
        job = await submit(r.store, "ada")

        [done] = await finished(r.store, [job.id])

    assert done.state == JobState.FAILED and done.error is not None
    assert done.error.type == "ProviderRefused" and "401" in done.error.message


async def test_a_job_past_its_pools_maximum_job_time_is_cancelled_at_the_provider_and_not_run_again(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    """The same maximum job time as every pool kind's: a job that hangs every time would otherwise
    take a serverless GPU for the whole limit, again and again."""
    platform = make_platform(job_seconds=30.0, max_replicas=1)
    async with rig(redis_url, "runpod", platform, capacity=1, max_job_seconds=0.5) as r:
        job = await submit(r.store, "ada")

        [done] = await finished(r.store, [job.id])
        dead = (await r.store.overview()).dead

    assert done.state == JobState.FAILED and done.error is not None and done.error.type == "JobTimeLimit"
    assert "0.5 s" in done.error.message and f"maxJobSeconds of pool {POOL}" in done.error.message
    assert done.attempts == 1 and [j.id for j in dead] == [job.id]
    assert len(platform.requests) == 1  # no second GPU took it


async def test_a_job_whose_request_never_starts_at_the_provider_is_retried(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = make_platform(cold_start_s=30.0, max_replicas=1)
    async with rig(redis_url, "runpod", platform, capacity=1, max_job_seconds=0.3) as r:
        job = await submit(r.store, "ada")

        [done] = await finished(r.store, [job.id])

    assert done.state == JobState.FAILED and done.error is not None and done.error.type == "Timeout"
    assert "did not start it" in done.error.message and done.attempts == 3  # then dead-lettered


async def test_cancel_while_waiting_at_the_provider_cancels_there(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = make_platform(cold_start_s=30.0)
    async with rig(redis_url, "runpod", platform) as r:
        job = await submit(r.store, "ada")
        await until(lambda: len(platform.requests) == 1, "one request at the provider")

        await r.store.cancel(job.id, user="ada")
        [done] = await finished(r.store, [job.id])

    assert done.state == JobState.CANCELLED
    assert [req.status for req in platform.requests.values()] == ["CANCELLED"]


async def test_provider_ids_are_mapped_while_in_flight(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = make_platform(cold_start_s=30.0)
    async with rig(redis_url, "runpod", platform) as r:
        job = await submit(r.store, "ada")
        await until(lambda: job.id in r.dispatcher.in_flight, "the job in flight")

        assert r.dispatcher.in_flight[job.id] in platform.requests


async def test_a_jobs_end_frees_its_slot_at_once_even_when_the_participants_stream_is_lost(
    redis_url: str, make_platform: Callable[..., Platform], monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = make_platform(max_replicas=1)
    async with rig(redis_url, "runpod", platform, capacity=1, poll_seconds=60.0, linger_seconds=0.0) as r:
        monkeypatch.setattr(r.store.events, "deliver", lambda payload: None)  # no participant event arrives
        r.dispatcher.tick = 60.0  # nor does a heartbeat or status poll within the test's deadline
        jobs = [await submit(r.store, "ada") for _ in range(2)]

        done = await finished(r.store, [j.id for j in jobs], timeout=10.0)
        await until(lambda: not r.dispatcher.in_flight, "nothing in flight", timeout=5.0)

    assert {job.state for job in done} == {JobState.SUCCEEDED}
    assert len(platform.requests) == 1


async def test_the_lease_outlives_a_cold_start_longer_than_the_lease(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = make_platform(cold_start_s=3.0)  # the lease is 2 s
    async with rig(redis_url, "runpod", platform, poll_seconds=60.0) as r:
        job = await submit(r.store, "ada")

        [done] = await finished(r.store, [job.id], timeout=10.0)

    assert done.state == JobState.SUCCEEDED and done.attempts == 1


def test_push_pools_come_from_one_variable_per_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QM_PUSH_POOLS", raising=False)
    pool = json.dumps(
        {
            "name": "burst",
            "style": "runpod",
            "url": "https://api.runpod.ai/v2/x",
            "api_key": "k",
            "capacity": 4,
        }
    )

    monkeypatch.setenv("QM_PUSH_POOL_BURST", pool)
    monkeypatch.setenv("QM_OTHER", "x")
    [found] = Settings(env="development").push_pools

    assert (found.name, found.style, found.capacity) == ("burst", "runpod", 4)
    monkeypatch.setenv("QM_PUSH_POOL_BAD", '{"name": "bad"}')
    with pytest.raises(ValueError, match="QM_PUSH_POOL_BAD is not a push pool"):
        Settings(env="development")


async def test_a_worker_dead_while_the_provider_says_running_loses_its_lease_and_the_job_is_rerun(
    redis_url: str, make_platform: Callable[..., Platform]
) -> None:
    platform = make_platform(stall_next=1, max_replicas=2)
    async with rig(redis_url, "runpod", platform, capacity=2) as r:
        job = await submit(r.store, "ada")

        [done] = await finished(r.store, [job.id], timeout=20.0)

    assert done.state == JobState.SUCCEEDED and done.attempts == 2
    assert [req.status for req in platform.requests.values()].count("COMPLETED") == 1
