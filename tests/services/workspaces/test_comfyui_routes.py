"""The workspace answers where and what ComfyUI answers: both route prefixes, the model folders, the
GPUs' devices and the frontend's start-up reads of an empty account."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from devkit.doubles.comfyui_nodes import catalogue
from tests.support.jobs import GRAPH
from tests.support.queue_manager_app import LiveServer, register_worker
from tests.support.sockets import next_text, open_socket

ROUTES = ["queue", "history", "object_info", "system_stats", "features", "models", "embeddings", "settings"]


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_answers_with_and_without_the_api_prefix(
    route: str, alice: httpx.Client, worker: httpx.Client
) -> None:
    plain, prefixed = alice.get(f"/w/alice/{route}"), alice.get(f"/w/alice/api/{route}")
    assert plain.status_code == prefixed.status_code == 200
    assert plain.json() == prefixed.json()


def test_a_script_given_the_workspace_as_its_server_queues_and_reads_history(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    reply = alice.post("/w/alice/prompt", json={"prompt": GRAPH, "client_id": "script"})
    assert reply.status_code == 200, reply.text
    pending = alice.get("/w/alice/queue").json()["queue_pending"]
    assert [item[1] for item in pending] == [reply.json()["prompt_id"]]
    assert alice.get(f"/w/alice/history/{reply.json()['prompt_id']}").json() == {}
    upload = alice.post("/w/alice/upload/image", files={"image": ("a.png", b"\x89PNG a", "image/png")})
    assert upload.json() == {"name": "a.png", "subfolder": "", "type": "input"}
    assert alice.get("/w/alice/view", params={"filename": "a.png", "type": "input"}).content == b"\x89PNG a"


@pytest.mark.parametrize("path", ["ws", "api/ws"])
def test_the_socket_answers_at_ws_and_api_ws(path: str, server: LiveServer, alice: httpx.Client) -> None:
    with open_socket(server, alice, "alice", "tab-1", path=path) as socket:
        assert next_text(socket)["data"]["sid"] == "tab-1"


def test_model_folders_list_the_gpus_files_from_their_loaders(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    nodes = catalogue([])
    nodes["CheckpointLoaderSimple"] = {
        "input": {"required": {"ckpt_name": [["sdxl.safetensors", "flux.safetensors"], {}]}},
        "output": ["MODEL", "CLIP", "VAE"],
        "output_node": False,
    }
    nodes["VAELoader"] = {"input": {"required": {"vae_name": [["ae.sft", "pixel_space"]]}}, "output": ["VAE"]}
    configs = {"config_name": [["v1-inference.yaml"]], "ckpt_name": [["sdxl.safetensors"]]}
    nodes["CheckpointLoader"] = {"input": {"required": configs}, "output": ["MODEL"]}
    register_worker(worker, nodes, worker_id="w2", digest="cat-models")
    folders = alice.get("/w/alice/api/models").json()
    assert folders[:3] == ["checkpoints", "configs", "loras"] and "upscale_models" in folders
    assert alice.get("/w/alice/api/models/checkpoints").json() == ["sdxl.safetensors", "flux.safetensors"]
    assert alice.get("/w/alice/api/models/vae").json() == ["ae.sft"]
    assert alice.get("/w/alice/api/models/loras").json() == []
    assert alice.get("/w/alice/api/models/nope").status_code == 404
    library = alice.get("/w/alice/api/experiment/models").json()  # the frontend's model library
    assert [folder["name"] for folder in library][:3] == ["checkpoints", "loras", "vae"]
    assert all(folder["folders"] == [] for folder in library), "the GPUs' directories are not shown"
    in_library = alice.get("/w/alice/api/experiment/models/checkpoints").json()
    assert [model["name"] for model in in_library] == ["sdxl.safetensors", "flux.safetensors"]
    assert alice.get("/w/alice/api/experiment/models/nope").status_code == 404
    # As ComfyUI's model library: only weights files (.safetensors, .ckpt, ...), so no .yaml config
    assert alice.get("/w/alice/api/models/configs").json() == ["v1-inference.yaml"]
    assert alice.get("/w/alice/api/experiment/models/configs").json() == []


def stats_of(client: httpx.Client) -> dict[str, Any]:
    stats: dict[str, Any] = client.get("/w/alice/api/system_stats").json()
    return stats


def test_a_cpu_worker_is_a_cpu_device_and_features_say_the_real_upload_limit(
    alice: httpx.Client, server: LiveServer, worker: httpx.Client
) -> None:
    assert [d["type"] for d in stats_of(alice)["devices"]] == ["cuda"]  # the test worker's "test" GPU
    register_worker(worker, catalogue([]), worker_id="cpu-1", digest="cat-cpu", device=("cpu", "cpu"))
    assert sorted(d["type"] for d in stats_of(alice)["devices"]) == ["cpu", "cuda"]
    features = alice.get("/w/alice/api/features").json()
    limit = features["max_upload_size"]
    too_big = {"image": ("big.png", b"x" * (limit + 1), "image/png")}
    assert alice.post("/w/alice/api/upload/image", files=too_big).status_code == 413
    assert features["supports_preview_metadata"] is False  # previews come as plain image frames


def test_an_empty_account_has_empty_workflow_folders_and_no_templates(alice: httpx.Client) -> None:
    for folder in ("workflows", "subgraphs/"):
        reply = alice.get(
            "/w/alice/api/userdata", params={"dir": folder, "recurse": "true", "full_info": "true"}
        )
        assert reply.status_code == 200 and reply.json() == []
    templates = alice.get("/w/alice/api/userdata/comfy.templates.json")
    assert templates.status_code == 200 and templates.json() == []
    assert alice.get("/w/alice/api/userdata", params={"dir": "elsewhere"}).status_code == 404
