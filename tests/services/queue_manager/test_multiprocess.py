"""Two queue manager processes on one Redis behave as one queue: a claim waiting on one is woken
by a submit on the other, and a participant connected to one hears a worker reporting to the other."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from devkit.qm_server import QueueManagerProcess, qm_env
from tests.support.qm_api import GPU, PASSWORDS, PROMPT, TOKENS, registration, user_auth

pytestmark = pytest.mark.slow


@pytest.fixture
def two_processes(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    env = qm_env(redis_url, PASSWORDS, TOKENS)
    first = QueueManagerProcess(env, log_path=tmp_path / "a.log").start()
    second = QueueManagerProcess(env, log_path=tmp_path / "b.log").start()
    yield first.url, second.url
    first.stop()
    second.stop()


async def parked(client: httpx.AsyncClient) -> None:
    for _ in range(500):
        if "qm_claims_waiting 1.0" in (await client.get("/metrics")).text:
            return
        await asyncio.sleep(0.02)  # polling process A's own gauge
    raise AssertionError("the claim never parked")


async def test_work_and_events_cross_between_processes(two_processes: tuple[str, str]) -> None:
    url_a, url_b = two_processes
    async with (
        httpx.AsyncClient(base_url=url_a, timeout=30) as a,
        httpx.AsyncClient(base_url=url_b, timeout=30) as b,
        connect(url_a.replace("http", "ws") + "/api/events", additional_headers=user_auth("ada")) as events,
    ):
        await a.post("/api/workers/register", json=registration("w1").model_dump(), headers=GPU)
        waiting = asyncio.create_task(a.post("/api/workers/w1/claim", params={"wait": 20}, headers=GPU))
        await parked(a)  # the claim waits on process A before the submit reaches B
        job_id = (await b.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth("ada"))).json()["id"]
        lease = (await asyncio.wait_for(waiting, timeout=15)).json()
        assert lease["job"]["id"] == job_id
        batch = {"token": lease["token"], "events": [{"type": "progress", "data": {"value": 1, "max": 1}}]}
        await b.post(f"/api/leases/{job_id}/events", json=batch, headers=GPU)
        heard = []
        while "progress" not in heard:
            heard.append(json.loads(await asyncio.wait_for(events.recv(), timeout=10))["type"])
        assert heard[:2] == ["queued", "started"]
