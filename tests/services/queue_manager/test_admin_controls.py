"""The organizer's controls pressed as they are in a workshop: twice, on a page that is out of date,
with a name that is wrong. Each answer is a 4xx that names the fix, and nothing changes."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from fastapi import FastAPI

from services.queue_manager.api.routes.admin import MAX_DRAIN_SECONDS
from services.queue_manager.records import now_ms
from services.queue_manager.store import Store
from tests.support.qm_api import ADMIN, GPU, job, registration, user_auth

LATER = 3_600_000  # an hour in ms: every lease granted now has expired by then


async def dead_letter(client: httpx.AsyncClient, store: Store) -> str:
    """ada's job, whose workers all vanished mid-run until it was dead-lettered."""
    body = job().model_dump(mode="json")
    job_id = str((await client.post("/api/jobs", json=body, headers=user_auth("ada"))).json()["id"])
    for attempt in range(store.settings.max_attempts):
        assert await store.claim(f"w{attempt}", "gpu") is not None
        await store.reap(now=now_ms() + LATER)
        await store.reap(now=now_ms() + LATER)
    return job_id


async def test_requeue_pressed_twice_says_the_job_is_back_in_line(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    job_id = await dead_letter(client, app.state.store)
    first = await client.post(f"/api/admin/dead/{job_id}/requeue", headers=ADMIN)
    assert first.status_code == 200 and first.json()["state"] == "queued"

    second = await client.post(f"/api/admin/dead/{job_id}/requeue", headers=ADMIN)

    assert second.status_code == 409, second.text
    assert "queued" in second.json()["detail"] and "not a dead letter" in second.json()["detail"]
    overview = (await client.get("/api/admin/queue", headers=ADMIN)).json()
    assert [j["id"] for j in overview["queued"]] == [job_id] and overview["dead"] == []


async def test_requeue_of_a_job_that_runs_or_finished_leaves_it_alone(client: httpx.AsyncClient) -> None:
    await client.post("/api/workers/register", json=registration("w1").model_dump(), headers=GPU)
    body = job().model_dump(mode="json")
    job_id = (await client.post("/api/jobs", json=body, headers=user_auth("ada"))).json()["id"]
    assert (await client.post("/api/workers/w1/claim", headers=GPU)).status_code == 200

    running = await client.post(f"/api/admin/dead/{job_id}/requeue", headers=ADMIN)

    assert running.status_code == 409 and "is leased, not a dead letter" in running.json()["detail"]
    (await client.post(f"/api/admin/jobs/{job_id}/cancel", headers=ADMIN)).raise_for_status()
    assert (await client.get("/api/admin/queue", headers=ADMIN)).json()["running"][0]["id"] == job_id
    missing = await client.post("/api/admin/dead/no-such-job/requeue", headers=ADMIN)
    assert missing.status_code == 404 and "no-such-job" in missing.json()["detail"]


async def test_a_job_pinned_to_a_pool_nobody_serves_is_refused_naming_the_pools(
    client: httpx.AsyncClient,
) -> None:
    for pool in ("h100-typo", "x" * 5000):
        reply = await client.post("/api/jobs", json=job(pool=pool).model_dump(mode="json"), headers=ADMIN)
        assert reply.status_code == 422, reply.text[:200]
        assert "'cpu', 'gpu'" in reply.text and "leave 'pool' out" in reply.text
    assert (await client.get("/api/admin/queue", headers=ADMIN)).json()["queued"] == []
    metrics = (await client.get("/metrics")).text
    assert "h100-typo" not in metrics and "xxxx" not in metrics
    served = await client.post("/api/jobs", json=job(pool="cpu").model_dump(mode="json"), headers=ADMIN)
    assert served.status_code == 201 and served.json()["pool"] == "cpu"


async def test_a_user_action_naming_no_participant_is_refused(client: httpx.AsyncClient) -> None:
    reply = await client.post("/api/admin/users/adaa/priority", json={"priority": 5}, headers=ADMIN)

    assert reply.status_code == 404, reply.text
    assert "adaa" in reply.json()["detail"] and "participant" in reply.json()["detail"]
    names = [u["user"] for u in (await client.get("/admin/api/stats", headers=ADMIN)).json()["participants"]]
    assert "adaa" not in names
    logout = await client.delete("/api/admin/users/adaa/sessions", headers=ADMIN)
    assert logout.status_code == 404 and "participant list" in logout.json()["detail"]
    ok = await client.post("/api/admin/users/ada/priority", json={"priority": 5}, headers=ADMIN)
    assert ok.status_code == 200 and ok.json()["priority"] == 5


async def test_a_drain_longer_than_the_public_site_waits_is_refused_naming_the_cli(
    client: httpx.AsyncClient,
) -> None:
    """nginx gives the queue manager 120 s to answer (``location /``): a drain the route let wait
    longer ended in nginx's 504 while dispatch stayed paused. A longer drain is the CLI's."""
    reply = await client.post("/api/admin/drain", params={"seconds": 600}, headers=ADMIN)

    assert reply.status_code == 422, reply.text
    assert "cli drain --timeout 600" in reply.json()["detail"]
    assert (await client.get("/api/admin/queue", headers=ADMIN)).json()["paused"] is False
    conf = (Path(__file__).parents[3] / "infra/templates/nginx-public.conf").read_text()
    proxied = re.search(r"location / \{[^}]*proxy_read_timeout (\d+)s", conf)
    assert proxied is not None and int(proxied.group(1)) > MAX_DRAIN_SECONDS


async def test_big_workflows_do_not_make_the_admin_queue_big(client: httpx.AsyncClient) -> None:
    """ada queues her 20 jobs, each a workflow near the 2 MB a request may carry: the admin page,
    which polls the queue every two seconds, gets each job's line (who, where, state, error), not
    40 MB of her workflows each time."""
    padding = "x" * 1_900_000
    body = job().model_dump(mode="json")
    body["prompt"]["1"]["inputs"]["note"] = padding
    for _ in range(20):
        assert (await client.post("/api/jobs", json=body, headers=user_auth("ada"))).status_code == 201

    reply = await client.get("/api/admin/queue", headers=ADMIN)

    queued = reply.json()["queued"]
    assert len(queued) == 20 and {j["user"] for j in queued} == {"ada"}
    assert [j["position"] for j in queued] == list(range(20))
    assert len(reply.content) < 50_000, f"{len(reply.content)} bytes"


async def test_the_admin_sees_each_waiting_job_at_the_place_its_owner_sees(store: Store) -> None:
    """Bob's job for the CPU pool does not hold up Ada's for any GPU: her page says #1, and the
    admin's queue gives her job the same place, though it lists it after Bob's."""
    bobs = await store.submit("bob", job(), pool="cpu")
    adas = await store.submit("ada", job(), pool="gpu")
    anyones = await store.submit("cy", job())
    overview = await store.overview()
    assert [line.id for line in overview.queued] == [bobs.id, adas.id, anyones.id]
    owners_see = await store.positions([bobs.id, adas.id, anyones.id])
    assert owners_see == {bobs.id: 0, adas.id: 0, anyones.id: 0}
    assert {line.id: line.position for line in overview.queued} == owners_see
