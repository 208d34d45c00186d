"""Who runs next: fair round-robin, FIFO, admin priorities, per-user limits, pools."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.queue_manager.errors import QueueLimit
from services.queue_manager.records import now_ms
from services.queue_manager.settings import Scheduling
from services.queue_manager.store import Store
from tests.support.qm_api import job

StoreFactory = Callable[..., Store]


async def claim_users(store: Store, count: int, pool: str = "gpu") -> list[str]:
    users = []
    for n in range(count):
        lease = await store.claim(f"w{n}", pool)
        assert lease is not None, f"claim {n} found no job"
        users.append(lease.job.user)
    return users


async def test_after_a_demo_everyones_first_job_starts_before_anyones_second(store: Store) -> None:
    # Given 20 participants who each queue 15 jobs, one participant after the other
    users = [f"user{n:02d}" for n in range(20)]
    for user in users:
        for _ in range(15):
            await store.submit(user, job())
    # When 40 jobs are handed out
    order = await claim_users(store, 40)
    # Then the first 20 go to 20 different people, and so do the next 20
    assert sorted(order[:20]) == users
    assert sorted(order[20:]) == users


async def test_a_newcomer_waits_for_the_current_round_not_behind_everyone(store: Store) -> None:
    for _ in range(5):
        await store.submit("ada", job())
    await claim_users(store, 1)
    late = await store.submit("bob", job())
    assert late.position == 0, "bob's first job should run before ada's second"


async def test_a_newcomer_to_a_pool_waits_for_its_round_not_for_the_round_a_busier_pool_is_in(
    store: Store,
) -> None:
    # dave queues five jobs for the gpu pool; the cpu pool runs ten of ada's meanwhile
    for _ in range(5):
        await store.submit("dave", job(), pool="gpu")
    for _ in range(20):
        await store.submit("ada", job())
    assert set(await claim_users(store, 10, pool="cpu")) == {"ada"}
    # erin's first gpu job goes after dave's first, not after all five of his
    erins = await store.submit("erin", job(), pool="gpu")
    assert await store.position(erins.id) == 1
    assert await claim_users(store, 3, pool="gpu") == ["dave", "erin", "dave"]


async def test_a_newcomer_at_a_priority_level_waits_for_its_round_not_the_round_a_higher_level_is_in(
    store_with: StoreFactory,
) -> None:
    store = store_with(scheduling=Scheduling.PRIORITY)
    # five of ada's urgent jobs run first, while dave's five ordinary ones wait
    for _ in range(5):
        await store.submit("ada", job(), priority=10)
    for _ in range(5):
        await store.submit("dave", job())
    assert await claim_users(store, 5) == ["ada"] * 5
    # erin's first ordinary job goes after dave's first, not after all of his
    await store.submit("erin", job())
    assert await claim_users(store, 3) == ["dave", "erin", "dave"]


async def test_cancelled_waiting_jobs_do_not_push_their_owners_next_job_behind_everyone(store: Store) -> None:
    # Found by the queue model (test_queue_model.py): ada queues three jobs and cancels them all
    for waiting in [await store.submit("ada", job()) for _ in range(3)]:
        await store.cancel(waiting.id, user="ada")
    bobs = [await store.submit("bob", job()) for _ in range(3)]
    # When she queues again
    mine = await store.submit("ada", job())
    # Then her job runs before bob's second, as nothing of hers ran: she is in the first round
    assert mine.position == 1
    assert await claim_users(store, 2) == ["bob", "ada"]
    assert await store.position(bobs[1].id) == 0


async def test_a_cancel_gives_back_only_a_round_nothing_ran_in(store: Store) -> None:
    # ada's first job runs; her second, queued behind it, is cancelled, and she queues a third
    await store.submit("ada", job())
    assert await claim_users(store, 1) == ["ada"]
    second = await store.submit("ada", job())
    await store.cancel(second.id, user="ada")
    await store.submit("ada", job())
    # bob's first job still runs before it: ada already had her turn in this round
    bobs = await store.submit("bob", job())
    assert bobs.position == 0


async def test_fifo_hands_out_jobs_in_submit_order(store_with: StoreFactory) -> None:
    store = store_with(scheduling=Scheduling.FIFO)
    for user in ["ada", "ada", "ada", "bob"]:
        await store.submit(user, job())
    assert await claim_users(store, 4) == ["ada", "ada", "ada", "bob"]


async def test_admin_priority_moves_a_job_and_a_user_ahead(store_with: StoreFactory) -> None:
    store = store_with(scheduling=Scheduling.PRIORITY)
    first = await store.submit("ada", job())
    urgent = await store.submit("ada", job())
    bobs = await store.submit("bob", job())
    await store.set_job_priority(urgent.id, 10)
    assert await store.position(urgent.id) == 0
    await store.set_user_priority("bob", 50)
    assert await store.position(bobs.id) == 0
    leases = [await store.claim("w", "gpu") for _ in range(3)]
    assert [lease.job.id for lease in leases if lease] == [bobs.id, urgent.id, first.id]


async def test_a_user_priority_also_holds_for_her_job_that_was_running_when_it_was_set(
    store_with: StoreFactory,
) -> None:
    # ada's job runs when the admin gives her priority; it is given back (its worker shut down)
    store = store_with(scheduling=Scheduling.PRIORITY)
    running = await store.submit("ada", job())
    lease = await store.claim("w1", "gpu")
    assert lease is not None and lease.job.id == running.id
    bobs = await store.submit("bob", job(), priority=10)
    await store.set_user_priority("ada", 50)
    await store.release(running.id, lease.token)
    # it waits at her new priority, ahead of bob's, like every other job of hers
    assert await store.position(running.id) == 0
    assert await store.position(bobs.id) == 1


async def test_a_dead_letter_requeued_after_her_priority_changed_waits_at_her_new_priority(
    store_with: StoreFactory,
) -> None:
    # Found by the push model (QM_MODEL_EXAMPLES=1000): ada's job dies while she has no priority
    store = store_with(scheduling=Scheduling.PRIORITY, max_attempts=1)
    dead = await store.submit("ada", job())
    lease = await store.claim("w1", "gpu")
    assert lease is not None
    await store.reap(now=now_ms() + 3_600_000)
    bobs = await store.submit("bob", job(), priority=10)
    # the admin gives her priority, then gives her dead job another go
    await store.set_user_priority("ada", 50)
    await store.requeue_dead(dead.id)
    # it waits at her priority now, ahead of bob's urgent one, like every other job of hers
    assert await store.position(dead.id) == 0
    assert await store.position(bobs.id) == 1


async def test_a_user_cannot_queue_more_than_the_limit(store_with: StoreFactory) -> None:
    store = store_with(max_queued_per_user=2)
    await store.submit("ada", job())
    await store.submit("ada", job())
    with pytest.raises(QueueLimit, match="2 queued jobs"):
        await store.submit("ada", job())
    await store.submit("bob", job())


async def test_a_user_at_the_running_limit_is_skipped_for_others(store_with: StoreFactory) -> None:
    store = store_with(max_running_per_user=1, scheduling=Scheduling.FIFO)
    for user in ["ada", "ada", "bob"]:
        await store.submit(user, job())
    assert await claim_users(store, 2) == ["ada", "bob"]
    assert await store.claim("w9", "gpu") is None


async def test_a_job_pinned_to_a_pool_runs_only_there(store: Store) -> None:
    pinned = await store.submit("ada", job(), pool="gpu")
    anywhere = await store.submit("bob", job())
    cpu_lease = await store.claim("c1", "cpu")
    assert cpu_lease is not None and cpu_lease.job.id == anywhere.id
    assert await store.claim("c2", "cpu") is None
    gpu_lease = await store.claim("g1", "gpu")
    assert gpu_lease is not None and gpu_lease.job.id == pinned.id


async def test_queue_position_counts_the_jobs_ahead(store: Store) -> None:
    jobs = [await store.submit(user, job()) for user in ["ada", "bob", "ada"]]
    assert [await store.position(j.id) for j in jobs] == [0, 1, 2]
    await store.claim("w", "gpu")
    assert [await store.position(j.id) for j in jobs] == [None, 0, 1]
