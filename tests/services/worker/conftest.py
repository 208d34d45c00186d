"""Worker tests run the agent against the ComfyUI double and, where a queue is involved, the real
queue manager (uvicorn on loopback, own thread) on the real test Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.jobs import participant
from tests.support.queue_manager_app import LiveServer, build_app, settings_for
from tests.support.worker_agent import Gates


@pytest.fixture
def files(tmp_path: Path) -> Path:
    return tmp_path / "files"


@pytest.fixture
def qm_factory(redis_url: str, files: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start the real queue manager with a given lease term (seconds) and other settings."""
    servers: list[LiveServer] = []

    def start(lease_seconds: float = 3.0, **extra: Any) -> LiveServer:
        settings = settings_for(
            redis_url,
            lease_seconds=lease_seconds,
            reap_interval_seconds=0.1,
            retry_backoff_seconds=0,
            **extra,
        )
        server = LiveServer(build_app(settings, files))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def qm(qm_factory: Callable[..., LiveServer]) -> LiveServer:
    return qm_factory()


@pytest.fixture
async def alice(qm: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with participant(qm, "alice") as client:
        yield client


@pytest.fixture
def gates(monkeypatch: pytest.MonkeyPatch) -> Gates:
    """Jobs the ComfyUI doubles keep running until the test opens their gate."""
    return Gates(monkeypatch)


@pytest.fixture
def held_by(redis_url: str) -> Iterator[redis.Redis]:
    """The queue manager's Redis, to read which worker a job is held for (``hold_of``)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()
