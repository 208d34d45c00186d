"""ComfyUI's cache never answers one participant's loader with another's file: a node reading an
upload is salted per owner, as output nodes are, so only its owner's identical rerun reuses it."""

from __future__ import annotations

from pathlib import Path

import httpx

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import Job, JobState
from services.worker.job_files import salted_classes
from tests.support.jobs import finished, graph, participant, put_input, submit, until
from tests.support.queue_manager_app import LiveServer
from tests.support.worker_agent import pull_worker, worker_settings

SAMPLE = b"\x89PNG\r\n\x1a\n" + b'{"width": 32, "height": 32, "color": 5}'
LOADS = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "sample.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "s"}},
}


def cached_nodes(comfy: ComfyUIDouble, job: Job) -> list[str]:
    messages = comfy.state.history[job.id]["status"]["messages"]
    return list(next(data["nodes"] for kind, data in messages if kind == "execution_cached"))


async def run(client: httpx.AsyncClient) -> Job:
    job = await finished(client, await submit(client, LOADS, inputs=[{"filename": "sample.png"}]))
    assert job.state == JobState.SUCCEEDED, job.error
    return job


async def test_bobs_loader_never_reuses_alices_loaded_file_but_her_rerun_does(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    """Core ComfyUI's ``Load3D`` (and many custom loaders) key their cache on the file's name only:
    were the loader shared, Bob's own ``sample.png`` would be answered with Alice's. Here both have
    the same bytes, so the double's content hash cannot tell; the owner salt must."""
    for user in ("alice", "bob"):
        put_input(files, user, "sample.png", SAMPLE)
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), participant(qm, "bob") as bob:
        await run(alice)
        his = await run(bob)
        await run(alice)
        again = await run(alice)
    assert "1" not in cached_nodes(comfy, his)
    assert cached_nodes(comfy, again) == ["1", "2", "3"]  # her identical rerun: ComfyUI's cache hit


def test_every_class_reading_an_upload_is_salted_and_model_loaders_are_not() -> None:
    catalogue = {
        "Load3D": {
            "input": {
                "required": {"model_file": [["a.glb"], {"file_upload": True}], "image": ["LOAD_3D", {}]}
            }
        },
        "VideoLoader": {"input": {"optional": {"video": [["v.mp4"], {"video_upload": True}]}}},
        "SaveImage": {"input": {"required": {"images": ["IMAGE"]}}, "output_node": True},
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["m.safetensors"], {}]}}},
        "Odd": {"input": {"required": {"x": "INT", "y": ["INT", {"file_upload": False}]}}},
    }
    assert salted_classes(catalogue) == {"Load3D", "VideoLoader", "SaveImage"}


async def test_a_rerun_after_a_cancelled_job_that_had_saved_saves_again(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Her job saved its image, then she cancelled it while a later node ran: the image never
    reached storage, so her identical rerun must save it again rather than name it from the cache."""
    saving = graph(color=0xCA)
    sleepy = {
        "3": saving["3"],  # the double runs the outputs in the graph's order: this one first
        **saving,
        "11": {"class_type": "TestSleep", "inputs": {"value": ["2", 0], "seconds": 20.0}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        cancelled = await submit(alice, sleepy)
        await until(lambda: (comfy.folders.output / "t_00001_.png").exists(), "her image saved", 20)
        assert (await alice.post(f"/api/jobs/{cancelled}/cancel")).status_code == 200
        first = await finished(alice, cancelled)
        again = await finished(alice, await submit(alice, graph(color=0xCA)))
        view = await alice.get("/w/alice/api/view", params={"filename": "t_00001_.png", "type": "output"})
    assert first.state == JobState.CANCELLED and again.state == JobState.SUCCEEDED, again.error
    assert "3" not in cached_nodes(comfy, again)
    assert view.status_code == 200 and again.outputs[0].size > 0
