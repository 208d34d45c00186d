"""The organizer's API: overview, workers, pause/resume, priorities, dead letters, drain."""

from __future__ import annotations

import httpx
import pytest
from fastapi.routing import APIRoute

from services.queue_manager import admin as admin_page
from services.queue_manager.api.routes import admin, docs
from services.queue_manager.settings import Scheduling, Settings
from tests.support.qm_api import ADMIN, GPU, PROMPT, make_settings, registration, user_auth


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url, scheduling=Scheduling.PRIORITY)


async def submit(client: httpx.AsyncClient, user: str) -> str:
    reply = await client.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth(user))
    return str(reply.json()["id"])


async def claim(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/api/workers/w1/claim", headers=GPU)


async def test_pausing_stops_dispatch_until_resumed(client: httpx.AsyncClient) -> None:
    await client.post("/api/workers/register", json=registration("w1").model_dump(), headers=GPU)
    await submit(client, "ada")
    assert (await client.post("/api/admin/pause", headers=ADMIN)).status_code == 204
    assert (await claim(client)).status_code == 204
    assert (await client.get("/api/admin/queue", headers=ADMIN)).json()["paused"] is True
    assert (await client.post("/api/admin/resume", headers=ADMIN)).status_code == 204
    assert (await claim(client)).status_code == 200


async def test_the_admin_sees_the_queue_workers_and_users(client: httpx.AsyncClient) -> None:
    await client.post("/api/workers/register", json=registration("w1").model_dump(), headers=GPU)
    first, second = await submit(client, "ada"), await submit(client, "bob")
    await claim(client)
    queue = (await client.get("/api/admin/queue", headers=ADMIN)).json()
    assert [j["id"] for j in queue["running"]] == [first]
    assert [(j["id"], j["position"]) for j in queue["queued"]] == [(second, 0)]
    workers = (await client.get("/api/admin/workers", headers=ADMIN)).json()
    assert [(w["worker_id"], w["state"], w["job_id"]) for w in workers] == [("w1", "busy", first)]
    users = (await client.get("/api/admin/users", headers=ADMIN)).json()
    assert {u["user"]: (u["queued"], u["running"]) for u in users} == {"ada": (0, 1), "bob": (1, 0)}


async def test_the_admin_reprioritises_a_job_and_a_user(client: httpx.AsyncClient) -> None:
    ada1, ada2, bob1 = await submit(client, "ada"), await submit(client, "ada"), await submit(client, "bob")
    reply = await client.post(f"/api/admin/jobs/{ada2}/priority", json={"priority": 5}, headers=ADMIN)
    assert reply.json()["priority"] == 5
    reply = await client.post("/api/admin/users/bob/priority", json={"priority": 9}, headers=ADMIN)
    assert reply.json()["moved"] == 1
    queue = (await client.get("/api/admin/queue", headers=ADMIN)).json()
    assert [j["id"] for j in queue["queued"]] == [bob1, ada2, ada1]
    bad = await client.post(f"/api/admin/jobs/{ada2}/priority", json={"priority": 1000}, headers=ADMIN)
    assert bad.status_code == 422


async def test_the_admin_cancels_anyones_job_and_unknown_ids_are_404(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, "ada")
    reply = await client.post(f"/api/admin/jobs/{job_id}/cancel", headers=ADMIN)
    assert reply.json()["outcome"] == "cancelled"
    assert (await client.post("/api/admin/jobs/nope/cancel", headers=ADMIN)).status_code == 404
    assert (await client.post("/api/admin/dead/nope/requeue", headers=ADMIN)).status_code == 404


async def test_drain_pauses_and_reports_what_still_runs(client: httpx.AsyncClient) -> None:
    await client.post("/api/workers/register", json=registration("w1").model_dump(), headers=GPU)
    await submit(client, "ada")
    await submit(client, "bob")
    await claim(client)
    reply = await client.post("/api/admin/drain", params={"seconds": 0}, headers=ADMIN)
    assert reply.json() == {"drained": False, "running": 1, "queued": 1}
    assert (await claim(client)).status_code == 204


def admin_routes() -> list[tuple[str, str]]:
    """Every (method, path) that is the admin's: its API, its page and the page's data, the API docs."""
    routers = (admin.router, admin_page.router, docs.router)
    return [
        (method, route.path.replace("{job_id}", "some-job").replace("{user}", "ada").replace("{digest}", "d"))
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and route.path not in ("/admin", "/admin/", "/admin/app.js")
        for method in sorted(route.methods or ())
        if method != "HEAD"
    ]


async def test_no_admin_route_answers_nobody_a_participant_or_a_pool_token(
    client: httpx.AsyncClient,
) -> None:
    """Each admin route, called with no credentials, with ada's login (Basic and session cookie) and
    with a pool's token: 401 or 403 every time, and nothing changes (dispatch still runs, ada's
    session still works, her job still waits)."""
    routes = admin_routes()
    assert len(routes) >= 15, routes
    job_id = await submit(client, "ada")
    login = await client.post("/api/auth/login", json={"user": "ada", "password": "ada-password"})
    cookie = {"Cookie": f"qm_session={login.cookies['qm_session']}"}
    client.cookies.clear()  # each call below sends only the credentials it names
    for method, path in routes:
        for name, headers in {
            "nobody": {},
            "participant": user_auth("ada"),
            "cookie": cookie,
            "pool": GPU,
        }.items():
            reply = await client.request(method, path, headers=headers, json={})
            expected = {401} if name in ("nobody", "pool") else {403}
            assert reply.status_code in expected, (method, path, name, reply.status_code, reply.text[:200])
    assert (await client.get("/api/admin/queue", headers=ADMIN)).json()["paused"] is False
    assert (await client.get("/api/auth/me", headers=cookie)).status_code == 200
    assert (await client.get(f"/api/jobs/{job_id}", headers=user_auth("ada"))).json()["state"] == "queued"
