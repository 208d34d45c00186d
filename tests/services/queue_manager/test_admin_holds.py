"""What the admin sees of jobs held (prepared) for busy workers: on the admin API and page (which
worker holds a queued job, how many per pool) and in Prometheus (``qm_jobs_held`` per pool)."""

from __future__ import annotations

from typing import Any

import httpx

from services.protocol.workers import Lease
from tests.support.qm_api import ADMIN, GPU, job, registration, user_auth

JSON = {**GPU, "Content-Type": "application/json"}
HELD = 'qm_jobs_held{pool="gpu"}'


async def submit(client: httpx.AsyncClient) -> str:
    reply = await client.post("/api/jobs", json=job().model_dump(mode="json"), headers=user_auth("ada"))
    reply.raise_for_status()
    return str(reply.json()["id"])


async def register(client: httpx.AsyncClient, worker_id: str) -> None:
    body = registration(worker_id).model_dump_json()
    (await client.post("/api/workers/register", content=body, headers=JSON)).raise_for_status()


async def seen(
    client: httpx.AsyncClient,
) -> tuple[dict[str, Any], dict[str, str | None], dict[str, int], str]:
    """The admin's queue, each worker's held job, the stats' held count per pool, and the metrics."""
    queue = (await client.get("/api/admin/queue", headers=ADMIN)).json()
    workers = {
        w["worker_id"]: w["holding"] for w in (await client.get("/api/admin/workers", headers=ADMIN)).json()
    }
    stats = (await client.get("/admin/api/stats", headers=ADMIN)).json()
    return queue, workers, stats["held_by_pool"], (await client.get("/metrics")).text


def metric(metrics: str, name: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def test_the_admin_sees_which_busy_worker_holds_a_queued_job_and_how_many_per_pool(
    client: httpx.AsyncClient,
) -> None:
    await register(client, "w1")
    await register(client, "w2")
    first, second, third = [await submit(client) for _ in range(3)]
    queue, workers, held, metrics = await seen(client)
    assert queue["held"] == {} and workers == {"w1": None, "w2": None} and held == {"gpu": 0}
    assert metric(metrics, HELD) == 0.0

    claimed = await client.post("/api/workers/w1/claim", params={"hold_next": 1}, headers=GPU)
    lease = Lease.model_validate_json(claimed.content)
    assert lease.job.id == first and lease.held is not None and lease.held.job.id == second

    queue, workers, held, metrics = await seen(client)
    assert queue["held"] == {second: "w1"}  # still queued, in line, and held for w1
    assert [j["id"] for j in queue["queued"]] == [second, third]
    assert workers == {"w1": second, "w2": None} and held == {"gpu": 1}
    assert metric(metrics, HELD) == 1.0

    # an idle worker of the pool asks: it takes the held job, and the hold is gone everywhere
    taken = await client.post("/api/workers/w2/claim", headers=GPU)
    assert Lease.model_validate_json(taken.content).job.id == second
    queue, workers, held, metrics = await seen(client)
    assert queue["held"] == {} and workers == {"w1": None, "w2": None} and held == {"gpu": 0}
    assert metric(metrics, HELD) == 0.0


async def test_a_hold_given_back_is_no_longer_shown(client: httpx.AsyncClient) -> None:
    await register(client, "w1")
    await submit(client)
    second = await submit(client)
    lease = Lease.model_validate_json(
        (await client.post("/api/workers/w1/claim", params={"hold_next": 1}, headers=GPU)).content
    )
    assert lease.held is not None and (await seen(client))[0]["held"] == {second: "w1"}

    release = {"token": lease.held.token}
    (await client.post(f"/api/leases/{second}/release", json=release, headers=GPU)).raise_for_status()

    queue, workers, held, _ = await seen(client)
    assert queue["held"] == {} and workers == {"w1": None} and held == {"gpu": 0}


async def w1_runs_one_and_holds_the_next_while_w2_is_busy(client: httpx.AsyncClient) -> Lease:
    """w2 runs one job; w1 runs the next and holds the one after it: w1's lease (``held``: its hold)."""
    await register(client, "w1")
    await register(client, "w2")
    await submit(client)
    assert (await client.post("/api/workers/w2/claim", headers=GPU)).status_code == 200
    await submit(client)
    second = await submit(client)
    lease = Lease.model_validate_json(
        (await client.post("/api/workers/w1/claim", params={"hold_next": 1}, headers=GPU)).content
    )
    assert lease.held is not None and lease.held.job.id == second
    return lease


async def w1_holds_the_next_while_w2_is_busy(client: httpx.AsyncClient) -> str:
    """As above; the job w1 holds."""
    held = (await w1_runs_one_and_holds_the_next_while_w2_is_busy(client)).held
    assert held is not None
    return held.job.id


async def test_a_worker_that_registers_again_holds_nothing_it_held_before(client: httpx.AsyncClient) -> None:
    # w1's process restarted (same worker id) while it ran one job and held the next: the new
    # process knows of no hold, so the queue holds nothing for it and the admin sees none
    second = await w1_holds_the_next_while_w2_is_busy(client)
    ahead = await client.post("/api/workers/w2/claim", params={"prepare": 1}, headers=GPU)
    assert ahead.status_code == 204  # the only job waiting is w1's to run next

    await register(client, "w1")

    queue, workers, held, metrics = await seen(client)
    assert queue["held"] == {} and workers == {"w1": None, "w2": None} and held == {"gpu": 0}
    assert metric(metrics, HELD) == 0.0
    # so the busy w2 may prepare it at once, without waiting for a hold nobody has to lapse
    ahead = await client.post("/api/workers/w2/claim", params={"prepare": 1}, headers=GPU)
    assert ahead.status_code == 200 and Lease.model_validate_json(ahead.content).job.id == second


async def test_a_draining_worker_holds_nothing(client: httpx.AsyncClient) -> None:
    # w1 runs one job and holds the next when it is told to stop (SIGTERM: it drains). It will not
    # start the held job, so the job is nobody's at once, even if w1's own give-back never comes
    second = await w1_holds_the_next_while_w2_is_busy(client)

    assert (await client.post("/api/workers/w1/drain", headers=GPU)).status_code == 204

    queue, workers, held, _ = await seen(client)
    assert queue["held"] == {} and workers == {"w1": None, "w2": None} and held == {"gpu": 0}
    # a claim ahead w1 sent before it stopped holds nothing either: the busy w2 prepares the job
    third = await submit(client)
    assert (await client.post("/api/workers/w1/claim", params={"prepare": 1}, headers=GPU)).status_code == 204
    ahead = await client.post("/api/workers/w2/claim", params={"prepare": 1}, headers=GPU)
    assert ahead.status_code == 200 and Lease.model_validate_json(ahead.content).job.id == second
    queue, *_ = await seen(client)
    assert queue["held"] == {second: "w2"} and third not in queue["held"]
    # nor is it leased anything by a claim of its own: the job stays queued for the others
    late = await client.post("/api/workers/w1/claim", params={"hold_next": 1}, headers=GPU)
    assert late.status_code == 204
    queue, *_ = await seen(client)
    assert [j["id"] for j in queue["queued"]] == [second, third] and queue["held"] == {second: "w2"}


async def test_a_worker_that_deregisters_gives_its_hold_back_at_once(client: httpx.AsyncClient) -> None:
    # w1 ran one job and holds the next; between its finish and its next start it leaves for good
    # (deregister). The job is nobody's at once: no count or map names a worker that is not listed,
    # and the busy w2 may prepare it without waiting for a hold nobody has to lapse
    lease = await w1_runs_one_and_holds_the_next_while_w2_is_busy(client)
    assert lease.held is not None
    second = lease.held.job.id
    busy = await client.post("/api/workers/w1/deregister", headers=GPU)
    assert busy.status_code == 409  # it runs a job: finish or release it first, and it keeps its hold
    assert (await seen(client))[0]["held"] == {second: "w1"}
    done = {"token": lease.token, "outputs": []}
    (await client.post(f"/api/leases/{lease.job.id}/complete", json=done, headers=GPU)).raise_for_status()

    assert (await client.post("/api/workers/w1/deregister", headers=GPU)).status_code == 204

    queue, workers, held, metrics = await seen(client)
    assert queue["held"] == {} and workers == {"w2": None} and held == {"gpu": 0}
    assert metric(metrics, HELD) == 0.0
    assert queue["queued"][0]["id"] == second  # first in line
    ahead = await client.post("/api/workers/w2/claim", params={"prepare": 1}, headers=GPU)
    assert ahead.status_code == 200 and Lease.model_validate_json(ahead.content).job.id == second


async def test_a_worker_between_its_finish_and_its_start_holds_what_the_admin_sees(
    client: httpx.AsyncClient,
) -> None:
    # w1's report of its job reached the queue manager before its start of the job it holds (a job
    # that failed, say, is reported while the next one goes into ComfyUI): w1 shows idle and holding
    # that job, and it is held for w1 indeed: the busy w2 passes it, and w1's start starts it
    lease = await w1_runs_one_and_holds_the_next_while_w2_is_busy(client)
    assert lease.held is not None
    second = lease.held.job.id
    done = {"token": lease.token, "outputs": []}
    (await client.post(f"/api/leases/{lease.job.id}/complete", json=done, headers=GPU)).raise_for_status()

    queue, workers, held, metrics = await seen(client)
    idle = (await client.get("/api/admin/workers", headers=ADMIN)).json()
    assert [w["state"] for w in idle if w["worker_id"] == "w1"] == ["idle"]
    assert queue["held"] == {second: "w1"} and workers == {"w1": second, "w2": None} and held == {"gpu": 1}
    assert metric(metrics, HELD) == 1.0
    ahead = await client.post("/api/workers/w2/claim", params={"prepare": 1}, headers=GPU)
    assert ahead.status_code == 204  # the only job waiting is w1's to run next
    start = {"token": lease.held.token, "worker_id": "w1"}
    started = await client.post(f"/api/leases/{second}/start", json=start, headers=GPU)
    assert started.status_code == 200 and started.json()["started"]
    queue, workers, held, metrics = await seen(client)
    assert queue["held"] == {} and workers == {"w1": None, "w2": None} and held == {"gpu": 0}
