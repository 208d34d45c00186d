"""What the admin sees of each pool's GPUs: busy fraction, idle gaps between jobs and upload time
per job, from the timings workers report with each outcome; on the admin page and in Prometheus."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI

from services.protocol.workers import (
    Completion,
    JobTiming,
    Lease,
    ModelsProgress,
    WorkerCapabilities,
    WorkerRegistration,
)
from services.queue_manager.records import now_ms
from services.queue_manager.settings import Settings
from tests.support.qm_api import ADMIN, GPU, job, make_settings, registration, user_auth

JSON = {**GPU, "Content-Type": "application/json"}


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url, gpu_prices={"gpu": 2.0})


async def run_one(client: httpx.AsyncClient, timing: JobTiming) -> None:
    """ada queues a job; worker w1 of pool gpu runs it and reports it with ``timing``."""
    (
        await client.post("/api/jobs", json=job().model_dump(mode="json"), headers=user_auth("ada"))
    ).raise_for_status()
    claimed = await client.post("/api/workers/w1/claim", headers=GPU)
    lease = Lease.model_validate_json(claimed.content)
    done = Completion(token=lease.token, timing=timing).model_dump_json()
    reply = await client.post(f"/api/leases/{lease.job.id}/complete", content=done, headers=JSON)
    assert reply.status_code == 204, reply.text


def sample(metrics: str, name: str) -> float:
    """One sample's value in Prometheus text (0 when absent): the registry is the process's own."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


BUSY = 'qm_gpu_busy_seconds_total{pool="gpu"}'
UPLOADS = 'qm_upload_seconds_count{pool="gpu"}'
SHORT_GAPS = 'qm_gpu_idle_gap_seconds_bucket{le="0.005",pool="gpu"}'


async def test_each_pools_gpu_use_is_on_the_admin_page_and_in_prometheus(client: httpx.AsyncClient) -> None:
    body = registration("w1").model_dump_json()
    (await client.post("/api/workers/register", content=body, headers=JSON)).raise_for_status()
    before = (await client.get("/metrics")).text
    await run_one(client, JobTiming(gpu_seconds=2.0, idle_gap_seconds=0.004, upload_seconds=0.5))
    await run_one(client, JobTiming(gpu_seconds=3.0, idle_gap_seconds=0.002, upload_seconds=1.5))

    stats = (await client.get("/admin/api/stats", headers=ADMIN)).json()
    metrics = (await client.get("/metrics")).text

    gpu = stats["gpu_by_pool"]["gpu"]
    assert gpu["jobs"] == 2 and gpu["gap_ms_p50"] in (2.0, 4.0) and gpu["gap_ms_p99"] == 4.0
    assert gpu["upload_s_max"] == 1.5 and 0 < gpu["busy_fraction"] <= 1
    assert sample(metrics, BUSY) - sample(before, BUSY) == 5.0
    assert sample(metrics, UPLOADS) - sample(before, UPLOADS) == 2.0
    assert sample(metrics, SHORT_GAPS) - sample(before, SHORT_GAPS) == 2.0
    assert 'qm_gpu_busy_fraction{pool="gpu"}' in metrics


async def test_a_crashed_workers_hours_count_in_its_pools_busy_fraction(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """w1 ran jobs the whole 600 s it lived and crashed 400 s ago; w2 came up then and has idled
    since. The pool's GPUs were busy 600 s of their 1000: 60 %, not the 100 % that w1's jobs make
    of w2's time alone."""
    for worker in ("w1", "w2"):
        body = registration(worker).model_dump_json()
        (await client.post("/api/workers/register", content=body, headers=JSON)).raise_for_status()
    await run_one(client, JobTiming(gpu_seconds=600.0))
    now = now_ms()
    redis, keys = app.state.store.redis, app.state.store.keys
    crashed = {"registered_at": now - 1_000_000, "last_seen": now - 400_000}
    await redis.hset(keys.worker("w1"), mapping=crashed)
    await redis.hset(keys.worker("w2"), mapping={"registered_at": now - 400_000, "last_seen": now})

    stats = (await client.get("/admin/api/stats", headers=ADMIN)).json()
    metrics = (await client.get("/metrics")).text

    assert stats["gpu_by_pool"]["gpu"]["busy_fraction"] == pytest.approx(0.6, abs=0.01)
    assert sample(metrics, 'qm_gpu_busy_fraction{pool="gpu"}') == pytest.approx(0.6, abs=0.01)


async def test_a_worker_that_reports_its_models_sync_costs_from_its_first_report(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """A GPU host syncing its models registers as starting with its progress every few seconds,
    then ready: it was paid for from the first report, so 30 minutes of sync at 2.00 an hour cost
    1.00. A worker id that comes back after it was gone starts a new span."""
    syncing = WorkerCapabilities(
        pool="gpu", provider="verda", models_sync=ModelsProgress(state="syncing", files_total=3)
    )
    first = WorkerRegistration(worker_id="w1", capabilities=syncing).model_dump_json()
    (await client.post("/api/workers/register", content=first, headers=JSON)).raise_for_status()
    redis, keys = app.state.store.redis, app.state.store.keys
    await redis.hset(keys.worker("w1"), "registered_at", now_ms() - 1_800_000)  # 30 min of reports
    for body in (first, registration("w1").model_dump_json()):  # one more report, then ready
        (await client.post("/api/workers/register", content=body, headers=JSON)).raise_for_status()

    stats = (await client.get("/admin/api/stats", headers=ADMIN)).json()

    assert stats["cost_by_pool"]["gpu"] == pytest.approx(1.0, abs=0.01)
    await redis.hset(keys.worker("w1"), "last_seen", now_ms() - 3_600_000)  # gone an hour
    (await client.post("/api/workers/register", content=first, headers=JSON)).raise_for_status()
    assert (await client.get("/admin/api/stats", headers=ADMIN)).json()["cost_by_pool"]["gpu"] == 0.0


async def models_sync_leaves_after_half_an_hour(client: httpx.AsyncClient, app: FastAPI) -> int:
    """GPU host h1 syncs its models for 30 minutes, shown as starting (h1-models), then leaves the
    admin page (deregister); returns the deregistration's status."""
    syncing = WorkerCapabilities(
        pool="gpu", provider="verda", models_sync=ModelsProgress(state="syncing", files_total=3)
    )
    report = WorkerRegistration(worker_id="h1-models", capabilities=syncing).model_dump_json()
    (await client.post("/api/workers/register", content=report, headers=JSON)).raise_for_status()
    await app.state.store.redis.hset(
        app.state.store.keys.worker("h1-models"), "registered_at", now_ms() - 1_800_000
    )
    return (await client.post("/api/workers/h1-models/deregister", headers=GPU)).status_code


async def test_a_models_sync_that_leaves_keeps_its_cost(client: httpx.AsyncClient, app: FastAPI) -> None:
    """A GPU host syncs its models under its own worker id, shown as starting, then leaves the admin
    page (deregister) and its workers start: the 30 minutes it was paid for stay in the cost."""
    assert await models_sync_leaves_after_half_an_hour(client, app) == 204
    stats = (await client.get("/admin/api/stats", headers=ADMIN)).json()
    assert (await client.get("/api/admin/workers", headers=ADMIN)).json() == []
    assert stats["cost_by_pool"]["gpu"] == pytest.approx(1.0, abs=0.01)
    assert stats["cost_so_far"] == pytest.approx(1.0, abs=0.01)


async def test_a_models_sync_that_left_counts_in_its_pools_busy_fraction(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """A GPU host synced its models for 30 minutes (h1-models, then gone from the page), and its
    worker w1 has run 900 s of jobs in the 30 minutes since: the pool's GPUs were paid for an hour
    and busy a quarter of it, not the half that w1's own time alone makes of it."""
    assert await models_sync_leaves_after_half_an_hour(client, app) == 204
    redis, keys = app.state.store.redis, app.state.store.keys
    (
        await client.post("/api/workers/register", content=registration("w1").model_dump_json(), headers=JSON)
    ).raise_for_status()
    await run_one(client, JobTiming(gpu_seconds=900.0))
    await redis.hset(keys.worker("w1"), "registered_at", now_ms() - 1_800_000)

    stats = (await client.get("/admin/api/stats", headers=ADMIN)).json()
    metrics = (await client.get("/metrics")).text

    assert stats["gpu_by_pool"]["gpu"]["busy_fraction"] == pytest.approx(0.25, abs=0.01)
    assert sample(metrics, 'qm_gpu_busy_fraction{pool="gpu"}') == pytest.approx(0.25, abs=0.01)
