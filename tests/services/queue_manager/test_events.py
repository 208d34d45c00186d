"""The per-user WebSocket event stream, over a real uvicorn: own events only, in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.support.qm_api import GPU, PROMPT, registration, user_auth


async def next_event(socket: ClientConnection) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(socket.recv(), timeout=10)))


async def test_the_owner_hears_queued_started_progress_and_finished_and_nobody_else_does(
    live_url: str,
) -> None:
    ws_url = live_url.replace("http", "ws") + "/api/events"
    async with (
        httpx.AsyncClient(base_url=live_url) as http,
        connect(ws_url, additional_headers=user_auth("ada")) as ada,
        connect(ws_url, additional_headers=user_auth("bob")) as bob,
    ):
        submitted = await http.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth("ada"))
        job_id = submitted.json()["id"]
        await http.post("/api/workers/register", json=registration("w1").model_dump(), headers=GPU)
        token = (await http.post("/api/workers/w1/claim", headers=GPU)).json()["token"]
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
