"""The ComfyUI double behaves as the protocol reference says (so tests against it mean something)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.servers import free_port, http_get, wait_until
from tests.support.jobs import graph
from tests.support.worker_agent import RunBeginning

GRAPH: dict[str, Any] = graph()


@pytest.fixture
def comfy(tmp_path: Path) -> Iterator[ComfyUIDouble]:
    with ComfyUIDouble(tmp_path) as double:
        yield double


@pytest.fixture
async def http(comfy: ComfyUIDouble) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=comfy.url) as client:
        yield client


async def until_done(socket: Any, prompt_id: str) -> list[dict[str, Any]]:
    seen = []
    while True:
        message = await socket.recv()
        if isinstance(message, bytes):
            seen.append({"type": "binary", "data": {"head": message[:8]}})
            continue
        event = json.loads(message)
        seen.append(event)
        if event["type"] == "executing" and event["data"] == {"node": None, "prompt_id": prompt_id}:
            return seen


def ws_url(comfy: ComfyUIDouble, cid: str) -> str:
    return f"ws://127.0.0.1:{comfy.port}/ws?clientId={cid}"


async def test_events_come_in_comfyui_order_to_the_submitting_client_only(
    comfy: ComfyUIDouble, http: httpx.AsyncClient
) -> None:
    async with (
        websockets.connect(ws_url(comfy, "me")) as mine,
        websockets.connect(ws_url(comfy, "other")) as other,
    ):
        assert json.loads(await mine.recv()) == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"},
        }
        await other.recv()
        reply = await http.post("/api/prompt", json={"prompt": GRAPH, "client_id": "me", "prompt_id": "p-1"})
        assert reply.json() == {"prompt_id": "p-1", "number": 0, "node_errors": {}}  # ComfyUI counts from 0
        events = [e for e in await until_done(mine, "p-1") if e["type"] != "status"]
        kinds = [e["type"] for e in events]
        node = ["progress_state", "executing", "progress_state"]  # started, then finished
        last = ["progress_state", "executing", "executed", "progress_state"]
        assert kinds == [
            "execution_start",
            "execution_cached",
            *node,
            *node,
            *last,
            "execution_success",
            "executing",
        ]
        final = [e["data"] for e in events if e["type"] == "progress_state"][-1]
        assert {nid: n["state"] for nid, n in final["nodes"].items()} == dict.fromkeys("123", "finished")
        others = [json.loads(await other.recv()) for _ in range(2)]
        assert {e["type"] for e in others} == {"status"}


async def test_history_is_empty_until_the_end_and_then_names_the_outputs(
    comfy: ComfyUIDouble, http: httpx.AsyncClient
) -> None:
    comfy.knobs.node_seconds = 0.05
    async with websockets.connect(ws_url(comfy, "c")) as socket:
        await http.post("/prompt", json={"prompt": GRAPH, "client_id": "c", "prompt_id": "p-2"})
        assert (await http.get("/history/p-2")).json() == {}
        await until_done(socket, "p-2")
    entry = (await http.get("/history/p-2")).json()["p-2"]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"]
    image = entry["outputs"]["3"]["images"][0]
    assert image == {"filename": "t_00001_.png", "subfolder": "", "type": "output"}
    body = (await http.get("/api/view", params={"filename": image["filename"], "type": "output"})).content
    assert body.startswith(b"\x89PNG")


async def test_a_second_socket_with_the_same_id_replaces_the_first(
    comfy: ComfyUIDouble, http: httpx.AsyncClient
) -> None:
    async with websockets.connect(ws_url(comfy, "c")) as first:
        await first.recv()
        async with websockets.connect(ws_url(comfy, "c")) as second:
            await second.recv()
            await http.post("/prompt", json={"prompt": GRAPH, "client_id": "c", "prompt_id": "p-3"})
            await until_done(second, "p-3")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(first.recv(), timeout=0.2)


async def test_an_identical_graph_is_replayed_from_cache_without_new_files(
    comfy: ComfyUIDouble, http: httpx.AsyncClient
) -> None:
    async with websockets.connect(ws_url(comfy, "c")) as socket:
        for pid in ("a", "b"):
            await http.post("/prompt", json={"prompt": GRAPH, "client_id": "c", "prompt_id": pid})
            events = await until_done(socket, pid)
    cached = next(e for e in events if e["type"] == "execution_cached")
    assert cached["data"]["nodes"] == ["1", "2", "3"]
    assert not [e for e in events if e["type"] == "executing" and e["data"]["node"]]
    executed = next(e for e in events if e["type"] == "executed")
    assert executed["data"]["output"]["images"][0]["filename"] == "t_00001_.png"
    assert sorted(p.name for p in comfy.folders.output.iterdir()) == ["t_00001_.png"]


BAD_WIDTH = {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 1, "batch_size": 1, "color": 0}}


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({}, "no_prompt"),
        ({"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}, "invalid_prompt"),
        ({"prompt": {"1": GRAPH["1"]}}, "prompt_no_outputs"),
        ({"prompt": {**GRAPH, "1": BAD_WIDTH}}, "prompt_outputs_failed_validation"),
    ],
)
async def test_bad_prompts_get_comfyui_400_shape(
    http: httpx.AsyncClient, body: dict[str, Any], kind: str
) -> None:
    reply = await http.post("/prompt", json=body)
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == kind
    assert set(reply.json()["error"]) == {"type", "message", "details", "extra_info"}


LOAD = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
}


async def test_a_missing_input_file_fails_custom_validation(http: httpx.AsyncClient) -> None:
    reply = await http.post("/prompt", json={"prompt": LOAD})
    errors = reply.json()["node_errors"]["1"]
    assert errors["errors"][0]["type"] == "custom_validation_failed"
    assert errors["dependent_outputs"] == ["2"] and errors["class_type"] == "LoadImage"


async def test_an_uploaded_image_can_be_loaded_and_a_bad_one_fails_at_execution(
    comfy: ComfyUIDouble, http: httpx.AsyncClient
) -> None:
    reply = await http.post(
        "/upload/image",
        files={"image": ("cat.png", b"not a png")},
        data={"type": "input", "subfolder": "", "overwrite": "true"},
    )
    assert reply.json() == {"name": "cat.png", "subfolder": "", "type": "input"}
    async with websockets.connect(ws_url(comfy, "c")) as socket:
        await http.post("/prompt", json={"prompt": LOAD, "client_id": "c", "prompt_id": "bad"})
        events = await until_done(socket, "bad")
    error = next(e for e in events if e["type"] == "execution_error")["data"]
    assert (error["node_id"], error["node_type"]) == ("1", "LoadImage")
    assert error["exception_type"] == "PIL.UnidentifiedImageError"
    status = (await http.get("/history/bad")).json()["bad"]["status"]
    assert status["status_str"] == "error" and not status["completed"]


async def test_interrupt_is_targeted_and_acts_between_steps(
    comfy: ComfyUIDouble, http: httpx.AsyncClient
) -> None:
    comfy.knobs.node_seconds, comfy.knobs.progress_steps = 2.0, 40
    async with websockets.connect(ws_url(comfy, "c")) as socket:
        await http.post("/prompt", json={"prompt": GRAPH, "client_id": "c", "prompt_id": "long"})
        wait_until(lambda: "long" in comfy.state.timings, what="its run begun")  # (see the test below)
        await http.post("/interrupt", json={"prompt_id": "someone-else"})
        assert not comfy.state.interrupt
        await http.post("/interrupt", json={"prompt_id": "long"})
        events = await until_done(socket, "long")
    # As recorded from ComfyUI: the freed queue is announced before the final ``executing``.
    assert [e["type"] for e in events[-3:]] == ["execution_interrupted", "status", "executing"]
    assert (await http.get("/history/long")).json()["long"]["status"]["status_str"] == "error"


async def test_an_interrupt_between_leaving_the_queue_and_the_run_beginning_is_lost(
    comfy: ComfyUIDouble, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in ComfyUI 0.3.64 (server.py ``post_interrupt``, execution.py ``PromptQueue.get`` and
    ``execute_async``): a prompt is listed as running once it leaves the queue, so a targeted
    interrupt naming it sets the flag, but its run begins by clearing that flag, so it runs on."""
    beginning = RunBeginning(monkeypatch)
    beginning.arm()
    async with websockets.connect(ws_url(comfy, "c")) as socket:
        await http.post("/prompt", json={"prompt": GRAPH, "client_id": "c", "prompt_id": "early"})
        assert await asyncio.to_thread(beginning.entered.wait, 10)
        running = (await http.get("/queue")).json()["queue_running"]
        assert [row[1] for row in running] == ["early"]
        await http.post("/interrupt", json={"prompt_id": "early"})
        assert comfy.state.interrupt  # it named the running prompt ...
        beginning.release()
        events = await until_done(socket, "early")
    assert "execution_interrupted" not in [e["type"] for e in events]  # ... and was lost
    assert (await http.get("/history/early")).json()["early"]["status"]["status_str"] == "success"


async def test_a_deleted_pending_job_never_runs(comfy: ComfyUIDouble, http: httpx.AsyncClient) -> None:
    comfy.knobs.node_seconds = 0.2
    await http.post("/prompt", json={"prompt": GRAPH, "prompt_id": "first"})
    other = {**GRAPH, "1": {**GRAPH["1"], "inputs": {**GRAPH["1"]["inputs"], "color": 5}}}
    await http.post("/prompt", json={"prompt": other, "prompt_id": "second"})
    queue = (await http.get("/queue")).json()
    assert [row[1] for row in queue["queue_pending"]] == ["second"]
    await http.post("/queue", json={"delete": ["second"]})
    wait_until(lambda: "first" in comfy.state.history, what="first job done")
    assert (await http.get("/history/second")).json() == {}
    assert comfy.state.pending == []


async def test_view_refuses_traversal_and_missing_files(http: httpx.AsyncClient) -> None:
    assert (await http.get("/view", params={"filename": "../secret"})).status_code == 400
    assert (await http.get("/view", params={"filename": "none.png"})).status_code == 404


async def test_a_foreign_origin_on_loopback_is_refused(http: httpx.AsyncClient) -> None:
    assert (await http.get("/system_stats", headers={"Origin": "http://evil.example"})).status_code == 403
    assert (await http.get("/system_stats")).json()["system"]["comfyui_version"] == "0.3.64"


async def test_a_restart_loses_history(comfy: ComfyUIDouble, http: httpx.AsyncClient) -> None:
    await http.post("/prompt", json={"prompt": GRAPH, "prompt_id": "gone"})
    wait_until(lambda: "gone" in comfy.state.history, what="job done")
    comfy.restart()
    async with httpx.AsyncClient(base_url=comfy.url) as fresh:
        assert (await fresh.get("/history/gone")).json() == {}


def test_the_double_runs_as_a_subprocess_with_comfyui_flags(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "devkit.doubles.comfyui", "--listen", "127.0.0.1", "--port", str(port)]
    command += ["--output-directory", str(tmp_path / "out"), "--input-directory", str(tmp_path / "in")]
    command += ["--temp-directory", str(tmp_path / "tmp"), "--cpu", "--node-seconds", "0.01"]
    process = subprocess.Popen(command)
    try:
        wait_until(lambda: http_get(f"{base}/system_stats").status_code == 200, what="double subprocess")
        knobs = httpx.post(f"{base}/__double__/knobs", json={"silent": True}).json()
        assert knobs["silent"] is True and knobs["node_seconds"] == 0.01
        httpx.post(f"{base}/prompt", json={"prompt": GRAPH, "prompt_id": "sp"})
        wait_until(lambda: http_get(f"{base}/history/sp").json(), what="history")
        assert (tmp_path / "out" / "t_00001_.png").is_file()
    finally:
        process.kill()
        process.wait()


async def test_run_selected_nodes_executes_only_the_target_outputs_and_their_inputs(
    comfy: ComfyUIDouble, http: httpx.AsyncClient
) -> None:
    graph = {
        **GRAPH,
        "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "other"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "broken"}},
    }
    async with websockets.connect(ws_url(comfy, "c")) as socket:
        body = {"prompt": graph, "client_id": "c", "prompt_id": "p-part", "partial_execution_targets": ["3"]}
        assert (
            await http.post("/prompt", json=body)
        ).status_code == 200  # node 5's broken link is not checked
        events = await until_done(socket, "p-part")
    ran = {e["data"]["node"] for e in events if e["type"] == "executing" and e["data"]["node"]}
    assert ran == {"1", "2", "3"}
    entry = (await http.get("/history/p-part")).json()["p-part"]
    assert set(entry["outputs"]) == {"3"}
    assert not list(comfy.folders.output.glob("other*"))


async def test_save_image_websocket_sends_its_images_as_png_preview_frames(
    comfy: ComfyUIDouble, http: httpx.AsyncClient
) -> None:
    graph = {**GRAPH, "3": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}}}
    graph["1"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 0},
    }
    async with websockets.connect(ws_url(comfy, "c")) as socket:
        await http.post("/prompt", json={"prompt": graph, "client_id": "c", "prompt_id": "p-ws"})
        events = await until_done(socket, "p-ws")
    frames = [e["data"]["head"] for e in events if e["type"] == "binary"]
    assert frames == [bytes([0, 0, 0, 1, 0, 0, 0, 2])] * 2
