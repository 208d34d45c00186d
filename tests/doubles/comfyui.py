"""A ComfyUI double: a real HTTP + WebSocket server on loopback that behaves like ComfyUI v0.3.64.

It follows ``/work/shared/reference/comfyui-protocol.md``: every route also under ``/api``;
``POST /prompt`` honours a client-chosen ``prompt_id`` and rejects bad graphs with ComfyUI's 400
shape; job events reach only the socket whose ``clientId`` submitted the job (a second socket with
the same id replaces the first); events come in ComfyUI's order, and ``/history`` is written after
``execution_success`` but before the final ``executing {node: null}``; identical graphs are replayed
from the cache (same filenames, no new files); ``/interrupt`` is targeted and acts between progress
steps or after the running node; a restart loses history and queue; a loopback Host with a foreign
``Origin`` gets 403. The node catalogue is in ``comfyui_nodes``.

Two ways to run it:

* in-process, on its own thread and event loop (fast; state and knobs are plain attributes)::

      with ComfyUIDouble(tmp_path) as comfy:
          comfy.knobs.node_seconds = 0.5
          httpx.post(f"{comfy.url}/prompt", json={...})

* as a subprocess taking ComfyUI's own flags, so a supervisor can start, kill and restart it::

      python -m tests.doubles.comfyui --listen 127.0.0.1 --port 8188 --output-directory out \\
          --input-directory in --temp-directory tmp [--node-seconds 0.2 --output-bytes 1000000]

Test knobs (``Knobs``; over HTTP: ``POST /__double__/knobs`` with a JSON object): ``node_seconds``
(execution time per node), ``progress_steps`` (``progress`` events per executed node, interrupt
checked between steps), ``silent`` (the socket stays open but sends nothing), ``output_bytes``
(pad every saved file to this size: large outputs), ``history_lag_seconds`` (delay between
``execution_success`` and the history write), ``startup_seconds`` (``/system_stats`` answers 503
until then). ``POST /__double__/crash`` ends the process at once, like a segfault.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.doubles import comfyui_nodes as nodes
from tests.support.servers import free_port, wait_until


@dataclass
class Knobs:
    node_seconds: float = 0.0
    progress_steps: int = 0
    silent: bool = False
    output_bytes: int = 0
    history_lag_seconds: float = 0.0
    startup_seconds: float = 0.0


class Interrupted(Exception):
    def __init__(self, node_id: str, node_type: str) -> None:
        super().__init__(node_id)
        self.node_id, self.node_type = node_id, node_type


@dataclass
class Item:
    number: int
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    client_id: str | None

    def row(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class State:
    """Everything ComfyUI keeps in memory: lost on restart."""

    pending: list[Item] = field(default_factory=list)
    running: Item | None = None
    history: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]] = field(default_factory=dict)
    sockets: dict[str, WebSocket] = field(default_factory=dict)
    interrupt: bool = False
    number: int = 0
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)  # perf_counter start, end
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def _now_ms() -> int:
    return int(time.time() * 1000)


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


class ComfyUIDouble:
    def __init__(
        self,
        root: Path,
        port: int = 0,
        knobs: Knobs | None = None,
        input_dir: Path | None = None,
        output_dir: Path | None = None,
        temp_dir: Path | None = None,
    ):
        self.port = port or free_port()
        self.knobs = knobs or Knobs()
        self.folders = nodes.Folders(
            input_dir or root / "input", output_dir or root / "output", temp_dir or root / "temp"
        )
        for folder in (self.folders.input, self.folders.output, self.folders.temp):
            folder.mkdir(parents=True, exist_ok=True)
        self.state = State()
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
    async def send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        """To one client id, or to every socket when ``sid`` is None."""
        if self.knobs.silent:
            return
        text = json.dumps({"type": event, "data": data})
        targets = [self.state.sockets.get(sid)] if sid else list(self.state.sockets.values())
        for socket in targets:
            if socket is not None:
                with contextlib.suppress(Exception):
                    await socket.send_text(text)

    async def send_preview(self, image: bytes, sid: str | None) -> None:
        socket = self.state.sockets.get(sid or "")
        if socket is not None and not self.knobs.silent:
            with contextlib.suppress(Exception):
                await socket.send_bytes(struct.pack(">II", 1, 2) + image)

    async def _status(self, sid: str | None = None) -> None:
        remaining = len(self.state.pending) + (1 if self.state.running else 0)
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": remaining}}}
        if sid:
            data["sid"] = sid
        await self.send("status", data, sid)

    async def ws(self, socket: WebSocket) -> None:
        sid = socket.query_params.get("clientId") or uuid.uuid4().hex
        await socket.accept()
        self.state.sockets[sid] = socket
        await self._status(sid)
        try:
            while True:
                await socket.receive_text()
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if self.state.sockets.get(sid) is socket:
                del self.state.sockets[sid]

    # ---------- execution ----------
    async def _execute_loop(self) -> None:
        while True:
            while not self.state.pending:
                self.state.wake.clear()
                await self.state.wake.wait()
            item = self.state.pending.pop(0)
            self.state.running, self.state.interrupt = item, False
            try:
                await self._execute(item)
            finally:
                self.state.running = None
                await self._status()

    async def _execute(self, item: Item) -> None:
        sid, pid = item.client_id, item.prompt_id
        messages: list[list[Any]] = []
        self.state.timings[pid] = (time.perf_counter(), 0.0)

        async def job_event(event: str, data: dict[str, Any], record: bool = False) -> None:
            data = {"prompt_id": pid, **data}
            if record:
                messages.append([event, {**data, "timestamp": _now_ms()}])
                data = messages[-1][1]
            if sid is not None:
                await self.send(event, data, sid)

        await job_event("execution_start", {}, record=True)
        order = self._order(item)
        signatures = {nid: self._signature(item.prompt, nid) for nid in order}
        cached = [nid for nid in order if signatures[nid] in self.state.cache]
        await job_event("execution_cached", {"nodes": cached}, record=True)
        outputs: dict[str, Any] = {}
        values: dict[str, tuple[Any, ...]] = {}
        executed: list[str] = []
        try:
            for nid in order:
                ui = await self._run_node(item, nid, signatures[nid], values, nid in cached, job_event)
                executed.append(nid)
                if ui is not None:
                    outputs[nid] = ui
        except nodes.NodeFailure as exc:
            node = item.prompt[nid]
            await job_event(
                "execution_error",
                {
                    "node_id": nid,
                    "node_type": node["class_type"],
                    "executed": executed,
                    "exception_message": str(exc),
                    "exception_type": exc.exception_type,
                    "traceback": [f'  File "nodes.py", in {node["class_type"]}\n'],
                    "current_inputs": {},
                    "current_outputs": {},
                },
                record=True,
            )
            return await self._finish(item, outputs, messages, "error")
        except Interrupted as exc:
            await job_event(
                "execution_interrupted",
                {"node_id": exc.node_id, "node_type": exc.node_type, "executed": executed},
                record=True,
            )
            return await self._finish(item, outputs, messages, "error")
        await job_event("execution_success", {}, record=True)
        await self._finish(item, outputs, messages, "success")

    async def _finish(
        self, item: Item, outputs: dict[str, Any], messages: list[list[Any]], status: str
    ) -> None:
        if self.knobs.history_lag_seconds:
            await asyncio.sleep(self.knobs.history_lag_seconds)
        self.state.history[item.prompt_id] = {
            "prompt": item.row(),
            "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": {nid: {"node_id": nid, "display_node": nid} for nid in outputs},
        }
        self.state.timings[item.prompt_id] = (self.state.timings[item.prompt_id][0], time.perf_counter())
        if item.client_id is not None:
            await self.send("executing", {"node": None, "prompt_id": item.prompt_id}, item.client_id)

    def _order(self, item: Item) -> list[str]:
        order: list[str] = []
        for output in item.outputs:
            nodes.ancestors(item.prompt, output, order)
        return order

    def _signature(self, prompt: dict[str, Any], nid: str) -> str:
        node = prompt[nid]
        inputs = {
            k: [self._signature(prompt, str(v[0])), v[1]] if nodes.is_link(v) else v
            for k, v in sorted(node.get("inputs", {}).items())
        }
        return json.dumps([node["class_type"], inputs], sort_keys=True)

    async def _run_node(
        self,
        item: Item,
        nid: str,
        signature: str,
        values: dict[str, tuple[Any, ...]],
        cached: bool,
        job_event: Any,
    ) -> dict[str, Any] | None:
        node = item.prompt[nid]
        if self.state.interrupt:
            raise Interrupted(nid, node["class_type"])
        if cached:
            values[nid], ui = self.state.cache[signature]
            if ui is not None:
                await job_event("executed", {"node": nid, "display_node": nid, "output": ui})
            return ui
        await job_event(
            "progress_state",
            {
                "nodes": {
                    nid: {
                        "value": 0,
                        "max": 1,
                        "state": "running",
                        "node_id": nid,
                        "prompt_id": item.prompt_id,
                    }
                }
            },
        )
        await job_event("executing", {"node": nid, "display_node": nid})
        await self._work(item, nid, node["class_type"])
        inputs = {k: values[str(v[0])][v[1]] if nodes.is_link(v) else v for k, v in node["inputs"].items()}
        self.folders.output_bytes = self.knobs.output_bytes
        values[nid], ui = await asyncio.to_thread(nodes.RUNNERS[node["class_type"]], self.folders, inputs)
        await self._flush_previews(item, nid)
        self.state.cache[signature] = (values[nid], ui)
        if ui is not None:
            await job_event("executed", {"node": nid, "display_node": nid, "output": ui})
        return ui

    async def _work(self, item: Item, nid: str, class_type: str) -> None:
        steps = self.knobs.progress_steps
        if not steps:
            await asyncio.sleep(self.knobs.node_seconds)
            return
        for step in range(1, steps + 1):
            await asyncio.sleep(self.knobs.node_seconds / steps)
            if item.client_id is not None:
                await self.send(
                    "progress",
                    {"value": step, "max": steps, "prompt_id": item.prompt_id, "node": nid},
                    item.client_id,
                )
            if self.state.interrupt:
                raise Interrupted(nid, class_type)

    async def _flush_previews(self, item: Item, nid: str) -> None:
        previews, self.folders.previews = self.folders.previews, []
        for index, image in enumerate(previews, 1):
            await self.send(
                "progress",
                {"value": index, "max": len(previews), "prompt_id": item.prompt_id, "node": nid},
                item.client_id,
            )
            await self.send_preview(image, item.client_id)

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
            ("/free", self.free, ["POST"]),
        ]
        table: list[Any] = []
        for prefix in ("", "/api"):
            table += [Route(prefix + path, handler, methods=methods) for path, handler, methods in routes]
            table.append(WebSocketRoute(prefix + "/ws", self.ws))
        table += [
            Route("/__double__/knobs", self.set_knobs, methods=["POST"]),
            Route("/__double__/crash", self.crash, methods=["POST"]),
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
                    "comfyui_version": "0.3.64",
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

    def catalogue(self) -> dict[str, Any]:
        files = [
            p.relative_to(self.folders.input).as_posix() for p in self.folders.input.rglob("*") if p.is_file()
        ]
        return nodes.catalogue(files)

    async def object_info(self, request: Request) -> Response:
        return JSONResponse(self.catalogue())

    async def object_info_one(self, request: Request) -> Response:
        name = request.path_params["node_class"]
        known = self.catalogue()
        return JSONResponse({name: known[name]} if name in known else {})

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
            outputs = nodes.validate(body["prompt"], self.catalogue())
        except nodes.PromptRejected as exc:
            return JSONResponse(exc.body, status_code=400)
        self.state.number += 1
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        client_id = body.get("client_id")
        extra = {**body.get("extra_data", {}), **({"client_id": client_id} if client_id else {})}
        item = Item(self.state.number, prompt_id, body["prompt"], extra, outputs, client_id)
        self.state.pending.insert(0, item) if body.get("front") else self.state.pending.append(item)
        self.state.wake.set()
        await self._status()
        return JSONResponse({"prompt_id": prompt_id, "number": item.number, "node_errors": {}})

    async def queue(self, request: Request) -> Response:
        if request.method == "GET":
            running = [self.state.running.row()] if self.state.running else []
            return JSONResponse(
                {"queue_running": running, "queue_pending": [item.row() for item in self.state.pending]}
            )
        body = await request.json()
        if body.get("clear"):
            self.state.pending.clear()
        doomed = set(body.get("delete", []))
        self.state.pending[:] = [item for item in self.state.pending if item.prompt_id not in doomed]
        return Response(status_code=200)

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
        max_items = int(request.query_params.get("max_items", 0)) or None
        items = list(self.state.history.items())[-max_items:] if max_items else self.state.history.items()
        return JSONResponse(dict(items))

    async def history_one(self, request: Request) -> Response:
        pid = request.path_params["prompt_id"]
        entry = self.state.history.get(pid)
        return JSONResponse({pid: entry} if entry else {})

    async def view(self, request: Request) -> Response:
        query = request.query_params
        filename, subfolder = query.get("filename", ""), query.get("subfolder", "")
        if not filename or filename.startswith("/") or ".." in filename:
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
        return FileResponse(path, filename=filename)

    async def upload_image(self, request: Request) -> Response:
        form = await request.form()
        upload = form.get("image")
        if upload is None or isinstance(upload, str) or not upload.filename:
            return Response(status_code=400)
        subfolder = str(form.get("subfolder", ""))
        kind = str(form.get("type", "input"))
        base = {"input": self.folders.input, "temp": self.folders.temp, "output": self.folders.output}[kind]
        folder = (base / subfolder).resolve()
        if os.path.commonpath([folder, base.resolve()]) != str(base.resolve()):
            return Response(status_code=400)
        folder.mkdir(parents=True, exist_ok=True)
        name = self._free_name(
            folder, os.path.basename(upload.filename), str(form.get("overwrite", "")).lower() in ("true", "1")
        )
        with (folder / name).open("wb") as handle:
            while chunk := await upload.read(1 << 20):
                handle.write(chunk)
        return JSONResponse({"name": name, "subfolder": subfolder, "type": kind})

    @staticmethod
    def _free_name(folder: Path, name: str, overwrite: bool) -> str:
        stem, dot, ext = name.rpartition(".")
        stem, ext = (stem, dot + ext) if dot else (name, "")
        candidate, counter = name, 1
        while not overwrite and (folder / candidate).exists():
            candidate = f"{stem} ({counter}){ext}"
            counter += 1
        return candidate

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
        args.temp_directory,
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
