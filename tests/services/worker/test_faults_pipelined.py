"""Faults while the pull worker overlaps two jobs: one job's outputs on their way to storage while
the next already runs in ComfyUI. A ComfyUI crash then gives back only the job ComfyUI had (no
attempt spent) and loses none of the other's outputs; two owners' jobs side by side each report to
their own owner only; a cancel that comes once ComfyUI is done keeps what the job made."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import websockets

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import JobState
from services.worker.supervisor import ComfyProcess
from tests.support.jobs import finished, graph, participant, submit, until
from tests.support.queue_manager_app import LiveServer, password
from tests.support.worker_agent import GatedStorage, child_worker_settings, pull_worker, worker_settings


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


async def test_two_owners_jobs_side_by_side_each_report_to_their_owner_only(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path
) -> None:
    """Alice's job uploads its outputs while Bob's runs with progress: she hears only
    her job and he only his, every event of each, and each one's outputs are in their own files."""
    storage = GatedStorage(tmp_path / "files")
    comfy.knobs.node_seconds, comfy.knobs.progress_steps = 0.3, 6
    async with (
        participant(qm, "alice") as alice,
        participant(qm, "bob") as bob,
        events_of(qm, "alice") as hers,
        events_of(qm, "bob") as his,
        pull_worker(worker_settings(comfy, qm.url, tmp_path), storage),
    ):
        mine = await submit(alice, graph(73, prefix="hers"))
        theirs = await submit(bob, graph(74, prefix="his"))
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
        assert [e["data"]["node"] for e in comfy_events if e["type"] == "executing"] == ["1", "2", "3"]
        assert [e["type"] for e in comfy_events].count("executed") == 1
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
