"""A busy GPU's edges: what becomes of the job a worker holds prepared when its running job ends at
the pool's maximum job time, and of a job whose outputs are still being stored when that time has
passed (real queue manager, real Redis, a worker on the ComfyUI double)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import JobState
from services.worker.queue_client import QueueClient
from tests.support.jobs import finished, graph, job_of, participant, sleeping, submit, until
from tests.support.qm_api import registration
from tests.support.queue_manager_app import POOL, POOL_TOKEN, LiveServer
from tests.support.worker_agent import GatedStorage, Gates, hold_of, pull_worker, worker_settings

HOLDS_NEXT = "the worker holds her next job prepared"


async def test_the_job_held_by_a_worker_whose_job_hangs_past_its_time_limit_goes_to_another_busy_worker(
    comfy: ComfyUIDouble,
    qm_factory: Callable[..., LiveServer],
    tmp_path: Path,
    gates: Gates,
    held_by: redis.Redis,
) -> None:
    """Her first job hangs in a node that never checks for an interrupt and is ended at the pool's
    maximum job time; its worker holds her next job prepared, but cannot run it while the hung
    node holds its GPU (it waits the interrupt grace, 120 s here). Another busy worker of the pool
    asking for its next job gets her job at once, not once the hold lapses a lease (60 s) later."""
    qm = qm_factory(lease_seconds=60.0, pool_max_job_seconds={POOL: 2.0})
    queue = QueueClient(qm.url, POOL_TOKEN)
    async with participant(qm, "alice") as alice:
        hung, following = await submit(alice, graph(color=40)), await submit(alice, graph(color=41))
        gates.close(hung)  # the node ignores the interrupt until the test is done
        settings = worker_settings(comfy, qm.url, tmp_path, warmup=False, interrupt_grace_seconds=120.0)
        try:
            async with pull_worker(settings):
                await until(lambda: hold_of(held_by, following) == "w-test", HOLDS_NEXT, 20)
                ended = await finished(alice, hung, timeout=30)
                await queue.register(registration("w-busy", POOL))
                held = await queue.claim("w-busy", wait=20, prepare=True)  # a lease is 60 s
                assert held is not None and held.job.id == following, "still held by the hung worker"
                started = await queue.start(following, held.token, "w-busy")
                await queue.release(following, held.token)
                gates.open(hung)
        finally:
            await queue.aclose()
    assert ended.state == JobState.FAILED and ended.error is not None and ended.error.type == "JobTimeLimit"
    assert started.started


async def test_the_job_held_by_a_worker_whose_job_stops_at_its_time_limit_runs_there_at_once(
    comfy: ComfyUIDouble, qm_factory: Callable[..., LiveServer], tmp_path: Path, held_by: redis.Redis
) -> None:
    """Her first job heeds the interrupt, so its worker is free the moment it is ended at the
    pool's maximum job time: her next job, which it holds prepared, runs there at once."""
    qm = qm_factory(lease_seconds=60.0, pool_max_job_seconds={POOL: 2.0})
    async with participant(qm, "alice") as alice:
        hung, following = await submit(alice, sleeping(42, 3600)), await submit(alice, graph(color=43))
        async with pull_worker(worker_settings(comfy, qm.url, tmp_path, warmup=False)):
            await until(lambda: hold_of(held_by, following) == "w-test", HOLDS_NEXT, 20)
            ended = await finished(alice, hung, timeout=30)
            done = await finished(alice, following, timeout=30)
    assert ended.state == JobState.FAILED and ended.error is not None and ended.error.type == "JobTimeLimit"
    assert done.state == JobState.SUCCEEDED and done.worker_id == "w-test" and done.attempts == 1


async def test_a_job_whose_outputs_are_being_stored_past_its_time_limit_succeeds_with_them(
    comfy: ComfyUIDouble, qm_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """ComfyUI ran her job in moments, but the file store is slow (or away, retried up to five
    minutes): her outputs are still on their way when the pool's maximum job time (10 s) has passed
    since the job was leased. Storing them holds no GPU, so the time limit does not end the job: it
    succeeds with the outputs the store holds, none stored for a job that failed."""
    qm = qm_factory(lease_seconds=60.0, pool_max_job_seconds={POOL: 10.0})
    storage = GatedStorage(tmp_path / "files")
    settings = worker_settings(comfy, qm.url, tmp_path, warmup=False)
    async with participant(qm, "alice") as alice, pull_worker(settings, storage):
        job_id = await submit(alice, graph(color=44))
        await asyncio.wait_for(storage.waiting.wait(), 30)  # ComfyUI is done: the upload waits
        leased = await job_of(alice, job_id)
        assert leased.started_at is not None
        past = leased.started_at + timedelta(seconds=20)  # twice the time limit; the reaper ticks 0.1 s
        await until(lambda: datetime.now(UTC) > past, "the job's time limit long past", 60)
        storage.gate.set()
        job = await finished(alice, job_id, timeout=30)
    stored = sorted(p.name for p in (tmp_path / "files" / "users" / "alice" / "output").iterdir())
    assert job.state == JobState.SUCCEEDED, job.error
    assert [o.filename for o in job.outputs] == stored == ["t_00001_.png"]


async def test_redis_away_for_seconds_while_a_worker_runs_one_job_and_holds_the_next_loses_neither(
    comfy: ComfyUIDouble,
    qm_factory: Callable[..., LiveServer],
    tmp_path: Path,
    gates: Gates,
    held_by: redis.Redis,
) -> None:
    """The queue manager's Redis stops answering for 8 s (``CLIENT PAUSE``: a failover, a slow
    disk) just as her running job ends in ComfyUI: its completion, the start of her next job (held
    prepared, already submitted to ComfyUI) and the heartbeats all wait for it. Once Redis answers
    again both jobs succeed on their first attempt, each output stored once."""
    qm = qm_factory(lease_seconds=30.0)
    async with participant(qm, "alice") as alice:
        first = await submit(alice, graph(color=45, prefix="first"))
        second = await submit(alice, graph(color=46, prefix="second"))
        gates.close(first)
        async with pull_worker(worker_settings(comfy, qm.url, tmp_path, warmup=False)):
            await until(lambda: hold_of(held_by, second) == "w-test", HOLDS_NEXT, 20)
            held_by.execute_command("CLIENT", "PAUSE", 8000, "ALL")
            gates.open(first)
            done = [await finished(alice, job_id, timeout=60) for job_id in (first, second)]
    stored = sorted(p.name for p in (tmp_path / "files" / "users" / "alice" / "output").iterdir())
    outcomes = [(job.state, job.attempts) for job in done]
    assert outcomes == [(JobState.SUCCEEDED, 1)] * 2, [job.error for job in done]
    assert stored == ["first_00001_.png", "second_00001_.png"]


async def test_her_cancel_of_the_job_a_busy_worker_holds_runs_it_nowhere_and_the_idle_worker_takes_the_next(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, gates: Gates, held_by: redis.Redis
) -> None:
    """w-a runs her first job and holds her second prepared; w-b waits idle. She cancels the second:
    it ends cancelled, no attempt spent, nothing of it stored (w-a may still hand it to its ComfyUI
    for a start's round trip if no heartbeat told it of the cancel yet: decision 10, stopped there);
    her third goes to the idle w-b while w-a still runs the first, which succeeds."""
    other = ComfyUIDouble(tmp_path / "comfy-b").start()
    try:
        async with participant(qm, "alice") as alice:
            first = await submit(alice, graph(color=47, prefix="first"))
            second = await submit(alice, graph(color=48, prefix="second"))
            gates.close(first)
            busy = worker_settings(comfy, qm.url, tmp_path, warmup=False, worker_id="w-a")
            idle = worker_settings(other, qm.url, tmp_path, warmup=False, worker_id="w-b")
            async with pull_worker(busy), pull_worker(idle):
                await until(lambda: hold_of(held_by, second) == "w-a", "w-a holds her second job", 20)
                assert (await alice.post(f"/api/jobs/{second}/cancel")).json()["outcome"] == "cancelled"
                third = await submit(alice, graph(color=49, prefix="third"))
                moved = await finished(alice, third, timeout=30)
                gates.open(first)
                done = [await finished(alice, job_id, timeout=30) for job_id in (first, second)]
    finally:
        other.stop()
    assert [(job.state, job.worker_id) for job in (*done, moved)] == [
        (JobState.SUCCEEDED, "w-a"),
        (JobState.CANCELLED, None),
        (JobState.SUCCEEDED, "w-b"),
    ]
    assert done[1].attempts == 0 and second not in other.state.timings
    stored = sorted(p.name for p in (tmp_path / "files" / "users" / "alice" / "output").iterdir())
    assert stored == ["first_00001_.png", "third_00001_.png"]
