"""What participants can do over HTTP, and what they cannot: other people's jobs, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from services.protocol.jobs import UI_FORMAT_HINT
from services.queue_manager.main import create_app
from services.queue_manager.settings import Settings
from tests.support.qm_api import ADMIN, PROMPT, basic, make_settings, user_auth

ADA, BOB = user_auth("ada"), user_auth("bob")


async def submit(client: httpx.AsyncClient, headers: dict[str, str] = ADA) -> dict[str, object]:
    reply = await client.post("/api/jobs", json={"prompt": PROMPT}, headers=headers)
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


async def test_a_participant_submits_lists_reads_and_cancels_their_job(client: httpx.AsyncClient) -> None:
    job = await submit(client)
    assert job["state"] == "queued" and job["position"] == 0 and job["user"] == "ada"
    listed = (await client.get("/api/jobs", headers=ADA)).json()
    assert [j["id"] for j in listed] == [job["id"]]
    one = await client.get(f"/api/jobs/{job['id']}", headers=ADA)
    assert one.json()["position"] == 0
    cancel = await client.post(f"/api/jobs/{job['id']}/cancel", headers=ADA)
    assert cancel.json() == {"job_id": job["id"], "outcome": "cancelled"}
    assert (await client.get(f"/api/jobs/{job['id']}", headers=ADA)).json()["state"] == "cancelled"


async def test_a_participant_can_neither_see_nor_cancel_someone_elses_job(client: httpx.AsyncClient) -> None:
    job = await submit(client)
    assert (await client.get(f"/api/jobs/{job['id']}", headers=BOB)).status_code == 404
    assert (await client.post(f"/api/jobs/{job['id']}/cancel", headers=BOB)).status_code == 404
    assert (await client.get("/api/jobs", headers=BOB)).json() == []


async def test_a_ui_format_workflow_is_refused_with_how_to_export_the_api_format(
    client: httpx.AsyncClient,
) -> None:
    graph = {"prompt": {"nodes": [{"id": 1, "type": "EmptyImage"}], "links": []}}
    reply = await client.post("/api/jobs", json=graph, headers=ADA)
    assert reply.status_code == 422
    assert UI_FORMAT_HINT in reply.text and "Export (API)" in reply.text


async def test_malformed_json_gets_a_4xx_not_a_5xx(client: httpx.AsyncClient) -> None:
    headers = {**ADA, "content-type": "application/json"}
    reply = await client.post("/api/jobs", content=b'{"prompt": ', headers=headers)
    assert reply.status_code == 422 and "JSON" in reply.text


async def test_an_oversize_body_is_refused_with_413_naming_the_limit(client: httpx.AsyncClient) -> None:
    big = {"prompt": PROMPT, "extra_data": {"pad": "x" * 3_000_000}}
    reply = await client.post("/api/jobs", json=big, headers=ADA)
    assert reply.status_code == 413 and "QM_MAX_BODY_BYTES" in reply.json()["detail"]


async def test_a_chunked_oversize_body_is_refused_too(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no content-length: the limit must count the stream
        for _ in range(30):
            yield b"x" * 100_000

    headers = {**ADA, "content-type": "application/json"}
    reply = await client.post("/api/jobs", content=chunks(), headers=headers)
    assert reply.status_code == 413


async def test_unknown_users_and_wrong_passwords_get_401(client: httpx.AsyncClient) -> None:
    for headers in (basic("mallory", "x"), basic("ada", "wrong"), {}, {"Authorization": "Basic !!"}):
        reply = await client.get("/api/jobs", headers=headers)
        assert reply.status_code == 401 and "log in" in reply.json()["detail"]


async def test_a_participant_cannot_pin_a_pool_or_reach_the_admin_api(client: httpx.AsyncClient) -> None:
    reply = await client.post("/api/jobs", json={"prompt": PROMPT, "pool": "gpu"}, headers=ADA)
    assert reply.status_code == 403 and "admin" in reply.json()["detail"]
    assert (await client.get("/api/admin/queue", headers=ADA)).status_code == 403
    assert (await client.post("/api/admin/pause", headers=ADA)).status_code == 403


async def test_a_duplicate_prompt_id_is_refused_with_409(client: httpx.AsyncClient) -> None:
    body = {"prompt": PROMPT, "prompt_id": "2b0f6f4e-1d7c-4a55-9d1e-4c6f1f3a0b11"}
    assert (await client.post("/api/jobs", json=body, headers=ADA)).status_code == 201
    reply = await client.post("/api/jobs", json=body, headers=BOB)
    assert reply.status_code == 409 and "prompt_id" in reply.json()["detail"]


async def test_the_queued_limit_is_a_429_with_advice(client: httpx.AsyncClient) -> None:
    for _ in range(Settings.model_fields["max_queued_per_user"].default):
        await submit(client)
    reply = await client.post("/api/jobs", json={"prompt": PROMPT}, headers=ADA)
    assert reply.status_code == 429 and "cancel" in reply.json()["detail"]


async def test_login_sets_a_cookie_that_works_instead_of_basic_auth(client: httpx.AsyncClient) -> None:
    wrong = await client.post("/api/auth/login", data={"user": "ada", "password": "nope"})
    assert wrong.status_code == 401
    reply = await client.post("/api/auth/login", data={"user": "ada", "password": "ada-password"})
    assert reply.status_code == 200 and reply.json() == {"user": "ada", "admin": False}
    assert (await client.get("/api/auth/me")).json()["user"] == "ada"
    await submit(client, headers={})
    await client.post("/api/auth/logout")
    client.cookies.clear()
    assert (await client.get("/api/auth/me")).status_code == 401


async def test_the_admin_logs_in_with_json_and_a_forged_cookie_is_ignored(client: httpx.AsyncClient) -> None:
    reply = await client.post("/api/auth/login", json={"user": "admin", "password": "admin-password"})
    assert reply.json() == {"user": "admin", "admin": True}
    assert (await client.get("/api/admin/queue")).status_code == 200
    client.cookies.set("qm_session", reply.cookies["qm_session"][:-3] + "abc")
    assert (await client.get("/api/admin/queue")).status_code == 401
    assert (await client.get("/api/admin/queue", headers=ADMIN)).status_code == 200


async def test_a_participant_cannot_fill_redis_with_cancelled_jobs(redis_url: str) -> None:
    """Queue-and-cancel in a loop kept every record for QM_RETENTION_HOURS: ~10 MB a second of the
    Redis that holds everyone's queue. Past ``QM_MAX_KEPT_BYTES`` of her jobs' workflows her oldest
    finished jobs are forgotten early (as ComfyUI's history drops its oldest entries); her newest
    and her waiting jobs stay, and nobody else's job is touched."""
    app = create_app(make_settings(redis_url, max_kept_bytes=60_000))
    big = {"prompt": {**PROMPT, "3": {"class_type": "Note", "inputs": {"text": "x" * 10_000}}}}
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://qm.test") as client,
    ):
        bobs = (await client.post("/api/jobs", json=big, headers=BOB)).json()["id"]
        await client.post(f"/api/jobs/{bobs}/cancel", headers=BOB)
        ids = []
        for _ in range(12):
            ids.append((await client.post("/api/jobs", json=big, headers=ADA)).json()["id"])
            await client.post(f"/api/jobs/{ids[-1]}/cancel", headers=ADA)
        waiting = (await client.post("/api/jobs", json=big, headers=ADA)).json()["id"]
        kept = {job["id"] for job in (await client.get("/api/jobs", headers=ADA)).json()}
        assert {waiting, ids[-1]} <= kept and ids[0] not in kept
        assert 3 <= len(kept) <= 6, kept  # 60 kB of ~10 kB workflows
        assert (await client.get(f"/api/jobs/{ids[0]}", headers=ADA)).status_code == 404
        assert (await client.get(f"/api/jobs/{bobs}", headers=BOB)).json()["state"] == "cancelled"
