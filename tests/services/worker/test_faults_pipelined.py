"""Faults while the pull worker overlaps two jobs: one job's outputs on their way to storage while
the next already runs in ComfyUI. A ComfyUI crash then gives back only the job ComfyUI had (no
attempt spent) and loses none of the other's outputs; two owners' jobs side by side each report to
their own owner only; a cancel that comes once ComfyUI is done keeps what the job made."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import websockets

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.s3 import make_bucket, s3_client
from devkit.servers import free_port
from services.protocol.jobs import JobState
from services.storage import S3Settings, StorageUnavailableError, aiter_chunks, open_storage
from services.storage.s3 import S3Storage
from services.worker import job_files
from services.worker.job_files import JobFiles
from services.worker.supervisor import ComfyProcess
from tests.support.jobs import finished, graph, participant, put_input, submit, until
from tests.support.queue_manager_app import LiveServer, password
from tests.support.worker_agent import (
    GatedStorage,
    child_worker_settings,
    hold_of,
    pull_worker,
    worker_settings,
)


async def test_comfyui_killed_while_the_last_jobs_outputs_upload_loses_neither_job(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    storage = GatedStorage(tmp_path / "files")
    settings = child_worker_settings(comfy, qm.url, tmp_path)
    async with pull_worker(settings, storage) as running:
        supervisor = running.agent.comfy_server
        assert isinstance(supervisor, ComfyProcess)
        first = await submit(alice, graph(71, prefix="first"))
        second = await submit(alice, graph(72, prefix="second"))
        await asyncio.wait_for(storage.waiting.wait(), 20)  # the first job's output is on its way
        comfyui = running.agent.comfy

        async def second_running() -> bool:
            return second in (await comfyui.queue())[0]

        async with asyncio.timeout(20):
            while not await second_running():
                await asyncio.sleep(0.02)  # polling the child ComfyUI's /queue
        assert supervisor._process is not None
        os.kill(supervisor._process.pid, signal.SIGKILL)
        await until(lambda: not running.agent.comfyui_up, "the worker saw ComfyUI die", 20)
        storage.gate.set()
        done = [await finished(alice, first, timeout=30), await finished(alice, second, timeout=30)]
    assert [(j.state, j.attempts, j.comfyui_losses) for j in done] == [
        (JobState.SUCCEEDED, 1, 0),  # ComfyUI was done with it: its outputs were set aside
        (JobState.SUCCEEDED, 1, 1),  # ComfyUI had it: given back, run again, no attempt spent
    ], [j.error for j in done]
    output = tmp_path / "files" / "users" / "alice" / "output"
    assert sorted(p.name for p in output.iterdir()) == ["first_00001_.png", "second_00001_.png"]
    assert list(settings.data_dir.joinpath("output").iterdir()) == []  # nothing left behind


def in_bucket(endpoint: str, bucket: str) -> S3Storage:
    """The worker's storage: a bucket of the S3 double (made here)."""
    make_bucket(endpoint, bucket)
    settings = S3Settings(endpoint_url=endpoint, access_key_id="t", secret_access_key="t", region="us-east-1")
    storage = open_storage(f"s3://{bucket}/files", settings)
    assert isinstance(storage, S3Storage)
    return storage


def events_of(qm: LiveServer, user: str) -> Any:
    basic = base64.b64encode(f"{user}:{password(user)}".encode()).decode()
    url = qm.url.replace("http://", "ws://") + "/api/events"
    return websockets.connect(url, additional_headers={"Authorization": f"Basic {basic}"})


async def heard(stream: Any, until_finished: str) -> list[dict[str, Any]]:
    """A participant's events up to the end of job ``until_finished``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while not seen or (seen[-1]["type"], seen[-1]["job_id"]) != ("finished", until_finished):
            seen.append(json.loads(await stream.recv()))
    return seen


def with_previews(prompt: dict[str, Any]) -> dict[str, Any]:
    """The graph, sending its images as live previews too (``SaveImageWebsocket``)."""
    return {**prompt, "4": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}}}


async def test_two_owners_jobs_side_by_side_each_report_to_their_owner_only(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path
) -> None:
    """Alice's job uploads its outputs while Bob's runs with progress and live previews: she hears
    only her job and he only his, every event of each, and each one's outputs are in their own
    files."""
    storage = GatedStorage(tmp_path / "files")
    comfy.knobs.node_seconds, comfy.knobs.progress_steps = 0.3, 2  # steps within the throttle's burst
    async with (
        participant(qm, "alice") as alice,
        participant(qm, "bob") as bob,
        events_of(qm, "alice") as hers,
        events_of(qm, "bob") as his,
        pull_worker(worker_settings(comfy, qm.url, tmp_path), storage),
    ):
        mine = await submit(alice, with_previews(graph(73, prefix="hers")))
        theirs = await submit(bob, with_previews(graph(74, prefix="his")))
        await asyncio.wait_for(storage.waiting.wait(), 20)
        await until(lambda: comfy.state.timings.get(theirs, (0.0, 0.0))[1] > 0, "bob's job ran", 20)
        storage.gate.set()
        alice_heard, bob_heard = await heard(hers, mine), await heard(his, theirs)
        done = [await finished(alice, mine), await finished(bob, theirs)]
    assert [j.state for j in done] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert {e["job_id"] for e in alice_heard} == {mine} and {e["job_id"] for e in bob_heard} == {theirs}
    for events, job_id in ((alice_heard, mine), (bob_heard, theirs)):
        comfy_events = [e["comfy"] for e in events if e.get("comfy")]
        assert {e["data"].get("prompt_id", job_id) for e in comfy_events} == {job_id}
        assert [e["data"]["node"] for e in comfy_events if e["type"] == "executing"] == ["1", "2", "3", "4"]
        assert [e["type"] for e in comfy_events].count("executed") == 1
        assert "b_preview" in [e["type"] for e in comfy_events]  # her own previews, and only hers
    assert [o.filename for o in done[0].outputs] == ["hers_00001_.png"]
    assert [o.filename for o in done[1].outputs] == ["his_00001_.png"]


async def test_a_cancel_while_the_outputs_upload_keeps_them_and_the_worker_goes_on(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    """ComfyUI is done with the job and its outputs are on their way to storage when she cancels
    it: the GPU has nothing left to stop, so what it made is kept (as on ComfyUI, where a cancel
    after the run changes nothing): the job succeeds with its outputs stored, once, and the
    worker goes on with the next."""
    storage = GatedStorage(tmp_path / "files")
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path), storage):
        job_id = await submit(alice, graph(75, prefix="late"))
        await asyncio.wait_for(storage.waiting.wait(), 20)
        (await alice.post(f"/api/jobs/{job_id}/cancel")).raise_for_status()
        storage.gate.set()
        done = await finished(alice, job_id)
        after = await finished(alice, await submit(alice, graph(76, prefix="after")))
    assert (done.state, done.attempts, [o.filename for o in done.outputs]) == (
        JobState.SUCCEEDED,
        1,
        ["late_00001_.png"],
    ), done.error
    assert (tmp_path / "files" / "users" / "alice" / "output" / "late_00001_.png").is_file()
    assert after.state == JobState.SUCCEEDED and [o.filename for o in after.outputs] == ["after_00001_.png"]


async def test_a_bucket_outage_while_outputs_upload_spends_no_attempt_and_loses_no_output(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bucket stops answering (connections refused) while her jobs run: each finished job's
    outputs wait for it while the next job runs, and are stored once it answers again; no job is
    left to its lease's end, run again or failed, and every output is stored once."""
    monkeypatch.setattr(job_files, "LISTING_SECONDS", 3600.0)  # her names, listed by the first job
    storage = in_bucket(s3_endpoint, "outage")
    bucket = storage.client
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path), storage):
        warm = await finished(alice, await submit(alice, graph(77, prefix="warm")))
        storage.client = s3_client(f"http://127.0.0.1:{free_port()}")  # nothing answers there
        jobs = [await submit(alice, graph(78 + n, prefix=f"out{n}")) for n in range(2)]
        await until(lambda: all(job in comfy.state.history for job in jobs), "both ran in ComfyUI", 20)
        storage.client = bucket
        done = [await finished(alice, job, timeout=30) for job in jobs]
    assert warm.state == JobState.SUCCEEDED
    assert [(j.state, j.attempts, j.error) for j in done] == [(JobState.SUCCEEDED, 1, None)] * 2
    assert [[o.filename for o in j.outputs] for j in done] == [["out0_00001_.png"], ["out1_00001_.png"]]
    assert await storage.list("users/alice/output/out") == [
        "users/alice/output/out0_00001_.png",
        "users/alice/output/out1_00001_.png",
    ]


async def test_a_stop_while_one_job_uploads_and_the_next_runs_finishes_both_and_gives_back_the_held(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, held_by: redis.Redis
) -> None:
    """SIGTERM (``stop``) while the first job's outputs are on their way, the second runs in ComfyUI
    and a third is held for this worker: the first is stored and completes, the second finishes in
    its grace period, the third goes back to the queue unrun, no attempt spent."""
    storage = GatedStorage(tmp_path / "files")
    comfy.knobs.node_seconds = 0.3
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path), storage) as running:
        jobs = [await submit(alice, graph(85 + n, prefix=f"job{n}")) for n in range(3)]
        await asyncio.wait_for(storage.waiting.wait(), 20)
        await until(lambda: comfy.state.running is not None, "the second runs in ComfyUI", 20)
        await until(lambda: hold_of(held_by, jobs[2]) == "w-test", "the third held for w-test", 20)
        running.worker.stop()
        storage.gate.set()
        await asyncio.wait_for(running.task, 20)  # the worker's loop ends: it has let go of all
        left = [(await alice.get(f"/api/jobs/{job}")).json() for job in jobs]
    assert [(j["state"], j["attempts"]) for j in left] == [("succeeded", 1), ("succeeded", 1), ("queued", 0)]
    assert hold_of(held_by, jobs[2]) == "" and jobs[2] not in comfy.state.timings


async def test_the_queue_manager_restarting_while_one_job_uploads_and_the_next_runs_loses_neither(
    comfy: ComfyUIDouble, qm_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """The queue manager restarts (a deploy) while the first job's outputs are on their way and the
    second runs: each gets exactly one completion once it is back, on its first attempt."""
    qm = qm_factory(lease_seconds=20.0)
    storage = GatedStorage(tmp_path / "files")
    comfy.knobs.node_seconds = 0.3
    async with (
        participant(qm, "alice") as alice,
        pull_worker(worker_settings(comfy, qm.url, tmp_path), storage),
    ):
        jobs = [await submit(alice, graph(88 + n, prefix=f"job{n}")) for n in range(2)]
        await asyncio.wait_for(storage.waiting.wait(), 20)
        await until(lambda: comfy.state.running is not None, "the second runs in ComfyUI", 20)
        qm.stop()
        storage.gate.set()
        await until(
            lambda: jobs[1] in comfy.state.history, "the second ran while the queue manager was away", 20
        )
        qm.start()
        done = [await finished(alice, job, timeout=30) for job in jobs]
    assert [(j.state, j.attempts) for j in done] == [(JobState.SUCCEEDED, 1)] * 2, [j.error for j in done]
    assert [[o.filename for o in j.outputs] for j in done] == [["job0_00001_.png"], ["job1_00001_.png"]]


async def test_comfyui_killed_while_the_next_job_is_held_gives_both_back_without_an_attempt(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, held_by: redis.Redis
) -> None:
    """ComfyUI dies running one job while the next is held (prepared) for this worker: the running
    one is given back with the loss counted and no attempt, the held one goes back unrun, and both
    run once ComfyUI is back."""
    settings = child_worker_settings(comfy, qm.url, tmp_path)
    async with pull_worker(settings) as running:
        supervisor = running.agent.comfy_server
        assert isinstance(supervisor, ComfyProcess)
        jobs = [await submit(alice, graph(90 + n, prefix=f"job{n}")) for n in range(2)]
        await until(lambda: hold_of(held_by, jobs[1]) == "w-test", "the second held for w-test", 20)
        comfyui = running.agent.comfy
        async with asyncio.timeout(20):
            while jobs[0] not in (await comfyui.queue())[0]:
                await asyncio.sleep(0.02)  # polling the child ComfyUI's /queue
        assert supervisor._process is not None
        os.kill(supervisor._process.pid, signal.SIGKILL)
        done = [await finished(alice, job, timeout=40) for job in jobs]
        restarts = supervisor.restarts
    assert [(j.state, j.attempts, j.comfyui_losses) for j in done] == [
        (JobState.SUCCEEDED, 1, 1),
        (JobState.SUCCEEDED, 1, 0),
    ], [j.error for j in done]
    assert restarts == 1


LOADS = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "mine.png"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "from"}},
}


async def input_in_noted_bucket(storage: S3Storage, files: Path) -> list[str]:
    """Her ``mine.png`` (which ``LOADS`` loads) where the queue manager checks it and where the
    worker reads it; returns the list each call the bucket did not answer is added to."""
    image = b"\x89PNG\r\n\x1a\n" + b'{"width": 8, "height": 8, "color": 7}'
    put_input(files, "alice", "mine.png", image)  # where the queue manager checks it
    await storage.put("users/alice/input/mine.png", aiter_chunks(image))  # where the worker reads it
    unanswered: list[str] = []
    call = storage._call

    async def noted(method: str, **kwargs: Any) -> Any:
        try:
            return await call(method, **kwargs)
        except StorageUnavailableError:
            unanswered.append(method)
            raise

    storage._call = noted  # type: ignore[method-assign]
    return unanswered


async def test_a_bucket_outage_while_a_jobs_input_is_fetched_spends_no_attempt_and_delays_no_cancel(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    files: Path,
    s3_endpoint: str,
) -> None:
    """The bucket stops answering as her image-to-image jobs are about to run: their input waits for
    the bucket (up to WORKER_STORAGE_RETRY_SECONDS, 300 s). The one she cancels meanwhile ends
    cancelled at once, not when the wait is over; the other runs once the bucket answers, on its
    first attempt, instead of failing until its attempts run out."""
    storage = in_bucket(s3_endpoint, "inputs")
    unanswered = await input_in_noted_bucket(storage, files)
    bucket = storage.client
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path), storage):
        storage.client = s3_client(f"http://127.0.0.1:{free_port()}")  # nothing answers there
        unwanted = await submit(alice, LOADS, inputs=[{"filename": "mine.png"}])
        await until(lambda: len(unanswered) >= 2, "the worker waits for the bucket", 30)
        (await alice.post(f"/api/jobs/{unwanted}/cancel")).raise_for_status()
        cancelled = await finished(alice, unwanted, timeout=10)
        job_id = await submit(alice, LOADS, inputs=[{"filename": "mine.png"}])
        tried = len(unanswered)
        await until(lambda: len(unanswered) >= tried + 3, "the worker tried the bucket again and again", 30)
        storage.client = bucket
        done = await finished(alice, job_id, timeout=30)
    assert cancelled.state == JobState.CANCELLED and unwanted not in comfy.state.history
    assert (done.state, done.attempts, done.error) == (JobState.SUCCEEDED, 1, None)
    assert [o.filename for o in done.outputs] == ["from_00001_.png"]


async def test_comfyui_killed_while_a_jobs_files_are_staged_gives_it_back_with_no_loss_counted(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ComfyUI dies while a job's files are being put in its folders, before it has the job: the job
    goes back to the queue with neither an attempt nor a ComfyUI loss counted against it (it had
    no part in the crash), and runs once ComfyUI is back."""
    staging, go_on = asyncio.Event(), asyncio.Event()
    staged = JobFiles.staged

    @contextlib.asynccontextmanager
    async def held_staging(files: JobFiles, job: Any, *args: Any) -> AsyncIterator[Any]:
        if job.user == "alice" and not go_on.is_set():  # its first try only
            staging.set()
            await go_on.wait()
        async with staged(files, job, *args) as stage:
            yield stage

    monkeypatch.setattr(JobFiles, "staged", held_staging)
    settings = child_worker_settings(comfy, qm.url, tmp_path)
    async with pull_worker(settings) as running:
        supervisor = running.agent.comfy_server
        assert isinstance(supervisor, ComfyProcess) and supervisor._process is not None
        job_id = await submit(alice, graph(95, prefix="staged"))
        await asyncio.wait_for(staging.wait(), 20)
        os.kill(supervisor._process.pid, signal.SIGKILL)
        await until(lambda: not running.agent.comfyui_up, "the worker saw ComfyUI die", 20)
        go_on.set()
        job = await finished(alice, job_id, timeout=40)
    assert (job.state, job.attempts, job.comfyui_losses) == (JobState.SUCCEEDED, 1, 0), job.error
    assert [o.filename for o in job.outputs] == ["staged_00001_.png"]
