"""The per-user WebSocket event stream, over a real uvicorn: own events only, in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from services.queue_manager.api.routes import events as events_route
from tests.support.qm_api import GPU, PROMPT, registration, user_auth


async def next_event(socket: ClientConnection) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(socket.recv(), timeout=10)))


async def test_the_owner_hears_queued_started_progress_and_finished_and_nobody_else_does(
    live_url: str,
) -> None:
    ws_url = live_url.replace("http", "ws") + "/api/events"
    async with (
        ada_listening(live_url) as (http, ada),
        connect(ws_url, additional_headers=user_auth("bob")) as bob,
    ):
        job_id, token = await leased(http)
        progress = {"type": "progress", "data": {"value": 1, "max": 3, "prompt_id": job_id, "node": "2"}}
        batch = {"token": token, "events": [progress, {"type": "execution_success", "data": {}}]}
        await http.post(f"/api/leases/{job_id}/events", json=batch, headers=GPU)
        await http.post(f"/api/leases/{job_id}/complete", json={"token": token}, headers=GPU)

        events = [await next_event(ada) for _ in range(4)]
        assert [e["type"] for e in events] == ["queued", "started", "progress", "finished"]
        assert {e["job_id"] for e in events} == {job_id}
        assert events[2]["comfy"] == {"type": "progress", "data": progress["data"]}
        assert events[3]["data"]["state"] == "succeeded"  # one end, from the queue manager (not the worker's)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(bob.recv(), timeout=0.3)


async def test_a_socket_without_credentials_is_refused(live_url: str) -> None:
    ws_url = live_url.replace("http", "ws") + "/api/events"
    with pytest.raises((InvalidStatus, Exception)):
        async with connect(ws_url) as socket:
            await socket.recv()


async def test_a_waiting_participant_hears_their_job_move_up(live_url: str) -> None:
    ws_url = live_url.replace("http", "ws") + "/api/events"
    async with (
        httpx.AsyncClient(base_url=live_url) as http,
        connect(ws_url, additional_headers=user_auth("ada")) as ada,
    ):
        await http.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth("bob"))
        mine = (await http.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth("ada"))).json()
        assert mine["position"] == 1
        await http.post("/api/workers/register", json=registration("w1").model_dump(), headers=GPU)
        assert (await http.post("/api/workers/w1/claim", headers=GPU)).json()["job"]["user"] == "bob"
        places = []
        while 0 not in places:
            event = await next_event(ada)
            if event["type"] == "position":
                places.append(event["data"]["position"])
        assert event["job_id"] == mine["id"]


@contextlib.asynccontextmanager
async def ada_listening(live_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, ClientConnection]]:
    """An HTTP client for the queue manager, and Ada's event socket."""
    ws_url = live_url.replace("http", "ws") + "/api/events"
    async with (
        httpx.AsyncClient(base_url=live_url) as http,
        connect(ws_url, additional_headers=user_auth("ada")) as ada,
    ):
        yield http, ada


async def leased(http: httpx.AsyncClient) -> tuple[str, str]:
    """Ada's job, claimed by a worker: (job id, lease token)."""
    job_id = (await http.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth("ada"))).json()["id"]
    await http.post("/api/workers/register", json=registration("w1").model_dump(), headers=GPU)
    return job_id, (await http.post("/api/workers/w1/claim", headers=GPU)).json()["token"]


async def heard_so_far(http: httpx.AsyncClient, ada: ClientConnection) -> list[dict[str, Any]]:
    """Every event Ada heard so far: up to the ``queued`` of a job submitted now, after the calls
    under test, so whatever they published came before it (one channel, in order)."""
    later = (await http.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth("ada"))).json()["id"]
    seen = [await next_event(ada)]
    while (seen[-1]["type"], seen[-1]["job_id"]) != ("queued", later):
        seen.append(await next_event(ada))
    return seen[:-1]


def comfy_types(events: list[dict[str, Any]]) -> list[str]:
    return [e["comfy"]["type"] if e.get("comfy") else e["type"] for e in events]


def trailing(job_id: str) -> list[dict[str, Any]]:
    """A job's last events as a worker hands them over: the stored file, the last node state."""
    image = {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}
    return [
        {"type": "execution_cached", "data": {"nodes": ["1"], "prompt_id": job_id}},
        {"type": "executed", "data": {"node": "2", "output": {"images": [image]}, "prompt_id": job_id}},
        {"type": "progress_state", "data": {"prompt_id": job_id, "nodes": {"2": {"state": "finished"}}}},
        {"type": "execution_success", "data": {"prompt_id": job_id}},
    ]


async def test_a_completions_events_reach_the_owner_before_the_end_and_a_retry_publishes_nothing_again(
    live_url: str,
) -> None:
    async with ada_listening(live_url) as (http, ada):
        job_id, token = await leased(http)
        done = {"token": token, "outputs": [], "events": trailing(job_id)}
        for _ in range(2):  # the worker's retry after a lost reply: the same call again
            reply = await http.post(f"/api/leases/{job_id}/complete", json=done, headers=GPU)
            assert reply.status_code == 204, reply.text
        events = await heard_so_far(http, ada)
        record = (await http.get(f"/api/jobs/{job_id}", headers=user_auth("ada"))).json()
    types = comfy_types(events)
    assert types == ["queued", "started", "execution_cached", "executed", "progress_state", "finished"]
    executed = events[types.index("executed")]
    assert executed["type"] == "outputs" and executed["data"] == trailing(job_id)[1]["data"]
    assert events[-1]["data"]["state"] == "succeeded"  # one end, the queue manager's
    assert record["state"] == "succeeded" and record["cached_nodes"] == ["1"]


async def test_a_failures_events_reach_the_owner_before_the_failure(live_url: str) -> None:
    async with ada_listening(live_url) as (http, ada):
        job_id, token = await leased(http)
        last = [
            {"type": "executing", "data": {"node": "1", "prompt_id": job_id}},
            {"type": "progress_state", "data": {"prompt_id": job_id, "nodes": {"1": {"state": "running"}}}},
            {"type": "execution_error", "data": {"prompt_id": job_id, "node_id": "1"}},
        ]
        failure = {"token": token, "error": {"type": "ValueError", "message": "bad image"}, "events": last}
        reply = await http.post(f"/api/leases/{job_id}/fail", json=failure, headers=GPU)
        assert reply.status_code == 204, reply.text
        events = await heard_so_far(http, ada)
    assert comfy_types(events) == ["queued", "started", "executing", "progress_state", "finished"]
    assert events[-1]["data"]["state"] == "failed" and events[-1]["data"]["error"]["message"] == "bad image"


async def test_a_stale_completion_publishes_none_of_its_events(live_url: str) -> None:
    async with ada_listening(live_url) as (http, ada):
        job_id, _ = await leased(http)
        forged = {"token": "not-the-token", "events": trailing(job_id)}
        reply = await http.post(f"/api/leases/{job_id}/complete", json=forged, headers=GPU)
        assert reply.status_code == 409
        events = await heard_so_far(http, ada)
    assert comfy_types(events) == ["queued", "started"]


def forwarders() -> list[asyncio.Task[Any]]:
    """The tasks of this event loop (the live app's) that forward a user's events to a socket."""
    code = events_route._forward.__code__
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "cr_code", None) is code]


async def test_frames_a_client_sends_are_ignored_and_a_closed_stream_leaves_nothing_running(
    live_url: str,
) -> None:
    """A binary frame (or any text) on the event stream crashed the handler (KeyError: a 1011
    close) and left its forwarding task waiting for the user's events forever."""
    ws_url = live_url.replace("http", "ws") + "/api/events"
    async with httpx.AsyncClient(base_url=live_url) as http:
        async with connect(ws_url, additional_headers=user_auth("ada")) as ada:
            await ada.send(b"\x00\x01 binary")
            await ada.send("some text")
            await http.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth("ada"))
            assert (await next_event(ada))["type"] == "queued"  # still streaming
            assert len(forwarders()) == 1
        for _ in range(200):  # bounded: the server notices the close within a few loop turns
            if not forwarders():
                break
            await asyncio.sleep(0.01)
        assert forwarders() == []
