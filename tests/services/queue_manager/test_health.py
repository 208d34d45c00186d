"""Liveness, readiness, Prometheus metrics and structured logs."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from devkit.servers import free_port, wait_until
from infra.platform import REDIS_USER, redis_conf
from services.protocol.jobs import JobSubmit
from services.queue_manager.background import check_durability
from services.queue_manager.logs import JsonFormatter
from services.queue_manager.store import Store
from tests.support.qm_api import GPU, PROMPT, make_settings, registration, user_auth


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


PRODUCTION_PASSWORD = "pw-0123456789"


@contextlib.contextmanager
def production_redis(tmp_path: Path) -> Iterator[int]:
    """A real redis-server run from the platform's redis.conf on a free port; yields the port."""
    conf = tmp_path / "redis.conf"
    conf.write_text(redis_conf(PRODUCTION_PASSWORD).replace("dir /data", f"dir {tmp_path}"))  # the volume
    port = free_port()
    listen = ["--port", str(port), "--bind", "127.0.0.1"]
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", str(conf), *listen],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: process.poll() is None and _pings(port), what="redis-server with redis.conf")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def as_queue_manager(port: int) -> Redis:
    return Redis(port=port, username=REDIS_USER, password=PRODUCTION_PASSWORD, decode_responses=True)


async def test_the_production_redis_conf_meets_the_queue_managers_durability_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The platform's redis.conf, run by a real redis-server, is what the queue manager asks for."""
    with production_redis(tmp_path) as port:
        redis = as_queue_manager(port)
        try:
            assert await redis.config_get("appendfsync") == {"appendfsync": "always"}
            with caplog.at_level(logging.INFO, logger="services.queue_manager.background"):
                await check_durability(Store(redis, make_settings(f"redis://127.0.0.1:{port}/0")))
            assert caplog.text == ""
        finally:
            await redis.aclose()


async def test_the_production_redis_lets_the_queue_manager_work_but_not_reconfigure_or_wipe_it(
    tmp_path: Path,
) -> None:
    """The queue runs a job's whole life on the platform's Redis user; CONFIG SET, DEBUG, KEYS,
    FLUSHALL, SHUTDOWN and MONITOR are refused, and the passwordless default user is off."""
    with production_redis(tmp_path) as port:
        redis = as_queue_manager(port)
        try:
            store = Store(redis, make_settings(f"redis://127.0.0.1:{port}/0"))
            job = await store.submit("ada", JobSubmit(prompt=PROMPT))
            await store.register(registration("w1"))
            lease = await store.claim("w1", "gpu")
            assert lease is not None and lease.job.id == job.id
            assert (await redis.info("persistence"))["aof_enabled"] == 1
            for command in (["CONFIG", "SET", "appendfsync", "no"], ["DEBUG", "SLEEP", "0"], ["KEYS", "*"],
                            ["FLUSHALL"], ["SHUTDOWN", "NOSAVE"], ["MONITOR"]):  # fmt: skip
                with pytest.raises(ResponseError):  # NOPERM (DEBUG: also off by default)
                    await redis.execute_command(*command)
            assert await redis.exists(store.keys.job(job.id)) == 1
        finally:
            await redis.aclose()
        with pytest.raises(RedisError):
            SyncRedis(port=port, socket_timeout=2).set("x", "1")
        with pytest.raises(RedisError):
            SyncRedis(port=port, password=PRODUCTION_PASSWORD, socket_timeout=2).set("x", "1")


def _pings(port: int) -> bool:
    try:
        client = SyncRedis(port=port, username=REDIS_USER, password=PRODUCTION_PASSWORD, socket_timeout=1)
        return bool(client.ping())
    except RedisError:
        return False
