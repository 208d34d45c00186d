"""A worker with work queued goes from claim to start to start: its idle claim and each ``start``
also hold the job after the one they lease (``hold_next``), so no claim ahead races the end of a
short job, and a job held that way still moves to an idle worker of the pool that asks (real
queue manager, real HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import JobState
from services.protocol.workers import Lease, StartReply
from services.worker.queue_client import QueueClient
from services.worker.settings import WorkerSettings
from tests.support.jobs import finished, graph, participant, submit, until
from tests.support.qm_api import registration
from tests.support.queue_manager_app import POOL_TOKEN, WORKER_AUTH, LiveServer
from tests.support.worker_agent import Gates, LosesFirstReply, hold_of, pull_worker, worker_settings


class Answers:
    """The queue manager's answers to the worker's claims and starts, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.claims: list[tuple[bool, Lease | None]] = []  # (prepare, answer)
        self.starts: list[tuple[str, StartReply]] = []
        claim, start = QueueClient.claim, QueueClient.start

        async def claim_noted(
            client: QueueClient, worker_id: str, wait: float, prepare: bool = False, **how: Any
        ) -> Any:
            lease = await claim(client, worker_id, wait, prepare, **how)
            self.claims.append((prepare, lease))
            return lease

        async def start_noted(client: QueueClient, job_id: str, *args: Any, **kwargs: Any) -> StartReply:
            reply = await start(client, job_id, *args, **kwargs)
            self.starts.append((job_id, reply))
            return reply

        monkeypatch.setattr(QueueClient, "claim", claim_noted)
        monkeypatch.setattr(QueueClient, "start", start_noted)

    def granted(self, prepare: bool) -> list[str]:
        """The jobs plain claims leased (``prepare``: claims ahead held)."""
        return [lease.job.id for ahead, lease in self.claims if ahead == prepare and lease is not None]

    def held_by_claims(self) -> list[str]:
        """The jobs idle claims held after the one they leased (``hold_next``)."""
        return [lease.held.job.id for _, lease in self.claims if lease is not None and lease.held is not None]


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> Answers:
    return Answers(monkeypatch)


@contextlib.contextmanager
def two_workers(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path
) -> Iterator[tuple[WorkerSettings, WorkerSettings]]:
    """Settings of w-a (on ``comfy``, busy in the tests) and w-b (on a ComfyUI double of its own)."""
    other = ComfyUIDouble(tmp_path / "comfy-b").start()
    try:
        yield (
            worker_settings(comfy, qm.url, tmp_path, worker_id="w-a"),
            worker_settings(other, qm.url, tmp_path, worker_id="w-b"),
        )
    finally:
        other.stop()


def stored(tmp_path: Path) -> list[str]:
    """The outputs in alice's storage: one per job that ran and was kept."""
    return sorted(path.name for path in (tmp_path / "files" / "users" / "alice" / "output").iterdir())


async def test_a_run_of_short_jobs_goes_claim_to_start_to_start_with_no_claim_ahead(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, gates: Gates, answers: Answers, held_by: redis.Redis
) -> None:
    async with participant(qm, "alice") as alice:
        jobs = [await submit(alice, graph(color)) for color in range(1, 7)]
        gates.close(jobs[0])  # the first job runs while the test looks at what the claim held
        async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
            await until(lambda: answers.claims, "the worker claimed", 20)
            assert hold_of(held_by, jobs[1]) == "w-test"  # held by the idle claim itself
            gates.open(jobs[0])
            done = [await finished(alice, job_id) for job_id in jobs]  # no-op jobs, back to back

    assert [job.state for job in done] == [JobState.SUCCEEDED] * len(jobs)
    assert all(job.worker_id == "w-test" and job.attempts == 1 for job in done)
    # One claim as an idle worker, which held the second job; from then on each start held the next
    assert answers.granted(prepare=False) == jobs[:1] and answers.held_by_claims() == jobs[1:2]
    assert answers.granted(prepare=True) == []  # no claim ahead at all
    assert [job_id for job_id, _ in answers.starts] == jobs[1:]
    assert all(reply.started and reply.lease is None for _, reply in answers.starts)
    held = [None if reply.held is None else reply.held.job.id for _, reply in answers.starts]
    assert held == [*jobs[2:], None]  # the last start found nothing more to hold
    assert all(reply.held is None or reply.held.prepared for _, reply in answers.starts)
    assert [comfy.state.timings[job_id][0] for job_id in jobs] == sorted(
        comfy.state.timings[job_id][0] for job_id in jobs
    )


async def test_a_worker_asked_for_n_jobs_holds_each_up_to_the_last_and_none_after(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, answers: Answers, held_by: redis.Redis
) -> None:
    """``max_jobs`` (benchmarks, tests): the start of the last wanted job's predecessor still holds
    it, so the run needs no claim ahead at its end, and nothing is held after the last."""
    async with participant(qm, "alice") as alice:
        jobs = [await submit(alice, graph(color)) for color in range(1, 5)]
        async with pull_worker(worker_settings(comfy, qm.url, tmp_path), max_jobs=3) as running:
            await asyncio.wait_for(running.task, 30)
        done = [await finished(alice, job_id) for job_id in jobs[:3]]
        left = (await alice.get(f"/api/jobs/{jobs[3]}")).json()
    assert [job.state for job in done] == [JobState.SUCCEEDED] * 3
    assert answers.granted(prepare=False) == jobs[:1] and answers.held_by_claims() == jobs[1:2]
    assert answers.granted(prepare=True) == []
    assert [(job_id, reply.held and reply.held.job.id) for job_id, reply in answers.starts] == [
        (jobs[1], jobs[2]),
        (jobs[2], None),
    ]
    assert left["state"] == "queued" and left["attempts"] == 0 and hold_of(held_by, jobs[3]) == ""


async def test_an_idle_worker_takes_the_job_a_start_held_for_a_busy_one(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, gates: Gates, answers: Answers, held_by: redis.Redis
) -> None:
    with two_workers(comfy, qm, tmp_path) as (busy, idle):
        async with participant(qm, "alice") as alice:
            first, second, third = [await submit(alice, graph(color)) for color in (1, 2, 3)]
            gates.close(first)  # runs until w-a holds the second
            gates.close(second)  # runs on w-a until the test is done with the third
            async with pull_worker(busy):
                await until(lambda: hold_of(held_by, second) == "w-a", "w-a holds the second", 20)
                gates.open(first)
                # w-a starts the second, and that start holds the third for it
                await until(lambda: answers.starts, "w-a started the second", 20)
                assert hold_of(held_by, third) == "w-a"
                assert [(job_id, reply.held and reply.held.job.id) for job_id, reply in answers.starts] == [
                    (second, third)
                ]
                async with pull_worker(idle):
                    moved = await finished(alice, third)
                    still = JobState((await alice.get(f"/api/jobs/{second}")).json()["state"])
                gates.open(second)
                ran = await finished(alice, second)
                first_done = await finished(alice, first)
    assert moved.state == JobState.SUCCEEDED and moved.worker_id == "w-b" and moved.attempts == 1
    assert still in (JobState.LEASED, JobState.RUNNING)  # it moved while w-a was busy
    assert ran.state == JobState.SUCCEEDED and ran.worker_id == "w-a"
    assert first_done.state == JobState.SUCCEEDED and first_done.worker_id == "w-a"
    # if w-a asked to start it after all, the queue manager told it the job had moved on; w-a may
    # have had it in its ComfyUI for that round trip (it submits before the answer: decision 10),
    # but nothing of that run was kept: her storage holds one output per job, w-b's for the third
    assert all(not reply.started for job_id, reply in answers.starts if job_id == third)
    assert stored(tmp_path) == sorted(job.outputs[0].filename for job in (first_done, ran, moved))


@pytest.mark.parametrize("why", ["stopping", "comfyui down"])
async def test_a_job_a_start_held_is_given_back_without_an_attempt(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    tmp_path: Path,
    gates: Gates,
    answers: Answers,
    held_by: redis.Redis,
    why: str,
) -> None:
    """A worker told to stop (SIGTERM), or whose ComfyUI goes down, gives back the job its last
    start held: it stays queued for another GPU, no attempt counted."""
    async with participant(qm, "alice") as alice:
        first, second, third = [await submit(alice, graph(color)) for color in (4, 5, 6)]
        gates.close(first)
        gates.close(second)
        async with pull_worker(worker_settings(comfy, qm.url, tmp_path)) as running:
            await until(lambda: hold_of(held_by, second) == "w-test", "the worker holds the second", 20)
            gates.open(first)
            await until(lambda: answers.starts, "the worker started the second", 20)
            assert hold_of(held_by, third) == "w-test"  # held by that start
            if why == "stopping":
                running.worker.stop()  # what SIGTERM does
            else:
                running.agent.comfy_server.up.clear()  # what the supervisor does when ComfyUI exits
            gates.open(second)
            ran = await finished(alice, second)  # the running job still finishes
            await until(lambda: hold_of(held_by, third) == "", "third held for nobody", 20)
            waiting = (await alice.get(f"/api/jobs/{third}")).json()
            if why == "stopping":
                await asyncio.wait_for(running.task, 20)  # the worker's loop ends
    assert ran.state == JobState.SUCCEEDED and ran.worker_id == "w-test"
    assert waiting["state"] == "queued" and waiting["attempts"] == 0
    assert third not in comfy.state.timings


async def test_an_idle_worker_takes_the_job_an_idle_claim_held_for_a_worker_now_busy(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, gates: Gates, answers: Answers, held_by: redis.Redis
) -> None:
    with two_workers(comfy, qm, tmp_path) as (busy, idle):
        async with participant(qm, "alice") as alice:
            first, second = [await submit(alice, graph(color)) for color in (1, 2)]
            gates.close(first)  # w-a runs it until the test is done with the second
            async with pull_worker(busy):
                await until(lambda: answers.claims, "w-a claimed", 20)
                assert answers.held_by_claims() == [second] and hold_of(held_by, second) == "w-a"
                async with pull_worker(idle):
                    moved = await finished(alice, second)
                    still = JobState((await alice.get(f"/api/jobs/{first}")).json()["state"])
                gates.open(first)
                first_done = await finished(alice, first)
    assert moved.state == JobState.SUCCEEDED and moved.worker_id == "w-b" and moved.attempts == 1
    assert still in (JobState.LEASED, JobState.RUNNING)  # it moved while w-a was busy
    assert first_done.state == JobState.SUCCEEDED and first_done.worker_id == "w-a"
    assert answers.granted(prepare=True) == []  # neither worker claimed ahead
    assert all(not reply.started for job_id, reply in answers.starts if job_id == second)
    assert stored(tmp_path) == sorted(job.outputs[0].filename for job in (first_done, moved))


async def test_a_job_an_idle_claim_held_and_then_cancelled_never_runs_and_the_worker_goes_on(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, gates: Gates, answers: Answers, held_by: redis.Redis
) -> None:
    async with participant(qm, "alice") as alice:
        first, second = [await submit(alice, graph(color)) for color in (1, 2)]
        gates.close(first)
        async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
            await until(lambda: answers.claims, "the worker claimed", 20)
            assert hold_of(held_by, second) == "w-test"
            (await alice.post(f"/api/jobs/{second}/cancel")).raise_for_status()
            assert hold_of(held_by, second) == ""  # the cancel ended the hold at once
            gates.open(first)
            first_done = await finished(alice, first)
            third = await submit(alice, graph(3))
            third_done = await finished(alice, third)
        cancelled = (await alice.get(f"/api/jobs/{second}")).json()
    assert cancelled["state"] == "cancelled" and cancelled["attempts"] == 0 and cancelled["outputs"] == []
    assert first_done.state == third_done.state == JobState.SUCCEEDED
    assert all(not reply.started for job_id, reply in answers.starts if job_id == second)
    assert stored(tmp_path) == sorted(job.outputs[0].filename for job in (first_done, third_done))


async def test_a_worker_told_to_stop_gives_back_the_job_its_idle_claim_held(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, gates: Gates, answers: Answers, held_by: redis.Redis
) -> None:
    """SIGTERM right after the first claim of a run: the job that claim held after its lease goes
    back at once (queued, no attempt), while the leased job still finishes."""
    async with participant(qm, "alice") as alice:
        first, second = [await submit(alice, graph(color)) for color in (1, 2)]
        gates.close(first)
        async with pull_worker(worker_settings(comfy, qm.url, tmp_path)) as running:
            await until(lambda: answers.claims, "the worker claimed", 20)
            assert answers.held_by_claims() == [second] and hold_of(held_by, second) == "w-test"
            running.worker.stop()  # what SIGTERM does
            await until(lambda: hold_of(held_by, second) == "", "second held for nobody", 20)
            gates.open(first)
            first_done = await finished(alice, first)
            await asyncio.wait_for(running.task, 20)  # the worker's loop ends
            waiting = (await alice.get(f"/api/jobs/{second}")).json()
    assert first_done.state == JobState.SUCCEEDED and first_done.worker_id == "w-test"
    assert waiting["state"] == "queued" and waiting["attempts"] == 0
    assert second not in comfy.state.timings
    assert answers.starts == [] and answers.granted(prepare=True) == []


async def test_a_claim_whose_reply_was_lost_is_retried_and_gets_the_same_lease(
    qm: LiveServer, alice: httpx.AsyncClient, held_by: redis.Redis
) -> None:
    """The worker's client retries a claim whose reply it never got: the retry is answered with
    the lease the first call made (same job, token and attempt) and holds the job after it again,
    instead of leasing the next job while the first waits, leased to nobody, for its lease to lapse."""
    first, second, third = [await submit(alice, graph(color)) for color in (1, 2, 3)]
    queue = QueueClient(qm.url, POOL_TOKEN, retry_seconds=10)
    transport = LosesFirstReply("/claim")  # answered, and the answer lost on its way
    queue.http = httpx.AsyncClient(base_url=qm.url, headers=WORKER_AUTH, timeout=30.0, transport=transport)
    try:
        await queue.register(registration("w-lost"))
        lease = await queue.claim("w-lost", 0, hold_next=True)
    finally:
        await queue.aclose()

    assert transport.lost == 1
    assert lease is not None and lease.job.id == first and lease.job.attempts == 1
    assert lease.held is not None and lease.held.job.id == second and hold_of(held_by, second) == "w-lost"
    leased = (await alice.get(f"/api/jobs/{first}")).json()
    waiting = (await alice.get(f"/api/jobs/{third}")).json()
    assert (leased["state"], leased["attempts"], waiting["state"]) == ("leased", 1, "queued")


async def test_a_claim_handed_a_new_job_as_it_waited_gets_that_lease_when_retried_after_a_lost_reply(
    qm: LiveServer, alice: httpx.AsyncClient, held_by: redis.Redis
) -> None:
    """The worker's claim waits for work; a participant's submit hands it her job at once (in the
    submit's own step), and the reply is lost on its way. The client's retry is answered with that
    lease, not with the next job while the first waits, leased to nobody, for its lease to lapse."""
    queue = QueueClient(qm.url, POOL_TOKEN, retry_seconds=10)
    transport = LosesFirstReply("/claim")
    queue.http = httpx.AsyncClient(base_url=qm.url, headers=WORKER_AUTH, timeout=30.0, transport=transport)
    try:
        await queue.register(registration("w-lost"))
        claim = asyncio.create_task(queue.claim("w-lost", 10, hold_next=True))
        await until(lambda: qm.app.state.store.wakeups.parked == 1, "the claim waits for work")
        first = await submit(alice, graph(1))
        await until(lambda: transport.lost == 1, "the claim's reply is lost")
        second = await submit(alice, graph(2))
        lease = await asyncio.wait_for(claim, 20)
    finally:
        await queue.aclose()

    assert lease is not None and lease.job.id == first and lease.job.attempts == 1
    leased = (await alice.get(f"/api/jobs/{first}")).json()
    waiting = (await alice.get(f"/api/jobs/{second}")).json()
    assert (leased["state"], leased["attempts"], leased["worker_id"]) == ("leased", 1, "w-lost")
    assert (waiting["state"], waiting["attempts"]) == ("queued", 0)
