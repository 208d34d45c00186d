"""A submit hands its job straight to a claim parked in the same process: submit and lease in one
Lua script (one AOF fsync), no wake round trip; a claim that went away meanwhile loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from services.protocol.events import EventType
from services.protocol.jobs import JobState
from services.protocol.workers import Completion
from services.queue_manager import leases
from services.queue_manager.background import running
from services.queue_manager.errors import QueueLimit
from services.queue_manager.store import Store
from tests.support.qm_api import job


async def parked(store: Store, count: int = 1) -> None:
    while store.wakeups.parked < count:
        await asyncio.sleep(0.01)  # until the claim waits for work


async def test_a_submit_leases_its_job_to_a_parked_claim_without_any_wake(
    store_with: Callable[..., Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases, "RECHECK_SECONDS", 60.0)
    store = store_with()  # no wake listener runs: only the hand-over can deliver in time
    waiting = asyncio.create_task(store.claim("w1", "gpu", wait=30))
    await parked(store)
    async with store.events.subscribe("ada"):
        queued = await store.submit("ada", job())
    lease = await asyncio.wait_for(waiting, timeout=10)
    assert lease is not None and lease.job.id == queued.id and lease.job.state == JobState.LEASED
    assert queued.state == JobState.QUEUED and queued.position == 0
    stored = await store.get(queued.id)
    assert stored is not None and stored.worker_id == "w1" and stored.attempts == 1


async def test_a_submit_tells_the_owner_queued_before_started(
    store_with: Callable[..., Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases, "RECHECK_SECONDS", 60.0)
    store = store_with()
    listener = asyncio.create_task(store.events.listen())
    waiting = asyncio.create_task(store.claim("w1", "gpu", wait=30))
    await parked(store)
    async with store.events.subscribe("ada") as stream:
        while not store.events.local_users():
            await asyncio.sleep(0.01)
        await store.submit("ada", job())
        first = await asyncio.wait_for(anext(stream), 10)
        second = await asyncio.wait_for(anext(stream), 10)
    assert [first.type, second.type] == [EventType.QUEUED, EventType.STARTED]
    assert second.data == {"worker_id": "w1", "attempt": 1, "pool": None}
    await waiting
    listener.cancel()


async def test_a_job_handed_to_a_claim_that_went_away_is_queued_again_for_the_next_worker(
    store: Store,
) -> None:
    with store.wakeups.ticket("gpu", "w1") as ticket:
        ticket.parked = True
        submitting = asyncio.create_task(store.submit("ada", job()))
        await asyncio.sleep(0)  # the submit reserves the ticket before it first awaits Redis
        assert ticket.handover is not None
        ticket.handover.cancel()  # the parked claim was cancelled meanwhile
        queued = await submitting
    stored = await store.get(queued.id)
    assert stored is not None and stored.state == JobState.QUEUED and stored.attempts == 0
    lease = await store.claim("w2", "gpu")
    assert lease is not None and lease.job.id == queued.id and lease.job.attempts == 1


async def test_a_submit_refused_by_the_queue_limit_leaves_the_parked_claim_waiting(
    store_with: Callable[..., Store],
) -> None:
    store = store_with(max_queued_per_user=1)
    await store.submit("ada", job())
    with store.wakeups.ticket("other-pool", "w1") as ticket:
        ticket.parked = True
        with pytest.raises(QueueLimit):
            await store.submit("ada", job())
        assert ticket.handover is None or ticket.handover.result() is None


async def test_a_waiting_claim_gets_the_job_the_end_of_its_owners_running_one_lets_her_run(
    store_with: Callable[..., Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ada may run one job at a time: her second waits while her first runs, and w2's claim parks,
    # having nothing it may take. Her first job's end makes the second hers to run: w2's claim
    # must hear of it then, not at its next look (a second later: an idle GPU with her job there).
    monkeypatch.setattr(leases, "RECHECK_SECONDS", 60.0)  # no look again within the test
    store = store_with(max_running_per_user=1)
    async with running(store):
        first, second = [await store.submit("ada", job()) for _ in range(2)]
        lease = await store.claim("w1", "gpu")
        assert lease is not None and lease.job.id == first.id
        waiting = asyncio.create_task(store.claim("w2", "gpu", wait=30))
        await parked(store)

        await store.complete(first.id, Completion(token=lease.token))

        taken = await asyncio.wait_for(waiting, timeout=10)
    assert taken is not None and taken.job.id == second.id


async def wakes_during(store: Store, step: Callable[[], Awaitable[object]]) -> list[str]:
    """The scopes published on ``{p}:wake`` while ``step`` runs (a marker published after it ends
    the reading: a channel delivers in order)."""
    marker = f"end-{id(step)}"
    async with store.redis.pubsub() as channel:
        await channel.subscribe(store.keys.wake)
        await step()
        await store.redis.publish(store.keys.wake, marker)
        heard: list[str] = []
        async with asyncio.timeout(10):
            while True:
                message = await channel.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is None:
                    continue
                if message["data"] == marker:
                    return heard
                heard.append(message["data"])


async def test_the_end_of_a_job_wakes_claims_only_when_one_was_held_back_by_her_running_limit(
    store_with: Callable[..., Store],
) -> None:
    # Each wake makes every queue manager process look at the queue for a parked claim: a lease end
    # that frees nothing a claim was refused must not cost that (it did on every job's end).
    store = store_with()  # no running limit: nothing of hers is ever held back
    await store.submit("ada", job())
    await store.submit("ada", job())
    lease = await store.claim("w1", "gpu")
    assert lease is not None
    token = lease.token
    assert await wakes_during(store, lambda: store.complete(lease.job.id, Completion(token=token))) == []

    limited = store_with(max_running_per_user=1, key_prefix="limited")
    first = await limited.submit("ada", job())
    await limited.submit("ada", job())
    held = await limited.claim("w1", "gpu")
    assert held is not None and held.job.id == first.id
    assert await limited.claim("w2", "gpu") is None  # her second job is held back: she runs one
    ended = Completion(token=held.token)
    assert await wakes_during(limited, lambda: limited.complete(first.id, ended)) == ["*"]
