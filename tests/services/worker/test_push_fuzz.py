"""The push request routes and the lease routes fuzzed with a live push request's own credentials
(its reply token, chain id, lease token and container name, mixed with hostile values), against
the real queue manager and redis-server: whatever is sent, the answer is never a 5xx. The route
fuzzer (``test_fuzz_routes``) never holds a reply token or a chain id, so it stops at the 401 and
404 before the name binding, the take and the lease checks; this one goes through them.
Bounded: a fixed number of examples, no deadline."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from services.protocol.workers import Lease
from services.queue_manager.push_requests import Chains
from services.queue_manager.settings import PushPool
from services.queue_manager.store import Store
from tests.support.jobs import graph, submit
from tests.support.queue_manager_app import POOL, POOL_TOKEN, LiveServer
from tests.support.worker_agent import lease_for

pytestmark = pytest.mark.slow
CONTAINER = "container-a"
ROUTES = ["next", "end", "heartbeat", "events", "complete", "fail", "release"]


def hostile(known: list[str]) -> st.SearchStrategy[Any]:
    """What a body's value may be: the request's own values, or anything a script can send."""
    text = st.one_of(
        st.sampled_from(known),
        st.text(max_size=40),
        st.sampled_from(["", "a/b", "x" * 129, "é" * 200, "a\x00b", "null", "..", "1e999", "-1"]),
    )
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_leaves=12,
    )


async def test_no_call_with_a_push_requests_credentials_gets_a_server_error(
    qm: LiveServer, alice: httpx.AsyncClient, redis_url: str
) -> None:
    redis = Redis.from_url(redis_url, decode_responses=True)
    chains = Chains(Store(redis, qm.app.state.settings))
    pool = PushPool(
        name=POOL, style="runpod", url="http://127.0.0.1:9", api_key="k", capacity=2, linger_seconds=0.1
    )
    requests: list[tuple[Lease, str, str]] = []
    for n in range(2):
        lease = await lease_for(qm, alice, color=80 + n)
        requests.append((lease, *await chains.open(pool, "dispatcher", lease)))
    for n in range(4):  # work for the chains to take
        await submit(alice, graph(color=90 + n))
    known = [CONTAINER, "container-b", *(value for lease, *ids in requests for value in (lease.token, *ids))]
    fields = st.sampled_from(["worker_id", "after", "token", "outputs", "events", "error", "comfyui_lost"])
    body = st.one_of(
        st.dictionaries(fields, hostile(known), max_size=5).map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=32),
    )
    tokens = [reply_token for _, _, reply_token in requests] + [POOL_TOKEN, "not-a-token"]

    @given(
        which=st.integers(0, len(requests) - 1),
        route=st.sampled_from(ROUTES),
        token=st.sampled_from(tokens),
        content=body,
    )
    @settings(
        max_examples=120, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def send(which: int, route: str, token: str, content: bytes) -> None:
        lease, chain, _ = requests[which]
        on = f"/api/push/{chain}" if route in ("next", "end") else f"/api/leases/{lease.job.id}"
        path = f"{on}/{route}"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        with httpx.Client(base_url=qm.url, timeout=20) as client:
            reply = client.post(path, content=content, headers=headers)
        assert reply.status_code < 500, f"{path} {content[:200]!r}: {reply.status_code} {reply.text[:300]}"

    try:
        await asyncio.to_thread(send)
    finally:
        await redis.aclose()
