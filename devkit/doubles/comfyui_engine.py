"""The ComfyUI double's executor: its queue, its execution of graphs and the events it sends.

``Executor`` is mixed into ``ComfyUIDouble`` (``comfyui.py``), which owns the HTTP side. It runs one
prompt at a time, in ComfyUI's event order, caches node results by their inputs as ComfyUI's
default cache does (an identical graph replays its outputs without new files; only the results of
the nodes of the prompt that runs are kept), honours interrupts between progress steps or nodes, and
writes history after ``execution_success`` and before the final ``executing {node: null}``.

``progress_state`` is ComfyUI's progress registry as it sends it: every node of the prompt started so
far with its ``value``, ``max`` and ``state``, sent when a node starts (``running``), at each step
and when it finishes (``finished``, also for a cached node), so the last one before
``execution_success`` shows every executed node ``finished``. A ``SaveImageWebsocket`` image goes
out as ``progress_state``, ``progress``, then a binary preview frame (type 1, format 2 = PNG).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket

from devkit.doubles import comfyui_nodes as nodes


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
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # ComfyUI's progress registry

    def node_state(self, nid: str, state: str, value: float, maximum: float) -> dict[str, Any]:
        """Record one node's progress; the ``progress_state`` data: every node started so far."""
        self.nodes[nid] = {
            "value": value,
            "max": maximum,
            "state": state,
            "node_id": nid,
            "prompt_id": self.prompt_id,
            "display_node_id": nid,
            "parent_node_id": None,
            "real_node_id": nid,
        }
        return {"prompt_id": self.prompt_id, "nodes": {k: dict(v) for k, v in self.nodes.items()}}

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
    last_node: str | None = None  # ComfyUI's ``last_node_id``: the running prompt's node, told on reconnect
    number: int = 0
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)  # perf_counter start, end
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def _now_ms() -> int:
    return int(time.time() * 1000)


def current_inputs(node: dict[str, Any]) -> dict[str, list[Any]]:
    """``execution_error.current_inputs``: each widget value of the failed node, as a one-item batch."""
    return {name: [value] for name, value in node.get("inputs", {}).items() if not nodes.is_link(value)}


class Executor:
    """Execution and event delivery; ``knobs``, ``state`` and ``folders`` are set by the server."""

    knobs: Knobs
    state: State
    folders: nodes.Folders

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

    async def _progress_state(self, item: Item, nid: str, state: str, value: float, maximum: float) -> None:
        """ComfyUI's ``progress_state``: sent when a node starts, at each step and when it finishes."""
        data = item.node_state(nid, state, value, maximum)
        await self.send("progress_state", data, item.client_id)  # no client id: to every socket

    async def _status(self, sid: str | None = None) -> None:
        remaining = len(self.state.pending) + (1 if self.state.running else 0)
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": remaining}}}
        if sid:
            data["sid"] = sid
        await self.send("status", data, sid)

    async def _execute_loop(self) -> None:
        while True:
            while not self.state.pending:
                self.state.wake.clear()
                await self.state.wake.wait()
            item = self.state.pending.pop(0)
            self.state.running = item  # listed as running: an /interrupt naming it sets the flag
            try:
                await self._status()  # as ComfyUI's queue does when it hands out the prompt
                await self._execute(item)
            finally:
                self.state.running = None
                self.state.last_node = None

    async def _execute(self, item: Item) -> None:
        sid, pid = item.client_id, item.prompt_id
        messages: list[list[Any]] = []
        self.state.timings[pid] = (time.perf_counter(), 0.0)
        # As ComfyUI's execute_async, the run begins by clearing the interrupt flag: an interrupt that
        # landed since the prompt was taken off the queue (listed as running already) is lost.
        self.state.interrupt = False

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
        self._keep_only(item.prompt)
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
        except Interrupted as exc:
            await job_event(
                "execution_interrupted",
                {"node_id": exc.node_id, "node_type": exc.node_type, "executed": executed},
                record=True,
            )
            return await self._finish(item, outputs, messages, "error")
        except Exception as exc:  # any node that raises, as in ComfyUI: the job fails, the queue goes on
            node = item.prompt[nid]
            await job_event(
                "execution_error",
                {
                    "node_id": nid,
                    "node_type": node["class_type"],
                    "executed": executed,
                    "exception_message": f"{exc}\n",
                    "exception_type": nodes.exception_type(exc),
                    "traceback": [f'  File "nodes.py", in {node["class_type"]}\n'],
                    "current_inputs": current_inputs(node),
                    "current_outputs": list(item.prompt),
                },
                record=True,
            )
            return await self._finish(item, outputs, messages, "error")
        await job_event("execution_success", {}, record=True)
        await self._finish(item, outputs, messages, "success")

    async def _finish(
        self, item: Item, outputs: dict[str, Any], messages: list[list[Any]], status: str
    ) -> None:
        """History, then ``status`` (the queue is done with the prompt), then ``executing {node: null}``."""
        if self.knobs.history_lag_seconds:
            await asyncio.sleep(self.knobs.history_lag_seconds)
        meta = {
            nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
            for nid in outputs
        }
        self.state.history[item.prompt_id] = {
            "prompt": item.row(),
            "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": meta,
        }
        self.state.timings[item.prompt_id] = (self.state.timings[item.prompt_id][0], time.perf_counter())
        self.state.running = None
        self.state.last_node = None
        await self._status()
        if item.client_id is not None:
            await self.send("executing", {"node": None, "prompt_id": item.prompt_id}, item.client_id)

    def _order(self, item: Item) -> list[str]:
        order: list[str] = []
        for output in item.outputs:
            nodes.ancestors(item.prompt, output, order)
        return order

    def _keep_only(self, prompt: dict[str, Any]) -> None:
        """ComfyUI's default (classic) cache keeps only the results of the nodes of the prompt it
        starts, all of them, whether they run or not: an identical rerun is a cache hit, but one
        after a different graph runs its nodes again."""
        keep = set()
        for nid in prompt:
            with contextlib.suppress(KeyError, TypeError, IndexError, RecursionError):  # a bad link
                keep.add(self._signature(prompt, nid))
        self.state.cache = {key: value for key, value in self.state.cache.items() if key in keep}

    def _signature(self, prompt: dict[str, Any], nid: str) -> str:
        node = prompt[nid]
        inputs = {
            k: [self._signature(prompt, str(v[0])), v[1]] if nodes.is_link(v) else v
            for k, v in sorted(node.get("inputs", {}).items())
        }
        changed = nodes.is_changed(self.folders, node["class_type"], node.get("inputs", {}))
        # A digest, not the text: each link would nest its source's escaped text, doubling per link
        key = json.dumps([node["class_type"], inputs, changed], sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()

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
        if cached or signature in self.state.cache:  # an identical node earlier in this prompt too
            values[nid], ui = self.state.cache[signature]
            if nid in item.outputs or not cached:  # ComfyUI runs it, from the cache: its ui or null
                await job_event("executed", {"node": nid, "display_node": nid, "output": ui})
                await self._progress_state(item, nid, "finished", 1, 1)
            return ui
        await self._progress_state(item, nid, "running", 0, 1)
        if item.client_id is not None:
            self.state.last_node = nid
        await job_event("executing", {"node": nid, "display_node": nid})
        if node["class_type"] == nodes.TEST_SLEEP["name"]:
            await self._sleep(item, nid, float(node["inputs"]["seconds"]))
        else:
            await self._work(item, nid, node["class_type"])
        inputs = {k: values[str(v[0])][v[1]] if nodes.is_link(v) else v for k, v in node["inputs"].items()}
        inputs.update(nodes.hidden_inputs(node["class_type"], item.prompt, item.extra_data))
        self.folders.output_bytes = self.knobs.output_bytes
        values[nid], ui = await asyncio.to_thread(nodes.RUNNERS[node["class_type"]], self.folders, inputs)
        await self._flush_previews(item, nid)
        self.state.cache[signature] = (values[nid], ui)
        if ui is not None:
            await job_event("executed", {"node": nid, "display_node": nid, "output": ui})
        maximum = item.nodes[nid]["max"]
        await self._progress_state(item, nid, "finished", maximum, maximum)
        return ui

    async def _work(self, item: Item, nid: str, class_type: str) -> None:
        steps = self.knobs.progress_steps
        if not steps:
            await asyncio.sleep(self.knobs.node_seconds)
            return
        for step in range(1, steps + 1):
            await asyncio.sleep(self.knobs.node_seconds / steps)
            await self._progress_state(item, nid, "running", step, steps)
            if item.client_id is not None:
                await self.send(
                    "progress",
                    {"value": step, "max": steps, "prompt_id": item.prompt_id, "node": nid},
                    item.client_id,
                )
            if self.state.interrupt:
                raise Interrupted(nid, class_type)

    async def _sleep(self, item: Item, nid: str, seconds: float) -> None:
        """ComfyUI's ``TestSleep``: progress (seconds slept of ``seconds``) about every 10 ms; an
        interrupt lands at the next update."""
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            await self._progress_state(item, nid, "running", elapsed, seconds)
            if item.client_id is not None:
                data = {"value": elapsed, "max": seconds, "prompt_id": item.prompt_id, "node": nid}
                await self.send("progress", data, item.client_id)
            if self.state.interrupt:
                raise Interrupted(nid, nodes.TEST_SLEEP["name"])
            await asyncio.sleep(min(0.01, seconds - elapsed))

    async def _flush_previews(self, item: Item, nid: str) -> None:
        previews, self.folders.previews = self.folders.previews, []
        for index, image in enumerate(previews, 1):
            await self._progress_state(item, nid, "running", index, len(previews))
            await self.send(
                "progress",
                {"value": index, "max": len(previews), "prompt_id": item.prompt_id, "node": nid},
                item.client_id,
            )
            await self.send_preview(image, item.client_id)
