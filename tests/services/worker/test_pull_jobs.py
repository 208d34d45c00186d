"""Jobs run end to end: a participant submits to the real queue manager, the agent pulls and runs
them on the ComfyUI double, and the participant sees the outcome and the stored outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.doubles.comfyui_nodes import png_meta
from services.protocol.jobs import JobState
from services.worker import runner
from tests.support.jobs import finished, graph, participant, put_input, submit, submit_running, until
from tests.support.queue_manager_app import LiveServer
from tests.support.worker_agent import pull_worker, worker_settings

PNG = b"\x89PNG\r\n\x1a\n" + json.dumps({"width": 32, "height": 32, "color": 7}).encode()


def load_and_save(name: str, loader: str = "LoadImage", saver: str = "SaveImage") -> dict[str, Any]:
    key = "audio" if loader == "LoadAudio" else "image"
    out = {"audio": ["1", 0]} if saver == "SaveAudio" else {"images": ["1", 0]}
    return {
        "1": {"class_type": loader, "inputs": {key: name}},
        "2": {"class_type": saver, "inputs": {**out, "filename_prefix": "out"}},
    }


async def test_a_job_succeeds_and_its_outputs_land_under_the_owners_prefix(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job = await finished(alice, await submit(alice, graph(color=1, batch=2)))
    assert job.state == JobState.SUCCEEDED, job.error
    assert [o.filename for o in job.outputs] == ["t_00001_.png", "t_00002_.png"]
    stored = tmp_path / "files" / "users" / "alice" / "output" / "t_00001_.png"
    assert stored.read_bytes().startswith(b"\x89PNG")
    assert job.outputs[0].size == stored.stat().st_size and job.outputs[0].content_type == "image/png"


async def test_input_files_are_fetched_from_storage_and_staged_for_comfyui(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    put_input(files, "alice", "cat.png", PNG)
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job_id = await submit(alice, load_and_save("cat.png"), inputs=[{"filename": "cat.png"}])
        job = await finished(alice, job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert list(comfy.folders.input.iterdir()) == []  # staged for the job only
    saved = (files / "users/alice/output/out_00001_.png").read_bytes()
    assert png_meta(saved)["color"] == 7


async def test_an_execution_error_fails_the_job_naming_node_type_and_message(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    put_input(files, "alice", "cat.png", b"GIF89a not a png")
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job_id = await submit(alice, load_and_save("cat.png"), inputs=[{"filename": "cat.png"}])
        job = await finished(alice, job_id)
    assert job.state == JobState.FAILED and job.error is not None
    assert (job.error.node_id, job.error.node_type) == ("1", "LoadImage")
    assert job.error.type == "PIL.UnidentifiedImageError" and "cannot identify image" in job.error.message
    assert not job.error.retryable


async def test_a_missing_input_file_fails_with_a_message_saying_what_to_do(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job_id = await submit(alice, load_and_save("gone.png"), inputs=[{"filename": "gone.png"}])
        job = await finished(alice, job_id)
    assert job.state == JobState.FAILED and job.error is not None
    assert "gone.png" in job.error.message and "upload it again" in job.error.message


async def test_a_validation_error_fails_the_job_with_comfyuis_reason(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    bad = graph()
    bad["1"]["inputs"]["width"] = 0
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job = await finished(alice, await submit(alice, bad))
    assert job.state == JobState.FAILED and job.error is not None
    assert job.error.type == "prompt_outputs_failed_validation"
    assert (job.error.node_id, job.error.node_type) == ("1", "EmptyImage")
    assert "smaller than min" in job.error.message


async def test_cancelling_a_running_job_interrupts_exactly_that_prompt(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job_id = await submit_running(comfy, alice, graph(color=2), seconds=20.0)
        assert (await alice.post(f"/api/jobs/{job_id}/cancel")).status_code == 200
        job = await finished(alice, job_id, timeout=10)
    assert job.state == JobState.CANCELLED
    status = comfy.state.history[job_id]["status"]
    assert status["messages"][-1][0] == "execution_interrupted"


async def test_cancelling_a_job_still_waiting_in_comfyui_deletes_it_so_it_never_runs(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def idle(comfy: Any) -> None:  # ComfyUI took the blocker after the worker found it idle
        return None

    monkeypatch.setattr(runner, "until_idle", idle)
    worker = pull_worker(worker_settings(comfy, qm.url, tmp_path))
    async with worker, httpx.AsyncClient(base_url=comfy.url) as other:
        comfy.knobs.node_seconds, comfy.knobs.progress_steps = 20.0, 200
        await other.post(
            "/prompt", json={"prompt": graph(color=99), "prompt_id": "blocker"}
        )  # someone else's
        job_id = await submit(alice, graph(color=3))
        await until(lambda: any(i.prompt_id == job_id for i in comfy.state.pending), "job pending in ComfyUI")
        await alice.post(f"/api/jobs/{job_id}/cancel")
        job = await finished(alice, job_id, timeout=10)
        await other.post("/interrupt", json={})
    assert job.state == JobState.CANCELLED
    assert comfy.state.pending == [] and job_id not in comfy.state.history


async def test_a_silent_socket_falls_back_to_polling_history(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    comfy.knobs.silent = True
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path, warmup=False)):
        job = await finished(alice, await submit(alice, graph(color=4)))
    assert job.state == JobState.SUCCEEDED, job.error
    assert [o.filename for o in job.outputs] == ["t_00001_.png"]


def pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.tobytes()


async def test_identical_graphs_answered_from_cache_still_give_each_owner_the_outputs(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), participant(qm, "bob") as bob:
        first = await finished(alice, await submit(alice, graph(color=5)))
        second = await finished(bob, await submit(bob, graph(color=5)))
    assert first.state == second.state == JobState.SUCCEEDED
    assert [o.filename for o in second.outputs] == [o.filename for o in first.outputs] == ["t_00001_.png"]
    # The same picture; the PNG's text holds the graph as each owner's job ran it, as ComfyUI's does.
    output = files / "users"
    assert pixels(output / "bob/output/t_00001_.png") == pixels(output / "alice/output/t_00001_.png")
    assert list(comfy.folders.output.iterdir()) == []  # nothing left for the next owner to name


async def test_video_and_audio_outputs_are_stored_with_their_kind(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    video = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 24, "color": 1},
        },
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 24.0}},
        "3": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["2", 0], "filename_prefix": "video/clip", "format": "auto", "codec": "auto"},
        },
    }
    put_input(files, "alice", "voice.flac", b"fLaC....")
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        clip = await finished(alice, await submit(alice, video))
        sound_id = await submit(
            alice, load_and_save("voice.flac", "LoadAudio", "SaveAudio"), inputs=[{"filename": "voice.flac"}]
        )
        sound = await finished(alice, sound_id)
    assert clip.state == sound.state == JobState.SUCCEEDED
    assert [(o.kind, o.subfolder, o.filename, o.content_type) for o in clip.outputs] == [
        ("images", "video", "clip_00001_.mp4", "video/mp4")
    ]
    assert (files / "users/alice/output/video/clip_00001_.mp4").is_file()
    assert [(o.kind, o.filename) for o in sound.outputs] == [("audio", "out_00001_.flac")]


async def test_outputs_are_read_only_once_history_is_written(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        comfy.knobs.history_lag_seconds = 0.3  # execution_success long before the history write
        job = await finished(alice, await submit(alice, graph(color=6)))
    assert job.state == JobState.SUCCEEDED, job.error
    assert [o.filename for o in job.outputs] == ["t_00001_.png"]
