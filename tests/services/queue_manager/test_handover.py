"""A submit hands its job straight to a claim parked in the same process: submit and lease in one
Lua script (one AOF fsync), no wake round trip; a claim that went away meanwhile loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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
