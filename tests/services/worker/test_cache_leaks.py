"""ComfyUI's cache never answers one participant's loader with another's file: a node reading an
upload is salted per owner, as output nodes are, so only its owner's identical rerun reuses it."""

from __future__ import annotations

from pathlib import Path

import httpx

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import Job, JobState
from services.worker.job_files import SALT_INPUT, salted, salted_classes, staged_names
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


def test_a_node_naming_a_file_the_job_stages_is_salted_whatever_its_class() -> None:
    """A custom loader that neither flags its input as an upload nor hashes the file it reads is
    keyed by ComfyUI on the name alone: it is salted because it names a staged file of the owner's,
    while a node naming a model (nothing staged) stays shared between participants."""
    prompt = {
        "1": {"class_type": "PlainLoader", "inputs": {"path": "clips/take.png"}},
        "2": {"class_type": "PlainLoader", "inputs": {"path": "earlier.png [output]"}},
        "3": {"class_type": "ModelLoader", "inputs": {"name": "take.png"}},  # not the staged clips/take.png
        "4": {"class_type": "Join", "inputs": {"a": ["1", 0], "b": ["2", 0], "m": ["3", 0]}},
    }
    staged = [{"filename": "take.png", "subfolder": "clips"}]
    job = Job.model_validate({"id": "j", "user": "bob", "prompt": prompt, "inputs": staged, "queued_at": 0})
    graph = salted(prompt, "bob-salt", (), staged_names(job))
    assert {n for n, node in graph.items() if SALT_INPUT in node["inputs"]} == {"1", "2", "4"}
