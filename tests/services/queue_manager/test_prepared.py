"""Prepared jobs: a busy worker holds its next job, which stays queued until the worker starts it.

An idle worker's claim takes a held job at once; the preparer learns it at its next heartbeat or
start. Fair and priority order still decide what runs next, a cancel ends a held job at once, and
a hold given back or taken away counts no attempt.
"""

from __future__ import annotations

from services.protocol.jobs import JobState
from services.protocol.workers import Completion, Lease, StartCall
from services.queue_manager.store import Store
from tests.support.qm_api import job


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
