"""Liveness, readiness, Prometheus metrics and structured logs."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from services.queue_manager.background import check_durability
from services.queue_manager.logs import JsonFormatter
from services.queue_manager.store import Store
from tests.services.queue_manager.conftest import GPU, PROMPT, registration, user_auth


async def test_health_and_ready_answer_while_redis_is_up(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).json() == {"status": "ready"}


async def test_metrics_show_queue_depth_per_pool_and_user_leases_and_workers(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/api/workers/register", json=registration("w1").model_dump(), headers=GPU)
    for user in ("ada", "ada", "bob"):
        await client.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth(user))
    await client.post("/api/workers/w1/claim", headers=GPU)
    text = (await client.get("/metrics")).text
    assert 'qm_queue_depth{pool="*",user="ada"} 1.0' in text
    assert 'qm_queue_depth{pool="*",user="bob"} 1.0' in text
    assert "qm_leases 1.0" in text
    assert 'qm_workers{state="busy"} 1.0' in text
    assert 'qm_dispatch_seconds_count{pool="*"}' in text


def test_log_lines_are_json_with_the_job_and_worker_ids(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.LogRecord("services.queue_manager", logging.INFO, __file__, 1, "job leased", None, None)
    record.job_id, record.worker_id = "j1", "w1"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "job leased" and line["job_id"] == "j1" and line["worker_id"] == "w1"


async def test_a_redis_that_could_lose_jobs_is_reported_at_startup(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await store.redis.config_set("appendfsync", "everysec")
    try:
        with caplog.at_level(logging.WARNING, logger="services.queue_manager.background"):
            await check_durability(store)
    finally:
        await store.redis.config_set("appendfsync", "always")
    assert "appendfsync always" in caplog.text
    caplog.clear()
    await check_durability(store)
    assert caplog.text == ""
