"""Prepared jobs: a busy worker holds its next job, which stays queued until the worker starts it.

An idle worker's claim takes a held job at once; the preparer learns it at its next heartbeat or
start. Fair and priority order still decide what runs next, a cancel ends a held job at once, and
a hold given back or taken away counts no attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest

from services.protocol.jobs import JobState
from services.protocol.workers import Completion, Lease, StartCall, WorkerState
from services.queue_manager import leases
from services.queue_manager.records import now_ms
from services.queue_manager.store import Store
from tests.support.jobs import until
from tests.support.qm_api import job, registration


async def busy_with_next(store: Store, worker_id: str = "busy") -> tuple[Lease, Lease]:
    """``worker_id`` runs one job of ada's and has prepared a second."""
    await store.submit("ada", job())
    await store.submit("ada", job())
    running = await store.claim(worker_id, "gpu")
    held = await store.claim(worker_id, "gpu", prepare=True)
    assert running is not None and held is not None and held.prepared
    return running, held


async def test_a_prepared_job_stays_queued_until_its_worker_starts_it(store: Store) -> None:
    running, held = await busy_with_next(store)
    waiting = await store.get(held.job.id)
    assert waiting is not None and waiting.state == JobState.QUEUED and waiting.attempts == 0
    assert (await store.heartbeat(running.job.id, running.token)).holding == held.job.id

    reply = await store.start(held.job.id, StartCall(token=held.token, worker_id="busy"), "gpu")

    assert reply.started and reply.lease is None
    started = await store.get(held.job.id)
    assert started is not None and started.state == JobState.LEASED and started.attempts == 1
    assert started.worker_id == "busy"
    await store.complete(held.job.id, Completion(token=held.token))  # the hold token is the lease's
    done = await store.get(held.job.id)
    assert done is not None and done.state == JobState.SUCCEEDED


async def test_an_idle_worker_takes_a_prepared_job_and_the_preparer_learns_it(store: Store) -> None:
    running, held = await busy_with_next(store)

    taken = await store.claim("idle", "gpu")

    assert taken is not None and taken.job.id == held.job.id and taken.job.attempts == 1
    assert (await store.heartbeat(running.job.id, running.token)).holding is None
    reply = await store.start(held.job.id, StartCall(token=held.token, worker_id="busy"), "gpu")
    assert not reply.started and reply.lease is None  # nothing else to run: the busy worker claims
    moved = await store.get(held.job.id)
    assert moved is not None and moved.worker_id == "idle" and moved.attempts == 1


async def test_a_busy_worker_does_not_prepare_a_job_another_holds(store: Store) -> None:
    _, held = await busy_with_next(store, "busy-1")
    await store.submit("bob", job())
    assert await store.claim("busy-2", "gpu") is not None  # bob's job runs on busy-2

    assert await store.claim("busy-2", "gpu", prepare=True) is None  # ada's next is busy-1's
    still = await store.get(held.job.id)
    assert still is not None and still.state == JobState.QUEUED


async def test_a_job_queued_since_that_ranks_ahead_runs_first(store: Store) -> None:
    # ada's second job is prepared while her first runs; bob then queues his first job, which fair
    # order puts ahead of ada's second
    _, held = await busy_with_next(store)
    bobs = await store.submit("bob", job())

    reply = await store.start(held.job.id, StartCall(token=held.token, worker_id="busy"), "gpu")

    assert not reply.started and reply.lease is not None and reply.lease.job.id == bobs.id
    again = await store.get(held.job.id)
    assert again is not None and again.state == JobState.QUEUED and again.attempts == 0
    assert await store.position(held.job.id) == 0


async def test_cancelling_a_prepared_job_ends_it_at_once(store: Store) -> None:
    running, held = await busy_with_next(store)

    assert await store.cancel(held.job.id, user="ada") == "cancelled"

    cancelled = await store.get(held.job.id)
    assert cancelled is not None and cancelled.state == JobState.CANCELLED
    assert (await store.heartbeat(running.job.id, running.token)).holding is None
    reply = await store.start(held.job.id, StartCall(token=held.token, worker_id="busy"), "gpu")
    assert not reply.started and reply.lease is None


async def test_a_prepared_job_given_back_is_prepared_by_another_without_an_attempt(store: Store) -> None:
    _, held = await busy_with_next(store, "busy-1")

    await store.release(held.job.id, held.token)  # e.g. its ComfyUI went down

    await store.submit("bob", job())
    assert await store.claim("busy-2", "gpu") is not None
    again = await store.claim("busy-2", "gpu", prepare=True)
    assert again is not None and again.job.id == held.job.id and again.job.attempts == 0


def start_call(held: Lease, worker_id: str = "busy", hold_next: bool = True) -> StartCall:
    return StartCall(token=held.token, worker_id=worker_id, hold_next=hold_next)


async def test_start_holds_the_next_job_in_fair_order_so_the_worker_needs_no_claim(store: Store) -> None:
    ada = [(await store.submit("ada", job())).id for _ in range(3)]
    bob = [(await store.submit("bob", job())).id for _ in range(2)]
    running = await store.claim("busy", "gpu")
    held = await store.claim("busy", "gpu", prepare=True)
    assert running is not None and held is not None
    assert (running.job.id, held.job.id) == (ada[0], bob[0])
    started: list[str] = []
    holds: list[str | None] = []
    tokens = {running.token}
    while held is not None:
        tokens.add(held.token)
        reply = await store.start(held.job.id, start_call(held), "gpu")
        assert reply.started and reply.lease is None
        started.append(held.job.id)
        held = reply.held
        holds.append(None if held is None else held.job.id)
        if held is not None:  # only held: still queued, no attempt, the worker's heartbeat names it
            waiting = await store.get(held.job.id)
            assert waiting is not None and waiting.state == JobState.QUEUED and waiting.attempts == 0
            assert held.prepared and held.token not in tokens  # a hold token of its own
            assert (await store.heartbeat(running.job.id, running.token)).holding == held.job.id

    assert started == [bob[0], ada[1], bob[1], ada[2]]  # round by round, as idle claims would go
    assert holds == [ada[1], bob[1], ada[2], None]  # nothing left: nothing held
    for job_id in started:
        leased = await store.get(job_id)
        assert leased is not None and leased.state == JobState.LEASED and leased.attempts == 1


async def test_a_start_without_hold_next_holds_nothing(store: Store) -> None:
    _, held = await busy_with_next(store)
    await store.submit("ada", job())

    reply = await store.start(held.job.id, start_call(held, hold_next=False), "gpu")

    assert reply.started and reply.held is None
    assert (await store.claim("busy-2", "gpu", prepare=True)) is not None  # the third is nobody's


async def test_an_idle_worker_takes_the_job_start_held_and_the_holder_learns_it(store: Store) -> None:
    running, held = await busy_with_next(store)
    await store.submit("ada", job())
    first = await store.start(held.job.id, start_call(held), "gpu")
    assert first.started and first.held is not None
    later = (await store.submit("ada", job())).id

    taken = await store.claim("idle", "gpu")

    assert taken is not None and taken.job.id == first.held.job.id and not taken.prepared
    assert (await store.heartbeat(held.job.id, held.token)).holding is None
    # The holder's next start learns it: it is leased what runs next instead, and holds nothing more
    reply = await store.start(first.held.job.id, start_call(first.held), "gpu")
    assert not reply.started and reply.lease is not None and reply.lease.job.id == later
    assert reply.held is None
    moved = await store.get(first.held.job.id)
    assert moved is not None and moved.worker_id == "idle" and moved.attempts == 1
    assert running.job.id != moved.id


async def test_a_start_told_to_run_another_job_holds_the_one_after_that(store: Store) -> None:
    # ada's third job is held by start; bob then queues his first, which fair order puts ahead
    _, held = await busy_with_next(store)
    await store.submit("ada", job())
    first = await store.start(held.job.id, start_call(held), "gpu")
    assert first.held is not None
    bobs = (await store.submit("bob", job())).id

    reply = await store.start(first.held.job.id, start_call(first.held), "gpu")

    assert not reply.started and reply.lease is not None and reply.lease.job.id == bobs
    # the outranked job is held again for the same worker, under a new hold token
    assert reply.held is not None and reply.held.job.id == first.held.job.id
    assert reply.held.token != first.held.token and reply.held.job.attempts == 0
    assert await store.position(first.held.job.id) == 0


async def test_a_job_held_by_start_and_then_cancelled_is_not_started(store: Store) -> None:
    running, held = await busy_with_next(store)
    await store.submit("ada", job())
    first = await store.start(held.job.id, start_call(held), "gpu")
    assert first.held is not None

    assert await store.cancel(first.held.job.id, user="ada") == "cancelled"

    assert (await store.heartbeat(held.job.id, held.token)).holding is None
    reply = await store.start(first.held.job.id, start_call(first.held), "gpu")
    assert not reply.started and reply.lease is None and reply.held is None
    cancelled = await store.get(first.held.job.id)
    assert cancelled is not None and cancelled.state == JobState.CANCELLED and cancelled.attempts == 0
    assert running.job.id != cancelled.id


async def test_start_holds_no_job_of_an_owner_at_her_running_limit(
    store_with: Callable[..., Store],
) -> None:
    store = store_with(max_running_per_user=2)
    _, held = await busy_with_next(store)  # ada runs one, her second is held
    await store.submit("ada", job())
    reply = await store.start(held.job.id, start_call(held), "gpu")
    assert reply.started and reply.held is None  # ada runs two: her third waits for an idle slot
    bobs = (await store.submit("bob", job())).id

    again = await store.claim("busy", "gpu", prepare=True)
    assert again is not None and again.job.id == bobs


async def test_a_start_repeated_after_its_reply_was_lost_answers_as_the_first_did(store: Store) -> None:
    # the worker's client retries a start whose reply a network error or a restart lost
    _, held = await busy_with_next(store)
    later = [(await store.submit("ada", job())).id for _ in range(2)]
    first = await store.start(held.job.id, start_call(held), "gpu")

    again = await store.start(held.job.id, start_call(held), "gpu")

    assert first.started and again.started and again.lease is None
    assert first.held is not None and again.held is not None and first.held.job.id == later[0]
    assert (again.held.job.id, again.held.token) == (first.held.job.id, first.held.token)
    started = await store.get(held.job.id)
    assert started is not None and started.state == JobState.LEASED and started.attempts == 1
    for job_id in later:  # nothing else was leased to the worker meanwhile
        waiting = await store.get(job_id)
        assert waiting is not None and waiting.state == JobState.QUEUED and waiting.attempts == 0
    # asked without hold_next, the repeat holds nothing more and leaves the hold as it is
    plain = await store.start(held.job.id, start_call(held, hold_next=False), "gpu")
    assert plain.started and plain.held is None
    assert (await store.heartbeat(held.job.id, held.token)).holding == later[0]


async def test_a_start_repeated_after_the_prepared_job_was_started_holds_what_is_there_now(
    store: Store,
) -> None:
    _, held = await busy_with_next(store)
    first = await store.start(held.job.id, start_call(held), "gpu")
    assert first.started and first.held is None  # nothing queued then
    queued = (await store.submit("ada", job())).id

    again = await store.start(held.job.id, start_call(held), "gpu")

    assert again.started and again.held is not None and again.held.job.id == queued


async def hold_worker(store: Store, job_id: str) -> str:
    """The worker a queued job is held for ('' = none)."""
    return str(await store.redis.hget(store.keys.job(job_id), "hold_worker") or "")


async def test_an_idle_claim_with_hold_next_holds_the_job_after_its_lease_so_the_worker_needs_no_claim(
    store: Store,
) -> None:
    ada = [(await store.submit("ada", job())).id for _ in range(2)]
    bob = (await store.submit("bob", job())).id

    lease = await store.claim("w1", "gpu", hold_next=True)

    assert lease is not None and not lease.prepared and lease.job.id == ada[0]
    held = lease.held
    assert held is not None and held.prepared and held.job.id == bob  # fair order: bob's turn next
    assert held.token != lease.token and held.job.attempts == 0
    waiting = await store.get(bob)
    assert waiting is not None and waiting.state == JobState.QUEUED and waiting.attempts == 0
    assert await hold_worker(store, bob) == "w1"
    assert (await store.heartbeat(ada[0], lease.token)).holding == bob
    # the worker's GPU falls free: it starts the held job, which holds the one after it
    reply = await store.start(bob, start_call(held, worker_id="w1"), "gpu")
    assert reply.started and reply.held is not None and reply.held.job.id == ada[1]


async def test_a_claim_without_hold_next_holds_nothing_as_before(store: Store) -> None:
    await store.submit("ada", job())
    second = (await store.submit("ada", job())).id

    lease = await store.claim("w1", "gpu")

    assert lease is not None and lease.held is None
    assert await hold_worker(store, second) == ""


async def test_the_job_an_idle_claim_held_goes_to_an_idle_worker_that_asks(store: Store) -> None:
    await store.submit("ada", job())
    second = (await store.submit("ada", job())).id
    lease = await store.claim("busy", "gpu", hold_next=True)
    assert lease is not None and lease.held is not None and lease.held.job.id == second

    taken = await store.claim("idle", "gpu", hold_next=True)

    assert taken is not None and taken.job.id == second and taken.held is None
    assert (await store.heartbeat(lease.job.id, lease.token)).holding is None
    reply = await store.start(second, start_call(lease.held), "gpu")
    assert not reply.started and reply.lease is None and reply.held is None
    moved = await store.get(second)
    assert moved is not None and moved.worker_id == "idle" and moved.attempts == 1


async def test_a_job_an_idle_claim_held_and_then_cancelled_is_not_started(store: Store) -> None:
    await store.submit("ada", job())
    second = (await store.submit("ada", job())).id
    lease = await store.claim("busy", "gpu", hold_next=True)
    assert lease is not None and lease.held is not None

    assert await store.cancel(second, user="ada") == "cancelled"

    assert (await store.heartbeat(lease.job.id, lease.token)).holding is None
    reply = await store.start(second, start_call(lease.held), "gpu")
    assert not reply.started and reply.lease is None
    cancelled = await store.get(second)
    assert cancelled is not None and cancelled.state == JobState.CANCELLED and cancelled.attempts == 0


async def test_the_hold_of_an_idle_claim_lapses_with_its_lease_when_no_heartbeat_renews_it(
    store_with: Callable[..., Store],
) -> None:
    store = store_with(lease_seconds=0.5)
    await store.submit("ada", job())
    second = (await store.submit("ada", job())).id
    lease = await store.claim("gone", "gpu", hold_next=True)  # its worker dies right after
    assert lease is not None and lease.held is not None
    await store.submit("bob", job())
    assert await store.claim("busy", "gpu") is not None  # bob's job runs on another worker
    assert await store.claim("busy", "gpu", prepare=True) is None  # ada's second is still held

    deadline = time.monotonic() + 10
    again = None
    while again is None and time.monotonic() < deadline:  # bounded: the hold lapses after 0.5 s
        again = await store.claim("busy", "gpu", prepare=True, wait=0.2)

    assert again is not None and again.job.id == second and again.job.attempts == 0


async def test_a_claim_holds_no_job_of_an_owner_at_her_running_limit_nor_while_paused(
    store_with: Callable[..., Store],
) -> None:
    store = store_with(max_running_per_user=1)
    await store.submit("ada", job())
    await store.submit("ada", job())
    bobs = (await store.submit("bob", job())).id
    lease = await store.claim("w1", "gpu", hold_next=True)
    assert lease is not None and lease.held is not None and lease.held.job.id == bobs  # ada runs one

    await store.pause()
    assert await store.claim("w2", "gpu", hold_next=True) is None
    assert await hold_worker(store, bobs) == "w1"  # the pause takes nothing from anybody


async def test_a_claim_repeated_after_its_reply_was_lost_holds_that_job_again(store: Store) -> None:
    # ada's second is prepared by busy-1; bob then queues two, his first ranking ahead of it
    _, held = await busy_with_next(store, "busy-1")
    bob = [(await store.submit("bob", job())).id for _ in range(2)]
    lost = await store.claim("w1", "gpu", hold_next=True)
    assert lost is not None and lost.job.id == bob[0]
    assert lost.held is not None and lost.held.job.id == bob[1]  # ada's second is busy-1's

    # the reply never reached w1, whose client asks again: it is leased ada's second (an idle
    # claim takes a prepared job) and holds bob's second again, under its new token
    again = await store.claim("w1", "gpu", hold_next=True)

    assert again is not None and again.job.id == held.job.id
    assert again.held is not None and again.held.job.id == bob[1] and again.held.token != lost.held.token
    assert (await store.heartbeat(again.job.id, again.token)).holding == bob[1]
    # sent without a claim id, the lost reply's lease is the reaper's: it goes back once it expires
    touched = await store.reap(now=now_ms() + 60_000)
    assert [outcome for job_id, _, outcome in touched if job_id == bob[0]] in (["requeued"], ["delayed"])


async def test_a_claim_ahead_repeated_after_its_reply_was_lost_holds_one_job_not_two(store: Store) -> None:
    # busy-1 claims ahead and holds ada's second; the reply is lost and its client asks again
    _, lost = await busy_with_next(store, "busy-1")
    later = [(await store.submit("ada", job())).id for _ in range(2)]  # after her second in line

    again = await store.claim("busy-1", "gpu", prepare=True)

    # it holds the head of the line again, under a new token: nothing stays held for the lost one
    assert again is not None and again.job.id == lost.job.id and again.token != lost.token
    assert await hold_worker(store, later[0]) == ""
    # so another busy worker prepares what is next in line (ada's third), not the job after it
    await store.submit("cyd", job())
    assert await store.claim("busy-2", "gpu") is not None
    other = await store.claim("busy-2", "gpu", prepare=True)
    assert other is not None and other.job.id == later[0]


async def test_the_lease_a_lost_claim_reply_left_expires_without_showing_its_live_worker_gone(
    store: Store,
) -> None:
    # w1's claim was answered but the reply lost; its client asked again and w1 runs what that
    # answer leased. The first lease expires: the job goes back, and w1 is still busy, not gone
    await store.register(registration("w1"))
    ada = [(await store.submit("ada", job())).id for _ in range(3)]
    lost = await store.claim("w1", "gpu", hold_next=True)
    assert lost is not None
    lost_expires = int(lost.expires_at.timestamp() * 1000)
    while now_ms() <= lost_expires - int(lost.lease_seconds * 1000) + 1:  # a few ms at most
        pass  # the repeat's lease ends a little later than the lost one's
    again = await store.claim("w1", "gpu", hold_next=True)
    assert again is not None and again.held is not None
    assert (again.job.id, again.held.job.id) == (ada[1], ada[2])

    touched = await store.reap(now=lost_expires + 1)  # the lost one's lease is over, not the repeat's

    assert [job_id for job_id, _, _ in touched] == [ada[0]]
    [w1] = await store.list_workers()
    assert (w1.state, w1.job_id, w1.holding) == (WorkerState.BUSY, ada[1], ada[2])
    assert (await store.heartbeat(ada[1], again.token)).holding == ada[2]


async def test_a_claim_ahead_its_worker_gave_up_on_acts_on_nothing_once_woken(store: Store) -> None:
    # w1 claims ahead (long-polling) while it runs a job; the GPU falls free first, so w1 drops
    # that claim and claims as an idle worker, leasing a job and holding the one after it. The
    # dropped claim, still parked here and woken by that lease, must not take w1's hold (nor any)
    await store.submit("ada", job())
    running = await store.claim("w1", "gpu")
    assert running is not None
    left = asyncio.Event()

    async def gone() -> bool:
        return left.is_set()

    dropped = asyncio.create_task(store.claim("w1", "gpu", wait=20, prepare=True, gone=gone))
    await until(lambda: store.wakeups.parked == 1, "the claim ahead is parked")
    left.set()  # its caller is gone
    await store.complete(running.job.id, Completion(token=running.token))
    ada = [(await store.submit("ada", job())).id for _ in range(2)]
    lease = await store.claim("w1", "gpu", hold_next=True)
    assert lease is not None and lease.held is not None and (lease.job.id, lease.held.job.id) == tuple(ada)

    assert await asyncio.wait_for(dropped, 10) is None
    assert await hold_worker(store, ada[1]) == "w1"
    assert (await store.heartbeat(ada[0], lease.token)).holding == ada[1]


async def test_a_worker_whose_lease_expired_holds_nothing_after(store: Store) -> None:
    # w1 runs one job and holds the next, then dies: its heartbeats stop and its lease expires. It
    # is gone, so the job held for it is nobody's from then on (shown so to the admin), even if
    # the hold was made or renewed after the lease's last renewal
    await store.register(registration("w1"))
    ada = [(await store.submit("ada", job())).id for _ in range(2)]
    lease = await store.claim("w1", "gpu", hold_next=True)
    assert lease is not None and lease.held is not None and lease.held.job.id == ada[1]

    touched = await store.reap(now=now_ms() + 60_000)

    assert [job_id for job_id, _, _ in touched] == [ada[0]]
    [w1] = await store.list_workers()
    assert (w1.state, w1.job_id, w1.holding) == (WorkerState.GONE, None, None)
    assert await hold_worker(store, ada[1]) == "" and (await store.overview()).held == {}


async def test_a_worker_draining_as_it_asks_start_is_leased_nothing_more(store: Store) -> None:
    # w1 was told to stop (it drains, which ends its hold) just as it asked to start its prepared
    # job: the answer is to run nothing, so the job stays queued for another GPU, no attempt counted
    await store.register(registration("w1"))
    _, held = await busy_with_next(store, "w1")
    await store.mark_draining("w1")

    reply = await store.start(held.job.id, start_call(held, worker_id="w1"), "gpu")

    assert not reply.started and reply.lease is None and reply.held is None
    waiting = await store.get(held.job.id)
    assert waiting is not None and waiting.state == JobState.QUEUED and waiting.attempts == 0


async def test_a_start_while_dispatch_is_paused_runs_nothing_and_leaves_nothing_held(store: Store) -> None:
    # Found by the queue model (test_queue_model.py): the worker, told to run nothing, forgets the
    # job it prepared; the admin page showed that job held for it all the same, and other busy
    # workers passed it by, until the hold lapsed
    running, held = await busy_with_next(store)
    await store.complete(running.job.id, Completion(token=running.token))
    await store.pause()

    reply = await store.start(held.job.id, start_call(held), "gpu")

    assert not reply.started and reply.lease is None and reply.held is None
    assert await hold_worker(store, held.job.id) == ""
    assert (await store.overview()).held == {}
    waiting = await store.get(held.job.id)
    assert waiting is not None and waiting.state == JobState.QUEUED and waiting.attempts == 0


async def test_a_draining_worker_whose_lease_lapsed_is_still_leased_nothing(store: Store) -> None:
    # Found by the queue model (test_queue_model.py): w1 is told to stop while its job runs, and its
    # lease lapses (its heartbeats stopped as it shut down); the reaper marked it gone, which undid
    # the drain, so a claim of its (one parked before, a claim ahead) was leased the next job
    await store.register(registration("w1"))
    await store.submit("ada", job())
    assert await store.claim("w1", "gpu") is not None
    await store.mark_draining("w1")
    await store.reap(now=now_ms() + 3_600_000)
    later = await store.submit("bob", job())

    assert await store.claim("w1", "gpu") is None
    assert await store.claim("w1", "gpu", prepare=True) is None
    waiting = await store.get(later.id)
    assert waiting is not None and waiting.state == JobState.QUEUED and waiting.attempts == 0


async def test_an_idle_claim_repeated_with_its_id_after_its_reply_was_lost_gets_the_same_lease(
    store: Store,
) -> None:
    # w1's claim leased ada's first and held her second, but the reply was lost (e.g. the queue
    # manager restarted before sending it); w1's client sends the call again, same claim id. w1
    # never had the first job, so it gets it again, same token, no attempt more, rather than the
    # next job while the first waits leased to nobody until its lease expires
    ada = [(await store.submit("ada", job())).id for _ in range(3)]
    lost = await store.claim("w1", "gpu", hold_next=True, claim_id="c1")
    assert lost is not None and lost.held is not None

    again = await store.claim("w1", "gpu", hold_next=True, claim_id="c1")

    assert again is not None and (again.job.id, again.token) == (ada[0], lost.token)
    assert again.job.attempts == 1 and again.held is not None and again.held.job.id == ada[1]
    assert (await store.heartbeat(ada[0], again.token)).holding == ada[1]
    third = await store.get(ada[2])
    assert third is not None and third.state == JobState.QUEUED and third.attempts == 0
    # a claim of its own (a new id) is no repeat, even while the first job still runs (pipelined)
    after = await store.claim("w1", "gpu", claim_id="c2")
    assert after is not None and after.job.id == ada[1]


async def test_a_draining_worker_is_leased_nothing_by_a_claim_also_one_parked_before_the_drain(
    store: Store, store_with: Callable[..., Store]
) -> None:
    # w1 was told to stop (SIGTERM: it drains) while its idle claims waited for work. No claim of
    # w1's gets a job, whether a submit in this process hands it one (the first claim) or it finds
    # one when it looks again (the second, after another process's submit): the jobs stay queued,
    # no attempt counted, for w2
    await store.register(registration("w1"))
    await store.register(registration("w2"))
    parked = [
        asyncio.create_task(store.claim("w1", "gpu", wait=20, hold_next=True, claim_id=f"c{n}"))
        for n in range(2)
    ]
    await until(lambda: store.wakeups.parked == 2, "w1's claims are parked")
    await store.mark_draining("w1")
    handed = await store.submit("ada", job())  # this process's submit hands a parked claim its job
    woken = await store_with().submit("bob", job())  # another process's: the claim finds it itself

    started = time.monotonic()
    assert await asyncio.wait_for(asyncio.gather(*parked), 10) == [None, None]
    assert time.monotonic() - started < 5  # they end at once, not at the end of their wait
    assert await store.claim("w1", "gpu", hold_next=True) is None
    assert await store.claim("w1", "gpu", prepare=True) is None
    for queued in (handed, woken):
        waiting = await store.get(queued.id)
        assert waiting is not None and waiting.state == JobState.QUEUED and waiting.attempts == 0
    lease = await store.claim("w2", "gpu", hold_next=True)
    assert lease is not None and lease.held is not None
    assert (lease.job.id, lease.held.job.id) == (handed.id, woken.id)


async def test_a_repeat_of_a_claim_a_submit_handed_its_lease_gets_that_lease_again(store: Store) -> None:
    # w1's idle claim waited for work, and ada's submit handed it her job at once; the reply was
    # lost, and w1's client sends the claim again with its id: it gets that lease again, same token
    # and attempt, rather than the next job while the first waits leased to nobody
    parked = asyncio.create_task(store.claim("w1", "gpu", wait=20, hold_next=True, claim_id="c1"))
    await until(lambda: store.wakeups.parked == 1, "w1's claim is parked")
    first = await store.submit("ada", job())
    lost = await asyncio.wait_for(parked, 10)
    assert lost is not None and lost.job.id == first.id
    second = await store.submit("ada", job())

    again = await store.claim("w1", "gpu", hold_next=True, claim_id="c1")

    assert again is not None and (again.job.id, again.token) == (first.id, lost.token)
    assert again.job.attempts == 1 and again.held is not None and again.held.job.id == second.id
    waiting = await store.get(second.id)
    assert waiting is not None and waiting.state == JobState.QUEUED and waiting.attempts == 0


async def test_a_claim_parked_before_its_worker_deregistered_is_leased_nothing(store: Store) -> None:
    # w1's idle claim waited for work when w1 left for good (deregister, from its other connection):
    # a submit in this process must not hand the gone worker its job, which would sit leased to a
    # worker that may never heartbeat (unknown: 404), its attempt spent, until the lease lapses
    await store.register(registration("w1"))
    parked = asyncio.create_task(store.claim("w1", "gpu", wait=20, hold_next=True, claim_id="c1"))
    await until(lambda: store.wakeups.parked == 1, "w1's claim is parked")
    await store.deregister("w1")

    handed = await store.submit("ada", job())

    started = time.monotonic()
    assert await asyncio.wait_for(parked, 10) is None
    assert time.monotonic() - started < 5  # it ends at once, not at the end of its wait
    waiting = await store.get(handed.id)
    assert waiting is not None and waiting.state == JobState.QUEUED and waiting.attempts == 0
    assert await store.list_workers() == []
    lease = await store.claim("w2", "gpu")
    assert lease is not None and lease.job.id == handed.id and lease.job.attempts == 1
    # w1 back (a new registration) claims as any worker does
    await store.register(registration("w1"))
    later = await store.submit("bob", job())
    again = await store.claim("w1", "gpu")
    assert again is not None and again.job.id == later.id
    assert [w.worker_id for w in await store.list_workers()] == ["w1"]


async def test_a_hold_given_back_wakes_a_busy_workers_claim_ahead_at_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # busy-2's claim ahead waits, as the only job queued is the one busy-1 holds; busy-1 gives that
    # hold back (it could not fetch the job's files): busy-2's claim prepares it at once, not at its
    # next look (RECHECK_SECONDS, made long here so that only a wake can end the wait in time)
    monkeypatch.setattr(leases, "RECHECK_SECONDS", 60.0)
    _, held = await busy_with_next(store, "busy-1")
    await store.submit("bob", job())
    assert await store.claim("busy-2", "gpu") is not None  # bob's job runs on busy-2
    heard = asyncio.Event()  # this process hears the wakes its scripts publish, as a server does
    listening = asyncio.create_task(store.wakeups.listen(store.redis, store.keys.wake, heard))
    try:
        await asyncio.wait_for(heard.wait(), 10)
        ahead = asyncio.create_task(store.claim("busy-2", "gpu", wait=30, prepare=True))
        await until(lambda: store.wakeups.parked == 1, "busy-2's claim ahead is parked")

        await store.release(held.job.id, held.token)

        prepared = await asyncio.wait_for(ahead, 15)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
    assert prepared is not None and prepared.prepared and prepared.job.id == held.job.id


async def test_a_claim_whose_caller_left_gives_back_nothing_a_repeat_of_it_got(store: Store) -> None:
    # w1's claim c1 leased ada's first job and held her second, but Redis was slow and w1's client
    # timed out first and sent c1 again, which got that lease (same token). The first call then finds
    # its caller gone: it must not give back the lease the repeat runs (another GPU would run the job
    # too), only the hold it made (the repeat holds a job under its own token)
    ada = [(await store.submit("ada", job())).id for _ in range(2)]
    first = await store.claim("w1", "gpu", hold_next=True, claim_id="c1")
    repeat = await store.claim("w1", "gpu", hold_next=True, claim_id="c1")
    assert first is not None and repeat is not None and repeat.token == first.token

    await store.unclaimed("w1", "c1", first)

    running = await store.get(ada[0])
    assert running is not None and running.state == JobState.LEASED and running.attempts == 1
    assert (await store.heartbeat(ada[0], repeat.token)).holding == ada[1]  # the repeat's hold


async def test_a_claim_whose_caller_left_before_any_repeat_gives_its_lease_back(store: Store) -> None:
    # the other order: the first call gives its lease back, then the repeat comes; it gets the job
    # as a claim of its own would (a new lease), never the lease given back
    ada = (await store.submit("ada", job())).id
    first = await store.claim("w1", "gpu", hold_next=True, claim_id="c1")
    assert first is not None

    await store.unclaimed("w1", "c1", first)

    waiting = await store.get(ada)
    assert waiting is not None and waiting.state == JobState.QUEUED and waiting.attempts == 0
    repeat = await store.claim("w1", "gpu", hold_next=True, claim_id="c1")
    assert repeat is not None and repeat.job.id == ada and repeat.token != first.token
    assert repeat.job.attempts == 1
