"""The worker API over HTTP, exactly as the route table in services/protocol/workers.py says."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.protocol.workers import Lease, ModelsProgress, RegisterReply
from services.queue_manager.main import create_app
from services.queue_manager.records import now_ms
from services.queue_manager.store import Store
from tests.support.qm_api import ADMIN, CPU, GPU, PROMPT, TOKENS, make_settings, registration, user_auth


async def register(client: httpx.AsyncClient, worker_id: str = "w1") -> None:
    reply = await client.post("/api/workers/register", json=registration(worker_id).model_dump(), headers=GPU)
    assert reply.status_code == 200, reply.text
    RegisterReply.model_validate(reply.json())


async def submit(client: httpx.AsyncClient, user: str = "ada") -> str:
    reply = await client.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth(user))
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


async def register_gpu(client: httpx.AsyncClient, worker_id: str) -> httpx.Response:
    return await client.post("/api/workers/register", json=registration(worker_id).model_dump(), headers=GPU)


async def claim(client: httpx.AsyncClient, worker_id: str = "w1", wait: float = 0) -> httpx.Response:
    return await client.post(f"/api/workers/{worker_id}/claim", params={"wait": wait}, headers=GPU)


async def test_a_worker_runs_a_job_from_claim_to_completion(client: httpx.AsyncClient) -> None:
    await register(client)
    job_id = await submit(client)
    reply = await claim(client)
    assert reply.status_code == 200, reply.text
    lease = Lease.model_validate(reply.json())
    assert lease.job.id == job_id and lease.job.prompt == PROMPT
    base = f"/api/leases/{job_id}"
    beat = await client.post(f"{base}/heartbeat", json={"token": lease.token}, headers=GPU)
    assert beat.status_code == 200 and beat.json()["cancel"] is False
    events = {"token": lease.token, "events": [{"type": "progress", "data": {"value": 1, "max": 3}}]}
    assert (await client.post(f"{base}/events", json=events, headers=GPU)).status_code == 204
    done = {"token": lease.token, "outputs": [{"node_id": "2", "kind": "images", "filename": "a.png"}]}
    assert (await client.post(f"{base}/complete", json=done, headers=GPU)).status_code == 204
    assert (await client.post(f"{base}/complete", json=done, headers=GPU)).status_code == 204
    mine = await client.get(f"/api/jobs/{job_id}", headers=user_auth("ada"))
    assert mine.json()["state"] == "succeeded" and mine.json()["outputs"][0]["filename"] == "a.png"


async def test_an_idle_claim_answers_204_after_its_wait(client: httpx.AsyncClient) -> None:
    await register(client)
    assert (await claim(client, wait=0.1)).status_code == 204


async def test_a_wrong_token_is_refused_with_401(client: httpx.AsyncClient) -> None:
    body = registration("w1").model_dump()
    reply = await client.post("/api/workers/register", json=body, headers={"Authorization": "Bearer nope"})
    assert reply.status_code == 401 and "Bearer" in reply.json()["detail"]


async def test_a_token_of_another_pool_cannot_register_or_claim(client: httpx.AsyncClient) -> None:
    reply = await client.post("/api/workers/register", json=registration("w1").model_dump(), headers=CPU)
    assert reply.status_code == 403 and "pool" in reply.json()["detail"]
    await register(client)
    reply = await client.post("/api/workers/w1/claim", headers=CPU)
    assert reply.status_code == 403


async def test_a_worker_id_is_bound_to_its_pool_and_another_pools_token_is_refused_everywhere(
    client: httpx.AsyncClient,
) -> None:
    """A leaked token of pool cpu cannot re-register, claim, drain or report as pool gpu's worker."""
    await register(client)
    job_id = await submit(client)
    lease = Lease.model_validate((await claim(client)).json())
    hijack = registration("w1", pool="cpu").model_dump()
    calls = [
        ("/api/workers/register", hijack),
        ("/api/workers/w1/claim", None),
        ("/api/workers/w1/drain", None),
        (f"/api/leases/{job_id}/heartbeat", {"token": lease.token}),
        (f"/api/leases/{job_id}/events", {"token": lease.token, "events": []}),
        (f"/api/leases/{job_id}/complete", {"token": lease.token, "outputs": []}),
        (f"/api/leases/{job_id}/fail", {"token": lease.token, "error": {"type": "E", "message": "m"}}),
        (f"/api/leases/{job_id}/release", {"token": lease.token}),
    ]
    for path, body in calls:
        reply = await client.post(path, json=body, headers=CPU)
        detail = reply.json()["detail"]
        assert reply.status_code == 403, (path, reply.text)
        assert "registered in pool 'gpu'" in detail and "WORKER_ID" in detail, (path, detail)
    workers = (await client.get("/api/admin/workers", headers=ADMIN)).json()
    assert [(w["worker_id"], w["capabilities"]["pool"]) for w in workers] == [("w1", "gpu")]
    beat = await client.post(f"/api/leases/{job_id}/heartbeat", json={"token": lease.token}, headers=GPU)
    assert beat.status_code == 200


async def test_an_unregistered_worker_is_told_to_register(client: httpx.AsyncClient) -> None:
    reply = await claim(client, worker_id="stranger")
    assert reply.status_code == 404 and "register" in reply.json()["detail"]


async def test_a_stale_lease_gets_409_on_every_call(client: httpx.AsyncClient) -> None:
    await register(client)
    job_id = await submit(client)
    assert (await claim(client)).status_code == 200
    for call in ("heartbeat", "release", "complete"):
        stale = {"token": "not-the-token"}
        reply = await client.post(f"/api/leases/{job_id}/{call}", json=stale, headers=GPU)
        assert reply.status_code == 409 and "claim again" in reply.json()["detail"], call
    events = {"token": "not-the-token", "events": []}
    assert (await client.post(f"/api/leases/{job_id}/events", json=events, headers=GPU)).status_code == 409
    failure = {"token": "x", "error": {"type": "E", "message": "m"}}
    assert (await client.post(f"/api/leases/{job_id}/fail", json=failure, headers=GPU)).status_code == 409


async def test_participants_cannot_use_the_worker_api(client: httpx.AsyncClient) -> None:
    body = registration("w1").model_dump()
    reply = await client.post("/api/workers/register", json=body, headers=user_auth("ada"))
    assert reply.status_code == 401


async def test_a_registration_with_a_big_custom_node_catalogue_is_accepted(client: httpx.AsyncClient) -> None:
    big = registration("w-big")
    nodes = {f"CustomNode{i}": {"input": {"required": {}}, "description": "x" * 600} for i in range(5000)}
    big.capabilities.catalogue_hash, big.catalogue = "big-catalogue", nodes
    body = big.model_dump_json()
    assert len(body) > 3_000_000  # well over the 2 MB limit every other JSON body has
    reply = await client.post(
        "/api/workers/register", content=body, headers={**GPU, "content-type": "application/json"}
    )
    assert reply.status_code == 200, reply.text[:300]
    too_big = await client.post(
        "/api/jobs", content=body, headers={**user_auth("ada"), "content-type": "application/json"}
    )
    assert too_big.status_code == 413


async def worker_state(client: httpx.AsyncClient, worker_id: str = "w1") -> dict[str, object]:
    workers = (await client.get("/api/admin/workers", headers=ADMIN)).json()
    return next(w for w in workers if w["worker_id"] == worker_id)


async def test_a_worker_shutting_down_shows_as_draining_until_it_is_gone(client: httpx.AsyncClient) -> None:
    await register(client)
    job_id = await submit(client)
    lease = Lease.model_validate((await claim(client)).json())
    assert (await client.post("/api/workers/w1/drain", headers=GPU)).status_code == 204
    state = await worker_state(client)
    assert state["state"] == "draining" and state["job_id"] == job_id, "its job is still shown"

    done = {"token": lease.token, "outputs": []}
    assert (await client.post(f"/api/leases/{job_id}/complete", json=done, headers=GPU)).status_code == 204
    state = await worker_state(client)
    assert state["state"] == "draining" and state["job_id"] is None, "finishing its job does not make it idle"
    await register(client)  # the same worker back after a restart
    assert (await worker_state(client))["state"] == "idle"


async def test_only_a_registered_worker_of_the_pool_can_announce_draining(client: httpx.AsyncClient) -> None:
    unknown = await client.post("/api/workers/nobody/drain", headers=GPU)
    assert unknown.status_code == 404 and "register" in unknown.json()["detail"]
    await register(client)
    assert (await client.post("/api/workers/w1/drain", headers=CPU)).status_code == 403
    assert (await worker_state(client))["state"] == "idle"


async def admin_workers(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    reply = await client.get("/api/admin/workers", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    return {worker["worker_id"]: worker for worker in reply.json()}


async def test_a_lease_holder_that_never_registered_does_not_break_the_worker_list(
    client: httpx.AsyncClient, store: Store
) -> None:
    """The push dispatcher claims under slot ids that never register; its record has no
    capabilities and once made the admin listing fail with KeyError."""
    await register(client)
    job_id = await submit(client)
    lease = await store.claim("push-gpu-0", "gpu")
    assert lease is not None and lease.job.id == job_id
    await store.heartbeat(job_id, lease.token)
    await store.redis.hset(store.keys.worker("broken"), mapping={"capabilities": "{not json", "pool": "gpu"})
    await store.redis.zadd(store.keys.workers, {"broken": 1})
    assert set(await admin_workers(client)) == {"w1"}


async def test_a_push_container_shows_busy_while_it_runs_a_pushed_lease(
    client: httpx.AsyncClient, store: Store
) -> None:
    await register(client, "container-1")
    registered_long_ago = store.keys.worker("container-1")
    await store.redis.hset(registered_long_ago, "last_seen", 1)  # its first lease came after a cold start
    assert (await admin_workers(client))["container-1"]["state"] == "gone"
    job_id = await submit(client)
    lease = await store.claim("push-gpu-0", "gpu")  # the dispatcher's slot holds the lease
    assert lease is not None
    call = {"token": lease.token, "worker_id": "container-1"}
    assert (await client.post(f"/api/leases/{job_id}/heartbeat", json=call, headers=GPU)).status_code == 200
    shown = (await admin_workers(client))["container-1"]
    assert shown["state"] == "busy" and shown["job_id"] == job_id
    done = {**call, "outputs": []}
    assert (await client.post(f"/api/leases/{job_id}/complete", json=done, headers=GPU)).status_code == 204
    shown = (await admin_workers(client))["container-1"]
    assert shown["state"] == "idle" and shown["job_id"] is None
    await store.holder_report("container-1", "gpu", job_id, busy=True)  # a held heartbeat returning late
    assert (await admin_workers(client))["container-1"]["state"] == "idle"


async def test_a_pool_token_cannot_make_another_pools_worker_look_busy(
    client: httpx.AsyncClient, store: Store
) -> None:
    reply = await client.post(
        "/api/workers/register", json=registration("cpu-1", "cpu").model_dump(), headers=CPU
    )
    assert reply.status_code == 200
    job_id = await submit(client)
    lease = await store.claim("push-gpu-0", "gpu")
    assert lease is not None
    call = {"token": lease.token, "worker_id": "cpu-1"}
    assert (await client.post(f"/api/leases/{job_id}/heartbeat", json=call, headers=GPU)).status_code == 200
    assert (await admin_workers(client))["cpu-1"]["state"] == "idle"


async def test_a_rotated_token_is_refused_once_the_new_settings_load(redis_url: str) -> None:
    """`pulumi up` after raising one pool's tokenGeneration restarts the queue manager with the new
    QM_WORKER_TOKENS: the old token of that pool is refused, the new one and other pools' work."""
    rotated = {**TOKENS, "gpu": "gpu-token-rotated-98765"}

    async def answers(tokens: dict[str, str]) -> list[int]:
        app = create_app(make_settings(redis_url, worker_tokens=tokens))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://qm.test") as http:
                tries = (("gpu", TOKENS["gpu"]), ("gpu", rotated["gpu"]), ("cpu", TOKENS["cpu"]))
                return [await register_as(http, pool, token) for pool, token in tries]

    assert await answers(TOKENS) == [200, 401, 200]
    assert await answers(rotated) == [401, 200, 200]


async def register_as(http: httpx.AsyncClient, pool: str, token: str) -> int:
    body = registration(f"w-{pool}", pool=pool).model_dump()
    reply = await http.post("/api/workers/register", json=body, headers={"Authorization": f"Bearer {token}"})
    return reply.status_code


async def test_a_finished_models_sync_leaves_the_admin_page_by_its_own_pools_token_only(
    client: httpx.AsyncClient,
) -> None:
    sync = registration("host-models")
    sync.capabilities.models_sync = ModelsProgress(state="ready", files_done=1, files_total=1)
    assert (
        await client.post("/api/workers/register", json=sync.model_dump(), headers=GPU)
    ).status_code == 200
    assert (await worker_state(client, "host-models"))["state"] == "starting"

    assert (await client.post("/api/workers/host-models/deregister", headers=CPU)).status_code == 403
    unknown = await client.post("/api/workers/nobody/deregister", headers=GPU)
    assert unknown.status_code == 404 and "register" in unknown.json()["detail"]
    assert (await client.post("/api/workers/host-models/deregister", headers=GPU)).status_code == 204
    listed = (await client.get("/api/admin/workers", headers=ADMIN)).json()
    assert [w["worker_id"] for w in listed] == []

    await register(client)  # a worker holding a job finishes or releases it first
    job_id = await submit(client)
    assert (await claim(client)).status_code == 200
    busy = await client.post("/api/workers/w1/deregister", headers=GPU)
    assert busy.status_code == 409 and f"/api/leases/{job_id}/" in busy.json()["detail"]
    assert (await worker_state(client))["job_id"] == job_id


async def test_a_report_with_too_many_or_too_big_events_gets_a_4xx_naming_the_limit_and_loses_nothing(
    client: httpx.AsyncClient,
) -> None:
    await register(client)
    job_id = await submit(client)
    lease = Lease.model_validate((await claim(client)).json())
    progress = {"type": "progress", "data": {"value": 1, "max": 3}}
    error = {"type": "ValueError", "message": "m"}
    for call, body in (("complete", {}), ("fail", {"error": error})):
        many = {"token": lease.token, **body, "events": [progress] * 257}
        reply = await client.post(f"/api/leases/{job_id}/{call}", json=many, headers=GPU)
        assert reply.status_code == 422, reply.text
        (problem,) = reply.json()["detail"]
        assert problem["loc"] == ["body", "events"] and "at most 256" in problem["msg"], problem
        huge = {
            "token": lease.token,
            **body,
            "events": [{"type": "b_preview", "data": {"image": "x" * 2_100_000}}],
        }
        reply = await client.post(f"/api/leases/{job_id}/{call}", json=huge, headers=GPU)
        assert reply.status_code == 413 and "QM_MAX_BODY_BYTES" in reply.json()["detail"], call
    done = {"token": lease.token, "events": [progress] * 256}
    assert (await client.post(f"/api/leases/{job_id}/complete", json=done, headers=GPU)).status_code == 204
    assert (await client.get(f"/api/jobs/{job_id}", headers=user_auth("ada"))).json()["state"] == "succeeded"


async def test_an_idle_claim_asks_for_the_next_job_to_be_held_and_a_prepare_claim_cannot(
    client: httpx.AsyncClient,
) -> None:
    await register(client)
    first, second = await submit(client), await submit(client)

    both = await client.post("/api/workers/w1/claim", params={"prepare": 1, "hold_next": 1}, headers=GPU)
    assert both.status_code == 422 and "send one of the two" in both.json()["detail"]
    assert (await client.get(f"/api/jobs/{first}", headers=user_auth("ada"))).json()["state"] == "queued"

    reply = await client.post("/api/workers/w1/claim", params={"hold_next": 1}, headers=GPU)
    assert reply.status_code == 200, reply.text
    lease = Lease.model_validate(reply.json())
    assert lease.job.id == first and lease.held is not None and lease.held.job.id == second
    assert lease.held.prepared and lease.held.held is None
    start = {"token": lease.held.token, "worker_id": "w1"}
    started = await client.post(f"/api/leases/{second}/start", json=start, headers=GPU)
    assert started.status_code == 200 and started.json()["started"] is True


@pytest.mark.parametrize("prompt_id", ["my.run_2:b", "R" * 128])
async def test_a_job_named_by_its_owner_is_run_reported_and_cancelled_like_any_other(
    client: httpx.AsyncClient, prompt_id: str
) -> None:
    """Any prompt_id a participant may choose (letters, digits, '.', '_', ':', '-', up to 128) names a
    job every route reaches: a worker can report on it, its owner and the admin can read and cancel it.
    Before, those routes took only letters, digits and '-' up to 64: such a job ran on a GPU whose
    reports were all refused (422), and nobody could cancel it but through the workspace."""
    await register(client)
    reply = await client.post(
        "/api/jobs", json={"prompt": PROMPT, "prompt_id": prompt_id}, headers=user_auth("ada")
    )
    assert reply.status_code == 201 and reply.json()["id"] == prompt_id, reply.text
    assert (await client.get(f"/api/jobs/{prompt_id}", headers=user_auth("ada"))).status_code == 200
    lease = Lease.model_validate((await claim(client)).json())
    beat = await client.post(f"/api/leases/{prompt_id}/heartbeat", json={"token": lease.token}, headers=GPU)
    assert beat.status_code == 200, beat.text
    done = {"token": lease.token, "outputs": [{"node_id": "2", "kind": "images", "filename": "a.png"}]}
    assert (await client.post(f"/api/leases/{prompt_id}/complete", json=done, headers=GPU)).status_code == 204
    mine = await client.get(f"/api/jobs/{prompt_id}", headers=user_auth("ada"))
    assert mine.json()["state"] == "succeeded"
    second = f"{prompt_id[:-1]}Z"
    await client.post("/api/jobs", json={"prompt": PROMPT, "prompt_id": second}, headers=user_auth("ada"))
    cancelled = await client.post(f"/api/admin/jobs/{second}/cancel", headers=ADMIN)
    assert cancelled.status_code == 200, cancelled.text
    assert (await client.get(f"/api/jobs/{second}", headers=user_auth("ada"))).json()["state"] == "cancelled"


async def test_what_a_leaked_pool_token_registers_stays_small_on_the_admin_page(
    client: httpx.AsyncClient,
) -> None:
    """Twenty registrations with a 1 MB GPU name made the admin page's worker list 20 MB, polled
    every two seconds: the shown strings are cut to a screen's worth, and a models list longer
    than any manifest is refused."""
    body = registration("w1").model_dump()
    body["capabilities"].update(gpu="G" * 1_000_000, device_type="d" * 10_000, comfyui_version="v" * 10_000)
    reply = await client.post("/api/workers/register", json=body, headers=GPU)
    assert reply.status_code == 200, reply.text
    workers = await client.get("/api/admin/workers", headers=ADMIN)
    assert workers.status_code == 200 and len(workers.content) < 4096, len(workers.content)
    shown = next(w for w in workers.json() if w["worker_id"] == "w1")
    assert shown["capabilities"]["gpu"].startswith("GGGG")
    too_many = registration("w2").model_dump()
    too_many["capabilities"]["models"] = [f"checkpoints/{n}.safetensors" for n in range(2001)]
    refused = await client.post("/api/workers/register", json=too_many, headers=GPU)
    assert refused.status_code == 422 and "models" in refused.text, refused.text


async def test_a_leaked_pool_token_cannot_register_more_workers_than_its_pool_has_room_for(
    redis_url: str,
) -> None:
    """A leaked token of pool gpu (capacity 2) registers worker ids in a loop: past twice the pool's
    capacity of live workers it gets 429 naming the limit, the admin page lists no more, the pool's
    own workers still re-register, and another pool is untouched."""
    app = create_app(make_settings(redis_url, pool_capacity={"gpu": 2}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://qm.test") as client:
            codes = []
            for n in range(8):
                body = registration(f"fake-{n}").model_dump()
                codes.append((await client.post("/api/workers/register", json=body, headers=GPU)).status_code)
            assert codes == [200] * 4 + [429] * 4
            refused = await client.post(
                "/api/workers/register", json=registration("fake-9").model_dump(), headers=GPU
            )
            assert "QM_POOL_CAPACITY" in refused.json()["detail"] and "4" in refused.json()["detail"]
            assert refused.headers["Retry-After"]
            listed = (await client.get("/api/admin/workers", headers=ADMIN)).json()
            assert sorted(w["worker_id"] for w in listed) == [f"fake-{n}" for n in range(4)]
            again = await client.post(
                "/api/workers/register", json=registration("fake-0").model_dump(), headers=GPU
            )
            assert again.status_code == 200
            other = await client.post(
                "/api/workers/register", json=registration("cpu-1", pool="cpu").model_dump(), headers=CPU
            )
            assert other.status_code == 200
            assert (await client.post("/api/workers/fake-3/deregister", headers=GPU)).status_code == 204
            body = registration("fake-5").model_dump()
            assert (await client.post("/api/workers/register", json=body, headers=GPU)).status_code == 200


async def gone_for_long(app: FastAPI, worker_id: str, up_ms: int) -> None:
    """``worker_id`` was up ``up_ms`` and went silent long ago (a crashed host, a made-up id)."""
    store: Store = app.state.store
    last_seen = now_ms() - store.patience_ms - 600_000
    fields = {"registered_at": last_seen - up_ms, "last_seen": last_seen}
    await store.redis.hset(store.keys.worker(worker_id), mapping=fields)
    await store.redis.zadd(store.keys.workers, {worker_id: last_seen})


async def test_a_leaked_pool_token_keeps_no_more_workers_alive_or_listed_than_its_pool_has_room_for(
    redis_url: str,
) -> None:
    """A leaked token of pool gpu (capacity 2: four live workers) registers four ids, lets them go
    silent, four more, and so on, then claims on every id it ever registered: a silent record came
    alive again on a claim, past the pool's limit, so it kept any number of workers alive and
    counted in the cost. Now a record gone silent answers 404 (the worker registers again, within
    the limit); the admin page keeps the pool's latest four gone workers (a worker that vanished
    is still seen), and the cost so far still counts every span the others were up."""
    hourly = 3600.0  # one per second up
    app = create_app(make_settings(redis_url, pool_capacity={"gpu": 2}, gpu_prices={"gpu": hourly}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://qm.test") as client:
            ids = [f"fake-{round_}-{n}" for round_ in range(3) for n in range(4)]
            for worker_id in ids:
                assert (await register_gpu(client, worker_id)).status_code == 200
                await gone_for_long(app, worker_id, up_ms=60_000)
            claims = [(await claim(client, worker_id)).status_code for worker_id in ids]
            assert (await register_gpu(client, "real-1")).status_code == 200
            listed = {
                w["worker_id"]: w["state"]
                for w in (await client.get("/api/admin/workers", headers=ADMIN)).json()
            }
            stats = (await client.get("/admin/api/stats", headers=ADMIN)).json()
    assert claims == [404] * len(ids)
    assert listed == {"real-1": "idle", **{worker_id: "gone" for worker_id in ids[-4:]}}
    assert stats["cost_by_pool"]["gpu"] == pytest.approx(len(ids) * 60, abs=2)


async def test_a_leaked_pool_token_cannot_fill_redis_with_huge_results(redis_url: str) -> None:
    """A fake worker on a leaked token completes each job it claims with ~300 kB of made-up outputs
    (and fails others with as big an error): the participant's kept jobs count those too, so past
    QM_MAX_KEPT_BYTES her oldest finished jobs are forgotten and her history stays bounded."""
    app = create_app(make_settings(redis_url, max_kept_bytes=1_000_000))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://qm.test") as client:
            await register(client, "fake")
            outputs = [
                {"node_id": "2", "kind": "images", "filename": f"{n:04d}" + "x" * 120} for n in range(2000)
            ]
            for n in range(12):
                job_id = await submit(client)
                lease = Lease.model_validate((await claim(client, "fake")).json())
                call = {"token": lease.token, "outputs": outputs}
                if n % 2:
                    call = {"token": lease.token, "error": {"type": "x", "message": "y" * 300_000}}
                ending = "complete" if n % 2 == 0 else "fail"
                reply = await client.post(f"/api/leases/{job_id}/{ending}", json=call, headers=GPU)
                assert reply.status_code == 204, reply.text
            await submit(client)  # her next submit forgets what is past her budget
            history = await client.get("/api/jobs", headers=user_auth("ada"))
            assert len(history.content) < 2_000_000, (len(history.content), len(history.json()))
