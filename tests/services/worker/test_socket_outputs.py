"""A job heard whole on the worker's socket takes its outputs from ComfyUI's ``executed`` events,
without reading ``/history``; a socket that dropped or went silent during the job reads ``/history``
as before. Either way the owner gets the outputs ComfyUI's history names."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import Job, JobState, OutputFile
from services.protocol.workers import JobEvent
from services.worker.comfy_events import EventStream
from services.worker.forwarder import EventForwarder
from services.worker.outputs import output_files
from services.worker.runner import EndingKind, Follower
from tests.conformance.fixtures import fixture_paths, load
from tests.support.jobs import finished, graph, submit, until
from tests.support.queue_manager_app import LiveServer
from tests.support.worker_agent import pull_worker, worker_settings

# SaveImage, then (after a sleep) another SaveImage: an output whose ``executed`` comes long before
# the end of the job.
SLEEPY_SAVES = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x00AB01},
    },
    "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "early"}},
    "4": {"class_type": "TestSleep", "inputs": {"value": ["1", 0], "seconds": 2.0}},
    "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "late"}},
}


@pytest.fixture
def history_reads(comfy: ComfyUIDouble, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The worker's ``GET /history/<id>`` requests to ComfyUI, per prompt id (a counting transport)."""
    reads: Counter[str] = Counter()
    send = httpx.AsyncClient.send

    async def counting(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        path = request.url.path.removeprefix("/api")
        if request.url.port == comfy.port and request.method == "GET" and path.startswith("/history/"):
            reads[path.removeprefix("/history/")] += 1
        return await send(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", counting)
    return reads


@pytest.fixture
def heard(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str, str]]:
    """Every text event the worker's socket received: (socket number, prompt id, type)."""
    seen: list[tuple[int, str, str]] = []
    route = EventStream._route

    def recording(self: EventStream, message: str | bytes) -> None:
        if isinstance(message, str):
            event = json.loads(message)
            seen.append((self.opened, str((event.get("data") or {}).get("prompt_id")), event["type"]))
        route(self, message)

    monkeypatch.setattr(EventStream, "_route", recording)
    return seen


def placed(outputs: list[OutputFile]) -> list[tuple[str, str, str, str, str]]:
    return [(o.node_id, o.kind, o.type, o.subfolder, o.filename) for o in outputs]


def in_history(comfy: ComfyUIDouble, job: Job) -> list[tuple[str, str, str, str, str]]:
    """The outputs ComfyUI's history names for the job, as the worker reads them."""
    return placed(output_files(comfy.state.history[job.id]))


async def test_a_job_heard_whole_on_the_socket_is_stored_without_reading_history(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    files: Path,
    history_reads: Counter[str],
) -> None:
    prompt = {
        **graph(color=0x00AA01, batch=2),
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job = await finished(alice, await submit(alice, prompt))
    assert job.state == JobState.SUCCEEDED, job.error
    assert history_reads[job.id] == 0
    assert placed(job.outputs) == in_history(comfy, job)
    assert [(o.node_id, o.type, o.filename) for o in job.outputs][:2] == [
        ("3", "output", "t_00001_.png"),
        ("3", "output", "t_00002_.png"),
    ]
    for output in job.outputs:
        stored = files / "users/alice" / output.type / output.filename
        assert stored.stat().st_size == output.size > 0


async def test_a_cached_rerun_names_the_outputs_history_names_without_reading_it(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    history_reads: Counter[str],
) -> None:
    prompt = {
        **graph(color=0x00AA02),
        # an output node without ui: its cached rerun sends ``executed`` with ``output: null``
        "4": {"class_type": "TestOutputNodeWithSocketOutput", "inputs": {"image": ["2", 0], "value": 1.0}},
    }
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        first = await finished(alice, await submit(alice, prompt))
        again = await finished(alice, await submit(alice, prompt))
    assert first.state == again.state == JobState.SUCCEEDED, again.error
    cached = next(
        d["nodes"]
        for kind, d in comfy.state.history[again.id]["status"]["messages"]
        if kind == "execution_cached"
    )
    assert {"3", "4"} <= set(cached)  # ComfyUI answered both output nodes from its cache
    assert history_reads[first.id] == history_reads[again.id] == 0
    assert placed(again.outputs) == in_history(comfy, again) == placed(first.outputs)
    assert [(o.filename, o.size) for o in again.outputs] == [(o.filename, o.size) for o in first.outputs]


async def test_a_socket_that_dropped_mid_run_reads_history_for_the_outputs(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    history_reads: Counter[str],
    heard: list[tuple[int, str, str]],
) -> None:
    route = EventStream._route
    dropped: list[str] = []

    def drop_at_the_first_save(self: EventStream, message: str | bytes) -> None:
        event = json.loads(message) if isinstance(message, str) else {}
        if not dropped and event.get("type") == "executed" and event["data"].get("node") == "3":
            dropped.append(event["data"]["prompt_id"])  # this event and the connection are lost
            raise websockets.ConnectionClosedError(None, None)
        route(self, message)

    monkeypatch.setattr(EventStream, "_route", drop_at_the_first_save)
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path, warmup=False)):
        job = await finished(alice, await submit(alice, SLEEPY_SAVES), timeout=20)
    assert dropped == [job.id]
    assert job.state == JobState.SUCCEEDED, job.error
    # the end of the job was heard, on the socket opened again after the drop ...
    assert [(n, kind) for n, pid, kind in heard if pid == job.id][-2:] == [
        (2, "execution_success"),
        (2, "executing"),
    ]
    # ... but an ``executed`` went missing with the first one: the outputs come from history
    assert history_reads[job.id] >= 1
    assert placed(job.outputs) == in_history(comfy, job)
    assert [o.filename for o in job.outputs] == ["early_00001_.png", "late_00001_.png"]


async def test_a_socket_silent_mid_run_reads_history_for_the_outputs(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    history_reads: Counter[str],
    heard: list[tuple[int, str, str]],
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path, warmup=False)):
        comfy.knobs.silent = True  # the first save's ``executed`` is never sent
        job_id = await submit(alice, SLEEPY_SAVES)
        await until(
            lambda: history_reads[job_id] > 0, "the worker asked ComfyUI after the silence", timeout=10
        )
        comfy.knobs.silent = False
        job = await finished(alice, job_id, timeout=20)
    assert job.state == JobState.SUCCEEDED, job.error
    assert [kind for _, pid, kind in heard if pid == job.id][-2:] == ["execution_success", "executing"]
    assert placed(job.outputs) == in_history(comfy, job)
    assert [o.filename for o in job.outputs] == ["early_00001_.png", "late_00001_.png"]


def recorded_runs() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]], dict[str, Any]]]:
    """Each prompt of the real ComfyUI's recordings that one client heard to its end and whose history
    was read: (case and prompt, the events about it, its history entry)."""
    for path in fixture_paths():
        recorded = load(path)
        entries: dict[str, Any] = {}
        for step in recorded["steps"]:
            request, body = step.get("request") or {}, (step.get("answer") or {}).get("body")
            if request.get("method") == "GET" and request.get("path", "").startswith("/history/"):
                entries.update(body if isinstance(body, dict) else {})
        for prompt_id, entry in entries.items():
            for frames in recorded["sockets"].values():
                events = [
                    (frame["type"], frame["data"])
                    for frame in frames
                    if "type" in frame and (frame.get("data") or {}).get("prompt_id") == prompt_id
                ]
                if ("executing", {"node": None, "prompt_id": prompt_id}) in events:
                    yield f"{path.stem} {prompt_id}", events, entry


async def test_outputs_built_from_the_real_comfyuis_executed_events_equal_its_history() -> None:
    async def sink(events: list[JobEvent]) -> None:
        return None

    compared = []
    forwarder = EventForwarder(sink)
    for name, events, entry in recorded_runs():
        follower, ending = Follower(forwarder, unbroken=lambda: True), None
        for kind, data in events:
            ending = ending or follower.handle(kind, data)
        assert ending is not None, name
        if entry["status"]["status_str"] == "success":
            assert ending.kind is EndingKind.SUCCESS and ending.entry is not None, name
            assert ending.entry["outputs"] == entry["outputs"], name
            compared.append(name)
        else:
            assert ending.kind is not EndingKind.SUCCESS, name
    await forwarder.close()
    # among them: a batch saved and then replayed from the cache, and a cached output node without ui
    assert {f"cached_outputs {{prompt:{n}}}" for n in range(1, 7)} <= set(compared)
    assert len(compared) >= 14  # every successful prompt of the recordings a client heard to its end


async def test_an_ending_that_may_have_missed_an_event_asks_for_history() -> None:
    async def sink(events: list[JobEvent]) -> None:
        return None

    forwarder = EventForwarder(sink)
    saved = {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}
    executed = ("executed", {"node": "3", "display_node": "3", "output": saved, "prompt_id": "p"})
    success, end = ("execution_success", {"prompt_id": "p"}), ("executing", {"node": None, "prompt_id": "p"})
    runs = {  # name: (the socket stayed open since the submit, a silence or drop was noticed, events)
        "whole": (True, False, [executed, success, end]),
        "socket reopened": (False, False, [executed, success, end]),
        "after a silence": (True, True, [executed, success, end]),
        "no success heard": (True, False, [executed, end]),
    }
    endings = {}
    for name, (unbroken, gap, events) in runs.items():
        follower = Follower(forwarder, lambda unbroken=unbroken: unbroken)
        follower.gap = gap
        endings[name] = [follower.handle(kind, data) for kind, data in events][-1]
    await forwarder.close()
    assert {name: (e.kind, e.entry) for name, e in endings.items() if e is not None} == {
        "whole": (EndingKind.SUCCESS, {"outputs": {"3": saved}}),
        "socket reopened": (EndingKind.SUCCESS, None),  # None: the runner reads /history
        "after a silence": (EndingKind.SUCCESS, None),
        "no success heard": (EndingKind.ENDED, None),
    }


async def test_a_text_output_reaches_the_page_as_it_comes_and_an_image_waits_for_its_file() -> None:
    """A ``PreviewAny`` text shows while the rest of the job runs, as in ComfyUI; an image's
    ``executed`` waits until its file is stored (the page would load nothing before)."""
    sent: list[JobEvent] = []

    async def sink(events: list[JobEvent]) -> None:
        sent.extend(events)

    forwarder = EventForwarder(sink)
    follower = Follower(forwarder, unbroken=lambda: True)
    text = {"node": "2", "display_node": "2", "output": {"text": ["a cat"]}, "prompt_id": "p"}
    image = {
        "node": "3",
        "display_node": "3",
        "output": {"images": [{"filename": "a.png"}]},
        "prompt_id": "p",
    }
    for kind, data in [
        ("executing", {"node": "2", "display_node": "2", "prompt_id": "p"}),
        ("executed", text),
        ("executing", {"node": "3", "display_node": "3", "prompt_id": "p"}),
        ("executed", image),
        ("executing", {"node": "4", "display_node": "4", "prompt_id": "p"}),  # a sampler still runs
    ]:
        assert follower.handle(kind, data) is None
    await forwarder.close()
    assert [(e.type, e.data.get("node")) for e in sent] == [
        ("executing", "2"),
        ("executed", "2"),
        ("executing", "3"),
        ("executing", "4"),
    ]
