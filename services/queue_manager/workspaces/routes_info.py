"""What the frontend reads to start: the node catalogue, extensions, system and feature facts.

``/object_info`` is the workers' catalogue with one change per participant: the file lists of
upload inputs (``LoadImage.image`` and the like) show that participant's uploads, never the worker's
input folder, which may hold other participants' files.
"""

from __future__ import annotations

import copy
import json
import platform
from importlib.resources import files
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from services.protocol.own_checks import as_comfyui_serves
from services.protocol.workers import WorkerState
from services.queue_manager.catalogues import WEIGHTS, is_upload_input, spec_options
from services.queue_manager.registry import WorkerInfo
from services.queue_manager.settings import Settings
from services.queue_manager.workspaces.deps import Context, Participant, UserFilesDep
from services.queue_manager.workspaces.files import UserFiles, listable
from services.queue_manager.workspaces.frontend import frontend_version
from services.queue_manager.workspaces.templates import templates_version

router = APIRouter()
MODEL_FOLDERS: dict[str, tuple[str, str] | None] = {
    "checkpoints": ("CheckpointLoaderSimple", "ckpt_name"),
    "configs": ("CheckpointLoader", "config_name"),
    "loras": ("LoraLoader", "lora_name"),
    "vae": ("VAELoader", "vae_name"),
    "text_encoders": ("CLIPLoader", "clip_name"),
    "diffusion_models": ("UNETLoader", "unet_name"),
    "clip_vision": ("CLIPVisionLoader", "clip_name"),
    "style_models": ("StyleModelLoader", "style_model_name"),
    "embeddings": None,
    "diffusers": ("DiffusersLoader", "model_path"),
    "vae_approx": None,
    "controlnet": ("ControlNetLoader", "control_net_name"),
    "gligen": ("GLIGENLoader", "gligen_name"),
    "upscale_models": ("UpscaleModelLoader", "model_name"),
    "custom_nodes": None,
    "hypernetworks": ("HypernetworkLoader", "hypernetwork_name"),
    "photomaker": ("PhotoMakerLoader", "photomaker_model_name"),
    "classifiers": None,
    "model_patches": ("ModelPatchLoader", "name"),
    "audio_encoders": ("AudioEncoderLoader", "audio_encoder_name"),
}
"""ComfyUI 0.3.64's model folders (``GET /models``), each with the loader input that lists its files."""
NOT_IN_LIBRARY = frozenset({"configs", "custom_nodes"})
"""Model folders ComfyUI leaves out of ``/experiment/models`` (the model library)."""
NOT_FILES = frozenset({"pixel_space", "taesd", "taesdxl", "taesd3", "taef1"})
"""What ``VAELoader`` offers besides the files of its folder."""
JSON_NO_STORE = {"Cache-Control": "no-store"}
OWN_EXTENSION = "comfy-workshop/notice.js"
NOTICE = files("services.queue_manager.workspaces").joinpath("notice.js")


def with_files(spec: list[Any], files: list[str]) -> list[Any]:
    """An upload input's spec listing ``files``: ``[[names], opts]`` or ``["COMBO", {"options"}]``."""
    if spec[0] == "COMBO":
        return ["COMBO", {**spec[1], "options": files}]
    return [files, *spec[1:]]


def personal(nodes: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """The catalogue as ComfyUI serves it, with every upload input listing only this participant's
    files."""
    result = {name: as_comfyui_serves(node) for name, node in nodes.items()}
    for name, node in result.items():
        required = node.get("input", {}).get("required", {})
        uploads = [key for key, spec in required.items() if is_upload_input(spec)]
        if uploads:
            patched = copy.copy(node)
            patched["input"] = {**node["input"], "required": dict(required)}
            for key in uploads:
                patched["input"]["required"][key] = with_files(required[key], files)
            result[name] = patched
    return result


async def listed_inputs(files: UserFiles) -> list[str]:
    """Her uploads as her combo lists show them: sorted, none with markup (``files.listable``)."""
    return sorted(name for name in await files.inputs() if listable(name))


@router.get("/object_info")
async def object_info(ctx: Context, files: UserFilesDep) -> Response:
    catalogue = await ctx.catalogue.current()
    body = json.dumps(personal(catalogue.nodes, await listed_inputs(files)), separators=(",", ":"))
    return Response(body, media_type="application/json", headers=JSON_NO_STORE)


@router.get("/object_info/{node_class}")
async def object_info_node(node_class: str, ctx: Context, files: UserFilesDep) -> dict[str, Any]:
    catalogue = await ctx.catalogue.current()
    return personal(catalogue.node(node_class), await listed_inputs(files))


@router.get("/extensions")
async def extensions(ctx: Context, user: Participant) -> list[str]:
    """Our notice, then the workers' custom nodes' web extensions (the frontend has its core ones)."""
    catalogue = await ctx.catalogue.current()
    published = (f"/extensions/{quote(path)}" for path in sorted(catalogue.extensions))
    return [f"/extensions/{OWN_EXTENSION}", *published]


@router.get("/extensions/{path:path}")
async def extension_file(path: str, ctx: Context, user: Participant) -> Response:
    if path == OWN_EXTENSION:
        return Response(NOTICE.read_text(), media_type="text/javascript")
    catalogue = await ctx.catalogue.current()
    source = catalogue.extensions.get(path)
    if source is None:
        return Response(f"no web extension {path!r} on the workers", status_code=404)
    return Response(source, media_type="text/javascript")


@router.get("/workshop")
async def workshop(ctx: Context, user: Participant) -> dict[str, Any]:
    """What the notice extension tells the participant about: a catalogue yet, GPUs up now."""
    catalogue = await ctx.catalogue.current()
    up = [w for w in await ctx.store.list_workers() if w.state is not WorkerState.GONE]
    return {"catalogue_version": catalogue.digest, "gpus_up": len(up)}


def device(index: int, worker: WorkerInfo) -> dict[str, Any]:
    """One GPU worker as ComfyUI describes its device (``type`` as the worker's ComfyUI says it)."""
    caps = worker.capabilities
    vram = caps.vram_mb * 1024 * 1024
    name = f"{caps.gpu or 'GPU'} ({caps.pool}: {worker.worker_id})"
    kind = caps.device_type or ("cpu" if caps.gpu.lower() == "cpu" else "cuda")
    return {
        "name": name,
        "type": kind,
        "index": index,
        "vram_total": vram,
        "vram_free": vram,
        "torch_vram_total": 0,
        "torch_vram_free": 0,
    }


@router.get("/system_stats")
async def system_stats(ctx: Context, user: Participant) -> dict[str, Any]:
    """The GPU workers up now as the devices, and their ComfyUI version (the About panel shows both)."""
    workers = [w for w in await ctx.store.list_workers() if w.state is not WorkerState.GONE]
    versions = [w.capabilities.comfyui_version for w in workers if w.capabilities.comfyui_version]
    return {
        "system": {
            "os": "posix",
            "ram_total": 0,
            "ram_free": 0,
            "comfyui_version": versions[0] if versions else "no GPU worker is up",
            "required_frontend_version": frontend_version(),
            "installed_templates_version": templates_version(),
            "required_templates_version": templates_version(),
            "python_version": platform.python_version(),
            "pytorch_version": "",
            "embedded_python": False,
            "argv": ["comfy-workshop"],
        },
        "devices": [device(index, worker) for index, worker in enumerate(workers)],
    }


def model_files_of(nodes: dict[str, Any], folder: str) -> list[str]:
    """A folder's files from its loader's list in the catalogue (``[]`` when no loader lists it)."""
    loader = MODEL_FOLDERS.get(folder)
    info = nodes.get(loader[0]) if loader else None
    spec = (info or {}).get("input", {}).get("required", {}).get(loader[1] if loader else "")
    if not spec:
        return []
    values = spec[0] if isinstance(spec[0], list) else spec_options(spec).get("options", [])
    return [str(value) for value in values if value not in NOT_FILES]


def server_features(settings: Settings) -> dict[str, Any]:
    """What ComfyUI tells the frontend it supports; the frontend refuses bigger files before sending."""
    return {"supports_preview_metadata": False, "max_upload_size": settings.max_upload_bytes}


@router.get("/features")
async def features(ctx: Context, user: Participant) -> dict[str, Any]:
    return server_features(ctx.store.settings)


@router.get("/embeddings")
async def embeddings(user: Participant) -> list[str]:
    return []


@router.get("/models")
async def model_types(user: Participant) -> list[str]:
    """ComfyUI's model folders."""
    return list(MODEL_FOLDERS)


@router.get("/models/{folder}")
async def models_in(folder: str, ctx: Context, user: Participant) -> Response:
    """The GPUs' files of one model folder, as their loader nodes list them; 404 for no such folder."""
    if folder not in MODEL_FOLDERS:
        return no_model_folder(folder)
    catalogue = await ctx.catalogue.current()
    return JSONResponse(model_files_of(catalogue.nodes, folder))


@router.get("/experiment/models")
async def model_folders(user: Participant) -> list[dict[str, Any]]:
    """The model library's folders, as ComfyUI lists them (not ``configs``, ``custom_nodes``); their
    directories are the GPUs' own and are not shown."""
    return [{"name": folder, "folders": []} for folder in MODEL_FOLDERS if folder not in NOT_IN_LIBRARY]


@router.get("/experiment/models/{folder}")
async def model_files(folder: str, ctx: Context, user: Participant) -> Response:
    """The model library's files of one folder: the GPUs' files, as in ``/models/<folder>``."""
    if folder not in MODEL_FOLDERS:
        return no_model_folder(folder)
    catalogue = await ctx.catalogue.current()
    weights = [name for name in model_files_of(catalogue.nodes, folder) if name.lower().endswith(WEIGHTS)]
    return JSONResponse([{"name": name, "pathIndex": 0} for name in weights])


def no_model_folder(folder: str) -> Response:
    return JSONResponse({"error": f"no model folder {folder!r}: GET /models lists them"}, status_code=404)


@router.get("/view_metadata/{folder}")
async def view_metadata(folder: str, user: Participant) -> Response:
    return Response(status_code=404)


@router.get("/i18n")
async def i18n(user: Participant) -> dict[str, Any]:
    return {}


@router.get("/workflow_templates")
async def workflow_templates(ctx: Context, user: Participant) -> dict[str, list[str]]:
    """The custom nodes' example workflows the workers published, as ComfyUI lists them: each pack
    -> its workflows' names without ``.json`` (the templates browser shows them under the pack)."""
    listed: dict[str, list[str]] = {}
    for path in sorted((await ctx.catalogue.current()).templates):
        pack, name = path.split("/", 1)
        listed.setdefault(pack, []).append(name.removesuffix(".json"))
    return listed


@router.get("/workflow_templates/{pack}/{name}")
async def workflow_template(pack: str, name: str, ctx: Context, user: Participant) -> Response:
    """One pack's example workflow, as ComfyUI serves the pack's folder."""
    found = (await ctx.catalogue.current()).templates.get(f"{pack}/{name}")
    if found is None:
        return Response(f"no example workflow {name!r} of {pack!r} on the workers", status_code=404)
    return Response(found, media_type="application/json")


@router.get("/internal/folder_paths")
async def folder_paths(user: Participant) -> dict[str, list[str]]:
    return {}


@router.get("/internal/logs")
async def logs(user: Participant) -> str:
    return ""


@router.get("/internal/logs/raw")
async def raw_logs(user: Participant) -> dict[str, Any]:
    return {"size": {"cols": 80, "row": 24}, "entries": []}


@router.patch("/internal/logs/subscribe")
async def subscribe_logs(request: Request, user: Participant) -> Response:
    return Response(status_code=200)
