"""Fixtures for the queue manager: settings on the test Redis, the store, the app in-process
(httpx ASGI transport) and, where a real socket is needed, under uvicorn on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis

from services.protocol.jobs import JobSubmit
from services.protocol.workers import WorkerCapabilities, WorkerRegistration
from services.queue_manager.main import create_app
from services.queue_manager.settings import Settings
from services.queue_manager.store import Store
from tests.support.servers import free_port

PASSWORDS = {"ada": "ada-password", "bob": "bob-password"}
ADMIN_PASSWORD = "admin-password"
TOKENS = {"gpu": "gpu-token-0123456789", "cpu": "cpu-token-0123456789"}
FILES_URL = (Path(tempfile.gettempdir()) / "comfy-workshop-test-files").as_uri()  # not /var/lib's default
PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "redis_url": redis_url,
        "admin_password": ADMIN_PASSWORD,
        "session_secret": "s" * 32,
        "participants": PASSWORDS,
        "worker_tokens": TOKENS,
        "lease_seconds": 5,
        "retry_backoff_seconds": 0,
        "reap_interval_seconds": 0.1,
        "files_url": FILES_URL,
    }
    return Settings(**{**values, **overrides})


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def user_auth(user: str) -> dict[str, str]:
    return basic(user, PASSWORDS[user])


ADMIN = basic("admin", ADMIN_PASSWORD)
GPU = {"Authorization": f"Bearer {TOKENS['gpu']}"}
CPU = {"Authorization": f"Bearer {TOKENS['cpu']}"}


def job(**fields: Any) -> JobSubmit:
    return JobSubmit(prompt=PROMPT, **fields)


def registration(worker_id: str, pool: str = "gpu") -> WorkerRegistration:
    capabilities = WorkerCapabilities(pool=pool, provider="local")
    return WorkerRegistration(worker_id=worker_id, capabilities=capabilities)


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
