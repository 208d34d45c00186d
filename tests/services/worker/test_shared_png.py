"""A participant's output PNG carries the graph she ran, as a ComfyUI of her own would write it: a
picture she shares names neither her user name nor anything else the worker added to the graph."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from PIL import Image

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import JobState
from tests.support.jobs import finished, graph, submit
from tests.support.queue_manager_app import LiveServer
from tests.support.worker_agent import pull_worker, worker_settings

WORKFLOW = {"last_node_id": 3, "nodes": [{"id": 3, "type": "SaveImage", "title": "Mïne ✓"}], "version": 0.4}


async def test_the_saved_pngs_prompt_is_the_graph_as_she_submitted_it(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    submitted = graph(color=0x1234, batch=2, prefix="shared")
    extra = {"extra_pnginfo": {"workflow": WORKFLOW}}
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job = await finished(alice, await submit(alice, submitted, extra_data=extra))
    assert job.state == JobState.SUCCEEDED, job.error
    for output in job.outputs:
        stored = files / "users" / "alice" / "output" / output.filename
        with Image.open(stored) as picture:
            text = dict(picture.text)  # type: ignore[attr-defined]
            picture.load()  # the pixels still decode
        assert "alice" not in stored.read_bytes().decode("latin-1"), "the PNG names its owner"
        assert text["prompt"] == json.dumps(submitted), "the PNG's prompt is not the graph she ran"
        assert json.loads(text["workflow"]) == WORKFLOW
        assert output.size == stored.stat().st_size
