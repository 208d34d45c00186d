"""The app opens user-file storage (``QM_FILES_URL``) once at start, as ``app.state.storage``;
the workspaces use that one object, a test may bring its own, and a storage that cannot be opened
costs the workspaces (503 naming the setting), not the queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from services.queue_manager.main import create_app
from services.storage.local import LocalStorage
from tests.support.queue_manager_app import password, settings_for

CAT = {"image": ("cat.png", b"\x89PNG cat", "image/png")}


@asynccontextmanager
async def started(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app through its lifespan, with alice logged in."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://qm.test") as client:
            login = await client.post(
                "/api/auth/login", json={"user": "alice", "password": password("alice")}
            )
            login.raise_for_status()
            yield client


def app_with(redis_url: str, **settings: Any) -> FastAPI:
    return create_app(settings_for(redis_url, **settings))


async def test_the_app_opens_qm_files_url_once_and_the_workspaces_use_it(
    redis_url: str, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    app = app_with(redis_url, files_url=files.as_uri())
    async with started(app) as alice:
        assert app.state.storage.url == files.as_uri()
        reply = await alice.post("/w/alice/api/upload/image", files=CAT)
        assert reply.status_code == 200, reply.text
        assert app.state.workspace_context.storage is app.state.storage
    assert (files / "users" / "alice" / "input" / "cat.png").read_bytes() == CAT["image"][1]


async def test_a_storage_set_before_the_start_is_the_one_used(redis_url: str, tmp_path: Path) -> None:
    app = app_with(redis_url, files_url=(tmp_path / "unused").as_uri())
    mine = app.state.storage = LocalStorage(tmp_path / "mine")
    async with started(app) as alice:
        assert (await alice.post("/w/alice/api/upload/image", files=CAT)).status_code == 200
        assert app.state.storage is mine
    assert (tmp_path / "mine" / "users" / "alice" / "input" / "cat.png").exists()
    assert not (tmp_path / "unused").exists()


async def test_a_storage_that_cannot_be_opened_costs_the_workspaces_not_the_queue(redis_url: str) -> None:
    app = app_with(redis_url, files_url="ftp://files.example.org/x")
    async with started(app) as alice:
        assert app.state.storage is None
        reply = await alice.post("/w/alice/api/upload/image", files=CAT)
        assert reply.status_code == 503 and "QM_FILES_URL" in reply.json()["detail"]
        job = await alice.post("/api/jobs", json={"prompt": {"1": {"class_type": "X", "inputs": {}}}})
        assert job.status_code == 201, job.text
