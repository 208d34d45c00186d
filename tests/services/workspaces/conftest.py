"""A real queue manager (real Redis, local user files) and logged-in participants, per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from devkit.doubles.comfyui_nodes import catalogue
from services.queue_manager.store import Store
from tests.support.queue_manager_app import LiveServer, live_server, login, register_worker, settings_for


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(settings_for(redis_url), tmp_path / "files") as running:
        yield running


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    """The queue manager's store on the test Redis, for tests that act on it directly."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    yield Store(redis, settings_for(redis_url))
    await redis.aclose()


@pytest.fixture
def app_factory(server: LiveServer) -> Iterator[Callable[[], httpx.Client]]:
    """New clients of one running app; each logs in separately, like separate browsers."""
    clients: list[httpx.Client] = []

    def client() -> httpx.Client:
        clients.append(httpx.Client(base_url=server.url, timeout=10))
        return clients[-1]

    yield client
    for each in clients:
        each.close()


@pytest.fixture
def alice(app_factory: Callable[[], httpx.Client]) -> httpx.Client:
    return login(app_factory(), "alice")


@pytest.fixture
def bob(app_factory: Callable[[], httpx.Client]) -> httpx.Client:
    return login(app_factory(), "bob")


@pytest.fixture
def worker(app_factory: Callable[[], httpx.Client]) -> httpx.Client:
    """A client that registered a worker whose ComfyUI has a leftover input of someone else's."""
    client = app_factory()
    register_worker(client, catalogue(["someone-elses-upload.png"]))
    return client
