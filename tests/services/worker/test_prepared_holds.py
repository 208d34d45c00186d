"""A busy worker's claim for its next job never keeps a job from an idle worker of its pool that is
already waiting for one, whichever of the two claims was parked first (real queue manager)."""

from __future__ import annotations

import asyncio
import functools

import httpx
import pytest

from services.protocol.workers import Lease, WorkerCapabilities, WorkerRegistration
from services.queue_manager.wakeups import Wakeups
from services.worker.queue_client import QueueClient
from tests.support.jobs import graph, participant, submit, until
from tests.support.queue_manager_app import POOL, POOL_TOKEN, LiveServer


def parked_claims(wakeups: Wakeups, count: int) -> bool:
    return wakeups.parked == count


@pytest.mark.parametrize("busy_parks_first", [True, False], ids=["busy parked first", "idle parked first"])
async def test_a_job_submitted_while_both_wait_goes_to_the_idle_worker(
    qm: LiveServer, alice: httpx.AsyncClient, busy_parks_first: bool
) -> None:
    queue = QueueClient(qm.url, POOL_TOKEN)
    wakeups = qm.app.state.store.wakeups
    try:
        for worker_id in ("w-busy", "w-idle"):
            caps = WorkerCapabilities(pool=POOL, provider="local")
            await queue.register(WorkerRegistration(worker_id=worker_id, capabilities=caps))
        running = await submit(alice, graph(color=60))
        lease = await queue.claim("w-busy", wait=5)
        assert lease is not None and lease.job.id == running  # w-busy's GPU runs this one now
        claims = [
            lambda: queue.claim("w-busy", wait=2, prepare=True),  # its next job, while it runs
            lambda: queue.claim("w-idle", wait=10),
        ]
        tasks: list[asyncio.Task[Lease | None]] = []
        for parked, claim in enumerate(claims if busy_parks_first else claims[::-1], start=1):
            tasks.append(asyncio.create_task(claim()))
            await until(functools.partial(parked_claims, wakeups, parked), f"{parked} claims parked")
        async with participant(qm, "bob") as bob:
            waiting = await submit(bob, graph(color=61))
        prepared, taken = await asyncio.gather(*(tasks if busy_parks_first else tasks[::-1]))
    finally:
        await queue.aclose()

    assert taken is not None and taken.job.id == waiting and not taken.prepared
    assert prepared is None  # nothing held for the busy worker meanwhile
