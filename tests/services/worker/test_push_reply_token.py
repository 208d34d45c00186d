"""A leaked push request's reply token, attacked against the real queue manager: what it can take
from its pool's queue, when, and what hostile input gets back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import redis
from redis.asyncio import Redis

from services.protocol.jobs import JobError, JobState
from services.protocol.workers import JobEvent, Lease, WorkerCapabilities, WorkerRegistration
from services.queue_manager.push_requests import Chains
from services.queue_manager.settings import PushPool
from services.queue_manager.store import Store
from services.worker.queue_client import QueueClient
from tests.support.jobs import graph, submit, until
from tests.support.queue_manager_app import POOL, POOL_TOKEN, LiveServer
from tests.support.worker_agent import LosesFirstReply, lease_for


@pytest.fixture
async def chains(qm: LiveServer, redis_url: str) -> AsyncIterator[Chains]:
    redis = Redis.from_url(redis_url, decode_responses=True)
    yield Chains(Store(redis, qm.app.state.settings))
    await redis.aclose()


CONTAINER, OTHER = "container-a", "container-b"  # two serverless containers of the pool


def named_after(lease_token: str) -> dict[str, str]:
    """A ``next`` call as the container sends it: its name, and the job it is done with."""
    return {"worker_id": CONTAINER, "after": lease_token}


def push_pool(**extra: float) -> PushPool:
    fields = {"name": POOL, "style": "runpod", "url": "http://127.0.0.1:9", "api_key": "k", "capacity": 1}
    return PushPool.model_validate({**fields, **extra})


def holding(qm: LiveServer, reply_token: str) -> httpx.AsyncClient:
    """Whoever holds the request's payload: its reply token."""
    return httpx.AsyncClient(base_url=qm.url, headers={"Authorization": f"Bearer {reply_token}"})


async def states(client: httpx.AsyncClient, job_ids: list[str]) -> list[str]:
    return [(await client.get(f"/api/jobs/{job_id}")).json()["state"] for job_id in job_ids]


async def test_a_leaked_reply_token_takes_one_job_after_each_and_no_more_than_the_limit_even_all_at_once(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    lease = await lease_for(qm, alice, color=40)
    two_jobs = push_pool(max_jobs_per_request=2, linger_seconds=0.2)
    chain, reply_token = await chains.open(two_jobs, "dispatcher", lease)
    waiting = [await submit(alice, graph(color=41 + n)) for n in range(4)]  # no per-user limit here
    after_first = named_after(lease.token)
    async with holding(qm, reply_token) as leaked:
        replies = await asyncio.gather(
            *(leaked.post(f"/api/push/{chain}/next", json=after_first) for _ in range(4))
        )
        taken = [Lease.model_validate(reply.json()) for reply in replies if reply.status_code == 200]
        past_limit = await leaked.post(f"/api/push/{chain}/next", json=named_after(taken[0].token))

    assert sorted(await states(alice, waiting)).count(JobState.QUEUED) == 3
    assert (
        len({lease.job.id for lease in taken}) == 1
    )  # the request runs two jobs: the one it was sent and one more
    assert all(reply.status_code in (200, 409) for reply in replies), [r.text for r in replies]
    assert past_limit.status_code == 204


async def test_a_reply_token_of_an_ended_request_takes_nothing(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    lease = await lease_for(qm, alice, color=46)
    chain, reply_token = await chains.open(push_pool(), "dispatcher", lease)
    await chains.end(chain)  # the dispatcher ended the request (timed out, provider failed, cancelled)
    waiting = await submit(alice, graph(color=47))
    async with holding(qm, reply_token) as leaked:
        after_end = await leaked.post(f"/api/push/{chain}/next", json=named_after(lease.token))

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
    chain, reply_token = await chains.open(push_pool(), "dispatcher", lease)
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
    chain, _ = await chains.open(push_pool(), "dispatcher", lease)
    elsewhere = PushPool.model_validate({**push_pool().model_dump(), "name": "other", "api_key": "k"})
    _, others_token = await chains.open(elsewhere, "other-slot", lease)  # another pool's request
    waiting = await submit(alice, graph(color=51))
    async with holding(qm, others_token) as leaked:
        replies = [
            await leaked.post(f"/api/push/{chain}/next", json=named_after(lease.token)),
            await leaked.post(f"/api/push/{chain}/end", json={"worker_id": CONTAINER}),
            await leaked.post(f"/api/leases/{waiting}/start", json={"token": "t", "worker_id": "dispatcher"}),
            await leaked.post("/api/workers/dispatcher/drain"),
            await leaked.post("/api/workers/dispatcher/deregister"),
        ]

    assert [reply.status_code for reply in replies] == [403, 403, 401, 401, 401]
    assert "another push request" in replies[0].json()["detail"]
    assert await states(alice, [waiting]) == [JobState.QUEUED]
    still = await chains.get(chain)
    assert still is not None and still.open


async def test_a_chain_that_expires_while_it_is_ended_leaves_no_record_behind(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = await lease_for(qm, alice, color=60)
    chain, _ = await chains.open(push_pool(), "dispatcher", lease)
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


async def register(qm: LiveServer, *worker_ids: str) -> None:
    """Serverless containers of the pool, as each publishes itself with the pool's token."""
    async with httpx.AsyncClient(base_url=qm.url, headers={"Authorization": f"Bearer {POOL_TOKEN}"}) as pool:
        for worker_id in worker_ids:
            caps = WorkerCapabilities(pool=POOL, provider="runpod")
            registration = WorkerRegistration(worker_id=worker_id, capabilities=caps)
            (
                await pool.post("/api/workers/register", json=registration.model_dump(mode="json"))
            ).raise_for_status()


async def test_a_leaked_reply_token_naming_another_container_is_refused_and_changes_nothing(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    lease = await lease_for(qm, alice, color=52)
    await register(qm, CONTAINER, OTHER)
    chain, reply_token = await chains.open(push_pool(), "dispatcher", lease)
    waiting = await submit(alice, graph(color=53))
    other_record = chains.store.keys.worker(OTHER)
    lease_calls = f"/api/leases/{lease.job.id}"
    as_other = {"token": lease.token, "worker_id": OTHER}
    started = {"type": "execution_start", "data": {"prompt_id": lease.job.id}}
    async with holding(qm, reply_token) as client:
        announced = await client.post(f"{lease_calls}/heartbeat", json={**as_other, "worker_id": CONTAINER})
        before = (await chains.store.redis.hgetall(other_record), await states(alice, [lease.job.id]))
        replies = [
            await client.post(f"{lease_calls}/heartbeat", json=as_other),
            await client.post(f"{lease_calls}/events", json={**as_other, "events": [started]}),
            await client.post(f"{lease_calls}/complete", json={**as_other, "outputs": []}),
            await client.post(
                f"{lease_calls}/fail", json={**as_other, "error": {"type": "x", "message": "x"}}
            ),
            await client.post(f"{lease_calls}/release", json=as_other),
            await client.post(f"/api/push/{chain}/next", json={"worker_id": OTHER, "after": lease.token}),
            await client.post(f"/api/push/{chain}/end", json={"worker_id": OTHER}),
        ]
        unnamed = await client.post(f"{lease_calls}/heartbeat", json={"token": lease.token})
        after = (await chains.store.redis.hgetall(other_record), await states(alice, [lease.job.id]))

    assert announced.status_code == 200  # the container that first named itself runs the request
    assert [reply.status_code for reply in replies] == [403] * len(replies), [r.text for r in replies]
    detail = replies[0].json()["detail"]
    assert "another container" in detail and OTHER in detail and CONTAINER not in detail  # no name given away
    assert after == before and before[0]["state"] != "busy"  # the other container is not shown busy
    assert unnamed.status_code == 422 and "worker_id" in unnamed.json()["detail"]
    assert await states(alice, [waiting]) == [JobState.QUEUED]
    still = await chains.get(chain)
    assert still is not None and still.open and still.jobs == 1


async def sent_with_work(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains, color: int, waiting: int
) -> tuple[Lease, str, str, list[str]]:
    """A request the dispatcher sent (its lease, chain and reply token), and jobs queued after it."""
    lease = await lease_for(qm, alice, color=color)
    chain, reply_token = await chains.open(
        push_pool(max_jobs_per_request=10, linger_seconds=0.2), "dispatcher", lease
    )
    return (
        lease,
        chain,
        reply_token,
        [await submit(alice, graph(color=color + 1 + n)) for n in range(waiting)],
    )


async def test_an_impostors_next_beside_the_container_gets_no_job(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    lease, chain, reply_token, waiting = await sent_with_work(qm, alice, chains, color=56, waiting=3)
    path = f"/api/push/{chain}/next"
    async with holding(qm, reply_token) as client:
        taken = await client.post(path, json=named_after(lease.token))
        impostor = await client.post(path, json={"worker_id": OTHER, "after": lease.token})
        # One that knows the container's name too: the same job again (a repeat), never another one.
        same_name = await client.post(path, json=named_after(lease.token))
        made_up = await client.post(path, json={"worker_id": CONTAINER, "after": "made-up-token"})

    assert taken.status_code == 200 and taken.json()["job"]["id"] == waiting[0]
    assert impostor.status_code == 403 and "another container" in impostor.json()["detail"]
    assert same_name.status_code == 200 and same_name.json()["token"] == taken.json()["token"]
    assert made_up.status_code == 409 and "last job this request gave you" in made_up.json()["detail"]
    assert await states(alice, waiting[1:]) == [JobState.QUEUED, JobState.QUEUED]
    still = await chains.get(chain)
    assert still is not None and (still.job, still.jobs) == (waiting[0], 2)


def container_behind(qm: LiveServer, reply_token: str, network: httpx.AsyncBaseTransport) -> QueueClient:
    """The worker agent's client of a push request (its retries included), over ``network``."""
    queue = QueueClient(qm.url, reply_token, retry_seconds=10, holder=CONTAINER)
    queue.http = httpx.AsyncClient(
        base_url=qm.url, headers={"Authorization": f"Bearer {reply_token}"}, transport=network
    )
    return queue


async def test_the_containers_repeat_after_a_lost_reply_gets_the_same_job(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    lease, chain, reply_token, waiting = await sent_with_work(qm, alice, chains, color=62, waiting=2)
    network = LosesFirstReply()
    queue = container_behind(qm, reply_token, network)
    try:
        second = await queue.next_in_chain(
            chain, after=lease.token, linger=0.2
        )  # retried: the reply was lost
        assert second is not None
        beat = await queue.heartbeat(second.job.id, second.token)
    finally:
        await queue.aclose()

    assert network.lost == 1 and second.job.id == waiting[0] and not beat.cancel
    assert await states(alice, waiting[1:]) == [JobState.QUEUED]  # the retry took no second job
    still = await chains.get(chain)
    assert still is not None and (still.job, still.token, still.jobs) == (second.job.id, second.token, 2)


async def test_a_refused_call_binds_the_request_to_nobody(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    """Only a call the queue manager takes binds a request: a malformed name, a call on another
    request's chain, or with a lease token the request was never given, leaves it to the container
    that comes next."""
    lease = await lease_for(qm, alice, color=66)
    chain, reply_token = await chains.open(push_pool(), "dispatcher", lease)
    other_chain, _ = await chains.open(push_pool(), "dispatcher", lease)
    beat = f"/api/leases/{lease.job.id}/heartbeat"
    async with holding(qm, reply_token) as client:
        malformed = await client.post(beat, json={"token": lease.token, "worker_id": "a/b"})
        elsewhere = await client.post(f"/api/push/{other_chain}/end", json={"worker_id": OTHER})
        made_up = [
            await client.post(beat, json={"token": "made-up-token", "worker_id": OTHER}),
            await client.post(f"/api/push/{chain}/next", json={"after": "made-up-token", "worker_id": OTHER}),
        ]
        container = await client.post(beat, json={"token": lease.token, "worker_id": CONTAINER})

    assert (malformed.status_code, elsewhere.status_code) == (422, 403)
    assert [reply.status_code for reply in made_up] == [409, 409]
    assert "not one this push request was given" in made_up[1].json()["detail"]
    assert "another push request" in elsewhere.json()["detail"]
    assert container.status_code == 200
    still = await chains.get(other_chain)
    assert still is not None and still.open


async def test_a_containers_events_with_its_reply_token_reach_the_owner(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    """The worker agent forwards ComfyUI's events with the request's reply token, as it sends its
    heartbeats and reports: they name the container too, so the owner sees the job start."""
    lease = await lease_for(qm, alice, color=70)
    _, reply_token = await chains.open(push_pool(), "dispatcher", lease)
    queue = QueueClient(qm.url, reply_token, retry_seconds=5, holder=CONTAINER)
    started = JobEvent.model_validate({"type": "execution_start", "data": {"prompt_id": lease.job.id}})
    try:
        await queue.events(lease.job.id, lease.token, [started])
        beat = await queue.heartbeat(lease.job.id, lease.token)
    finally:
        await queue.aclose()

    assert await states(alice, [lease.job.id]) == [JobState.RUNNING]
    assert not beat.cancel  # the request is bound to the container whose events came first


async def test_a_reply_token_acts_on_no_job_of_another_request_even_with_its_lease_token(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    """The provider's console shows every request's payload: one request's reply token with the
    first lease token of another request of the pool reports, gives back or renews nothing of that
    request's job, whose own container goes on with it."""
    mine = await lease_for(qm, alice, color=72, slot="slot-0")
    theirs = await lease_for(qm, alice, color=73, slot="slot-1")
    _, my_token = await chains.open(push_pool(capacity=2), "slot-0", mine)
    _, their_token = await chains.open(push_pool(capacity=2), "slot-1", theirs)
    calls = f"/api/leases/{theirs.job.id}"
    as_me = {"token": theirs.token, "worker_id": CONTAINER}  # the name its own request is bound to
    async with holding(qm, their_token) as their_container, holding(qm, my_token) as leaked:
        bound = await their_container.post(f"{calls}/heartbeat", json={**as_me, "worker_id": OTHER})
        replies = [
            await leaked.post(f"{calls}/heartbeat", json=as_me),
            await leaked.post(f"{calls}/events", json={**as_me, "events": []}),
            await leaked.post(f"{calls}/complete", json={**as_me, "outputs": []}),
            await leaked.post(f"{calls}/fail", json={**as_me, "error": {"type": "x", "message": "x"}}),
            await leaked.post(f"{calls}/release", json=as_me),
        ]
        theirs_goes_on = await their_container.post(
            f"{calls}/complete", json={"token": theirs.token, "worker_id": OTHER, "outputs": []}
        )

    assert bound.status_code == 200
    assert [reply.status_code for reply in replies] == [409] * len(replies), [r.text for r in replies]
    assert "this push request" in replies[0].json()["detail"]
    assert theirs_goes_on.status_code == 204
    assert await states(alice, [theirs.job.id, mine.job.id]) == [JobState.SUCCEEDED, JobState.LEASED]


async def test_first_calls_at_once_bind_the_request_to_one_container(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    """A copy of the payload used the moment the container starts: of the calls that race to name
    themselves first, one container runs the request and every other name is refused."""
    lease = await lease_for(qm, alice, color=76)
    _, reply_token = await chains.open(push_pool(), "dispatcher", lease)
    beat = f"/api/leases/{lease.job.id}/heartbeat"
    names = [f"racer-{n}" for n in range(8)]
    async with holding(qm, reply_token) as client:
        replies = await asyncio.gather(
            *(client.post(beat, json={"token": lease.token, "worker_id": name}) for name in names)
        )
        [winner] = [name for name, reply in zip(names, replies, strict=True) if reply.status_code == 200]
        again = [await client.post(beat, json={"token": lease.token, "worker_id": name}) for name in names]

    assert sorted(reply.status_code for reply in replies) == [200] + [403] * 7
    assert [reply.status_code for reply in again] == [200 if name == winner else 403 for name in names]


async def test_the_pools_token_takes_once_from_each_job_too(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    """Whoever has the pool's token (every container of the pool has it to register) and a chain
    id: a repeat after the same job gets the same job, an older or made-up one none."""
    lease, chain, _, waiting = await sent_with_work(qm, alice, chains, color=77, waiting=3)
    path = f"/api/push/{chain}/next"
    async with holding(qm, POOL_TOKEN) as pool:
        taken = await pool.post(path, json={"after": lease.token})
        again = await pool.post(path, json={"after": lease.token})
        made_up = await pool.post(path, json={"after": "made-up-token"})

    assert taken.status_code == 200 and again.json()["token"] == taken.json()["token"]
    assert made_up.status_code == 409
    assert await states(alice, waiting[1:]) == [JobState.QUEUED, JobState.QUEUED]


async def test_an_ended_requests_reply_token_acts_on_no_job_of_the_next_request_in_its_slot(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    """A request's reply token outlives its request (its chain window plus a job's time), and the
    dispatcher sends the slot's next request meanwhile: the old token, with the new request's first
    lease token (both in the provider's console), reports nothing of the new request's job."""
    old = await lease_for(qm, alice, color=78, slot="slot-0")
    old_chain, old_token = await chains.open(push_pool(), "slot-0", old)
    as_container = {"worker_id": CONTAINER, "outputs": []}
    async with holding(qm, old_token) as old_container:
        ran = await old_container.post(
            f"/api/leases/{old.job.id}/complete", json={**as_container, "token": old.token}
        )
    await chains.end(old_chain)  # the request is over: the slot carries the next one
    new = await lease_for(qm, alice, color=79, slot="slot-0")
    _, new_token = await chains.open(push_pool(), "slot-0", new)
    done = f"/api/leases/{new.job.id}/complete"
    async with holding(qm, old_token) as leaked, holding(qm, new_token) as new_container:
        forged = await leaked.post(done, json={**as_container, "token": new.token})
        state = await states(alice, [new.job.id])
        real = await new_container.post(done, json={**as_container, "worker_id": OTHER, "token": new.token})

    assert ran.status_code == 204
    assert forged.status_code == 409 and "this push request" in forged.json()["detail"]
    assert state == [JobState.LEASED] and real.status_code == 204


async def ended_again(queue: QueueClient, chain: str) -> None:
    """``end`` is sent once by the client (the request ends anyway); a container that sends it
    again after a lost answer gets the same answer."""
    with contextlib.suppress(httpx.ReadError):
        await queue.end_chain(chain)
    await queue.end_chain(chain)


@pytest.mark.parametrize(
    ("call", "then"),
    [
        ("heartbeat", JobState.RUNNING),
        ("events", JobState.RUNNING),
        ("complete", JobState.SUCCEEDED),
        ("fail", JobState.FAILED),
        ("release", JobState.QUEUED),
        ("end", JobState.LEASED),
    ],
)
async def test_every_call_the_container_repeats_after_a_lost_reply_is_answered_as_the_first(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains, call: str, then: JobState
) -> None:
    lease = await lease_for(qm, alice, color=81)
    chain, reply_token = await chains.open(push_pool(), "dispatcher", lease)
    network = LosesFirstReply(f"/{call}")
    queue = container_behind(qm, reply_token, network)
    job, token = lease.job.id, lease.token
    started = JobEvent.model_validate({"type": "execution_start", "data": {"prompt_id": job}})
    calls = {
        "heartbeat": lambda: queue.heartbeat(job, token),
        "events": lambda: queue.events(job, token, [started]),
        "complete": lambda: queue.complete(job, token, []),
        "fail": lambda: queue.fail(
            job, token, JobError(type="OOM", message="out of memory", retryable=False)
        ),
        "release": lambda: queue.release(job, token),
        "end": lambda: ended_again(queue, chain),
    }
    try:
        await calls[call]()  # retried by the client: the first answer was lost
    finally:
        await queue.aclose()

    record = (await alice.get(f"/api/jobs/{job}")).json()
    assert network.lost == 1 and (record["state"], record["attempts"]) == (
        then,
        0 if call == "release" else 1,
    )
    still = await chains.get(chain)
    assert still is not None and still.open == (call != "end")


async def test_a_reply_token_acts_on_no_later_lease_of_a_job_it_once_ran(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains
) -> None:
    """A request whose provider failed gives its job back to the queue, and the slot's next request
    takes it: the first request's token acts on the job no more, even with the new lease token."""
    old = await lease_for(qm, alice, color=82, slot="slot-0")
    _, old_token = await chains.open(push_pool(), "slot-0", old)
    await chains.store.release(old.job.id, old.token)  # the dispatcher requeues it
    queue = QueueClient(qm.url, POOL_TOKEN)
    new = await queue.claim("slot-0", wait=5)  # the next request of the slot gets it again
    await queue.aclose()
    assert new is not None and new.job.id == old.job.id
    _, new_token = await chains.open(push_pool(), "slot-0", new)
    beat = f"/api/leases/{new.job.id}/heartbeat"
    async with holding(qm, old_token) as leaked, holding(qm, new_token) as new_container:
        forged = await leaked.post(beat, json={"token": new.token, "worker_id": CONTAINER})
        real = await new_container.post(beat, json={"token": new.token, "worker_id": OTHER})

    assert forged.status_code == 409 and "this push request" in forged.json()["detail"]
    assert real.status_code == 200


async def test_a_request_opened_before_the_upgrade_gets_a_401_not_a_500(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains, redis_url: str
) -> None:
    """A queue manager from before requests were bound to their container kept a reply token's
    record as its pool's name alone; a request it sent still runs when the new one takes over."""
    lease = await lease_for(qm, alice, color=90)
    chain, reply_token = await chains.open(push_pool(), "dispatcher", lease)
    old = Redis.from_url(redis_url, decode_responses=True)
    try:
        key = chains._token_key(reply_token)
        await old.delete(key)
        await old.set(key, POOL, px=60_000)  # as the old queue manager wrote it
    finally:
        await old.aclose()
    body = {"token": lease.token, "worker_id": CONTAINER}
    async with holding(qm, reply_token) as container:
        heartbeat = await container.post(f"/api/leases/{lease.job.id}/heartbeat", json=body)
        taken = await container.post(f"/api/push/{chain}/next", json=named_after(lease.token))

    assert heartbeat.status_code == taken.status_code == 401
    assert "reply_token" in heartbeat.json()["detail"]


class ResetInTheLinger(httpx.AsyncBaseTransport):
    """The network between a container and the queue manager: the first ``next`` reaches the queue
    manager, and its connection is reset while the queue manager still waits (lingers) for a job,
    once ``under_way()`` says the take is; the container's client sends the call again (``retry``)
    unless ``hang_up``: then the container is gone and sends nothing more."""

    def __init__(self, under_way: Callable[[], bool], hang_up: bool = False) -> None:
        self.inner, self.under_way, self.hang_up = httpx.AsyncHTTPTransport(), under_way, hang_up
        self.reset, self.retried = asyncio.Event(), asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/next") or self.retried.is_set():
            return await self.inner.handle_async_request(request)
        if self.reset.is_set():
            self.retried.set()
            return await self.inner.handle_async_request(request)
        sent = asyncio.create_task(self.inner.handle_async_request(request))
        await until(self.under_way, "the take is under way")
        sent.cancel()  # its connection closes: the queue manager sees its caller gone
        with contextlib.suppress(asyncio.CancelledError):
            await sent
        self.reset.set()
        if self.hang_up:
            raise httpx.ConnectError("the container is gone", request=request)
        raise httpx.ReadError("connection reset by peer", request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def lingering_request(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains, color: int
) -> tuple[Lease, str, str]:
    """A request the dispatcher sent (its lease, chain and reply token), whose queue is empty: its
    next ``next`` lingers (up to 5 s) for a job."""
    lease = await lease_for(qm, alice, color=color)
    chain, reply_token = await chains.open(push_pool(linger_seconds=5.0), "dispatcher", lease)
    return lease, chain, reply_token


async def test_a_next_repeated_while_its_take_lingers_gets_the_job_that_take_found(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains, held_by: redis.Redis
) -> None:
    # The container asks for its next job; the queue is empty, so the queue manager lingers. The
    # connection is reset meanwhile and the container's client sends the same call again. A job
    # comes: the repeat gets it, as it would have after the take, and the request goes on with it
    # (before, the repeat got 409, the request ended, and the take gave the job back unrun)
    lease, chain, reply_token = await lingering_request(qm, alice, chains, color=90)
    record = f"qm:push:{chain}"
    network = ResetInTheLinger(lambda: held_by.hget(record, "after") == lease.token)
    queue = container_behind(qm, reply_token, network)
    try:
        asked = asyncio.create_task(queue.next_in_chain(chain, after=lease.token, linger=5.0))
        await until(lambda: network.retried.is_set() or asked.done(), "the call is sent again")
        await until(lambda: asked.done() or held_by.hget(record, "asked_again") == lease.token, "a repeat")
        job_id = await submit(alice, graph(color=91))
        second = await asyncio.wait_for(asked, 15)
        assert second is not None
        beat = await queue.heartbeat(second.job.id, second.token)
    finally:
        await queue.aclose()

    assert second.job.id == job_id and not beat.cancel
    assert await states(alice, [job_id]) == [JobState.RUNNING]  # its container runs it
    still = await chains.get(chain)
    assert still is not None and still.open
    assert (still.job, still.token, still.jobs) == (job_id, second.token, 2)


async def test_a_next_whose_container_hung_up_in_the_linger_gives_the_job_it_found_back(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains, held_by: redis.Redis
) -> None:
    # The container is gone while the queue manager lingers for its next job, and asks nothing
    # more: the job that comes is given back (queued, no attempt counted) and the request ends;
    # a late repeat of that call gets 204, the answer the take gave
    lease, chain, reply_token = await lingering_request(qm, alice, chains, color=92)
    network = ResetInTheLinger(lambda: held_by.hget(f"qm:push:{chain}", "after") == lease.token, hang_up=True)
    queue = container_behind(qm, reply_token, network)
    queue.retry_seconds = 0  # its client tries once
    try:
        with pytest.raises(httpx.ConnectError):
            await queue.next_in_chain(chain, after=lease.token, linger=5.0)
        job_id = await submit(alice, graph(color=93))
        await until(lambda: held_by.hget(f"qm:push:{chain}", "open") == "0", "the request ended")
        late = await queue.next_in_chain(chain, after=lease.token, linger=5.0)
    finally:
        await queue.aclose()

    assert late is None
    job = (await alice.get(f"/api/jobs/{job_id}")).json()
    assert (job["state"], job["attempts"]) == (JobState.QUEUED, 0)


async def test_a_reply_token_is_looked_up_once_per_call_though_it_is_checked_before_the_body(
    qm: LiveServer, alice: httpx.AsyncClient, chains: Chains, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease routes check the caller on the request's head (a body of up to QM_MAX_BODY_BYTES is
    read only for a holder), and the route takes that holder as found: one Redis look-up per call."""
    lease = await lease_for(qm, alice, color=72)
    _, reply_token = await chains.open(push_pool(), "dispatcher", lease)
    looked_up: list[str] = []
    original = Chains.reply_of

    async def counted(self: Chains, token: str) -> object:
        looked_up.append(token)
        return await original(self, token)

    monkeypatch.setattr(Chains, "reply_of", counted)
    queue = QueueClient(qm.url, reply_token, retry_seconds=5, holder=CONTAINER)
    try:
        beat = await queue.heartbeat(lease.job.id, lease.token)
    finally:
        await queue.aclose()
    assert not beat.cancel
    assert looked_up == [reply_token]
