"""Crash tests: SIGKILL the queue manager and Redis; a job that got a 2xx is never lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devkit.qm_server import QueueManagerProcess, qm_env
from devkit.servers import RedisServer, http_get, wait_until
from tests.support.qm_api import ADMIN, GPU, PASSWORDS, PROMPT, TOKENS, registration, user_auth

pytestmark = pytest.mark.slow


@pytest.fixture
def crashable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def submit_all(http: httpx.Client, count: int) -> list[str]:
    ids = []
    for n in range(count):
        user = "ada" if n % 2 else "bob"
        reply = http.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth(user))
        assert reply.status_code == 201, reply.text
        ids.append(reply.json()["id"])
    return ids


def claim(http: httpx.Client, worker_id: str) -> dict[str, str] | None:
    reply = http.post(f"/api/workers/{worker_id}/claim", params={"wait": 1}, headers=GPU)
    if reply.status_code != 200:
        return None
    return {"id": reply.json()["job"]["id"], "token": reply.json()["token"]}


def complete(http: httpx.Client, lease: dict[str, str]) -> int:
    reply = http.post(f"/api/leases/{lease['id']}/complete", json={"token": lease["token"]}, headers=GPU)
    return reply.status_code


def run_until_done(http: httpx.Client, expected: set[str], deadline_s: float) -> list[str]:
    """A worker that claims and completes until every expected job ran; returns completions."""
    http.post("/api/workers/register", json=registration("w2").model_dump(), headers=GPU)
    completed: list[str] = []
    deadline = time.monotonic() + deadline_s
    while not expected <= set(completed) and time.monotonic() < deadline:
        lease = claim(http, "w2")
        if lease is not None and complete(http, lease) == 204:
            completed.append(lease["id"])
    return completed


def test_no_accepted_job_is_lost_when_the_queue_manager_and_redis_are_killed(
    crashable_redis: RedisServer, tmp_path: Path
) -> None:
    env = qm_env(
        crashable_redis.url,
        PASSWORDS,
        TOKENS,
        QM_LEASE_SECONDS="2",
        QM_REAP_INTERVAL_SECONDS="0.2",
        QM_RETRY_BACKOFF_SECONDS="0",
    )
    server = QueueManagerProcess(env, log_path=tmp_path / "qm.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            # Given 20 accepted jobs, 3 done and 2 held by a worker that will vanish
            ids = submit_all(http, 20)
            http.post("/api/workers/register", json=registration("w1").model_dump(), headers=GPU)
            leases = [lease for lease in (claim(http, "w1") for _ in range(5)) if lease]
            assert len(leases) == 5
            for lease in leases[:3]:
                assert complete(http, lease) == 204
        # When the queue manager and then Redis are SIGKILLed and come back
        server.kill()
        server.start()
        crashable_redis.kill()
        crashable_redis.start()
        wait_until(lambda: http_get(f"{server.url}/ready").status_code == 200, what="queue manager ready")
        with httpx.Client(base_url=server.url, timeout=10) as http:
            # Then every job still exists and runs to the end, the vanished worker's two again
            completed = run_until_done(http, set(ids[3:]), 60)
            snapshot = http.get("/api/admin/snapshot", headers=ADMIN).json()
        states = {j["id"]: j["state"] for j in snapshot["jobs"]}
        assert set(states) == set(ids)
        assert set(states.values()) == {"succeeded"}
        assert sorted(completed) == sorted(ids[3:]), "each unfinished job ran exactly once more"
    finally:
        server.stop()
