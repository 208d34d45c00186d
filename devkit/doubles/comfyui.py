"""A ComfyUI double: a real HTTP + WebSocket server on loopback that behaves like ComfyUI v0.3.64.

It follows ``docs/comfyui-protocol.md``: every route also under ``/api``;
``POST /prompt`` honours a client-chosen ``prompt_id`` and a top-level ``partial_execution_targets``
("Run selected nodes": only those output nodes and their inputs are validated and run) and rejects
bad graphs with ComfyUI's 400 shape; job events reach only the socket whose ``clientId`` submitted
the job (a second socket with the same id replaces the first); events come in ComfyUI's order, and
``/history`` is written after ``execution_success`` but before the final ``executing {node: null}``;
identical graphs are replayed from the cache (same filenames, no new files); ``/interrupt`` is
targeted and acts between progress steps or after the running node (one that lands after the prompt
is listed as running but before its run begins is lost: the run clears the flag as it begins, before
``execution_start``); a restart loses history and
queue; a loopback Host with a foreign ``Origin`` gets 403; ``/extensions`` lists the frontend's
``core/`` shims and the custom packs' ``web_extensions`` (``<pack>/<file>.js`` -> source, given to
the constructor), each served under ``/extensions/``; ``/workflow_templates`` lists the packs'
example workflows (``workflow_templates``, ``<pack>/<name>.json`` -> JSON text), each served under
``/api/workflow_templates/``. ``LoadImage``/``LoadAudio`` take any name
whose (annotated: ``[input]``, ``[output]``, ``[temp]``) file exists, joined to the folder without a
check as ComfyUI does, and the file's content is part of their cache key (``IS_CHANGED``); an input
a node does not declare is not passed to it but is part of its cache key; ``SaveImage`` and
``PreviewImage`` get their hidden ``prompt`` and ``extra_pnginfo`` and write them into each PNG as
ComfyUI does (the page's workflow travels in the image). The node catalogue is in
``comfyui_nodes``.

Two ways to run it:

* in-process, on its own thread and event loop (fast; state and knobs are plain attributes)::

      with ComfyUIDouble(tmp_path) as comfy:
          comfy.knobs.node_seconds = 0.5
          httpx.post(f"{comfy.url}/prompt", json={...})

* as a subprocess taking ComfyUI's own flags, so a supervisor can start, kill and restart it::

      python -m devkit.doubles.comfyui --listen 127.0.0.1 --port 8188 --output-directory out \\
          --input-directory in --temp-directory tmp [--node-seconds 0.2 --output-bytes 1000000]

  (its temp folder is then ``tmp/temp``, as ComfyUI's)

Test knobs (``Knobs``; over HTTP: ``POST /__double__/knobs`` with a JSON object): ``node_seconds``
(execution time per node), ``progress_steps`` (``progress`` events per executed node, interrupt
checked between steps), ``silent`` (the socket stays open but sends nothing), ``output_bytes``
(pad every saved file to this size: large outputs), ``history_lag_seconds`` (delay between
``execution_success`` and the history write), ``startup_seconds`` (``/system_stats`` answers 503
until then). ``POST /__double__/crash`` ends the process at once, like a segfault.
``state.timings`` (``GET /__double__/timings``) holds each prompt's execution span
(``time.perf_counter`` at dequeue and before the final ``executing``).

Modules: this one (server, lifecycle, HTTP routes), ``comfyui_engine`` (queue, execution, events),
``comfyui_nodes`` (catalogue, validation, node behaviours).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from devkit.doubles import comfyui_nodes as nodes
from devkit.doubles.comfyui_engine import Executor, Item, Knobs, State
from devkit.doubles.comfyui_validation import PromptRejected, validate
from devkit.servers import free_port, wait_until
from services.queue_manager.workspaces.images import convert, merge_mask, wants_conversion
from services.queue_manager.workspaces.routes_info import MODEL_FOLDERS, NOT_IN_LIBRARY
from services.queue_manager.workspaces.userdata import glob_order, hidden

# The ComfyUI release this double stands in for (its recordings: tests/fixtures/comfyui/<version>/).
COMFYUI_VERSION = "0.3.64"
# ComfyUI lists the frontend package's own ``extensions/core`` shims in ``/extensions`` too.
CORE_EXTENSIONS = ("/extensions/core/clipspace.js", "/extensions/core/groupNode.js")


class OriginCheck:
    """ComfyUI's quirk: loopback Host plus a non-matching Origin answers 403."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            host, origin = headers.get("host", ""), headers.get("origin")
            if (
                origin
                and host.split(":")[0] in ("127.0.0.1", "localhost")
                and urlparse(origin).netloc != host
            ):
                if scope["type"] == "http":
                    await Response(status_code=403)(scope, receive, send)
                else:
                    await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)


def history_page(history: dict[str, Any], max_items: int | None, offset: int) -> dict[str, Any]:
    """ComfyUI's ``GET /history?max_items=&offset=``: oldest first from ``offset``; without an
    offset (or a negative one) and with ``max_items``, the newest ``max_items``."""
    if offset < 0 and max_items is not None:
        offset = len(history) - max_items
    entries = list(history.items())[max(offset, 0) :]
    return dict(entries[:max_items] if max_items is not None else entries)


def partial_targets(body: dict[str, Any]) -> list[str] | None:
    """``partial_execution_targets`` from the top level of a ``POST /prompt`` body, as ComfyUI reads it."""
    targets = body.get("partial_execution_targets")
    return None if targets is None else [str(target) for target in targets]


class ComfyUIDouble(Executor):
    def __init__(
        self,
        root: Path,
        port: int = 0,
        knobs: Knobs | None = None,
        input_dir: Path | None = None,
        output_dir: Path | None = None,
        temp_dir: Path | None = None,
        web_extensions: dict[str, str] | None = None,
        workflow_templates: dict[str, str] | None = None,
    ):
        self.port = port or free_port()
        # Custom nodes' WEB_DIRECTORY files, ``<pack>/<file>.js`` -> source (none unless given).
        self.web_extensions = dict(web_extensions or {})
        # Custom nodes' example workflows, ``<pack>/<name>.json`` -> its JSON text (none unless given).
        self.workflow_templates = dict(workflow_templates or {})
        self.knobs = knobs or Knobs()
        self.folders = nodes.Folders(
            input_dir or root / "input", output_dir or root / "output", temp_dir or root / "temp"
        )
        for folder in (self.folders.input, self.folders.output, self.folders.temp):
            folder.mkdir(parents=True, exist_ok=True)
        self.state = State()
        self.userdata: dict[str, bytes] = {}  # the user folder's files, by path
        self.started_at = time.monotonic()
        self.app = OriginCheck(self._build_app())
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---------- lifecycle (in-process) ----------
    def start(self) -> ComfyUIDouble:
        self.state = State()
        self.started_at = time.monotonic()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            ws="websockets-sansio",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=f"comfyui-double-{self.port}", daemon=True)
        self._thread.start()
        wait_until(lambda: self._server is not None and self._server.started, what="ComfyUI double")
        return self

    def _serve(self) -> None:
        assert self._server is not None
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._run())

    async def _run(self) -> None:
        assert self._server is not None
        executor = asyncio.create_task(self._execute_loop())
        try:
            await self._server.serve()
        finally:
            executor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await executor

    def stop(self) -> None:
        """Stop at once, as a crash would: open sockets drop, running work is abandoned."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def restart(self) -> None:
        """Crash and come back on the same port with empty history and queue."""
        self.stop()
        self.start()

    def __enter__(self) -> ComfyUIDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------- websocket ----------
    async def ws(self, socket: WebSocket) -> None:
        sid = socket.query_params.get("clientId") or uuid.uuid4().hex
        await socket.accept()
        self.state.sockets[sid] = socket
        await self._status(sid)
        running = self.state.running
        if running is not None and running.client_id == sid and self.state.last_node is not None:
            await self.send("executing", {"node": self.state.last_node}, sid)  # a reconnect, as ComfyUI
        try:
            while True:
                await socket.receive_text()
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if self.state.sockets.get(sid) is socket:
                del self.state.sockets[sid]

    # ---------- execution ----------
    # ---------- HTTP ----------
    def _build_app(self) -> Starlette:
        routes = [
            ("/system_stats", self.system_stats, ["GET"]),
            ("/object_info", self.object_info, ["GET"]),
            ("/object_info/{node_class}", self.object_info_one, ["GET"]),
            ("/prompt", self.prompt, ["GET", "POST"]),
            ("/queue", self.queue, ["GET", "POST"]),
            ("/interrupt", self.interrupt, ["POST"]),
            ("/history", self.history, ["GET", "POST"]),
            ("/history/{prompt_id}", self.history_one, ["GET"]),
            ("/view", self.view, ["GET"]),
            ("/upload/image", self.upload_image, ["POST"]),
            ("/upload/mask", self.upload_mask, ["POST"]),
            ("/free", self.free, ["POST"]),
            ("/extensions", self.extensions, ["GET"]),
            ("/workflow_templates", self.list_workflow_templates, ["GET"]),
            ("/models", self.models, ["GET"]),
            ("/models/{folder}", self.model_files, ["GET"]),
            ("/experiment/models", self.model_library, ["GET"]),
            ("/experiment/models/{folder}", self.model_files, ["GET"]),
            ("/embeddings", self.embeddings, ["GET"]),
            ("/userdata", self.list_userdata, ["GET"]),
            ("/userdata/{path:path}", self.userdata_file, ["POST", "DELETE"]),
        ]
        table: list[Any] = []
        for prefix in ("", "/api"):
            table += [Route(prefix + path, handler, methods=methods) for path, handler, methods in routes]
            table.append(WebSocketRoute(prefix + "/ws", self.ws))
        table += [
            Route("/extensions/{path:path}", self.extension_file, methods=["GET"]),
            Route("/api/workflow_templates/{path:path}", self.workflow_template, methods=["GET"]),
            Route("/__double__/knobs", self.set_knobs, methods=["POST"]),
            Route("/__double__/crash", self.crash, methods=["POST"]),
            Route("/__double__/timings", self.get_timings, methods=["GET"]),
        ]
        return Starlette(routes=table)

    async def system_stats(self, request: Request) -> Response:
        if time.monotonic() - self.started_at < self.knobs.startup_seconds:
            return Response(status_code=503)
        return JSONResponse(
            {
                "system": {
                    "os": "posix",
                    "ram_total": 8 << 30,
                    "ram_free": 6 << 30,
                    "comfyui_version": COMFYUI_VERSION,
                    "required_frontend_version": "1.27.10",
                    "python_version": "3.11.9",
                    "pytorch_version": "2.8.0+cpu",
                    "embedded_python": False,
                    "argv": ["main.py", "--cpu"],
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": 8 << 30,
                        "vram_free": 6 << 30,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            }
        )

    def file_exists(self, name: str) -> bool:
        """A file loader's own check (``VALIDATE_INPUTS``): the annotated file exists, wherever it points."""
        return nodes.annotated_path(self.folders, name).exists()

    def input_files(self) -> set[str]:
        return {
            p.relative_to(self.folders.input).as_posix() for p in self.folders.input.rglob("*") if p.is_file()
        }

    def catalogue(self) -> dict[str, Any]:
        return nodes.catalogue(sorted(self.input_files()))

    async def object_info(self, request: Request) -> Response:
        return JSONResponse(self.catalogue())

    async def object_info_one(self, request: Request) -> Response:
        name = request.path_params["node_class"]
        known = self.catalogue()
        return JSONResponse({name: known[name]} if name in known else {})

    async def extensions(self, request: Request) -> Response:
        """As ComfyUI: the web root's ``extensions/core`` shims, then every custom pack's ``.js``
        files as ``/extensions/<quoted pack>/<path>``."""
        packs = [f"/extensions/{quote(p.split('/')[0])}/{p.split('/', 1)[1]}" for p in self.web_extensions]
        return JSONResponse([*CORE_EXTENSIONS, *packs])

    async def extension_file(self, request: Request) -> Response:
        path = request.path_params["path"]
        if path in self.web_extensions:
            return Response(self.web_extensions[path], media_type="application/javascript")
        if f"/extensions/{path}" in CORE_EXTENSIONS:
            return Response("// a frontend core shim\n", media_type="application/javascript")
        return Response(status_code=404)

    async def list_workflow_templates(self, request: Request) -> Response:
        """As ComfyUI: each custom pack with example workflows -> their names without ``.json``."""
        listed: dict[str, list[str]] = {}
        for path in self.workflow_templates:
            pack, name = path.split("/", 1)
            listed.setdefault(pack, []).append(name.removesuffix(".json"))
        return JSONResponse(listed)

    async def workflow_template(self, request: Request) -> Response:
        """A pack's example workflow, served as ComfyUI serves the folder (only under ``/api``)."""
        found = self.workflow_templates.get(request.path_params["path"])
        return Response(status_code=404) if found is None else Response(found, media_type="application/json")

    async def prompt(self, request: Request) -> Response:
        if request.method == "GET":
            remaining = len(self.state.pending) + (1 if self.state.running else 0)
            return JSONResponse({"exec_info": {"queue_remaining": remaining}})
        body = await request.json()
        if "prompt" not in body:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return JSONResponse({"error": error, "node_errors": {}}, status_code=400)
        try:
            outputs, node_errors = validate(
                body["prompt"], self.catalogue(), self.file_exists, partial_targets(body)
            )
        except PromptRejected as exc:
            return JSONResponse(exc.body, status_code=400)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        client_id = body.get("client_id")
        extra = {**body.get("extra_data", {}), **({"client_id": client_id} if client_id else {})}
        item = Item(self.state.number, prompt_id, body["prompt"], extra, outputs, client_id)
        self.state.number += 1
        self.state.pending.insert(0, item) if body.get("front") else self.state.pending.append(item)
        self.state.wake.set()
        await self._status()
        return JSONResponse({"prompt_id": prompt_id, "number": item.number, "node_errors": node_errors})

    async def queue(self, request: Request) -> Response:
        if request.method == "GET":
            running = [self.state.running.row()] if self.state.running else []
            return JSONResponse(
                {"queue_running": running, "queue_pending": [item.row() for item in self.state.pending]}
            )
        body = await request.json()
        if body.get("clear"):
            self.state.pending.clear()
            await self._status()
        for prompt_id in body.get("delete", []):
            await self._delete_pending(str(prompt_id))
        return Response(status_code=200)

    async def _delete_pending(self, prompt_id: str) -> None:
        """As ComfyUI: one ``status`` per deleted prompt, two when it was the last one waiting (the
        queue is wiped, which announces itself too)."""
        for index, item in enumerate(self.state.pending):
            if item.prompt_id == prompt_id:
                was_last = len(self.state.pending) == 1
                del self.state.pending[index]
                for _ in range(2 if was_last else 1):
                    await self._status()
                return

    async def interrupt(self, request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        running = self.state.running
        if running is not None and body.get("prompt_id") in (None, running.prompt_id):
            self.state.interrupt = True
        return Response(status_code=200)

    async def history(self, request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            if body.get("clear"):
                self.state.history.clear()
            for pid in body.get("delete", []):
                self.state.history.pop(pid, None)
            return Response(status_code=200)
        query = request.query_params
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query.get("offset", -1))
        return JSONResponse(history_page(self.state.history, max_items, offset))

    async def history_one(self, request: Request) -> Response:
        pid = request.path_params["prompt_id"]
        entry = self.state.history.get(pid)
        return JSONResponse({pid: entry} if entry else {})

    async def view(self, request: Request) -> Response:
        query = request.query_params
        filename, subfolder = query.get("filename"), query.get("subfolder", "")
        if filename is None:
            return Response(status_code=404)
        if not filename:
            return Response(status_code=400)
        if filename.startswith("/") or ".." in filename:
            return Response(status_code=400)
        base = {"output": self.folders.output, "input": self.folders.input, "temp": self.folders.temp}.get(
            query.get("type", "output")
        )
        if base is None:
            return Response(status_code=400)
        folder = (base / subfolder).resolve()
        if os.path.commonpath([folder, base.resolve()]) != str(base.resolve()):
            return Response(status_code=403)
        path = folder / filename
        if not path.is_file():
            return Response(status_code=404)
        channel, preview = query.get("channel", ""), query.get("preview", "")
        if wants_conversion(channel, preview):  # ComfyUI's conversions (the mask editor asks for them)
            body, media_type = await convert(path.read_bytes(), filename, channel, preview)
            return Response(body, media_type=media_type)
        return FileResponse(path, filename=filename)

    async def upload_image(self, request: Request) -> Response:
        form = await request.form()
        upload = form.get("image")
        if upload is None or isinstance(upload, str) or not upload.filename:
            return Response(status_code=400)
        return self._store(form, upload.filename, await upload.read())

    async def upload_mask(self, request: Request) -> Response:
        """ComfyUI's: the mask's alpha onto the colours of ``original_ref`` (type ``output`` unless given)."""
        form = await request.form()
        upload = form.get("image")
        if upload is None or isinstance(upload, str) or not upload.filename:
            return Response(status_code=400)
        original = json.loads(str(form.get("original_ref")))
        base = self._folder(str(original.get("type", "output")))
        path = (base / original.get("subfolder", "") / original["filename"]).resolve()
        if os.path.commonpath([path, base.resolve()]) != str(base.resolve()) or not path.is_file():
            return Response(status_code=400)
        merged = await merge_mask(path.read_bytes(), await upload.read(), original["filename"])
        return self._store(form, upload.filename, merged)

    def _folder(self, kind: str) -> Path:
        return {"input": self.folders.input, "temp": self.folders.temp, "output": self.folders.output}[kind]

    def _store(self, form: FormData, filename: str, content: bytes) -> Response:
        """Upload naming and placing, as ComfyUI's ``image_upload``."""
        subfolder = str(form.get("subfolder", ""))
        kind = str(form.get("type", "input"))
        base = self._folder(kind)
        folder = (base / subfolder).resolve()
        if os.path.commonpath([folder, base.resolve()]) != str(base.resolve()):
            return Response(status_code=400)
        folder.mkdir(parents=True, exist_ok=True)
        overwrite = str(form.get("overwrite", "")).lower() in ("true", "1")
        name = self._free_name(folder, os.path.basename(filename), content, overwrite)
        path = folder / name
        if overwrite or not path.exists():
            path.write_bytes(content)
        return JSONResponse({"name": name, "subfolder": subfolder, "type": kind})

    @staticmethod
    def _free_name(folder: Path, name: str, content: bytes, overwrite: bool) -> str:
        """ComfyUI's naming: ``name``, or ``stem (1).ext``... unless a file of that name holds the
        same bytes already (then that name, nothing written)."""
        stem, dot, ext = name.rpartition(".")
        stem, ext = (stem, dot + ext) if dot else (name, "")
        candidate, counter = name, 1
        while not overwrite and (folder / candidate).exists():
            if (folder / candidate).read_bytes() == content:
                break
            candidate = f"{stem} ({counter}){ext}"
            counter += 1
        return candidate

    # No model files: the double's nodes need no weights, as on a fresh CPU ComfyUI.
    async def models(self, request: Request) -> Response:
        return JSONResponse(list(MODEL_FOLDERS))

    async def model_library(self, request: Request) -> Response:
        base = Path(self.folders.output).parent / "models"
        listed = [folder for folder in MODEL_FOLDERS if folder not in NOT_IN_LIBRARY]
        return JSONResponse([{"name": folder, "folders": [str(base / folder)]} for folder in listed])

    async def model_files(self, request: Request) -> Response:
        if request.path_params["folder"] not in MODEL_FOLDERS:
            return Response(status_code=404)
        return JSONResponse([])

    async def embeddings(self, request: Request) -> Response:
        return JSONResponse([])

    async def list_userdata(self, request: Request) -> Response:
        """ComfyUI's glob of the user folder: no name starting with '.', files only; 404 for no
        such folder."""
        directory = request.query_params.get("dir", "").strip("/")
        if not directory:
            return PlainTextResponse("Directory not provided", status_code=400)
        inside = [
            path.removeprefix(f"{directory}/") for path in self.userdata if path.startswith(f"{directory}/")
        ]
        if not inside:
            return PlainTextResponse("Directory not found", status_code=404)
        recurse = request.query_params.get("recurse", "").lower() == "true"
        listed = [p for p in inside if (recurse or "/" not in p) and not hidden(p)]
        ordered = sorted(listed, key=glob_order)
        if request.query_params.get("split", "").lower() == "true":
            return JSONResponse([[p, *p.split("/")] for p in ordered])
        return JSONResponse(ordered)

    async def userdata_file(self, request: Request) -> Response:
        path = request.path_params["path"]
        if request.method == "DELETE":
            return Response(status_code=204 if self.userdata.pop(path, None) is not None else 404)
        self.userdata[path] = await request.body()
        return JSONResponse(path)

    async def free(self, request: Request) -> Response:
        return Response(status_code=200)

    async def set_knobs(self, request: Request) -> Response:
        body = await request.json()
        names = {f.name for f in fields(Knobs)}
        unknown = set(body) - names
        if unknown:
            return JSONResponse({"error": f"unknown knobs {sorted(unknown)}; known: {sorted(names)}"}, 400)
        for name, value in body.items():
            setattr(self.knobs, name, value)
        return JSONResponse(self.knobs.__dict__)

    async def get_timings(self, request: Request) -> Response:
        """Each prompt's execution span in ``time.perf_counter`` (CLOCK_MONOTONIC: same across processes)."""
        return JSONResponse(self.state.timings)

    async def crash(self, request: Request) -> Response:
        os._exit(1)


def main(argv: list[str] | None = None) -> None:
    """Run like ComfyUI's ``main.py``: the same flags, unknown ones ignored."""
    parser = argparse.ArgumentParser(description="ComfyUI test double")
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--output-directory", type=Path)
    parser.add_argument("--input-directory", type=Path)
    parser.add_argument("--temp-directory", type=Path)
    parser.add_argument("--base-directory", type=Path, default=Path.cwd())
    for knob in fields(Knobs):
        flag = f"--{knob.name.replace('_', '-')}"
        if isinstance(knob.default, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(knob.default), default=knob.default)
    args, _ = parser.parse_known_args(argv)
    knobs = Knobs(**{knob.name: getattr(args, knob.name) for knob in fields(Knobs)})
    double = ComfyUIDouble(
        args.base_directory,
        args.port,
        knobs,
        args.input_directory,
        args.output_directory,
        args.temp_directory / "temp" if args.temp_directory else None,  # as ComfyUI's main.py
    )
    config = uvicorn.Config(
        double.app,
        host=args.listen,
        port=args.port,
        log_level="warning",
        lifespan="off",
        ws="websockets-sansio",
    )
    double._server = uvicorn.Server(config)
    asyncio.run(double._run())


if __name__ == "__main__":
    main()
