"""Leases: only the holder reports on a job; lost workers' jobs come back; bounded attempts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from services.protocol.events import EventType
from services.protocol.jobs import JobError, JobState, OutputFile
from services.protocol.workers import Completion, Failure
from services.queue_manager import leases
from services.queue_manager.errors import StaleLease
from services.queue_manager.records import now_ms
from services.queue_manager.store import Store
from tests.support.qm_api import job, make_settings, registration

LATER = 3_600_000  # an hour in ms: every lease granted now has expired by then
OUTPUT = OutputFile(node_id="2", kind="images", filename="t_00001_.png")


def error(retryable: bool) -> JobError:
    where = {"node_id": "2", "node_type": "SaveImage"}
    return JobError(type="RuntimeError", message="boom", retryable=retryable, **where)


async def test_a_completed_job_keeps_its_outputs_and_a_repeat_changes_nothing(store: Store) -> None:
    queued = await store.submit("ada", job())
    lease = await store.claim("w1", "gpu")
    assert lease is not None and lease.job.id == queued.id and lease.job.state == JobState.LEASED
    await store.complete(queued.id, Completion(token=lease.token, outputs=[OUTPUT]))
    await store.complete(queued.id, Completion(token=lease.token, outputs=[]))
    done = await store.get(queued.id)
    assert done is not None and done.state == JobState.SUCCEEDED and done.outputs == [OUTPUT]


async def test_a_worker_whose_lease_expired_can_never_complete_the_job(store: Store) -> None:
    queued = await store.submit("ada", job())
    stale = await store.claim("w1", "gpu")
    assert stale is not None
    # When the lease runs out and another worker takes the job over
    assert await store.reap(now=now_ms() + LATER) == [(queued.id, "ada", "delayed")]
    await store.reap(now=now_ms() + LATER)
    fresh = await store.claim("w2", "gpu")
    assert fresh is not None and fresh.job.id == queued.id and fresh.job.attempts == 2
    # Then the first worker is refused on every call
    with pytest.raises(StaleLease):
        await store.heartbeat(queued.id, stale.token)
    with pytest.raises(StaleLease):
        await store.complete(queued.id, Completion(token=stale.token))
    await store.complete(queued.id, Completion(token=fresh.token))
    done = await store.get(queued.id)
    assert done is not None and done.state == JobState.SUCCEEDED and done.worker_id == "w2"


async def test_a_job_whose_workers_keep_dying_goes_to_the_dead_letters(store: Store) -> None:
    queued = await store.submit("ada", job())
    for attempt in range(store.settings.max_attempts):
        assert await store.claim(f"w{attempt}", "gpu") is not None
        await store.reap(now=now_ms() + LATER)
        await store.reap(now=now_ms() + LATER)
    dead = await store.get(queued.id)
    assert dead is not None and dead.state == JobState.FAILED and dead.error is not None
    assert "lease" in dead.error.message
    assert [j.id for j in (await store.overview()).dead] == [queued.id]
    # And the admin can give it a fresh start
    again = await store.requeue_dead(queued.id)
    assert again.state == JobState.QUEUED and again.attempts == 0
    assert (await store.claim("w9", "gpu")) is not None


async def test_a_retryable_failure_runs_again_and_a_final_one_does_not(store: Store) -> None:
    queued = await store.submit("ada", job())
    lease = await store.claim("w1", "gpu")
    assert lease is not None
    await store.fail(queued.id, Failure(token=lease.token, error=error(retryable=True)))
    retry = await store.claim("w2", "gpu")
    assert retry is not None and retry.job.id == queued.id
    await store.fail(queued.id, Failure(token=retry.token, error=error(retryable=False)))
    failed = await store.get(queued.id)
    assert failed is not None and failed.state == JobState.FAILED
    assert failed.error is not None and failed.error.node_id == "2"


async def test_a_released_job_is_requeued_without_using_an_attempt(store: Store) -> None:
    queued = await store.submit("ada", job())
    lease = await store.claim("w1", "gpu")
    assert lease is not None
    await store.release(queued.id, lease.token)
    again = await store.claim("w2", "gpu")
    assert again is not None and again.job.attempts == 1


async def test_a_job_lost_in_comfyui_deaths_never_uses_an_attempt_until_it_is_the_likely_killer(
    store_with: Callable[..., Store],
) -> None:
    store = store_with(max_attempts=1, max_comfyui_losses=3)
    queued = await store.submit("ada", job())
    for loss in (1, 2):
        lease = await store.claim(f"w{loss}", "gpu")
        assert lease is not None and lease.job.attempts == 1
        await store.release(queued.id, lease.token, comfyui_lost=True)
        back = await store.get_for(queued.id, "ada")
        assert back.state == JobState.QUEUED and back.attempts == 0 and back.error is None
        assert back.comfyui_losses == loss and back.position == 0
    lease = await store.claim("w3", "gpu")
    assert lease is not None
    await store.release(queued.id, lease.token, comfyui_lost=True)
    await store.release(queued.id, lease.token, comfyui_lost=True)  # a retried call changes nothing
    failed = await store.get(queued.id)
    assert failed is not None and failed.state == JobState.FAILED and failed.error is not None
    assert failed.error.type == "ComfyUIKilled" and "3 times" in failed.error.message
    assert failed.comfyui_losses == 3


async def test_cancelling_a_running_job_tells_its_worker_at_the_next_heartbeat(store: Store) -> None:
    queued = await store.submit("ada", job())
    lease = await store.claim("w1", "gpu")
    assert lease is not None
    assert await store.cancel(queued.id, user="ada") == "requested"
    assert (await store.heartbeat(queued.id, lease.token)).cancel is True
    await store.fail(queued.id, Failure(token=lease.token, error=error(retryable=True)))
    cancelled = await store.get(queued.id)
    assert cancelled is not None and cancelled.state == JobState.CANCELLED


async def test_cancelling_a_waiting_job_removes_it_from_the_queue(store: Store) -> None:
    queued = await store.submit("ada", job())
    assert await store.cancel(queued.id, user="ada") == "cancelled"
    assert await store.claim("w1", "gpu") is None


async def test_a_long_polling_claim_wakes_as_soon_as_a_job_is_queued(
    store_with: Callable[..., Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases, "RECHECK_SECONDS", 60.0)  # only the wake can deliver in time
    store = store_with()
    listener = asyncio.create_task(store.wakeups.listen(store.redis, store.keys.wake))
    waiting = asyncio.create_task(store.claim("w1", "gpu", wait=30))
    while store.wakeups.waiting == 0:
        await asyncio.sleep(0.01)  # until the claim is parked
    queued = await store.submit("ada", job())
    lease = await asyncio.wait_for(waiting, timeout=10)
    assert lease is not None and lease.job.id == queued.id
    listener.cancel()


async def test_a_heartbeat_held_open_answers_the_moment_the_owner_cancels(
    store_with: Callable[..., Store],
) -> None:
    store = store_with(lease_seconds=120.0)
    listener = asyncio.create_task(
        store.wakeups.listen(store.redis, store.keys.wake, cancels=store.keys.cancels)
    )
    queued = await store.submit("ada", job())
    lease = await store.claim("w1", "gpu")
    assert lease is not None
    held = asyncio.create_task(store.heartbeat(queued.id, lease.token, wait=50.0, renew=False))
    while not store.wakeups.cancels.watched:
        await asyncio.sleep(0.01)  # until the heartbeat is held open
    assert await store.cancel(queued.id, user="ada") == "requested"
    reply = await asyncio.wait_for(held, timeout=10)  # long before its 50 s
    assert reply.cancel is True
    listener.cancel()


async def test_a_first_heartbeat_that_only_listens_writes_nothing(store: Store) -> None:
    queued = await store.submit("ada", job())
    lease = await store.claim("w1", "gpu")
    assert lease is not None
    before = await store.redis.hgetall(store.keys.job(queued.id))
    reply = await store.heartbeat(queued.id, lease.token, renew=False)
    assert reply.cancel is False and reply.expires_at == lease.expires_at
    assert await store.redis.hgetall(store.keys.job(queued.id)) == before  # still leased, same expiry
    with pytest.raises(StaleLease):
        await store.heartbeat(queued.id, "not-the-token", renew=False)


async def test_a_claim_with_nothing_to_do_returns_nothing_after_its_wait(store: Store) -> None:
    assert await store.claim("w1", "gpu", wait=0.2) is None


async def test_a_finished_job_expires_after_the_retention_but_a_waiting_one_never_does(store: Store) -> None:
    done = await store.submit("ada", job())
    waiting = await store.submit("bob", job())
    lease = await store.claim("w1", "gpu")
    assert lease is not None
    await store.complete(done.id, Completion(token=lease.token))
    retention_ms = store.settings.retention_hours * 3600 * 1000
    assert 0.99 * retention_ms < await store.redis.pttl(store.keys.job(done.id)) <= retention_ms
    assert await store.redis.pttl(store.keys.job(waiting.id)) == -1


async def test_a_job_past_its_pools_maximum_job_time_fails_for_good_however_its_worker_renews_it(
    store_with: Callable[..., Store],
) -> None:
    """A node that hangs while ComfyUI still answers keeps its worker heartbeating: the queue
    manager itself ends the job at the pool's maximum job time, not the worker."""
    store = store_with(lease_seconds=600, pool_max_job_seconds={"gpu": 30})
    await store.register(registration("w1"))
    queued = await store.submit("ada", job())
    lease = await store.claim("w1", "gpu")
    assert lease is not None
    await store.heartbeat(queued.id, lease.token)

    assert await store.reap(now=now_ms() + 29_000) == []  # within the limit: running on
    assert await store.reap(now=now_ms() + 31_000) == [(queued.id, "ada", "overrun")]

    with pytest.raises(StaleLease):  # the worker is told at its next heartbeat
        await store.heartbeat(queued.id, lease.token)
    failed = await store.get(queued.id)
    assert failed is not None and failed.state == JobState.FAILED and failed.error is not None
    assert failed.error.type == "JobTimeLimit" and not failed.error.retryable
    assert "30 s" in failed.error.message and "maxJobSeconds of pool gpu" in failed.error.message
    assert failed.attempts == 1 and await store.claim("w2", "gpu") is None  # not tried again
    assert [j.id for j in (await store.overview()).dead] == [queued.id]  # the admin sees it


async def test_a_pool_without_its_own_maximum_job_time_has_the_default(
    store_with: Callable[..., Store],
) -> None:
    store = store_with(lease_seconds=600, max_job_seconds=100, pool_max_job_seconds={"other": 10})
    await store.register(registration("w1"))
    queued = await store.submit("ada", job())
    assert await store.claim("w1", "gpu") is not None

    assert await store.reap(now=now_ms() + 50_000) == []
    assert await store.reap(now=now_ms() + 101_000) == [(queued.id, "ada", "overrun")]
    failed = await store.get(queued.id)
    assert failed is not None and failed.error == leases.time_limit_error("gpu", 100)  # naming her pool


class CountedConnection(Connection):
    """A Redis connection that counts what it sends: one packed send is one round trip (a pipeline's
    commands go in one)."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountedConnection.sent += 1
        await super().send_packed_command(command, check_health)


async def test_a_reaper_tick_is_one_redis_round_trip_however_many_jobs_run(redis_url: str) -> None:
    """Every queue manager process reaps twice a second: each tick asks Redis once, not once more
    per running job and its worker."""
    redis = Redis.from_url(redis_url, decode_responses=True, connection_class=CountedConnection)
    store = Store(redis, make_settings(redis_url, lease_seconds=600, pool_max_job_seconds={"gpu": 30}))
    try:
        for n in range(5):
            await store.register(registration(f"w{n}"))
            await store.submit(f"user{n}", job())
            assert await store.claim(f"w{n}", "gpu") is not None
        await store.reap()  # the script is loaded once per client
        before = CountedConnection.sent
        assert await store.reap() == []
        assert CountedConnection.sent - before == 1
    finally:
        await redis.aclose()


async def test_one_reaper_tick_ends_each_pools_overruns_and_tells_their_owners(
    store_with: Callable[..., Store],
) -> None:
    """Each worker's pool has its own maximum job time, or the default one; a job whose owner had
    asked to cancel it ends cancelled, with the limit as its reason; each owner hears how hers ended."""
    store = store_with(lease_seconds=600, max_job_seconds=100, pool_max_job_seconds={"fast": 30})
    ready = asyncio.Event()
    listener = asyncio.create_task(store.events.listen(ready))
    await ready.wait()
    jobs = {}
    for worker, pool, user in (("w1", "fast", "ada"), ("w2", "slow", "bob"), ("w3", "fast", "cy")):
        await store.register(registration(worker, pool))
        jobs[worker] = await store.submit(user, job())
        lease = await store.claim(worker, pool)
        assert lease is not None and lease.job.id == jobs[worker].id
    assert await store.cancel(jobs["w3"].id, user="cy") == "requested"

    async with store.events.subscribe("ada") as ada, store.events.subscribe("cy") as cy:
        touched = await store.reap(now=now_ms() + 31_000)
        told_ada = await asyncio.wait_for(anext(ada), 10)
        told_cy = await asyncio.wait_for(anext(cy), 10)
    listener.cancel()
    assert sorted(touched) == sorted([(jobs["w1"].id, "ada", "overrun"), (jobs["w3"].id, "cy", "overrun")])
    ended, cancelled, running = [await store.get(jobs[w].id) for w in ("w1", "w3", "w2")]
    assert ended is not None and ended.state == JobState.FAILED and ended.error is not None
    assert ended.error.type == "JobTimeLimit" and "pool 'fast'" in ended.error.message
    assert told_ada.type == EventType.FINISHED and told_ada.data["state"] == "failed"
    assert told_ada.data["error"]["type"] == "JobTimeLimit"
    assert cancelled is not None and cancelled.state == JobState.CANCELLED
    assert told_cy.type == EventType.FINISHED and told_cy.data["state"] == "cancelled"
    assert running is not None and running.state == JobState.LEASED
    assert [j.id for j in (await store.overview()).dead] == [jobs["w1"].id]
    assert await store.redis.hget(store.keys.worker("w1"), "state") == "idle"  # free for the next job

    assert await store.reap(now=now_ms() + 101_000) == [(jobs["w2"].id, "bob", "overrun")]
    slow = await store.get(jobs["w2"].id)
    assert slow is not None and slow.error is not None and "maxJobSeconds of pool slow" in slow.error.message
