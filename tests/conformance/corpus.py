"""The recorded corpus: what a participant's page or script does to ComfyUI, case by case.

Each case is a list of driver steps (see ``driver``). Every case uses its own colours and filename
prefixes, so one ComfyUI can record them all in a row without one case's cache or files showing
in another's answers; prompt ids are written as the placeholders the driver gives them in order
(``{prompt:1}`` is the first prompt id the server named).
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from PIL import Image

from devkit.doubles.comfyui_nodes import image_bytes

Step = dict[str, Any]

# A slow node from ComfyUI's own test nodes (tests/execution/testing_nodes): it sleeps ``seconds``,
# reporting progress as it goes, and is where an interrupt lands.
SLEEP = "TestSleep"
# An output node from the same test nodes that returns an image and no ui.
OUTPUT_WITHOUT_UI = "TestOutputNodeWithSocketOutput"


def graph(color: int, prefix: str) -> dict[str, Any]:
    """EmptyImage -> ImageInvert -> SaveImage: the no-model job."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def slow_graph(color: int, prefix: str, seconds: float = 30.0) -> dict[str, Any]:
    """EmptyImage -> TestSleep -> SaveImage: runs until interrupted."""
    prompt = graph(color, prefix)
    prompt["2"] = {"class_type": SLEEP, "inputs": {"value": ["1", 0], "seconds": seconds}}
    return prompt


def post(path: str, body: Any, compare: list[str] | None = None) -> Step:
    step: Step = {"request": {"method": "POST", "path": path, "json": body}}
    return {**step, "compare": compare} if compare else step


def get(path: str, compare: list[str] | None = None) -> Step:
    step: Step = {"request": {"method": "GET", "path": path}}
    return {**step, "compare": compare} if compare else step


def queue(prompt: dict[str, Any], client: str | None = "a", **extra: Any) -> Step:
    body: dict[str, Any] = {"prompt": prompt, **extra}
    if client is not None:
        body["client_id"] = client
    return post("/prompt", body)


def wait(client: str, kind: str, **data: Any) -> Step:
    return {"wait": {"client": client, "type": kind, "data": data}}


def done(prompt: int, client: str = "a") -> Step:
    """Until the client heard the prompt's final ``executing {node: null}``."""
    return wait(client, "executing", node=None, prompt_id=f"{{prompt:{prompt}}}")


def upload(name: str, content: bytes, route: str = "/upload/image", **fields: str) -> Step:
    file = {"name": name, "content": base64.b64encode(content).decode()}
    return {"request": {"method": "POST", "path": route, "upload": {"fields": fields, "file": file}}}


def rejected(prompt: dict[str, Any] | None, **extra: Any) -> list[Step]:
    """A graph refused at submission: nothing is queued."""
    body: dict[str, Any] = {"client_id": "a", **extra}
    if prompt is not None:
        body["prompt"] = prompt
    return [post("/prompt", body), get("/queue")]


def _with(prompt: dict[str, Any], node: str, **inputs: Any) -> dict[str, Any]:
    changed = {**prompt, node: {**prompt[node], "inputs": {**prompt[node]["inputs"], **inputs}}}
    return changed


def _without(prompt: dict[str, Any], node: str, name: str) -> dict[str, Any]:
    inputs = {k: v for k, v in prompt[node]["inputs"].items() if k != name}
    return {**prompt, node: {**prompt[node], "inputs": inputs}}


PNG = image_bytes({"width": 8, "height": 8, "color": 0x336699}, 0)


def object_info() -> list[Step]:
    """The node specs the corpus uses (LoadImage's choices: the input folder, empty at first)."""
    return [
        get(f"/object_info/{name}") for name in ("EmptyImage", "ImageInvert", "SaveImage", "LoadImage", SLEEP)
    ]


def success() -> list[Step]:
    return [
        {"connect": "a"},
        queue(graph(0x000101, "success")),
        done(1),
        get("/history/{prompt:1}"),
        get("/view?filename=success_00001_.png&subfolder=&type=output", compare=["status", "content_type"]),
        get("/queue"),
    ]


# The page's graph as the frontend sends it with a job (``extra_data.extra_pnginfo.workflow``).
WORKFLOW = {
    "last_node_id": 3,
    "nodes": [{"id": 1, "type": "EmptyImage"}, {"id": 3, "type": "SaveImage", "title": "Sävé ✓"}],
    "links": [],
    "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
    "version": 0.4,
}


def png_workflow() -> list[Step]:
    """A saved image carries its graph and the page's workflow in its PNG text: dropping the image
    on a canvas (or opening it from the history) loads that workflow."""
    view = get("/view?filename=embedded_00001_.png&type=output", ["status", "content_type", "png_text"])
    view["request"]["png_text"] = True
    extra = {"extra_pnginfo": {"workflow": WORKFLOW}}
    return [{"connect": "a"}, queue(graph(0x0E0E0E, "embedded"), extra_data=extra), done(1), view]


def saved_in_folders() -> list[Step]:
    """ "Save Image" with a prefix naming folders, and a batch of three: each image in the history
    and the socket with its subfolder, and viewable there (the queue sidebar's previews)."""
    batch = _with(graph(0x0A0B0C, "shoot/day 1/batch"), "1", batch_size=3)
    view = "/view?filename=batch_{n:05}_.png&subfolder=shoot/day%201&type=output"
    return [
        {"connect": "a"},
        queue(batch),
        done(1),
        get("/history/{prompt:1}"),
        *[get(view.format(n=n), ["status", "content_type"]) for n in (1, 3)],
        get("/view?filename=batch_00001_.png&type=output", ["status"]),
        get("/view?filename=batch_00001_.png&subfolder=shoot&type=output", ["status"]),
    ]


def validation() -> dict[str, list[Step]]:
    """Each kind of graph ComfyUI refuses at ``POST /prompt``."""
    base = graph(0x000202, "invalid")
    cycle = {
        **base,
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["4", 0]}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
    }
    load = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "no-such-file.png"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "invalid"}},
    }
    return {
        "validation_value_below_min": rejected(_with(base, "1", width=0)),
        "validation_required_input_missing": rejected(_without(base, "1", "height")),
        "validation_link_to_missing_node": rejected(_with(base, "2", image=["99", 0])),
        "validation_cycle": rejected(cycle),
        "validation_file_does_not_exist": rejected(load),
        "validation_empty_partial_targets": rejected(base, partial_execution_targets=[]),
        "validation_no_outputs": rejected({"1": base["1"], "2": base["2"]}),
        "validation_unknown_class_type": rejected({**base, "2": {"class_type": "NoSuchNode", "inputs": {}}}),
        "validation_no_prompt": rejected(None),
    }


def runtime_error() -> list[Step]:
    """A file that is not an image: validation passes (the name exists), LoadImage raises."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "not-an-image.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "runtime"}},
    }
    return [
        {"connect": "a"},
        upload("not-an-image.png", b"this is text, not a PNG\n", type="input", overwrite="true"),
        queue(prompt),
        done(1),
        get("/history/{prompt:1}"),
    ]


def value_for_a_link() -> list[Step]:
    """A plain value where a link belongs: ComfyUI checks no value of a type without a widget
    (IMAGE), so the graph is queued and the node fails when it runs."""
    prompt = _with(graph(0x001101, "value-for-link"), "2", image="not-a-link")
    return [{"connect": "a"}, queue(prompt), done(1), get("/history/{prompt:1}"), get("/queue")]


def interrupt() -> list[Step]:
    return [
        {"connect": "a"},
        queue(slow_graph(0x000303, "interrupted")),
        wait("a", "executing", node="2", prompt_id="{prompt:1}"),
        post("/interrupt", {"prompt_id": "{prompt:1}"}),
        done(1),
        get("/history/{prompt:1}"),
        get("/queue"),
    ]


def reconnect() -> list[Step]:
    """The tab whose job runs reconnects its socket (same client id: a network blip, a laptop that
    slept): right after ``status`` ComfyUI tells it the node that runs (``executing {node}``, no
    prompt id), and the frontend redraws that node as running; the node's steps follow. Another tab
    hears no such thing."""
    return [
        {"connect": "a"},
        queue(slow_graph(0x001501, "reconnected")),
        wait("a", "executing", node="2", prompt_id="{prompt:1}"),
        {"connect": "a"},
        {"connect": "b"},
        wait("a", "executing", node="2"),
        wait("a", "progress_state"),  # the node's steps go on to the new socket
        post("/interrupt", {"prompt_id": "{prompt:1}"}),
        done(1),
    ]


def cancel_pending() -> list[Step]:
    """A job behind a running one is deleted from the queue: it never runs."""
    return [
        {"connect": "a"},
        queue(slow_graph(0x000404, "running")),
        wait("a", "executing", node="2", prompt_id="{prompt:1}"),
        queue(graph(0x000405, "cancelled")),
        get("/queue"),
        post("/queue", {"delete": ["{prompt:2}"]}),
        get("/queue"),
        post("/interrupt", {}),
        done(1),
        {"idle": True},
        get("/history/{prompt:2}"),
        get("/queue"),
    ]


def output_reuse() -> list[Step]:
    """The same graph twice: the second run is answered from the cache, with the same files."""
    prompt = graph(0x000606, "reused")
    return [
        {"connect": "a"},
        queue(prompt),
        done(1),
        queue(prompt),
        done(2),
        get("/history/{prompt:1}"),
        get("/history/{prompt:2}"),
    ]


def output_reuse_after_another() -> list[Step]:
    """A graph, another sharing its first two nodes, then the first again: ComfyUI's cache keeps
    only the last prompt's nodes, so the rerun reuses those two and saves a new file."""
    return [
        {"connect": "a"},
        queue(graph(0x000607, "again")),
        done(1),
        queue(graph(0x000607, "between")),
        done(2),
        queue(graph(0x000607, "again")),
        done(3),
        get("/history/{prompt:3}"),
    ]


def history_paging() -> list[Step]:
    steps: list[Step] = [post("/history", {"clear": True}), {"connect": "a"}]
    for n in range(1, 4):
        steps += [queue(graph(0x000700 + n, f"paged{n}")), done(n)]
    pages = ["max_items=2", "offset=1&max_items=1", "offset=1", "max_items=1&offset=0"]
    steps += [get(f"/history?{page}") for page in pages]
    return [*steps, post("/history", {"delete": ["{prompt:2}"]}), get("/history")]


def history_negative_paging() -> list[Step]:
    """Negative counts, as a script mirroring ComfyUI's own defaults (``offset=-1``) sends them."""
    steps: list[Step] = [post("/history", {"clear": True}), {"connect": "a"}]
    for n in range(1, 4):
        steps += [queue(graph(0x001200 + n, f"negative{n}")), done(n)]
    pages = ["offset=-1", "offset=-1&max_items=2", "max_items=-1", "offset=1&max_items=-1", "offset=-5"]
    return steps + [get(f"/history?{page}") for page in pages]


def two_clients() -> list[Step]:
    """Two tabs of one user: each hears its own job's events; ``status`` reaches both."""
    return [
        {"connect": "a"},
        {"connect": "b"},
        queue(graph(0x000801, "tab-a"), client="a"),
        done(1, "a"),
        {"idle": True},
        queue(graph(0x000802, "tab-b"), client="b"),
        done(2, "b"),
        {"idle": True},
    ]


def upload_and_view() -> list[Step]:
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "uploaded.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "from-upload"}},
    }
    return [
        {"connect": "a"},
        upload("uploaded.png", PNG, type="input", overwrite="true"),
        upload("uploaded.png", PNG, type="input"),
        upload("nested.png", PNG, type="input", subfolder="mine", overwrite="true"),
        get("/view?filename=uploaded.png&type=input"),
        get("/view?filename=nested.png&subfolder=mine&type=input"),
        get("/view?filename=never-uploaded.png&type=input", STATUS),
        queue(prompt),
        done(1),
        get("/history/{prompt:1}"),
        get("/view?filename=from-upload_00001_.png&type=output", compare=["status", "content_type"]),
    ]


def mask_only() -> bytes:
    """What the stock mask editor sends to /upload/mask: no colours, only the painted alpha."""
    mask = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 255), (2, 2, 6, 6))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def mask_editor_save() -> list[Step]:
    """The mask editor's save: the mask's alpha goes onto the original's colours (and text chunks)."""
    original = json.dumps({"filename": "mask-base.png", "subfolder": "", "type": "input"})
    return [
        upload("mask-base.png", PNG, type="input", overwrite="true"),
        upload(
            "clipspace-mask-1.png",
            mask_only(),
            "/upload/mask",
            type="input",
            subfolder="clipspace",
            original_ref=original,
        ),
        get("/view?filename=clipspace-mask-1.png&subfolder=clipspace&type=input"),
        get("/view?filename=clipspace-mask-1.png&subfolder=clipspace&type=input&channel=rgb"),
    ]


def clipspace(name: str, extra: str = "") -> Step:
    return get(f"/view?filename={name}&subfolder=clipspace&type=input{extra}")


def mask_save(stamp: int, painted_on: str, mask: bytes) -> list[Step]:
    """One save of the stock mask editor (1.27): its four layers into 'clipspace/', in its order.
    The masked image goes onto the image the editor opened (``painted_on``, in 'clipspace/' when
    it opened a masked one), the painted-masked image onto the painted image it uploads first."""

    def ref(filename: str, subfolder: str = "clipspace") -> str:
        return json.dumps({"filename": filename, "subfolder": subfolder, "type": "input"})

    opened = ref(painted_on, "clipspace" if painted_on.startswith("clipspace-") else "")
    fields = {"type": "input", "subfolder": "clipspace"}
    return [
        upload(f"clipspace-mask-{stamp}.png", mask, "/upload/mask", original_ref=opened, **fields),
        upload(f"clipspace-paint-{stamp}.png", no_paint(), original_ref=opened, **fields),
        upload(f"clipspace-painted-{stamp}.png", PNG, original_ref=opened, **fields),
        upload(
            f"clipspace-painted-masked-{stamp}.png",
            mask,
            "/upload/mask",
            original_ref=ref(f"clipspace-painted-{stamp}.png"),
            **fields,
        ),
    ]


def no_paint() -> bytes:
    """The mask editor's paint layer when nothing was painted in colour: transparent."""
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_editor_reopen() -> list[Step]:
    """A masked image opened again in the mask editor and saved with more mask: the editor reads the
    layers of its first save back (the mask's alpha and colours apart, the paint) before the second."""
    wider = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    wider.paste((0, 0, 0, 255), (1, 1, 7, 7))
    buffer = io.BytesIO()
    wider.save(buffer, format="PNG")
    return [
        upload("reopen-base.png", PNG, type="input", overwrite="true"),
        *mask_save(11, "reopen-base.png", mask_only()),
        clipspace("clipspace-mask-11.png", "&channel=a"),
        clipspace("clipspace-mask-11.png", "&channel=rgb"),
        clipspace("clipspace-paint-11.png"),
        *mask_save(12, "clipspace-mask-11.png", buffer.getvalue()),
        clipspace("clipspace-painted-masked-12.png"),
        clipspace("clipspace-painted-masked-12.png", "&channel=a"),
        clipspace("clipspace-mask-12.png", "&channel=rgb"),
    ]


def model_library() -> list[Step]:
    """What the frontend's model library and model widgets read (no model files on the recorder)."""
    return [
        get("/models"),
        get("/models/checkpoints"),
        get("/models/no-such-folder", STATUS),
        get("/experiment/models"),
        get("/experiment/models/checkpoints"),
        get("/experiment/models/configs"),
        get("/experiment/models/no-such-folder", STATUS),
        get("/embeddings"),
    ]


def saved_file(path: str) -> Step:
    return {
        "request": {
            "method": "POST",
            "path": f"/userdata/{path.replace('/', '%2F')}?overwrite=true",
            "json": {"nodes": []},
        }
    }


def userdata_listing() -> list[Step]:
    """Saved files as the workflow browser lists them: names starting with '.' are not listed (as
    ComfyUI's glob lists none), a recursive listing goes folder by folder, each folder's own files
    before its subfolders' (``aa/deep`` before ``sub``), and the listing's refusals are plain text.
    Deleted again at the end."""
    files = [
        "listed/z.json",
        "listed/a.json",
        "listed/.hidden.json",
        "listed/.dir/c.json",
        "listed/sub/b.json",
        "listed/sub/deeper/c.json",
        "listed/aa/deep/y.json",
        "listed/aa/x.json",
    ]
    listings = [
        "dir=listed",
        "dir=listed&recurse=true",
        "dir=listed&recurse=true&split=true",
        "dir=listed/.dir",
    ]
    return [
        *[saved_file(path) for path in files],
        *[get(f"/userdata?{query}") for query in listings],
        get("/userdata?dir=never-saved", compare=["status", "content_type"]),
        get("/userdata", compare=["status", "content_type"]),
        *[
            {"request": {"method": "DELETE", "path": f"/userdata/{path.replace('/', '%2F')}"}}
            for path in files
        ],
    ]


def object_info_more() -> list[Step]:
    return [get(f"/object_info/{name}") for name in ("ImageScale", "PreviewImage", "SaveImageWebsocket")]


def value_errors() -> list[Step]:
    """Every value error of one node at once: a choice not in the list, a number that is no number,
    one above the maximum."""
    prompt = {
        **graph(0x000A01, "values"),
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "bogus",
                "width": "wide",
                "height": 99999,
                "crop": "disabled",
            },
        },
    }
    return rejected(prompt)


def partial_failure() -> list[Step]:
    """One output fails validation, the other runs: 200 with the failing output's node_errors."""
    prompt = {
        **graph(0x000B01, "valid-output"),
        "4": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 64, "batch_size": 1, "color": 0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "invalid-output"}},
    }
    return [{"connect": "a"}, queue(prompt), done(1), get("/history/{prompt:1}")]


def two_outputs_one_image() -> list[Step]:
    """Three output nodes take the same image: each has its own outputs. No socket: ComfyUI runs the
    outputs in the order of a Python set, which changes from one run to the next."""
    prompt = {
        **graph(0x000C01, "twice-a"),
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "twice-b"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    return [queue(prompt, client=None), {"idle": True}, get("/history/{prompt:1}")]


def client_prompt_id() -> list[Step]:
    """A prompt id chosen by the client is kept; a prompt without client id runs without events."""
    return [
        {"connect": "a"},
        queue(graph(0x000D01, "chosen-id"), prompt_id="chosen-by-the-client"),
        wait("a", "executing", node=None, prompt_id="chosen-by-the-client"),
        queue(graph(0x000D02, "no-client"), client=None),
        {"idle": True},
        get("/history/chosen-by-the-client"),
        get("/history/{prompt:1}"),
    ]


def interrupt_waiting() -> list[Step]:
    """An interrupt naming a waiting prompt, not the running one: ComfyUI ignores it, both run."""
    return [
        {"connect": "a"},
        queue(slow_graph(0x001401, "interrupt-elsewhere", seconds=1.0)),
        wait("a", "executing", node="2", prompt_id="{prompt:1}"),
        queue(graph(0x001402, "interrupt-named")),
        post("/interrupt", {"prompt_id": "{prompt:2}"}),
        done(2),
        {"idle": True},
        get("/history/{prompt:1}"),
        get("/history/{prompt:2}"),
    ]


def queue_front() -> list[Step]:
    """``front: true`` (the frontend's Queue Front): the job goes before those already waiting, with
    a negative number. The running job sleeps a second and ends by itself."""
    return [
        {"connect": "a"},
        queue(slow_graph(0x001311, "first-running", seconds=1.0)),
        wait("a", "executing", node="2", prompt_id="{prompt:1}"),
        queue(graph(0x001312, "queued-back")),
        queue(graph(0x001313, "queued-front"), front=True),
        get("/queue"),
        done(2),
        {"idle": True},
    ]


def queue_clear() -> list[Step]:
    return [
        {"connect": "a"},
        queue(slow_graph(0x000E01, "clear-running")),
        wait("a", "executing", node="2", prompt_id="{prompt:1}"),
        queue(graph(0x000E02, "clear-1")),
        queue(graph(0x000E03, "clear-2")),
        post("/queue", {"clear": True}),
        get("/queue"),
        post("/interrupt", {}),
        done(1),
        {"idle": True},
        post("/interrupt", {}),
        get("/queue"),
    ]


def previews() -> list[Step]:
    """SaveImageWebsocket: each image as a binary preview frame to the submitting client only."""
    prompt = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 0x000F01},
        },
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }
    return [{"connect": "a"}, {"connect": "b"}, queue(prompt), done(1), get("/history/{prompt:1}")]


def cached_outputs() -> list[Step]:
    """Reruns, to hold ``executed`` against the history's ``outputs``: an output node that saves a
    batch (several images in one ``executed``), answered from the cache the second time; one without
    ui (ComfyUI's test node ``TestOutputNodeWithSocketOutput``: run, it sends no ``executed``; cached,
    ``executed`` with ``output: null``); SaveImageWebsocket, which ComfyUI never takes from its cache
    (its ``IS_CHANGED`` is the time). Neither of the last two has history outputs."""
    saved = _with(graph(0x001001, "cached"), "1", batch_size=2)
    no_ui = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x001002},
        },
        "2": {"class_type": OUTPUT_WITHOUT_UI, "inputs": {"image": ["1", 0], "value": 1.0}},
    }
    streamed = {**no_ui, "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}}
    steps: list[Step] = [{"connect": "a"}]
    for n, prompt in enumerate([saved, saved, no_ui, no_ui, streamed, streamed], 1):
        steps += [queue(prompt), done(n)]
    return steps + [get(f"/history/{{prompt:{n}}}") for n in range(1, 7)]


STATUS = ["status"]  # a refusal's body may say in our words what is wrong (ComfyUI sends none)


def view_and_upload_errors() -> list[Step]:
    return [
        get("/view?filename=../secret.png&type=input", STATUS),
        get("/view?filename=x.png&type=elsewhere", STATUS),
        get("/view?filename=x.png&subfolder=../..&type=input", STATUS),
        get("/view", STATUS),
        get("/view?filename=&type=input", STATUS),
        {**upload("x.png", PNG, type="input", subfolder="../outside"), "compare": STATUS},
        {
            "request": {"method": "POST", "path": "/upload/image", "upload": {"fields": {"type": "input"}}},
            "compare": STATUS,
        },
    ]


def cases() -> dict[str, list[Step]]:
    return {
        "object_info": object_info(),
        "success": success(),
        "png_workflow": png_workflow(),
        "saved_in_folders": saved_in_folders(),
        **validation(),
        "runtime_error": runtime_error(),
        "value_for_a_link": value_for_a_link(),
        "interrupt": interrupt(),
        "reconnect": reconnect(),
        "cancel_pending": cancel_pending(),
        "output_reuse": output_reuse(),
        "output_reuse_after_another": output_reuse_after_another(),
        "history_paging": history_paging(),
        "history_negative_paging": history_negative_paging(),
        "two_clients": two_clients(),
        "upload_and_view": upload_and_view(),
        "mask_editor_save": mask_editor_save(),
        "mask_editor_reopen": mask_editor_reopen(),
        "object_info_more": object_info_more(),
        "model_library": model_library(),
        "userdata_listing": userdata_listing(),
        "value_errors": value_errors(),
        "partial_failure": partial_failure(),
        "two_outputs_one_image": two_outputs_one_image(),
        "client_prompt_id": client_prompt_id(),
        "queue_clear": queue_clear(),
        "queue_front": queue_front(),
        "interrupt_waiting": interrupt_waiting(),
        "previews": previews(),
        "cached_outputs": cached_outputs(),
        "view_and_upload_errors": view_and_upload_errors(),
    }
