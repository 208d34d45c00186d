"""A participant's output (a PNG, a video, a sound) carries the graph she ran, as a ComfyUI of her
own would write it: a file she shares names neither her user name nor anything else the worker added
to the graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import JobState
from tests.support.jobs import finished, graph, put_input, submit
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


SOUND_AND_MOVIE: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 4}},
    "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 12.0}},
    "3": {
        "class_type": "SaveVideo",
        "inputs": {"video": ["2", 0], "filename_prefix": "clip", "format": "auto", "codec": "auto"},
    },
    "4": {"class_type": "LoadAudio", "inputs": {"audio": "voice.flac"}},
    "5": {"class_type": "SaveAudio", "inputs": {"audio": ["4", 0], "filename_prefix": "sound"}},
}


async def test_a_saved_video_and_sound_carry_the_graph_as_she_submitted_it(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    """ComfyUI's SaveVideo and SaveAudio write the graph into the container's metadata too."""
    put_input(files, "alice", "voice.flac", b"fLaC....")
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job_id = await submit(alice, SOUND_AND_MOVIE, inputs=[{"filename": "voice.flac"}])
        job = await finished(alice, job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert sorted(o.filename.rpartition(".")[2] for o in job.outputs) == ["flac", "mp4"]
    for output in job.outputs:
        stored = files / "users" / "alice" / "output" / output.subfolder / output.filename
        data = stored.read_bytes()
        assert b"alice" not in data, f"{output.filename} names its owner"
        written = data.partition(b"\nprompt=")[2].partition(b"\n")[0]
        assert json.loads(written) == SOUND_AND_MOVIE, f"{output.filename}'s prompt is not the graph she ran"
        assert output.size == len(data)
