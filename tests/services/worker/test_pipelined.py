"""The pull worker keeps its GPU busy: it prepares the next job while one runs and starts it the
moment ComfyUI is free, while the finished job's outputs go to storage.

The invariants hold meanwhile: a prepared job moves to an idle worker that asks, fair order
decides what runs next, a cancel ends a prepared job at once, and a job completes only once its
outputs are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import JobState
from services.protocol.workers import StartReply
from services.storage.local import LocalStorage
from services.worker.comfy_client import ComfyClient
from services.worker.queue_client import QueueClient
from services.worker.settings import WorkerSettings
from tests.support.jobs import finished, graph, participant, put_input, submit, until
from tests.support.queue_manager_app import ADMIN, ADMIN_PASSWORD, POOL, LiveServer
from tests.support.worker_agent import GatedStorage, pull_worker, worker_settings


def state(job: httpx.Response) -> JobState:
    return JobState(job.json()["state"])


async def test_the_next_job_runs_while_the_last_ones_outputs_are_stored(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path
) -> None:
    settings = worker_settings(comfy, qm.url, tmp_path)
    storage = GatedStorage(tmp_path / "files")
    async with participant(qm, "alice") as alice, pull_worker(settings, storage) as _:
        first = await submit(alice, graph(1))
        second = await submit(alice, graph(2))
        await asyncio.wait_for(storage.waiting.wait(), 20)  # the first job's output is on its way
        # Then ComfyUI already runs the second job, and the first is not done until it is stored
        await until(lambda: comfy.state.timings.get(second, (0.0, 0.0))[1] > 0, "the second job started", 20)
        assert state(await alice.get(f"/api/jobs/{first}")) in (JobState.LEASED, JobState.RUNNING)
        storage.gate.set()
        done = [await finished(alice, first), await finished(alice, second)]
        async with httpx.AsyncClient(base_url=qm.url, auth=(ADMIN, ADMIN_PASSWORD)) as admin:
            use = (await admin.get("/admin/api/stats")).json()["gpu_by_pool"][POOL]
    assert [job.state for job in done] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert all(
        (tmp_path / "files" / "users" / "alice" / "output" / o.filename).exists() for o in done[0].outputs
    )
    assert done[0].outputs[0].filename != done[1].outputs[0].filename  # numbering goes on
    # What the admin sees: both jobs' GPU time, the first one's held-up upload, the gap before the second
    assert use["jobs"] == 2 and use["busy_fraction"] > 0 and use["upload_s_max"] > 0
    assert use["gap_ms_p50"] is not None


async def test_an_idle_worker_takes_the_job_a_busy_one_prepared(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, held_by: redis.Redis
) -> None:
    comfy.knobs.node_seconds = 1.5  # worker A's first job keeps its GPU busy a while
    other = ComfyUIDouble(tmp_path / "comfy-b").start()
    try:
        busy = worker_settings(comfy, qm.url, tmp_path, worker_id="w-a")
        idle = worker_settings(other, qm.url, tmp_path, worker_id="w-b")
        async with participant(qm, "alice") as alice, pull_worker(busy):
            long = await submit(alice, graph(1))
            prepared = await submit(alice, graph(2))
            await until(
                lambda: held_by.hget(f"qm:job:{prepared}", "hold_worker") == "w-a",
                "prepared held for w-a",
                20,
            )
            async with pull_worker(idle):
                moved = await finished(alice, prepared)
                still = state(await alice.get(f"/api/jobs/{long}"))
            first = await finished(alice, long)
    finally:
        other.stop()
    assert moved.state == JobState.SUCCEEDED and moved.worker_id == "w-b" and moved.attempts == 1
    assert still in (JobState.LEASED, JobState.RUNNING)  # it moved while worker A was still busy
    assert first.state == JobState.SUCCEEDED and first.worker_id == "w-a"
    assert prepared not in comfy.state.timings  # worker A never ran it


async def test_a_job_queued_after_the_next_was_prepared_still_runs_in_fair_order(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, held_by: redis.Redis
) -> None:
    comfy.knobs.node_seconds = 0.5
    settings = worker_settings(comfy, qm.url, tmp_path)
    async with participant(qm, "alice") as alice, participant(qm, "bob") as bob, pull_worker(settings):
        first = await submit(alice, graph(1))
        second = await submit(alice, graph(2))
        await until(
            lambda: held_by.hget(f"qm:job:{second}", "hold_worker") == "w-test", "second held for w-test", 20
        )
        bobs = await submit(bob, graph(3))  # bob has had no turn yet: he goes before alice's second
        for job_id, owner in ((first, alice), (second, alice), (bobs, bob)):
            outcome = await finished(owner, job_id)
            assert outcome.state == JobState.SUCCEEDED, outcome.error
    starts = {job_id: comfy.state.timings[job_id][0] for job_id in (first, second, bobs)}
    assert starts[first] < starts[bobs] < starts[second]


async def test_cancelling_a_prepared_job_ends_it_at_once_and_it_never_runs(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, held_by: redis.Redis
) -> None:
    comfy.knobs.node_seconds = 0.5
    settings = worker_settings(comfy, qm.url, tmp_path)
    async with participant(qm, "alice") as alice, pull_worker(settings):
        first = await submit(alice, graph(1))
        second = await submit(alice, graph(2))
        await until(
            lambda: held_by.hget(f"qm:job:{second}", "hold_worker") == "w-test", "second held for w-test", 20
        )
        (await alice.post(f"/api/jobs/{second}/cancel")).raise_for_status()
        assert state(await alice.get(f"/api/jobs/{second}")) == JobState.CANCELLED
        assert (await finished(alice, first)).state == JobState.SUCCEEDED
        third = await submit(alice, graph(3))
        assert (await finished(alice, third)).state == JobState.SUCCEEDED  # the worker goes on
    assert second not in comfy.state.timings


async def test_a_prepared_job_is_given_back_without_an_attempt_when_comfyui_goes_down(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, held_by: redis.Redis
) -> None:
    comfy.knobs.node_seconds = 0.5
    settings: WorkerSettings = worker_settings(comfy, qm.url, tmp_path)
    async with participant(qm, "alice") as alice, pull_worker(settings) as running:
        first = await submit(alice, graph(1))
        second = await submit(alice, graph(2))
        await until(
            lambda: held_by.hget(f"qm:job:{second}", "hold_worker") == "w-test", "second held for w-test", 20
        )
        # The claim that leased the first job held the second in the same step: the first may not have
        # reached ComfyUI yet, and a job leased while ComfyUI is down is given back, not run.
        await until(lambda: first in comfy.state.timings, "first running on ComfyUI", 20)
        running.agent.comfy_server.up.clear()  # what the supervisor does when ComfyUI exits
        await finished(alice, first)
        await until(
            lambda: held_by.hget(f"qm:job:{second}", "hold_worker") == "", "second held for nobody", 20
        )
        waiting = (await alice.get(f"/api/jobs/{second}")).json()
        running.agent.comfy_server.up.set()  # ComfyUI answers again
        done = await finished(alice, second)
    assert waiting["state"] == "queued" and waiting["attempts"] == 0
    assert done.state == JobState.SUCCEEDED and done.attempts == 1


class RecordedStorage(LocalStorage):
    """Local storage that notes each upload in a shared log."""

    def __init__(self, root: Path, log: list[str]) -> None:
        super().__init__(root)
        self.log = log

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], content_type: str = "", *, create_only: bool = False
    ) -> int:
        self.log.append(f"stored {key.rsplit('/', 1)[-1]}")
        return await super().put(key, chunks, content_type, create_only=create_only)


async def test_the_next_job_reaches_comfyui_before_the_last_ones_outputs_are_stored(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Storing and reporting a finished job never holds up the GPU's next start: they wait until
    the next job is in ComfyUI (and the last job's go at once: nothing follows it)."""
    log: list[str] = []
    original = ComfyClient.submit

    async def submit_noted(client: ComfyClient, prompt: dict[str, Any], prompt_id: str, *rest: Any) -> None:
        log.append(f"submitted {prompt_id}")
        await original(client, prompt, prompt_id, *rest)

    monkeypatch.setattr(ComfyClient, "submit", submit_noted)
    comfy.knobs.node_seconds = 0.3
    storage = RecordedStorage(tmp_path / "files", log)
    async with (
        participant(qm, "alice") as alice,
        pull_worker(worker_settings(comfy, qm.url, tmp_path), storage),
    ):
        first = await submit(alice, graph(1, prefix="first"))
        second = await submit(alice, graph(2, prefix="second"))
        done = [await finished(alice, first), await finished(alice, second)]
    assert [job.state for job in done] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    jobs = [entry for entry in log if not entry.startswith("submitted") or entry.endswith((first, second))]
    assert jobs == [
        f"submitted {first}",
        f"submitted {second}",
        "stored first_00001_.png",
        "stored second_00001_.png",
    ]


async def test_the_prepared_job_is_staged_and_in_comfyui_before_the_queue_manager_answers_its_start(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU's wait for ``start`` is neither spent moving files nor waiting for the answer: the
    prepared job's files are in ComfyUI's folders and ComfyUI has the job (the double received its
    ``POST /prompt``) before the queue manager's answer reaches the worker, and the job then
    completes as any other."""
    seen: list[tuple[list[str], bool]] = []  # at each answer: the input folder, whether ComfyUI had the job
    original = QueueClient.start

    async def slow_start(client: QueueClient, job_id: str, *args: Any, **kwargs: Any) -> StartReply:
        reply = await original(client, job_id, *args, **kwargs)
        with contextlib.suppress(TimeoutError):  # today's worker submits only after the answer
            await until(lambda: job_id in comfy.state.timings, "the prepared job is in ComfyUI", 5)
        seen.append(([p.name for p in comfy.folders.input.iterdir()], job_id in comfy.state.timings))
        return reply  # held until then, as a slow queue manager or a long way to it would

    monkeypatch.setattr(QueueClient, "start", slow_start)
    put_input(files, "alice", "mine.png", b"\x89PNG\r\n\x1a\n" + b'{"width": 8, "height": 8, "color": 7}')
    loads = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "mine.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
    }
    comfy.knobs.node_seconds = 0.3
    async with participant(qm, "alice") as alice, pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        first = await submit(alice, graph(1))
        second = await submit(alice, loads, inputs=[{"filename": "mine.png"}])
        done = [await finished(alice, first), await finished(alice, second)]
    assert [job.state for job in done] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert seen == [(["mine.png"], True)]
    assert [o.filename for o in done[1].outputs] and all(
        (files / "users" / "alice" / "output" / o.filename).exists() for o in done[1].outputs
    )


async def test_the_next_job_is_claimed_ahead_only_once_the_one_just_launched_is_in_comfyui(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claiming ahead never competes with the submit of the job the GPU is waiting for."""
    log: list[str] = []
    submit_original, claim_original = ComfyClient.submit, QueueClient.claim

    async def submit_noted(client: ComfyClient, prompt: dict[str, Any], prompt_id: str, *rest: Any) -> None:
        await submit_original(client, prompt, prompt_id, *rest)
        log.append(f"in ComfyUI {prompt_id}")

    async def claim_noted(
        client: QueueClient, worker_id: str, wait: float, prepare: bool = False, **how: Any
    ) -> Any:
        log.append("claim ahead" if prepare else "claim")
        return await claim_original(client, worker_id, wait, prepare, **how)

    monkeypatch.setattr(ComfyClient, "submit", submit_noted)
    monkeypatch.setattr(QueueClient, "claim", claim_noted)
    comfy.knobs.node_seconds = 0.3
    async with participant(qm, "alice") as alice, pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        first = await submit(alice, graph(1))  # alone: its claim holds nothing after it
        await until(lambda: "claim ahead" in log, "the worker claims ahead", 20)
        second = await submit(alice, graph(2))
        done = [await finished(alice, first), await finished(alice, second)]
    assert [job.state for job in done] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert log.index("claim ahead") > log.index(f"in ComfyUI {first}")
