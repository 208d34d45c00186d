"""Drive a ComfyUI-speaking server through one recorded case and normalise what it answers.

One case is a list of steps (data, stored in the fixture with the answers). The same driver runs
them against the real ComfyUI when recording and against the double or a workspace when replaying,
so a difference in the answers is a difference of the servers, never of the drivers.

Steps (each a dict with one of these keys):

* ``{"connect": "a"}``: open a socket ``/ws?clientId=a`` and keep every frame it receives.
* ``{"request": {"method", "path", "json"?, "upload"?}, "compare"?: [...]}``: one HTTP call. ``path``
  is ComfyUI's route (``/prompt``), ``upload`` a multipart form (``fields`` and a ``file`` given as
  ``name`` + base64 ``content``). The answer is ``{"status", "body"}``; a non-JSON body is summarised
  as its content type, size and SHA-256. ``compare`` narrows the comparison to some of
  ``status``, ``body``, ``content_type`` (an output PNG is the node's own rendering: the double draws
  other pixels) and ``png_text``: with ``"png_text": true`` in the request, the PNG's text chunks,
  where a saved image carries its graph (``prompt``, as node id -> class: a workspace's worker adds
  its cache salt to the output nodes' inputs) and the page's workflow (what dropping it on a canvas
  loads), the double's own chunk left out.
* ``{"wait": {"client", "type", "data"?}}``: until that socket has received a frame of that type whose
  data contains ``data`` (bounded).
* ``{"idle": true}``: until ``GET /queue`` is empty (bounded).

Normalising: prompt ids (UUIDs) become ``{prompt:N}`` in order of first appearance, queue numbers
``{number:N}`` likewise, times ``{time}``, tracebacks ``{traceback}``, absolute directories in
exception messages ``{dir}/``, a model folder's directories ``{folders}``. Requests are stored
normalised; the driver puts the server's real ids back before sending. Runs of
``progress``/``progress_state`` frames of one running node (a node that reports progress as it
likes, e.g. every 10 ms) become one of each with values ``{value}``. Messages of the workshop's own
web extension (``comfy-workshop.*``) are left out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from PIL import Image

from devkit.doubles.comfyui_nodes import PNG_META_KEY

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PLACEHOLDER = re.compile(r"\{prompt:\d+\}")
TIME_KEYS = {"timestamp", "create_time"}
PREVIEW_NAME = re.compile(r"ComfyUI_temp_[a-z]{5}_")  # PreviewImage's random prefix
ABSOLUTE_DIR = re.compile(r"(?<=')/[^']*/(?=[^'/]*')")
PROGRESS_EVENTS = {"progress", "progress_state"}
EXTENSION_MESSAGES = "comfy-workshop."
WAIT_SECONDS = 30.0

Frame = dict[str, Any]


@dataclass
class Target:
    """Where the server is: ``http`` is the base its ComfyUI routes hang from (``/prompt`` is
    ``{http}/prompt``), ``ws`` the socket's URL without query; ``headers`` go on every request and
    on the socket (a participant's credentials)."""

    http: str
    ws: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Ids:
    """Real ids <-> placeholders, in order of first appearance."""

    prompts: dict[str, str] = field(default_factory=dict)
    numbers: dict[int, str] = field(default_factory=dict)

    def prompt(self, real: str) -> str:
        return self.prompts.setdefault(real, f"{{prompt:{len(self.prompts) + 1}}}")

    def number(self, real: int) -> str:
        return self.numbers.setdefault(real, f"{{number:{len(self.numbers)}}}")

    def real(self, text: str) -> str:
        """Put real prompt ids back into a stored request."""
        back = {placeholder: real for real, placeholder in self.prompts.items()}
        return PLACEHOLDER.sub(lambda m: back.get(m.group(0), m.group(0)), text)

    def text(self, value: str) -> str:
        return PREVIEW_NAME.sub("ComfyUI_temp_{random}_", UUID.sub(lambda m: self.prompt(m.group(0)), value))

    def normalise(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {self.text(k): self.normalise(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return self._list(value, key)
        if key in TIME_KEYS and isinstance(value, int | float):
            return "{time}"
        if key == "number" and isinstance(value, int):
            return self.number(value)
        if isinstance(value, str):
            return (
                ABSOLUTE_DIR.sub("{dir}/", self.text(value))
                if key == "exception_message"
                else self.text(value)
            )
        return value

    def _list(self, value: list[Any], key: str) -> Any:
        if key == "traceback":
            return "{traceback}"
        if key == "folders":  # a model folder's directories on the server's disk (a workspace shows none)
            return "{folders}"
        if key == "current_outputs":  # the node ids ComfyUI's output cache holds: a set, any order
            return sorted(self.normalise(item) for item in value)
        if is_queue_row(value):
            # [number, prompt_id, prompt, extra_data, outputs to execute (a set in ComfyUI: any order)]
            prompt_id, prompt, extra, outputs, *rest = (self.normalise(item) for item in value[1:])
            return [self.number(value[0]), prompt_id, prompt, extra, sorted(outputs), *rest]
        return [self.normalise(item) for item in value]


def is_queue_row(value: list[Any]) -> bool:
    """A ``/queue`` row or a history entry's ``prompt``: [number, prompt_id, prompt, extra_data, outputs]."""
    return (
        len(value) >= 5
        and isinstance(value[0], int)
        and isinstance(value[1], str)
        and isinstance(value[2], dict)
        and isinstance(value[4], list)
    )


def collapse_progress(frames: list[Frame]) -> list[Frame]:
    """Each run of ``progress``, ``progress_state`` and ``status`` frames (between two other job
    events) as its distinct progress shapes, then its ``status`` frames: while a node reports steps,
    a ``status`` broadcast lands between any two of them."""
    out: list[Frame] = []
    shapes: list[Frame] = []
    statuses: list[Frame] = []
    for frame in frames:
        kind = frame.get("type")
        if kind == "status":
            statuses.append(frame)
        elif kind in PROGRESS_EVENTS:
            shape = _progress_shape(frame)
            if shape not in shapes:
                shapes.append(shape)
        else:
            out += shapes + statuses + [frame]
            shapes, statuses = [], []
    return out + shapes + statuses


def _progress_shape(frame: Frame) -> Frame:
    """The frame without its step values: what stays the same while one node reports steps."""
    data = json.loads(json.dumps(frame["data"]))
    if frame["type"] == "progress":
        data["value"] = "{value}"
    else:
        for node in data.get("nodes", {}).values():
            if node.get("state") == "running":
                node["value"], node["max"] = "{value}", "{value}"
    return {"type": frame["type"], "data": data}


def binary_frame(data: bytes) -> Frame:
    """A binary socket frame: event and format words, then the payload's size (its pixels are the node's)."""
    event, fmt = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")
    return {
        "type": "binary",
        "data": {"event": event, "format": fmt, "png": data[8:16] == b"\x89PNG\r\n\x1a\n"},
    }


@dataclass
class Socket:
    frames: list[Frame] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Driver:
    """Runs steps against one server; ``sockets`` hold every frame each client id received."""

    def __init__(self, target: Target, client: httpx.AsyncClient) -> None:
        self.target, self.client = target, client
        self.ids = Ids()
        self.wait_seconds = WAIT_SECONDS
        self.sockets: dict[str, Socket] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._open: list[Any] = []

    async def connect(self, client_id: str) -> None:
        url = f"{self.target.ws}?clientId={client_id}"
        socket = await websockets.connect(
            url, additional_headers=self.target.headers, open_timeout=10, max_size=None
        )
        self._open.append(socket)
        self.sockets[client_id] = Socket()
        self._tasks.append(asyncio.create_task(self._listen(socket, self.sockets[client_id])))
        await self.wait_frame({"client": client_id, "type": "status"})

    async def _listen(self, socket: Any, sink: Socket) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in socket:
                sink.frames.append(binary_frame(raw) if isinstance(raw, bytes) else json.loads(raw))
                sink.changed.set()

    async def close(self) -> None:
        for socket in self._open:
            await socket.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_frame(self, wanted: dict[str, Any]) -> None:
        sink = self.sockets[wanted["client"]]
        expected = json.loads(self.ids.real(json.dumps(wanted.get("data", {}))))
        try:
            async with asyncio.timeout(self.wait_seconds):
                while not any(_matches(frame, wanted["type"], expected) for frame in sink.frames):
                    sink.changed.clear()
                    await sink.changed.wait()
        except TimeoutError:
            heard = [frame.get("type") for frame in self.ids.normalise(sink.frames)]
            raise AssertionError(f"no {wanted} within {self.wait_seconds} s; client heard {heard}") from None

    async def idle(self) -> None:
        async with asyncio.timeout(self.wait_seconds):
            while True:
                queue = (await self.client.get(f"{self.target.http}/queue")).json()
                if not queue["queue_running"] and not queue["queue_pending"]:
                    return
                await asyncio.sleep(0.05)  # polling the server's queue for a state change

    async def request(self, spec: dict[str, Any]) -> dict[str, Any]:
        url = self.target.http + self.ids.real(spec["path"])
        kwargs: dict[str, Any] = {}
        if "json" in spec:
            kwargs["content"] = self.ids.real(json.dumps(spec["json"]))
            kwargs["headers"] = {"Content-Type": "application/json"}
        if "upload" in spec:
            kwargs["files"] = multipart(spec["upload"])
        reply = await self.client.request(spec["method"], url, **kwargs)
        text = {"png_text": self.ids.normalise(png_text(reply.content))} if spec.get("png_text") else {}
        return {"status": reply.status_code, **self._body(reply), **text}

    def _body(self, reply: httpx.Response) -> dict[str, Any]:
        kind = reply.headers.get("content-type", "").split(";")[0]
        if kind == "application/json":
            return {"content_type": kind, "body": self.ids.normalise(reply.json())}
        if not reply.content:
            return {"content_type": kind or None, "body": None}
        digest = hashlib.sha256(reply.content).hexdigest()
        return {"content_type": kind, "body": {"size": len(reply.content), "sha256": digest}}

    async def run(self, steps: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """Every step in order; the HTTP answers (None for the other steps)."""
        answers: list[dict[str, Any] | None] = []
        for step in steps:
            answers.append(await self.step(step))
        return answers

    async def step(self, step: dict[str, Any]) -> dict[str, Any] | None:
        if "connect" in step:
            await self.connect(step["connect"])
        elif "wait" in step:
            await self.wait_frame(step["wait"])
        elif "idle" in step:
            await self.idle()
        else:
            return await self.request(step["request"])
        return None

    async def settle(self, expected: dict[str, int] | None = None, quiet: float = 0.5) -> None:
        """Until each socket has ``expected`` frames (normalised, as recorded) and then nothing more
        arrives for ``quiet`` seconds: late or extra frames show in the comparison."""
        with contextlib.suppress(TimeoutError):  # fewer frames than recorded: the comparison says which
            async with asyncio.timeout(self.wait_seconds):
                for cid, count in (expected or {}).items():
                    while cid in self.sockets and len(self.frames()[cid]) < count:
                        self.sockets[cid].changed.clear()
                        await self.sockets[cid].changed.wait()
        async with asyncio.timeout(self.wait_seconds):
            while True:
                counts = [len(sink.frames) for sink in self.sockets.values()]
                await asyncio.sleep(quiet)  # a quiet spell: no more frames on their way
                if counts == [len(sink.frames) for sink in self.sockets.values()]:
                    return

    def frames(self) -> dict[str, list[Frame]]:
        """Each client's frames, normalised, progress runs collapsed, without the workshop's own."""
        return {
            cid: collapse_progress(self.ids.normalise([f for f in sink.frames if not workshops_own(f)]))
            for cid, sink in self.sockets.items()
        }


def png_text(content: bytes) -> dict[str, Any]:
    """A PNG's text chunks, each parsed as the JSON ComfyUI writes there; ``prompt`` as its node
    classes only (see the module's note), the double's own chunk left out."""
    with Image.open(io.BytesIO(content)) as image:
        chunks: dict[str, str] = dict(getattr(image, "text", {}))
    found = {key: json.loads(value) for key, value in chunks.items() if key != PNG_META_KEY.decode()}
    if isinstance(found.get("prompt"), dict):
        found["prompt"] = {nid: node.get("class_type") for nid, node in found["prompt"].items()}
    return found


def workshops_own(frame: Frame) -> bool:
    """A message of the workshop's own web extension (``comfy-workshop.place``), which a ComfyUI
    without it never sends: not compared (``tests/services/workspaces/test_socket.py`` checks it)."""
    return str(frame.get("type", "")).startswith(EXTENSION_MESSAGES)


def multipart(upload: dict[str, Any]) -> list[tuple[str, tuple[str | None, Any, str | None]]]:
    """The form's fields and (when given) its ``image`` file, always as multipart."""
    parts: list[tuple[str, tuple[str | None, Any, str | None]]] = [
        (name, (None, value, None)) for name, value in upload.get("fields", {}).items()
    ]
    if "file" in upload:
        content = base64.b64decode(upload["file"]["content"])
        parts.append(("image", (upload["file"]["name"], content, "image/png")))
    return parts


def _matches(frame: Frame, kind: str, data: dict[str, Any]) -> bool:
    return frame.get("type") == kind and all(frame.get("data", {}).get(k) == v for k, v in data.items())


@contextlib.asynccontextmanager
async def driving(target: Target) -> AsyncIterator[Driver]:
    async with httpx.AsyncClient(headers=target.headers, timeout=30) as client:
        driver = Driver(target, client)
        try:
            yield driver
        finally:
            await driver.close()


def compared(answer: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """The parts of an answer a step compares (all by default)."""
    return {k: v for k, v in answer.items() if fields is None or k in fields}


async def play(
    target: Target,
    steps: list[dict[str, Any]],
    expected: dict[str, int] | None = None,
    quiet: float = 0.5,
    wait_seconds: float = WAIT_SECONDS,
) -> dict[str, Any]:
    """Run ``steps`` against ``target``: the steps with their answers, and every client's frames."""
    steps = [{k: v for k, v in step.items() if k != "answer"} for step in steps]
    async with driving(target) as driver:
        driver.wait_seconds = wait_seconds
        answers = await driver.run(steps)
        await driver.settle(expected, quiet)
        pairs = zip(steps, answers, strict=True)
        played = [step if answer is None else {**step, "answer": answer} for step, answer in pairs]
        return {"steps": played, "sockets": driver.frames()}


async def replay(target: Target, recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded case against ``target``, waiting for as many frames as were recorded."""
    expected = {cid: len(frames) for cid, frames in recorded["sockets"].items()}
    return await play(target, recorded["steps"], expected, quiet=0.3, wait_seconds=10)


def differences(recorded: dict[str, Any], replayed: dict[str, Any]) -> list[str]:
    """Field by field, where the replay differs from the recording (only the fields a step compares)."""
    found: list[str] = []
    for index, (want, got) in enumerate(zip(recorded["steps"], replayed["steps"], strict=False)):
        if "answer" in want:
            where = f"step {index} {want['request']['method']} {want['request']['path']}"
            fields = want.get("compare")
            _diff(compared(want["answer"], fields), compared(got["answer"], fields), where, found)
    for cid, frames in recorded["sockets"].items():
        got = replayed["sockets"].get(cid, [])
        if len(frames) != len(got):
            kinds = [frame["type"] for frame in frames], [frame["type"] for frame in got]
            found.append(f"socket {cid}: recorded {kinds[0]}, got {kinds[1]}")
        _diff(frames, got, f"socket {cid}", found)
    return found


def _diff(want: Any, got: Any, where: str, found: list[str]) -> None:
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(set(want) | set(got), key=str):
            if key not in got:
                found.append(f"{where}.{key}: missing (recorded {json.dumps(want[key])[:200]})")
            elif key not in want:
                found.append(f"{where}.{key}: not in the recording (got {json.dumps(got[key])[:200]})")
            else:
                _diff(want[key], got[key], f"{where}.{key}", found)
    elif (
        isinstance(want, list)
        and isinstance(got, list)
        and (len(want) == len(got) or where.startswith("socket"))
    ):
        for index, (a, b) in enumerate(zip(want, got, strict=False)):
            _diff(a, b, f"{where}[{index}]", found)
    elif want != got:
        found.append(f"{where}: recorded {json.dumps(want)[:300]}, got {json.dumps(got)[:300]}")
