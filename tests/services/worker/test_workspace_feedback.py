"""What the participant's ComfyUI page hears while the worker runs their job, through the real queue
manager's workspace ``/ws``: node states that end ``finished``, live previews, "Run selected nodes",
the last ``executed`` (naming the stored files) before the end though the completion carries it."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import Job, JobState
from tests.support.jobs import finished, graph
from tests.support.queue_manager_app import LiveServer, password
from tests.support.worker_agent import LeaseCalls, pull_worker, worker_settings

Message = dict[str, Any] | bytes


@pytest.fixture
async def browser(qm: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """Alice logged in to her workspace, as her browser is (session cookie)."""
    async with httpx.AsyncClient(base_url=qm.url, timeout=10) as client:
        login = {"user": "alice", "password": password("alice")}
        (await client.post("/api/auth/login", json=login)).raise_for_status()
        yield client


def workspace_socket(qm: LiveServer, browser: httpx.AsyncClient) -> Any:
    url = qm.url.replace("http://", "ws://") + "/w/alice/ws?clientId=tab-1"
    cookie = f"qm_session={browser.cookies['qm_session']}"
    return websockets.connect(url, additional_headers={"Cookie": cookie}, open_timeout=10)


async def queue_prompt(browser: httpx.AsyncClient, prompt: dict[str, Any], **extra: Any) -> str:
    """Press "Queue" (or "Run selected nodes", with ``partial_execution_targets``)."""
    reply = await browser.post("/w/alice/api/prompt", json={"prompt": prompt, "client_id": "tab-1", **extra})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["prompt_id"])


async def until_idle(socket: Any, prompt_id: str, timeout: float = 20.0) -> list[Message]:
    """Every message up to ``executing {node: null}`` for the prompt: where the page ends the run."""
    seen: list[Message] = []
    idle = {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}
    async with asyncio.timeout(timeout):
        while not seen or seen[-1] != idle:
            raw = await socket.recv()
            seen.append(raw if isinstance(raw, bytes) else json.loads(raw))
    return seen


async def run_and_listen(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    browser: httpx.AsyncClient,
    tmp_path: Path,
    prompt: dict[str, Any],
) -> list[Message]:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), workspace_socket(qm, browser) as socket:
        prompt_id = await queue_prompt(browser, prompt)
        return await until_idle(socket, prompt_id)


def texts(messages: list[Message], kind: str) -> list[dict[str, Any]]:
    return [m["data"] for m in messages if isinstance(m, dict) and m["type"] == kind]


async def test_after_the_job_every_node_shows_finished_so_the_tab_stops_saying_running(
    comfy: ComfyUIDouble, qm: LiveServer, browser: httpx.AsyncClient, tmp_path: Path
) -> None:
    comfy.knobs.node_seconds, comfy.knobs.progress_steps = 0.3, 30  # 90 node states in about a second
    messages = await run_and_listen(comfy, qm, browser, tmp_path, graph(color=41))
    states = texts(messages, "progress_state")
    assert states, "the page never heard a progress_state"
    assert {nid: node["state"] for nid, node in states[-1]["nodes"].items()} == dict.fromkeys(
        "123", "finished"
    )
    assert len(states) < 60, f"{len(states)} progress_state messages: the throttle let the flood through"


async def test_live_previews_reach_the_page_as_comfyui_binary_frames_throttled(
    comfy: ComfyUIDouble, qm: LiveServer, browser: httpx.AsyncClient, tmp_path: Path
) -> None:
    prompt = graph(color=42, batch=8)
    prompt["3"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}}
    messages = await run_and_listen(comfy, qm, browser, tmp_path, prompt)
    frames = [m for m in messages if isinstance(m, bytes)]
    assert 1 <= len(frames) < 8, f"{len(frames)} of 8 previews sent in one burst reached the page"
    assert all(frame[:8] == struct.pack(">II", 1, 2) for frame in frames)  # preview image, PNG
    assert all(frame[8:16] == b"\x89PNG\r\n\x1a\n" for frame in frames)


async def test_run_selected_nodes_runs_only_the_selected_output(
    comfy: ComfyUIDouble, qm: LiveServer, browser: httpx.AsyncClient, tmp_path: Path
) -> None:
    prompt = graph(color=43, prefix="selected")
    prompt["4"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "unselected"}}
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        prompt_id = await queue_prompt(browser, prompt, partial_execution_targets=["3"])
        job: Job = await finished(browser, prompt_id)
        history = (await browser.get(f"/w/alice/api/history/{prompt_id}")).json()[prompt_id]
    assert job.state == JobState.SUCCEEDED, job.error
    assert {output.node_id for output in job.outputs} == {"3"}
    assert set(history["outputs"]) == {"3"}
    assert not list(comfy.folders.output.glob("unselected*"))


async def test_a_short_jobs_last_events_ride_in_its_completion_and_the_page_hears_them_before_the_end(
    comfy: ComfyUIDouble, qm: LiveServer, browser: httpx.AsyncClient, tmp_path: Path
) -> None:
    calls = LeaseCalls()
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)) as running:
        calls.watch(running.worker.queue.http)
        async with workspace_socket(qm, browser) as socket:
            prompt_id = await queue_prompt(browser, graph(color=51))
            page = await until_idle(socket, prompt_id)
        job = await finished(browser, prompt_id)
    assert job.state == JobState.SUCCEEDED and job.outputs
    (completion,) = calls.bodies(prompt_id, "complete")
    carried = [event["type"] for event in completion["events"]]
    assert "executed" in carried, f"the completion carried {carried}"
    sent = [event["type"] for event in calls.events_sent(prompt_id)]
    assert "executed" not in sent, "the end of the job cost an /events call of its own"
    said = [m for m in page if isinstance(m, dict)]
    order = [m["type"] for m in said]
    executed = said[order.index("executed")]["data"]["output"]["images"]
    assert [image["filename"] for image in executed] == [output.filename for output in job.outputs]
    assert order.index("executed") < order.index("execution_success") < len(order) - 1
    assert said[-1] == {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}
