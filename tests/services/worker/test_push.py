"""Push front doors: a Verda-style HTTP handler and a RunPod-style handler each run one leased job
and report it to the real queue manager named in the lease."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.servers import free_port, http_get, wait_until
from services.protocol.jobs import JobState
from services.protocol.workers import Lease, WorkerCapabilities, WorkerRegistration
from services.queue_manager.push_requests import Chains
from services.queue_manager.settings import PushPool
from services.queue_manager.store import Store
from services.storage.local import LocalStorage
from services.worker import push
from services.worker.agent import Agent, LeaseResult
from services.worker.comfy_client import ComfyClient, ComfyUnavailableError
from services.worker.push import verda_app
from services.worker.queue_client import QueueClient
from tests.support.jobs import finished, graph, submit, until
from tests.support.queue_manager_app import ADMIN, ADMIN_PASSWORD, POOL, POOL_TOKEN, LiveServer
from tests.support.worker_agent import GatedStorage, lease_for, worker_settings


async def post_lease(client: httpx.AsyncClient, url: str, lease: Lease) -> httpx.Response:
    """Send a lease to a push container as the dispatcher does (a JSON body)."""
    body = lease.model_dump_json()
    return await client.post(url, content=body, headers={"Content-Type": "application/json"})


@pytest.fixture
async def agent(comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path) -> AsyncIterator[Agent]:
    worker = Agent(worker_settings(comfy, qm.url, tmp_path), LocalStorage(tmp_path / "files"))
    yield worker


async def test_the_verda_handler_runs_a_pushed_lease_and_reports_it(
    agent: Agent, qm: LiveServer, alice: httpx.AsyncClient
) -> None:
    server = LiveServer(verda_app(agent.settings, agent))  # any ASGI app on a loopback port
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as container:
            assert (await container.get("/health")).json() == {"ready": True}
            lease = await lease_for(qm, alice, color=21)
            reply = await post_lease(container, "/lease", lease)
            assert reply.json() == {"jobs": [{"job_id": lease.job.id, "outcome": "succeeded"}]}
            # No pull worker ever registered: the container published the catalogue once it was ready.
            nodes = (await alice.get("/w/alice/api/object_info")).json()
            assert {"EmptyImage", "SaveImage"} <= set(nodes)
            orphan = lease.model_copy(update={"reply_url": None})
            refused = await post_lease(container, "/lease", orphan)
            assert refused.status_code == 422 and "reply_url" in refused.text
    finally:
        server.stop()
    job = await finished(alice, lease.job.id)
    assert job.state == JobState.SUCCEEDED and job.outputs[0].filename == "t_00001_.png"


async def test_a_refused_catalogue_publication_does_not_stop_the_pushed_job(
    agent: Agent, qm: LiveServer, alice: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    await agent.start()
    try:
        wrong = QueueClient(qm.url, "not-the-pool-token", retry_seconds=1)
        await push.publish(agent, wrong)
        await wrong.aclose()
        assert agent.published_to == set()
        assert "could not publish this worker's catalogue" in caplog.text
        lease = await lease_for(qm, alice, color=23)
        assert (await push.run_pushed(agent, lease))["jobs"][0]["outcome"] == "succeeded"
    finally:
        await agent.stop()


async def test_the_runpod_handler_takes_the_lease_from_the_event_input(
    agent: Agent, qm: LiveServer, alice: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await agent.start()
    monkeypatch.setattr(push, "_runpod_agent", agent)
    try:
        lease = await lease_for(qm, alice, color=22)
        event: dict[str, Any] = {"id": "rp-1", "input": lease.model_dump(mode="json")}
        assert await push.handler(event) == {"jobs": [{"job_id": lease.job.id, "outcome": "succeeded"}]}
        bad = await push.handler({"id": "rp-2", "input": {"prompt": {}}})
        assert "not a lease" in bad["error"]
    finally:
        await agent.stop()
    assert (await finished(alice, lease.job.id)).state == JobState.SUCCEEDED


def push_container(comfy: ComfyUIDouble, tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    """The push container's process (`serve-push`) on a free loopback port, once its /health says ready."""
    port = free_port()
    environ = {
        **os.environ,
        "WORKER_COMFYUI_URL": comfy.url,
        "WORKER_PUSH_HOST": "127.0.0.1",
        "WORKER_PUSH_PORT": str(port),
        "WORKER_DATA_DIR": str(comfy.folders.input.parent),
        "WORKER_STORAGE_URL": f"file://{tmp_path}",
        **env,
    }
    process = subprocess.Popen([sys.executable, "-m", "services.worker", "serve-push"], env=environ)
    try:
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{port}/health").json()["ready"],
            timeout=30,
            what="push handler ready",
        )
    except BaseException:
        process.kill()
        raise
    return process, port


def test_the_push_container_reports_healthy_and_exits_0_on_sigterm(
    comfy: ComfyUIDouble, tmp_path: Path
) -> None:
    process, _ = push_container(comfy, tmp_path)
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()


async def test_sigterm_during_a_pushed_job_longer_than_the_grace_releases_it(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    process, port = push_container(comfy, tmp_path, WORKER_WARMUP="false", WORKER_SHUTDOWN_GRACE_SECONDS="1")
    try:
        comfy.knobs.node_seconds, comfy.knobs.progress_steps = 30.0, 300
        lease = await lease_for(qm, alice, color=23)
        async with httpx.AsyncClient(timeout=60) as dispatcher:
            request = asyncio.create_task(post_lease(dispatcher, f"http://127.0.0.1:{port}/lease", lease))
            await until(lambda: comfy.state.running is not None, "pushed job running")
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 30) == 0
            with contextlib.suppress(httpx.HTTPError):
                await request
    finally:
        process.kill()
    assert (await alice.get(f"/api/jobs/{lease.job.id}")).json()["state"] == JobState.QUEUED
    await until(lambda: lease.job.id in comfy.state.history, "ComfyUI told to stop the released job")


async def test_the_verda_handler_is_unhealthy_while_its_comfyui_is_down(
    agent: Agent, comfy: ComfyUIDouble
) -> None:
    server = LiveServer(verda_app(agent.settings, agent))  # any ASGI app on a loopback port
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as container:

            async def health() -> int:
                return (await container.get("/health")).status_code

            assert await health() == 200
            await asyncio.to_thread(comfy.stop)
            async with asyncio.timeout(20):
                while await health() != 503:
                    await asyncio.sleep(0.05)  # polling the container's health check
            await asyncio.to_thread(comfy.start)
            async with asyncio.timeout(20):
                while await health() != 200:
                    await asyncio.sleep(0.05)  # polling the container's health check
    finally:
        server.stop()


async def test_a_container_takes_the_next_job_in_its_request_and_stops_once_it_gave_a_job_back(
    agent: Agent, qm: LiveServer, alice: httpx.AsyncClient, redis_url: str
) -> None:
    redis = Redis.from_url(redis_url, decode_responses=True)
    own = QueueClient(qm.url, POOL_TOKEN, holder=agent.settings.worker_id)  # the container's WORKER_TOKEN
    try:
        await agent.start()
        await push.publish(agent, own)  # registered, as a container is before its first job
        first = await lease_for(qm, alice, color=25)
        chains = Chains(Store(redis, qm.app.state.settings))
        pool = PushPool(name=POOL, style="verda", url="http://127.0.0.1:9", api_key="k", capacity=1)
        first.chain, first.reply_token = await chains.open(pool, "dispatcher", first)
        queue = QueueClient(qm.url, first.reply_token, holder=agent.settings.worker_id)  # as run_pushed
        second_id = await submit(alice, graph(color=26))

        second = await push.next_in_request(agent, queue, first, LeaseResult.SUCCEEDED)
        assert second is not None and second.job.id == second_id
        assert (second.reply_url, second.reply_token, second.chain) == (
            qm.url,
            first.reply_token,
            first.chain,
        )
        async with httpx.AsyncClient(base_url=qm.url, auth=(ADMIN, ADMIN_PASSWORD)) as admin:
            workers = (await admin.get("/api/admin/workers")).json()
        shown = [(w["state"], w["job_id"]) for w in workers if w["worker_id"] == agent.settings.worker_id]
        assert shown == [("busy", second_id)]  # on the admin page from the moment it took the job

        # ComfyUI went down with the second job (given back): the request takes no more.
        third_id = await submit(alice, graph(color=27))
        assert await push.next_in_request(agent, queue, first, LeaseResult.RELEASED) is None
        chain = await chains.get(first.chain)
        assert chain is not None and not chain.open
        assert (await alice.get(f"/api/jobs/{third_id}")).json()["state"] == JobState.QUEUED
        await queue.aclose()
    finally:
        await own.aclose()
        await agent.stop()
        await redis.aclose()


async def test_a_push_requests_reply_token_acts_only_on_its_leases_and_chain(
    qm: LiveServer, alice: httpx.AsyncClient, redis_url: str
) -> None:
    """What a leaked request payload gives away: not the pool's token, and no claim or registration."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        lease = await lease_for(qm, alice, color=28)
        chains = Chains(Store(redis, qm.app.state.settings))
        pool = PushPool(name=POOL, style="runpod", url="http://127.0.0.1:9", api_key="k", capacity=1)
        chain, reply_token = await chains.open(pool, "dispatcher", lease)
        await submit(alice, graph(color=29))
        bearer = {"Authorization": f"Bearer {reply_token}"}
        async with httpx.AsyncClient(base_url=qm.url, headers=bearer) as leaked:
            named = {"worker_id": "container"}
            beating = {**named, "token": lease.token}
            beat = await leaked.post(f"/api/leases/{lease.job.id}/heartbeat", json=beating)
            claim = await leaked.post("/api/workers/dispatcher/claim")
            caps = WorkerCapabilities(pool=POOL, provider="runpod")
            register = WorkerRegistration(worker_id="intruder", capabilities=caps).model_dump(mode="json")
            registered = await leaked.post("/api/workers/register", json=register)
            await redis.delete(chains._token_key(reply_token))  # the request's record expired
            later = await leaked.post(f"/api/push/{chain}/next", json={**named, "after": lease.token})
    finally:
        await redis.aclose()

    assert reply_token != POOL_TOKEN and beat.status_code == 200
    assert (claim.status_code, registered.status_code, later.status_code) == (401, 401, 401)


async def test_sigterm_while_a_chained_request_runs_finishes_its_job_and_takes_no_more(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, redis_url: str
) -> None:
    process, port = push_container(comfy, tmp_path, WORKER_WARMUP="false", WORKER_SHUTDOWN_GRACE_SECONDS="20")
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        comfy.knobs.node_seconds = 0.5
        lease = await lease_for(qm, alice, color=30)
        pool = PushPool(name=POOL, style="verda", url="http://127.0.0.1:9", api_key="k", capacity=1)
        lease.chain, lease.reply_token = await Chains(Store(redis, qm.app.state.settings)).open(
            pool, "dispatcher", lease
        )
        waiting = await submit(alice, graph(color=31))
        async with httpx.AsyncClient(timeout=60) as dispatcher:
            request = asyncio.create_task(post_lease(dispatcher, f"http://127.0.0.1:{port}/lease", lease))
            await until(lambda: comfy.state.running is not None, "pushed job running")
            process.send_signal(signal.SIGTERM)
            reply = await request
            assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        process.kill()
        await redis.aclose()
    assert reply.json() == {"jobs": [{"job_id": lease.job.id, "outcome": "succeeded"}]}
    assert (await alice.get(f"/api/jobs/{waiting}")).json()["state"] == JobState.QUEUED


async def chained(qm: LiveServer, redis_url: str, lease: Lease) -> Lease:
    """The lease as the dispatcher sends it with a chain open: the request may take more jobs."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        pool = PushPool(name=POOL, style="verda", url="http://127.0.0.1:9", api_key="k", capacity=1)
        chain, reply_token = await Chains(Store(redis, qm.app.state.settings)).open(pool, "dispatcher", lease)
    finally:
        await redis.aclose()
    return lease.model_copy(update={"chain": chain, "reply_token": reply_token})


async def test_a_chained_job_runs_while_the_last_ones_outputs_are_still_on_their_way_to_storage(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, redis_url: str
) -> None:
    """The container asks for its next job as soon as ComfyUI is done with one: a slow upload (a
    video to R2) and the report no longer keep its GPU idle. The request still ends only once
    every job is stored and reported."""
    storage = GatedStorage(tmp_path / "files")
    agent = Agent(worker_settings(comfy, qm.url, tmp_path), storage)
    await agent.start()
    try:
        first = await chained(qm, redis_url, await lease_for(qm, alice, color=32))
        second = await submit(alice, graph(color=33))
        request = asyncio.create_task(push.run_pushed(agent, first))
        await asyncio.wait_for(storage.waiting.wait(), 20)  # the first job's output is on its way
        await until(
            lambda: comfy.state.timings.get(second, (0.0, 0.0))[1] > 0, "second job run in ComfyUI", 20
        )
        unreported = (await alice.get(f"/api/jobs/{first.job.id}")).json()["state"]
        assert not request.done()
        storage.gate.set()
        answer = await asyncio.wait_for(request, 20)
    finally:
        await agent.stop()
    assert unreported in (JobState.LEASED, JobState.RUNNING)  # not reported before it is stored
    assert answer == {
        "jobs": [
            {"job_id": first.job.id, "outcome": "succeeded"},
            {"job_id": second, "outcome": "succeeded"},
        ]
    }
    done = [await finished(alice, first.job.id), await finished(alice, second)]
    assert [job.state for job in done] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    outputs = tmp_path / "files" / "users" / "alice" / "output"
    assert all((outputs / job.outputs[0].filename).exists() for job in done)


async def test_a_chained_job_lost_to_a_hung_comfyui_is_given_back_and_its_request_takes_no_more(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ComfyUI went silent and stopped answering (a hung process) with the socket still open: the
    job is given back, and the container waits for that outcome before asking for more, so it never
    takes the next job onto the ComfyUI it just lost."""
    agent = Agent(worker_settings(comfy, qm.url, tmp_path), LocalStorage(tmp_path / "files"))
    first = await chained(qm, redis_url, await lease_for(qm, alice, color=34))
    original = ComfyClient.history

    async def hung(client: ComfyClient, prompt_id: str) -> dict[str, Any] | None:
        if prompt_id == first.job.id:
            raise ComfyUnavailableError(f"ComfyUI at {client.base_url} does not answer (the test hung it)")
        return await original(client, prompt_id)

    monkeypatch.setattr(ComfyClient, "history", hung)
    await agent.start()
    try:
        waiting = await submit(alice, graph(color=35))
        comfy.knobs.silent = True
        answer = await asyncio.wait_for(push.run_pushed(agent, first), 30)
    finally:
        await agent.stop()
    assert answer == {"jobs": [{"job_id": first.job.id, "outcome": "released"}]}
    given_back = (await alice.get(f"/api/jobs/{first.job.id}")).json()
    assert (given_back["state"], given_back["comfyui_losses"]) == (JobState.QUEUED, 1)
    assert (await alice.get(f"/api/jobs/{waiting}")).json()["state"] == JobState.QUEUED


async def test_an_unexpected_error_asking_for_the_next_job_lets_the_finished_one_store_and_report(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fault in the container's own code while it asks for more fails the request, but the job
    whose outputs are on their way to storage is not cancelled with it (it would be run again):
    it is stored and reported first."""
    storage = GatedStorage(tmp_path / "files")
    agent = Agent(worker_settings(comfy, qm.url, tmp_path), storage)
    await agent.start()

    async def broken(*_: Any, **__: Any) -> Lease | None:
        raise RuntimeError("a fault in asking for the next job")

    monkeypatch.setattr(push, "next_in_request", broken)
    try:
        first = await chained(qm, redis_url, await lease_for(qm, alice, color=34))
        request = asyncio.create_task(push.run_pushed(agent, first))
        await asyncio.wait_for(storage.waiting.wait(), 20)  # ComfyUI is done; its output is on its way
        await until(lambda: comfy.state.running is None, "ComfyUI done with the job", 20)
        waited = not request.done()
        storage.gate.set()
        with pytest.raises(RuntimeError, match="a fault in asking"):
            await asyncio.wait_for(request, 20)
    finally:
        await agent.stop()
    assert waited  # the request did not end while the job's output was still on its way
    done = await finished(alice, first.job.id)
    assert done.state == JobState.SUCCEEDED and done.attempts == 1
    assert (tmp_path / "files" / "users" / "alice" / "output" / done.outputs[0].filename).exists()
