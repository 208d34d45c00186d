"""Fixtures for the queue manager: settings on the test Redis, the store, the app in-process
(httpx ASGI transport) and, where a real socket is needed, under uvicorn on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis

from devkit.servers import free_port
from services.queue_manager.main import create_app
from services.queue_manager.settings import Settings
from services.queue_manager.store import Store
from tests.support.qm_api import make_settings


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    yield Store(redis, settings)
    await redis.aclose()


@pytest.fixture
async def store_with(redis_url: str) -> AsyncIterator[Callable[..., Store]]:
    """A store with some settings changed: ``store_with(scheduling=Scheduling.FIFO)``."""
    clients: list[Redis] = []

    def build(**overrides: Any) -> Store:
        clients.append(Redis.from_url(redis_url, decode_responses=True))
        return Store(clients[-1], make_settings(redis_url, **overrides))

    yield build
    for client in clients:
        await client.aclose()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://qm.test") as http:
        yield http


@pytest.fixture
async def live_url(settings: Settings) -> AsyncIterator[str]:
    """The app under a real uvicorn on a free loopback port, in this event loop."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)  # polling uvicorn's own started flag
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task
