"""A leaked push request's reply token, attacked against the real queue manager: what it can take
from its pool's queue, when, and what hostile input gets back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from services.protocol.jobs import JobState
from services.queue_manager.push_requests import Chains
from services.queue_manager.settings import PushPool
from services.queue_manager.store import Store
from tests.support.jobs import graph, submit
from tests.support.queue_manager_app import POOL, LiveServer
from tests.support.worker_agent import lease_for


@pytest.fixture
async def chains(qm: LiveServer, redis_url: str) -> AsyncIterator[Chains]:
    redis = Redis.from_url(redis_url, decode_responses=True)
    yield Chains(Store(redis, qm.app.state.settings))
    await redis.aclose()


def push_pool(**extra: float) -> PushPool:
    fields = {"name": POOL, "style": "runpod", "url": "http://127.0.0.1:9", "api_key": "k", "capacity": 1}
    return PushPool.model_validate({**fields, **extra})


def holding(qm: LiveServer, reply_token: str) -> httpx.AsyncClient:
    """Whoever holds the request's payload: its reply token."""
    return httpx.AsyncClient(base_url=qm.url, headers={"Authorization": f"Bearer {reply_token}"})


async def states(client: httpx.AsyncClient, job_ids: list[str]) -> list[str]:
    return [(await client.get(f"/api/jobs/{job_id}")).json()["state"] for job_id in job_ids]


async def test_a_leaked_reply_token_takes_no_more_than_its_chains_limit_even_all_at_once(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    lease = await lease_for(qm, alice, color=40)
    two_jobs = push_pool(max_jobs_per_request=2, linger_seconds=0.2)
    chain, reply_token = await chains.open(two_jobs, "slot", lease)
    waiting = [await submit(alice, graph(color=41 + n)) for n in range(4)]  # no per-user limit here
    async with holding(qm, reply_token) as leaked:
        replies = await asyncio.gather(*(leaked.post(f"/api/push/{chain}/next", json={}) for _ in range(4)))

    taken = [reply for reply in replies if reply.status_code == 200]
    assert sorted(await states(alice, waiting)).count(JobState.QUEUED) >= 3
    assert len(taken) <= 1  # the request may run two jobs: the one it was sent and one more
    assert all(reply.status_code in (200, 204) for reply in replies)


async def test_a_reply_token_of_an_ended_request_takes_nothing(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    lease = await lease_for(qm, alice, color=46)
    chain, reply_token = await chains.open(push_pool(), "slot", lease)
    await chains.end(chain)  # the dispatcher ended the request (timed out, provider failed, cancelled)
    waiting = await submit(alice, graph(color=47))
    async with holding(qm, reply_token) as leaked:
        after_end = await leaked.post(f"/api/push/{chain}/next", json={})

    assert after_end.status_code == 204
    assert await states(alice, [waiting]) == [JobState.QUEUED]


@pytest.mark.parametrize(
    ("path", "body", "content"),
    [
        pytest.param("/api/push/{chain}/next", None, b"x" * 2_000_000, id="a huge non-JSON body"),
        pytest.param("/api/push/{chain}/next", {"worker_id": 5}, None, id="a number for the worker id"),
        pytest.param("/api/push/{chain}/next", {"worker_id": "a/b"}, None, id="a path as worker id"),
        pytest.param("/api/push/{chain}/next", [1, 2], None, id="a list as the body"),
        pytest.param("/api/push/{chain}/next", None, b"", id="no body"),
        pytest.param("/api/push/" + "z" * 65 + "/next", {}, None, id="a chain id too long"),
        pytest.param("/api/push/" + "%00" * 16 + "/next", {}, None, id="nul bytes"),
        pytest.param("/api/push/{chain}/end", {"worker_id": None}, None, id="end with a null worker id"),
        pytest.param("/api/leases/{job}/heartbeat", {"token": ""}, None, id="an empty lease token"),
        pytest.param("/api/leases/{job}/complete", {"token": 1}, None, id="a completion of wrong types"),
    ],
)
async def test_hostile_input_with_a_reply_token_gets_a_4xx(
    qm: LiveServer,
    alice: httpx.AsyncClient,
    chains: Chains,
    path: str,
    body: object,
    content: bytes | None,
) -> None:
    lease = await lease_for(qm, alice, color=48)
    chain, reply_token = await chains.open(push_pool(), "slot", lease)
    url = path.format(chain=chain, job=lease.job.id)
    async with holding(qm, reply_token) as leaked:
        if content is not None:
            reply = await leaked.post(url, content=content, headers={"Content-Type": "application/json"})
        else:
            reply = await leaked.post(url, json=body)

    assert 400 <= reply.status_code < 500 or reply.status_code == 204, reply.text


async def test_a_reply_token_reaches_no_other_pools_chain_and_no_worker_route(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    lease = await lease_for(qm, alice, color=50)
    chain, _ = await chains.open(push_pool(), "slot", lease)
    elsewhere = PushPool.model_validate({**push_pool().model_dump(), "name": "other", "api_key": "k"})
    _, others_token = await chains.open(elsewhere, "other-slot", lease)  # another pool's request
    waiting = await submit(alice, graph(color=51))
    async with holding(qm, others_token) as leaked:
        replies = [
            await leaked.post(f"/api/push/{chain}/next", json={}),
            await leaked.post(f"/api/push/{chain}/end", json={}),
            await leaked.post(f"/api/leases/{waiting}/start", json={"token": "t", "worker_id": "dispatcher"}),
            await leaked.post("/api/workers/dispatcher/drain"),
            await leaked.post("/api/workers/dispatcher/deregister"),
        ]

    assert [reply.status_code for reply in replies] == [403, 403, 401, 401, 401]
    assert "another pool" in replies[0].json()["detail"]
    assert await states(alice, [waiting]) == [JobState.QUEUED]
    still = await chains.get(chain)
    assert still is not None and still.open


async def test_a_chain_that_expires_while_it_is_ended_leaves_no_record_behind(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = await lease_for(qm, alice, color=60)
    chain, _ = await chains.open(push_pool(), "slot", lease)
    key = chains.store.keys.push_request(chain)
    redis = chains.store.client
    send = redis.execute_command

    async def expiring_after_one_step(*args: object, **options: object) -> object:
        reply = await send(*args, **options)
        if any(chain in str(arg) for arg in args):  # end's first step on the record
            monkeypatch.setattr(redis, "execute_command", send)
            await redis.delete(key)  # the record's expiry comes right after it
        return reply

    monkeypatch.setattr(redis, "execute_command", expiring_after_one_step)
    await chains.end(chain)

    assert await redis.exists(key) == 0  # not a field-only record that would never expire
    assert await chains.get(chain) is None
