"""What the queue manager learns from the worker: the participant's live events, the node catalogue,
and nothing at all from a worker whose lease went stale."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.doubles.comfyui_nodes import catalogue
from services.protocol.jobs import JobState
from services.protocol.workers import WorkerCapabilities, WorkerRegistration
from services.worker.agent import catalogue_hash
from services.worker.comfy_client import ComfyClient
from services.worker.lease import LeaseKeeper
from tests.support.jobs import finished, graph, participant, submit
from tests.support.queue_manager_app import LiveServer, approve_offered_catalogue, password
from tests.support.worker_agent import pull_worker, worker_settings


async def test_the_participant_sees_node_events_throttled_progress_then_outputs_then_finished(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    basic = base64.b64encode(f"alice:{password('alice')}".encode()).decode()
    url = qm.url.replace("http://", "ws://") + "/api/events"
    async with (
        pull_worker(worker_settings(comfy, qm.url, tmp_path)),
        websockets.connect(url, additional_headers={"Authorization": f"Basic {basic}"}) as stream,
    ):
        comfy.knobs.node_seconds, comfy.knobs.progress_steps = 0.4, 40  # 120 progress events in 1.2 s
        job_id = await submit(alice, graph(color=31))
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "finished":
            event = json.loads(await stream.recv())
            if event["job_id"] == job_id:
                seen.append(event)
    comfy_types = [e["comfy"]["type"] for e in seen if e.get("comfy")]
    assert comfy_types.count("executing") == 3
    progress = [e for e in seen if e["type"] == "progress"]
    assert 3 <= len(progress) <= 20, f"{len(progress)} progress events for a 1.2 s job"
    assert comfy_types.index("executed") > max(i for i, t in enumerate(comfy_types) if t == "executing")
    assert seen[-1]["data"]["state"] == JobState.SUCCEEDED


async def test_the_workers_node_catalogue_reaches_the_participants_workspace(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        reply = await alice.get("/w/alice/api/object_info")
    assert reply.status_code == 200, reply.text
    assert {"EmptyImage", "SaveImage", "SaveVideo"} <= set(reply.json())


async def test_the_workers_custom_node_web_extensions_reach_the_workspace_with_the_catalogue(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    comfy.web_extensions["rgthree comfy/rgthree.js"] = "export const version = 1;"
    comfy.web_extensions["rgthree comfy/lib/util.js"] = "export const util = 1;"
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        await asyncio.to_thread(approve_offered_catalogue, qm.url, "/extensions/rgthree%20comfy/rgthree.js")
        listed = (await alice.get("/w/alice/api/extensions")).json()
        served = await alice.get("/w/alice/extensions/rgthree%20comfy/lib/util.js")
    assert "/extensions/rgthree%20comfy/rgthree.js" in listed
    assert "/extensions/rgthree%20comfy/lib/util.js" in listed
    assert not [url for url in listed if "/core/" in url], "the frontend's own core shims are not republished"
    assert served.status_code == 200 and served.text == "export const util = 1;"


async def test_the_custom_nodes_example_workflows_reach_the_templates_browser_with_the_catalogue(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    """As ComfyUI lists a custom node pack's ``example_workflows`` (the templates browser shows them
    under the pack's name) and serves each at ``/api/workflow_templates/<pack>/<name>.json``; the
    admin approves them with the catalogue, as web extensions."""
    flow = '{"nodes": [{"id": 1, "type": "EmptyImage"}], "links": [], "version": 0.4}'
    comfy.workflow_templates["video pack/Wan 2 ✓.json"] = flow
    comfy.workflow_templates["video pack/basic.json"] = "{}"
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        await asyncio.to_thread(approve_offered_catalogue, qm.url, "video pack", "/workflow_templates")
        listed = (await alice.get("/w/alice/api/workflow_templates")).json()
        served = await alice.get(f"/w/alice/api/workflow_templates/video%20pack/{quote('Wan 2 ✓')}.json")
        missing = await alice.get("/w/alice/api/workflow_templates/video%20pack/none.json")
        async with participant(qm, "bob") as bob:
            theirs = await bob.get(f"/w/alice/api/workflow_templates/video%20pack/{quote('Wan 2 ✓')}.json")
        extensions = (await alice.get("/w/alice/api/extensions")).json()
    assert listed == {"video pack": ["Wan 2 ✓", "basic"]}
    assert served.status_code == 200 and served.json() == json.loads(flow)
    assert served.headers["content-type"].startswith("application/json")
    assert missing.status_code == 404 and theirs.status_code in (401, 403)
    assert not [url for url in extensions if "video" in url], "a template is no web extension"


async def test_a_web_extension_comfyui_cannot_serve_is_left_out_and_the_others_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = ComfyUIDouble.extension_file

    async def broken_one(self: ComfyUIDouble, request: Request) -> Response:
        if request.path_params["path"] == "pack/broken.js":
            return Response(status_code=404)
        return await original(self, request)

    monkeypatch.setattr(ComfyUIDouble, "extension_file", broken_one)
    files = {"pack/ok.js": "export const ok = 1;", "pack/broken.js": "export const no = 1;"}
    with ComfyUIDouble(tmp_path / "comfy", web_extensions=files) as comfy:
        client = ComfyClient(comfy.url)
        try:
            assert await client.web_extensions() == {"pack/ok.js": "export const ok = 1;"}
        finally:
            await client.aclose()
    assert "pack/broken.js" in caplog.text


def test_a_changed_web_extension_is_a_new_catalogue_version() -> None:
    nodes = catalogue([])
    assert catalogue_hash(nodes, {"pack/a.js": "1"}) != catalogue_hash(nodes, {"pack/a.js": "2"})
    assert catalogue_hash(nodes, {}) == catalogue_hash(nodes)
    assert catalogue_hash(nodes, {}, {"pack/a.json": "{}"}) != catalogue_hash(nodes)


OUTSIDE_A_PACK = ["../a.json", "pack/../a.json", "pack/sub/a.json", "pack/a.js", "pack\\a.json", "a.json"]


@pytest.mark.parametrize("path", OUTSIDE_A_PACK)
def test_an_example_workflow_path_that_leaves_its_pack_is_refused(path: str) -> None:
    capabilities = WorkerCapabilities(pool="gpu", provider="local")
    with pytest.raises(ValidationError, match="example workflow path"):
        WorkerRegistration(worker_id="w1", capabilities=capabilities, templates={path: "{}"})


async def test_a_worker_whose_lease_went_stale_never_reports_and_the_job_runs_again(
    comfy: ComfyUIDouble, qm_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    qm = qm_factory(lease_seconds=0.5)
    original = LeaseKeeper.__init__

    def slow_heartbeats(
        self: LeaseKeeper, queue: Any, job_id: str, token: str, every: float, *heard: Any
    ) -> None:
        original(self, queue, job_id, token, every if hasattr(slow_heartbeats, "done") else 30.0, *heard)
        slow_heartbeats.done = True  # type: ignore[attr-defined]  # only the first lease misses its heartbeats

    monkeypatch.setattr(LeaseKeeper, "__init__", slow_heartbeats)
    async with (
        pull_worker(worker_settings(comfy, qm.url, tmp_path)),
        httpx.AsyncClient(base_url=qm.url, auth=("alice", password("alice"))) as alice,
    ):
        comfy.knobs.node_seconds = 0.5
        job = await finished(alice, await submit(alice, graph(color=32)), timeout=30)
    assert job.state == JobState.SUCCEEDED and job.attempts == 2


async def test_the_nodes_after_an_output_node_show_their_progress_while_they_run(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A workflow that saves (or previews) an image half way, then runs on (a second sampler, an
    upscale): her page goes on showing which node runs and its progress after that first output,
    while the job runs, not all at once when it ends."""
    prompt = graph(color=33, prefix="half")
    prompt = {"3": prompt["3"], "1": prompt["1"], "2": prompt["2"]}  # the save runs first
    prompt["5"] = {"class_type": "TestSleep", "inputs": {"value": ["2", 0], "seconds": 30.0}}
    prompt["6"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "end"}}
    basic = base64.b64encode(f"alice:{password('alice')}".encode()).decode()
    url = qm.url.replace("http://", "ws://") + "/api/events"
    async with (
        pull_worker(worker_settings(comfy, qm.url, tmp_path)),
        websockets.connect(url, additional_headers={"Authorization": f"Basic {basic}"}) as stream,
    ):
        job_id = await submit(alice, prompt)
        heard: list[dict[str, Any]] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while not any(e["type"] == "progress" and e["data"].get("node") == "5" for e in heard):
                    event = json.loads(await stream.recv())
                    if event["job_id"] == job_id:
                        heard.append(event)
        running = comfy.state.running is not None and comfy.state.running.prompt_id == job_id
        (await alice.post(f"/api/jobs/{job_id}/cancel")).raise_for_status()
        cancelled = await finished(alice, job_id)
    assert running  # all of it heard while node 5 still ran
    comfy_events = [e["comfy"] for e in heard if e.get("comfy")]
    executing = [e["data"]["node"] for e in comfy_events if e["type"] == "executing"]
    assert executing[-1] == "5" and "3" in executing
    assert any(e["type"] == "progress" and e["data"].get("node") == "5" for e in heard)
    assert cancelled.state == JobState.CANCELLED
