"""The workspaces offer and accept only the models the stack config names (``QM_MODELS``): every GPU
holds those before it takes a job. A model taken out of the config overnight leaves the workspaces
with the morning's queue manager, before any worker registers and without the admin; the morning's
catalogue, which no longer lists it, goes live by itself when it otherwise only adds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from devkit.doubles.comfyui_nodes import catalogue
from devkit.servers import wait_until
from services.queue_manager.store import Store
from tests.support.queue_manager_app import (
    ADMIN,
    ADMIN_PASSWORD,
    catalogue_registration,
    live_server,
    login,
    register_worker,
    settings_for,
)

LAST_NIGHT = ["checkpoints/sdxl.safetensors", "checkpoints/flux.safetensors", "loras/detail.safetensors"]
THIS_MORNING = ["checkpoints/sdxl.safetensors", "checkpoints/sd3/medium.safetensors"]


def with_models(checkpoints: list[str], loras: list[str]) -> dict[str, Any]:
    """The stock catalogue plus loaders listing these files, as a GPU's ComfyUI lists its folders."""
    nodes = catalogue([])
    nodes["CheckpointLoaderSimple"] = {
        "input": {"required": {"ckpt_name": [checkpoints, {"tooltip": "The checkpoint"}]}},
        "output": ["MODEL", "CLIP", "VAE"],
        "output_node": False,
    }
    nodes["LoraPicker"] = {  # a newer node's combo, as ComfyUI 0.3.64 writes it
        "input": {"required": {"lora": ["COMBO", {"options": [*loras, "none"]}]}},
        "output": ["MODEL"],
        "output_node": False,
    }
    nodes["ModelSink"] = {"input": {"required": {"model": ["MODEL"]}}, "output": [], "output_node": True}
    return nodes


def offered(client: httpx.Client) -> tuple[list[str], list[str]]:
    nodes = client.get("/w/alice/api/object_info").json()
    return (
        nodes["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0],
        nodes["LoraPicker"]["input"]["required"]["lora"][1]["options"],
    )


def prompt(checkpoint: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "ModelSink", "inputs": {"model": ["1", 0]}},
    }


async def test_a_model_taken_out_of_the_config_overnight_is_neither_offered_nor_accepted(
    redis_url: str, tmp_path: Path
) -> None:
    redis = Redis.from_url(redis_url, decode_responses=True)
    night = Store(redis, settings_for(redis_url, models=LAST_NIGHT))
    last_nights = with_models(["sdxl.safetensors", "flux.safetensors"], ["detail.safetensors"])
    await night.register(catalogue_registration("w-night", "cat-night", last_nights))
    assert (await night.catalogue_state()).approved == "cat-night"
    await redis.aclose()

    with live_server(settings_for(redis_url, models=THIS_MORNING), tmp_path / "files") as server:
        alice = login(httpx.Client(base_url=server.url, timeout=10), "alice")
        # No worker of the morning yet: last night's approved version, less what the config dropped.
        assert offered(alice) == (["sdxl.safetensors"], ["none"])
        assert alice.get("/w/alice/api/models/checkpoints").json() == ["sdxl.safetensors"]
        assert alice.get("/w/alice/api/experiment/models/loras").json() == []
        refused = alice.post("/w/alice/prompt", json={"prompt": prompt("flux.safetensors")})
        assert refused.status_code == 400, refused.text
        [error] = refused.json()["node_errors"]["1"]["errors"]
        assert error["type"] == "value_not_in_list" and "flux.safetensors" in error["details"]
        assert alice.post("/w/alice/prompt", json={"prompt": prompt("sdxl.safetensors")}).status_code == 200

        # The morning's worker lists what its sync holds (flux and the lora gone, sd3 added) and a
        # file put on its disk by hand, which no other GPU holds.
        worker = httpx.Client(base_url=server.url, timeout=10)
        morning = with_models(["sdxl.safetensors", "sd3/medium.safetensors", "by-hand.ckpt"], [])
        register_worker(worker, morning, worker_id="w-day", digest="cat-day")
        wanted = (["sdxl.safetensors", "sd3/medium.safetensors"], ["none"])
        wait_until(lambda: offered(alice) == wanted, timeout=5, what="the morning's catalogue served")
        admin = login(httpx.Client(base_url=server.url, timeout=10), ADMIN, ADMIN_PASSWORD)
        state = admin.get("/api/admin/catalogues").json()
        assert state["approved"] == "cat-day" and state["pending"] == []
        for client in (alice, worker, admin):
            client.close()


async def test_a_version_that_drops_a_model_the_config_still_names_waits_for_the_admin(
    store: Store, redis_url: str
) -> None:
    """A leaked pool token cannot take a configured model away from the workspaces: dropping it is
    a change, as before."""
    configured = Store(store.redis, settings_for(redis_url, models=THIS_MORNING))
    both = ["sdxl.safetensors", "sd3/medium.safetensors"]
    await configured.register(catalogue_registration("w1", "cat-v1", with_models(both, [])))
    await configured.register(
        catalogue_registration("w-leaked", "cat-less", with_models(["sdxl.safetensors"], []))
    )
    state = await configured.catalogue_state()
    assert state.approved == "cat-v1"
    assert [(c.digest, c.changed) for c in state.pending] == [("cat-less", ["CheckpointLoaderSimple"])]


def test_a_gguf_model_the_config_does_not_name_is_neither_offered_nor_accepted(
    redis_url: str, tmp_path: Path
) -> None:
    """Quantized weights (``.gguf``, the ComfyUI-GGUF loaders' files) are model files like
    ``.safetensors``: one a GPU lists but the config does not (put there by hand, or a leaked token's
    made-up name) is not offered, and a prompt naming it is refused."""
    nodes = catalogue([])
    nodes["UnetLoaderGGUF"] = {
        "input": {"required": {"unet_name": [["flux1-dev-Q4_K_S.gguf", "by-hand-Q8_0.GGUF"], {}]}},
        "output": ["MODEL"],
        "output_node": False,
    }
    nodes["ModelSink"] = {"input": {"required": {"model": ["MODEL"]}}, "output": [], "output_node": True}
    graph = {
        "1": {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": "by-hand-Q8_0.GGUF"}},
        "2": {"class_type": "ModelSink", "inputs": {"model": ["1", 0]}},
    }
    settings = settings_for(redis_url, models=["unet/flux1-dev-Q4_K_S.gguf"])
    with live_server(settings, tmp_path / "files") as server:
        worker = httpx.Client(base_url=server.url, timeout=10)
        register_worker(worker, nodes, worker_id="w-gguf", digest="cat-gguf")
        alice = login(httpx.Client(base_url=server.url, timeout=10), "alice")

        def combo() -> list[str]:
            found = alice.get("/w/alice/api/object_info").json().get("UnetLoaderGGUF")
            return [] if found is None else found["input"]["required"]["unet_name"][0]

        wait_until(lambda: combo() != [], timeout=30, what="the GPU's catalogue served")
        assert combo() == ["flux1-dev-Q4_K_S.gguf"]
        refused = alice.post("/w/alice/prompt", json={"prompt": graph})
        assert refused.status_code == 400, refused.text
        [error] = refused.json()["node_errors"]["1"]["errors"]
        assert error["type"] == "value_not_in_list" and "by-hand-Q8_0.GGUF" in error["details"]
        for client in (alice, worker):
            client.close()
