"""A participant's workspace answers the recorded corpus as the real ComfyUI did, field by field.

The workspace is the real queue manager (real Redis) at ``/w/<user>/api/...`` with the user's
session on every request and on the socket; its GPU is a worker attached to the ComfyUI double
(which answers the same corpus as ComfyUI: ``test_double.py``). A case the workspace does not match
yet is marked ``xfail(strict=True)`` naming the difference: fixing it makes the mark fail, so the
mark goes with the fix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.doubles.comfyui import ComfyUIDouble
from tests.conformance.driver import Target, differences, replay
from tests.conformance.fixtures import fixture_paths, load
from tests.support.queue_manager_app import LiveServer, build_app, password, settings_for
from tests.support.worker_agent import pull_worker, worker_settings

USER = "alice"

# Case -> what the workspace still does differently, and why (a fix removes its entry).
KNOWN: dict[str, str] = {}


def cases() -> list[Any]:
    return [
        pytest.param(path, id=path.stem, marks=[pytest.mark.xfail(strict=True, reason=KNOWN[path.stem])])
        if path.stem in KNOWN
        else pytest.param(path, id=path.stem)
        for path in fixture_paths()
    ]


async def catalogue_served(browser: httpx.AsyncClient) -> None:
    """Until the workspace serves the worker's nodes: the GPU is up as a participant sees it (before,
    POST /prompt has no catalogue to check a graph against and leaves that to the GPU)."""
    async with asyncio.timeout(15):
        while not (await browser.get(f"/w/{USER}/api/object_info")).json():
            await asyncio.sleep(0.1)  # the catalogue is approved and picked up in the background


@pytest.fixture
async def workspace(redis_url: str, tmp_path: Path) -> AsyncIterator[Target]:
    """Alice's workspace on a fresh queue manager, a worker on a fresh double behind it."""
    settings = settings_for(redis_url, lease_seconds=3.0, reap_interval_seconds=0.1, retry_backoff_seconds=0)
    server = LiveServer(build_app(settings, tmp_path / "files"))
    server.start()
    try:
        with ComfyUIDouble(tmp_path / "comfy") as comfy:
            async with (
                pull_worker(worker_settings(comfy, server.url, tmp_path)),
                httpx.AsyncClient(base_url=server.url, timeout=10) as browser,
            ):
                login = await browser.post("/api/auth/login", json={"user": USER, "password": password(USER)})
                login.raise_for_status()
                await catalogue_served(browser)
                cookie = f"qm_session={browser.cookies['qm_session']}"
                ws = server.url.replace("http://", "ws://", 1)
                yield Target(f"{server.url}/w/{USER}/api", f"{ws}/w/{USER}/ws", {"Cookie": cookie})
    finally:
        server.stop()


@pytest.mark.parametrize("fixture", cases())
async def test_the_workspace_answers_as_the_real_comfyui_did(fixture: Path, workspace: Target) -> None:
    recorded = load(fixture)
    replayed = await replay(workspace, recorded)
    found = differences(recorded, replayed)
    assert not found, f"{len(found)} differences from the recording:\n" + "\n".join(found)
