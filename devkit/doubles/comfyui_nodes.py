"""The ComfyUI double's node catalogue, prompt validation and node behaviours.

A small but realistic slice of ComfyUI v0.3.64's nodes, none of which needs model weights.
Images are not pixels here: an IMAGE is a dict (width, height, batch, color) and a saved PNG is a
real one-colour PNG (at most 256x256, so browsers show it) whose tEXt chunk carries that dict,
padded with zeros after IEND up to the requested size (decoders ignore trailing bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_META_KEY = b"comfy-double"
MP4_MAGIC = b"\x00\x00\x00\x18ftypmp42"
FLAC_MAGIC = b"fLaC"


def _int(default: int, low: int, high: int, **extra: Any) -> list[Any]:
    return ["INT", {"default": default, "min": low, "max": high, "step": 1, **extra}]


def node(
    name: str,
    required: dict[str, Any],
    output: list[str],
    category: str,
    output_node: bool = False,
    display: str | None = None,
    **more: Any,
) -> dict[str, Any]:
    """One ``/object_info`` entry as ComfyUI 0.3.64 shapes it (no ``optional`` or ``hidden`` key
    unless the node has such inputs). ``more``: ``hidden`` inputs, ``description``, ``python_module``."""
    hidden: dict[str, str] = more.get("hidden", {})
    inputs: dict[str, Any] = {"required": required, **({"hidden": hidden} if hidden else {})}
    order: dict[str, list[str]] = {"required": list(required), **({"hidden": list(hidden)} if hidden else {})}
    return {
        "input": inputs,
        "input_order": order,
        "output": output,
        "output_is_list": [False] * len(output),
        "output_name": output,
        "name": name,
        "display_name": display or name,
        "description": more.get("description", ""),
        "python_module": more.get("python_module", "nodes"),
        "category": category,
        "output_node": output_node,
    }


# ComfyUI's own test node (tests/execution/testing_nodes): sleeps ``seconds``, reporting progress.
TEST_SLEEP = node(
    "TestSleep",
    {
        "value": ["*", {}],
        "seconds": [
            "FLOAT",
            {
                "default": 1.0,
                "min": 0.0,
                "max": 9999.0,
                "step": 0.01,
                "tooltip": "The amount of seconds to sleep.",
            },
        ],
    },
    ["*"],
    "_for_testing",
    display="Test Sleep",
    hidden={"unique_id": "UNIQUE_ID"},
    python_module="custom_nodes.testing-pack",
)
# Another of those test nodes: an output node that passes its image on (times ``value``) and has no
# ui, so its cached rerun sends ``executed`` with ``output: null``.
TEST_OUTPUT_WITHOUT_UI = node(
    "TestOutputNodeWithSocketOutput",
    {"image": ["IMAGE"], "value": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0}]},
    ["IMAGE"],
    "_for_testing",
    output_node=True,
    display="Test Output Node With Socket Output",
    python_module="custom_nodes.testing-pack",
)
# Output nodes whose ``IS_CHANGED`` is the time: ComfyUI runs them in every prompt, never from its cache.
NEVER_CACHED = ("SaveImageWebsocket",)
SAVE_PREFIX_TOOLTIP = (
    "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% "
    "or %Empty Latent Image.width% to include values from nodes."
)


def catalogue(input_files: list[str]) -> dict[str, dict[str, Any]]:
    """``/object_info``: LoadImage's choices are the files in the input folder, as in ComfyUI."""
    images = sorted(f for f in input_files if not f.endswith((".flac", ".wav", ".mp3")))
    audio = sorted(f for f in input_files if f.endswith((".flac", ".wav", ".mp3")))
    prefix = ["STRING", {"default": "ComfyUI", "tooltip": SAVE_PREFIX_TOOLTIP}]
    nodes = [
        node(
            "EmptyImage",
            {
                "width": _int(512, 1, 16384),
                "height": _int(512, 1, 16384),
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
                "color": _int(0, 0, 0xFFFFFF, display="color"),
            },
            ["IMAGE"],
            "image",
        ),
        node("ImageInvert", {"image": ["IMAGE"]}, ["IMAGE"], "image", display="Invert Image"),
        node(
            "ImageScale",
            {
                "image": ["IMAGE"],
                "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
                "width": _int(512, 0, 16384),
                "height": _int(512, 0, 16384),
                "crop": [["disabled", "center"]],
            },
            ["IMAGE"],
            "image/upscaling",
            display="Upscale Image",
        ),
        node(
            "LoadImage",
            {"image": [images, {"image_upload": True}]},
            ["IMAGE", "MASK"],
            "image",
            display="Load Image",
        ),
        node(
            "SaveImage",
            {"images": ["IMAGE", {"tooltip": "The images to save."}], "filename_prefix": prefix},
            [],
            "image",
            True,
            display="Save Image",
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            description="Saves the input images to your ComfyUI output directory.",
        ),
        node(
            "PreviewImage",
            {"images": ["IMAGE"]},
            [],
            "image",
            True,
            display="Preview Image",
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            description="Saves the input images to your ComfyUI output directory.",
        ),
        node(
            "SaveImageWebsocket",
            {"images": ["IMAGE"]},
            [],
            "api/image",
            True,
            python_module="custom_nodes.websocket_image_save",
        ),
        node(
            "CreateVideo",
            {"images": ["IMAGE"], "fps": ["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}]},
            ["VIDEO"],
            "image/video",
            display="Create Video",
        ),
        node(
            "SaveVideo",
            {
                "video": ["VIDEO"],
                "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                "format": [["auto", "mp4"]],
                "codec": [["auto", "h264"]],
            },
            [],
            "image/video",
            True,
            display="Save Video",
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        ),
        node("LoadAudio", {"audio": [audio, {"audio_upload": True}]}, ["AUDIO"], "audio"),
        node(
            "SaveAudio",
            {"audio": ["AUDIO"], "filename_prefix": ["STRING", {"default": "audio/ComfyUI"}]},
            [],
            "audio",
            True,
            display="Save Audio (FLAC)",
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        ),
        TEST_SLEEP,
        TEST_OUTPUT_WITHOUT_UI,
    ]
    return {node["name"]: node for node in nodes}


FILE_LOADERS = ("LoadImage", "LoadAudio")


def ancestors(prompt: dict[str, Any], node_id: str, seen: list[str] | None = None) -> list[str]:
    """``node_id`` and every node it depends on, dependencies first."""
    seen = [] if seen is None else seen
    for value in prompt.get(node_id, {}).get("inputs", {}).values():
        if is_link(value) and str(value[0]) not in seen and str(value[0]) in prompt:
            ancestors(prompt, str(value[0]), seen)
    if node_id not in seen:
        seen.append(node_id)
    return seen


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


class NodeFailure(Exception):
    """A node raised during execution: becomes ``execution_error``."""

    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type


def exception_type(exc: Exception) -> str:
    """How ComfyUI names what a node raised: a builtin by its name, others with their module."""
    if isinstance(exc, NodeFailure):
        return exc.exception_type
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _invert(image: Any) -> dict[str, Any]:
    """ComfyUI's ``1.0 - image``: a value that is no image raises as that subtraction does."""
    if not isinstance(image, dict):
        return {"color": 1.0 - image}
    return {**image, "color": 0xFFFFFF - image["color"]}


@dataclass
class Folders:
    input: Path
    output: Path
    temp: Path
    output_bytes: int = 0
    previews: list[bytes] = field(default_factory=list)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def image_bytes(image: dict[str, Any], index: int, text: dict[str, str] | None = None) -> bytes:
    """A real, decodable PNG of one solid colour (browsers show it), its metadata in a tEXt chunk,
    then ``text`` (``png_text``) in tEXt chunks of their own, as ComfyUI's SaveImage writes them."""
    width, height = max(1, min(int(image["width"]), 256)), max(1, min(int(image["height"]), 256))
    color = int(image.get("color", 0)) & 0xFFFFFF
    row = b"\0" + bytes((color >> 16, (color >> 8) & 0xFF, color & 0xFF)) * width
    meta = json.dumps({**image, "index": index}).encode()
    chunks = (text or {}).items()
    return b"".join(
        (
            PNG_MAGIC,
            _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
            _png_chunk(b"tEXt", PNG_META_KEY + b"\0" + meta),
            *(_png_chunk(b"tEXt", f"{key}\0{value}".encode("latin-1")) for key, value in chunks),
            _png_chunk(b"IDAT", zlib.compress(row * height)),
            _png_chunk(b"IEND", b""),
        )
    )


def png_text(prompt: Any, extra_pnginfo: Any) -> dict[str, str]:
    """What ComfyUI's SaveImage and PreviewImage write into each PNG from their hidden inputs: the
    graph as ``prompt`` and every ``extra_pnginfo`` entry (the page's ``workflow``) under its own
    key, each as JSON (ASCII, so a plain tEXt chunk holds it). Dropping the image on a canvas loads
    that workflow."""
    text = {"prompt": json.dumps(prompt)} if prompt is not None else {}
    if isinstance(extra_pnginfo, dict):
        text.update({str(key): json.dumps(value) for key, value in extra_pnginfo.items()})
    return text


@cache
def _hidden() -> dict[str, dict[str, str]]:
    return {name: spec["input"].get("hidden", {}) for name, spec in catalogue([]).items()}


def hidden_inputs(class_type: str, prompt: dict[str, Any], extra_data: dict[str, Any]) -> dict[str, Any]:
    """The hidden inputs a node class asks for (``PROMPT``, ``EXTRA_PNGINFO``), as ComfyUI fills them."""
    values = {"PROMPT": prompt, "EXTRA_PNGINFO": extra_data.get("extra_pnginfo")}
    hidden = _hidden().get(class_type, {})
    return {name: values[kind] for name, kind in hidden.items() if kind in values}


def png_meta(data: bytes) -> dict[str, Any]:
    """The double's metadata from a PNG it wrote; older test inputs carry JSON right after the magic."""
    start = data.find(b"tEXt" + PNG_META_KEY + b"\0")
    if start < 0:
        return dict(json.loads(data[len(PNG_MAGIC) :].rstrip(b"\0")))
    (length,) = struct.unpack(">I", data[start - 4 : start])
    body = data[start + 4 : start + 4 + length]
    return dict(json.loads(body[len(PNG_META_KEY) + 1 :]))


def write_file(path: Path, header: bytes, size: int) -> None:
    """Write ``header`` padded with zeros up to ``size`` bytes, a megabyte at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(header)
        remaining = max(0, size - len(header))
        while remaining:
            block = min(remaining, 1 << 20)
            handle.write(b"\0" * block)
            remaining -= block


def _save(
    folders: Folders, base: Path, kind: str, prefix: str, ext: str, headers: list[bytes]
) -> list[dict[str, str]]:
    subfolder, _, stem = prefix.rpartition("/")
    if ".." in subfolder.split("/"):
        raise NodeFailure("Exception", "Saving image outside the output folder is not allowed.")
    folder = base / subfolder
    pattern = re.compile(rf"^{re.escape(stem)}_(\d+)_\.")
    taken = [int(m.group(1)) for p in folder.glob(f"{stem}_*") if (m := pattern.match(p.name))]
    counter = max(taken, default=0) + 1
    results = []
    for offset, header in enumerate(headers):
        name = f"{stem}_{counter + offset:05}_.{ext}"
        write_file(folder / name, header, folders.output_bytes)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
    return results


def annotated_path(folders: Folders, name: str) -> Path:
    """ComfyUI's ``folder_paths.get_annotated_filepath``: ``name [output]`` / ``[temp]`` / ``[input]``
    in that folder, else the input folder; joined with ``os.path.join`` and no check, as ComfyUI does
    (an absolute name, or one with ``..``, points anywhere)."""
    for suffix, kind in ((" [output]", "output"), (" [input]", "input"), (" [temp]", "temp")):
        if name.endswith(suffix):
            return Path(os.path.join(getattr(folders, kind), name.removesuffix(suffix)))
    return Path(os.path.join(folders.input, name))


def is_changed(folders: Folders, class_type: str, inputs: dict[str, Any]) -> str | None:
    """``IS_CHANGED``, part of the cache key: the file loaders' file content hash, ``NEVER_CACHED``'s
    time (here a new key every time)."""
    if class_type in NEVER_CACHED:
        return uuid.uuid4().hex
    if class_type not in FILE_LOADERS:
        return None
    path = annotated_path(folders, str(inputs.get("image", inputs.get("audio", ""))))
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _load_image(folders: Folders, name: str) -> dict[str, Any]:
    path = annotated_path(folders, name)
    data = path.read_bytes()[:4096]
    if not data.startswith(PNG_MAGIC):
        raise NodeFailure("PIL.UnidentifiedImageError", f"cannot identify image file '{path}'")
    try:
        meta = png_meta(data)
    except ValueError:
        meta = {"width": 64, "height": 64, "color": 0}
    return {
        "width": meta.get("width", 64),
        "height": meta.get("height", 64),
        "batch": 1,
        "color": meta.get("color", 0),
    }


Runner = Callable[[Folders, dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any] | None]]


def _save_image(f: Folders, i: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    text = png_text(i.get("prompt"), i.get("extra_pnginfo"))
    headers = [image_bytes(i["images"], n, text) for n in range(i["images"]["batch"])]
    return (), {"images": _save(f, f.output, "output", i["filename_prefix"], "png", headers)}


def preview_prefix() -> str:
    """PreviewImage's file prefix: ``ComfyUI_temp_`` and five random letters (ComfyUI's own alphabet)."""
    return "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))


def _preview(f: Folders, i: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    text = png_text(i.get("prompt"), i.get("extra_pnginfo"))
    headers = [image_bytes(i["images"], n, text) for n in range(i["images"]["batch"])]
    return (), {"images": _save(f, f.temp, "temp", preview_prefix(), "png", headers)}


def _websocket(f: Folders, i: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    f.previews.extend(image_bytes(i["images"], n) for n in range(i["images"]["batch"]))
    return (), None


def container_text(prompt: Any, extra_pnginfo: Any) -> bytes:
    """What ComfyUI's SaveVideo and SaveAudio put in the container's metadata (``png_text``'s
    entries), here as ``key=value`` lines after the double's own header."""
    return b"".join(f"\n{key}={value}".encode() for key, value in png_text(prompt, extra_pnginfo).items())


def _save_video(f: Folders, i: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    header = (
        MP4_MAGIC + json.dumps(i["video"]).encode() + container_text(i.get("prompt"), i.get("extra_pnginfo"))
    )
    return (), {
        "images": _save(f, f.output, "output", i["filename_prefix"], "mp4", [header]),
        "animated": [True],
    }


def _save_audio(f: Folders, i: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    header = (
        FLAC_MAGIC + json.dumps(i["audio"]).encode() + container_text(i.get("prompt"), i.get("extra_pnginfo"))
    )
    return (), {"audio": _save(f, f.output, "output", i["filename_prefix"], "flac", [header])}


RUNNERS: dict[str, Runner] = {
    "EmptyImage": lambda f, i: (
        ({"width": i["width"], "height": i["height"], "batch": i["batch_size"], "color": i["color"]},),
        None,
    ),
    "ImageInvert": lambda f, i: ((_invert(i["image"]),), None),
    "ImageScale": lambda f, i: (
        (
            {
                **i["image"],
                "width": i["width"] or i["image"]["width"],
                "height": i["height"] or i["image"]["height"],
            },
        ),
        None,
    ),
    "LoadImage": lambda f, i: ((_load_image(f, i["image"]), {"mask": True}), None),
    "LoadAudio": lambda f, i: (({"audio": i["audio"], "sample_rate": 44100},), None),
    "CreateVideo": lambda f, i: (({"frames": i["images"]["batch"], "fps": i["fps"]},), None),
    "TestSleep": lambda f, i: ((i["value"],), None),
    "TestOutputNodeWithSocketOutput": lambda f, i: (({**i["image"], "scaled": i["value"]},), None),
    "SaveImage": _save_image,
    "PreviewImage": _preview,
    "SaveImageWebsocket": _websocket,
    "SaveVideo": _save_video,
    "SaveAudio": _save_audio,
}
