"""An output never replaces a file its owner has: a counted name (``<prefix>_00001_.png``) the worker
did not know was taken (another worker's job, or a file stored since it listed her names) is stored
under the next free counter and reported so; a node's fixed name is written over, as on ComfyUI."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import AsyncIterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.s3 import make_bucket, s3_settings
from services.protocol.jobs import JobState
from services.storage import (
    KeyTakenError,
    S3Settings,
    Storage,
    StorageError,
    StorageUnavailableError,
    aiter_chunks,
    open_storage,
)
from services.storage.local import LocalStorage
from services.worker import job_files
from services.worker.outputs import renamed_executed, store_outputs
from tests.support.jobs import finished, graph, submit
from tests.support.queue_manager_app import LiveServer
from tests.support.worker_agent import LeaseCalls, pull_worker, worker_settings

PNG = b"\x89PNG"


def counting(storage: Storage) -> list[str]:
    """Note each key a create-only put of ``storage`` found taken (the storage is patched in place)."""
    refused: list[str] = []
    put = storage.put

    async def noted(key: str, chunks: AsyncIterable[bytes], content_type: str = "", **kw: bool) -> int:
        try:
            return await put(key, chunks, content_type, **kw)
        except KeyTakenError:
            refused.append(key.rsplit("/", 1)[-1])
            raise

    storage.put = noted  # type: ignore[method-assign]
    return refused


async def read(storage: Storage, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.get(key)])


@pytest.fixture(params=["local", "s3"])
def her_files(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The worker's user-file storage: the queue manager's folder, or a bucket."""
    if request.param == "local":
        return LocalStorage(request.getfixturevalue("files"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"out-{tmp_path.name.lower().replace('_', '-')}"[:60]
    make_bucket(endpoint, bucket)
    settings = S3Settings(endpoint_url=endpoint, access_key_id="t", secret_access_key="t", region="us-east-1")
    return open_storage(f"s3://{bucket}/files", settings)


async def test_a_name_stored_behind_the_workers_back_is_kept_and_the_output_takes_the_next(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    her_files: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's listing of her names is reused (it is younger than ``LISTING_SECONDS``; here
    always) while another worker stores ``second_00001_.png`` for her: ComfyUI names this job's
    image the same, and it is stored as ``second_00002_.png``, her file untouched. Her next job
    here numbers on past both without being refused."""
    monkeypatch.setattr(job_files, "LISTING_SECONDS", 3600.0)
    hers = "users/alice/output/second_00001_.png"
    refused = counting(her_files)
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path), her_files):
        warm = await finished(alice, await submit(alice, graph(1, prefix="warm")))  # her names listed
        await her_files.put(hers, aiter_chunks(b"the other worker's image"), "image/png")
        done = await finished(alice, await submit(alice, graph(2, prefix="second")))
        after = await finished(alice, await submit(alice, graph(3, prefix="second")))
    assert warm.state == done.state == after.state == JobState.SUCCEEDED, (done.error, after.error)
    assert refused == ["second_00001_.png"]  # once, and not again for her next job
    assert [o.filename for o in done.outputs] == ["second_00002_.png"]
    assert [o.filename for o in after.outputs] == ["second_00003_.png"]
    assert await read(her_files, hers) == b"the other worker's image"
    assert await her_files.list("users/alice/output/second_") == [
        hers,
        "users/alice/output/second_00002_.png",
        "users/alice/output/second_00003_.png",
    ]
    stored = await read(her_files, "users/alice/output/second_00002_.png")
    assert stored.startswith(PNG) and done.outputs[0].size == len(stored)


def entry_of(*names: str) -> dict[str, object]:
    images = [{"filename": name, "subfolder": "", "type": "output"} for name in names]
    return {"outputs": {"9": {"images": images}}}


async def test_a_fixed_name_is_written_over_as_on_comfyui(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files")
    await storage.put("users/ada/output/latest.png", aiter_chunks(b"old"))
    await storage.put("users/ada/output/cat_00001_.png", aiter_chunks(b"hers"))
    kept = tmp_path / "kept"
    (kept / "output").mkdir(parents=True)
    (kept / "output" / "latest.png").write_bytes(b"new")
    (kept / "output" / "cat_00001_.png").write_bytes(b"this job's")
    outputs = await store_outputs(kept, storage, "ada", entry_of("latest.png", "cat_00001_.png"))
    assert [o.filename for o in outputs] == ["latest.png", "cat_00002_.png"]
    assert await read(storage, "users/ada/output/latest.png") == b"new"
    assert await read(storage, "users/ada/output/cat_00001_.png") == b"hers"
    assert await read(storage, "users/ada/output/cat_00002_.png") == b"this job's"


async def test_the_next_name_follows_the_highest_counter_of_the_prefix(tmp_path: Path) -> None:
    """ComfyUI numbers on from the highest counter of a prefix whatever the extension: so does the
    rename, and a six-digit counter carries on."""
    storage = LocalStorage(tmp_path / "files")
    for name in ("cat_00001_.png", "cat_00007_.webp", "catalog_00050_.png", "cat_00003_.png"):
        await storage.put(f"users/ada/output/{name}", aiter_chunks(b"hers"))
    await storage.put("users/ada/output/big_99999_.png", aiter_chunks(b"hers"))
    kept = tmp_path / "kept"
    (kept / "output").mkdir(parents=True)
    for name in ("cat_00003_.png", "big_99999_.png"):
        (kept / "output" / name).write_bytes(b"mine")
    outputs = await store_outputs(kept, storage, "ada", entry_of("cat_00003_.png", "big_99999_.png"))
    assert [o.filename for o in outputs] == ["cat_00008_.png", "big_100000_.png"]


async def test_names_taken_time_after_time_fail_the_storing_with_a_retryable_reason(tmp_path: Path) -> None:
    class Crowded(LocalStorage):
        async def put(
            self, key: str, chunks: AsyncIterable[bytes], content_type: str = "", *, create_only: bool = False
        ) -> int:
            raise KeyTakenError(key)

    kept = tmp_path / "kept"
    (kept / "output").mkdir(parents=True)
    (kept / "output" / "cat_00001_.png").write_bytes(b"mine")
    with pytest.raises(StorageError, match=r"'cat_00001_.png' and the next 7 names .* retried"):
        await store_outputs(kept, Crowded(tmp_path / "files"), "ada", entry_of("cat_00001_.png"))


def test_an_executed_names_the_file_as_stored() -> None:
    image = {"filename": "cat_00001_.png", "subfolder": "", "type": "output"}
    preview = {"filename": "cat_00001_.png", "subfolder": "", "type": "temp"}
    data = {"node": "9", "output": {"images": [image, preview], "text": "x"}}
    renamed = renamed_executed(data, {("output", "", "cat_00001_.png"): "cat_00002_.png"})
    assert renamed["output"] == {"images": [{**image, "filename": "cat_00002_.png"}, preview], "text": "x"}
    assert renamed["node"] == "9" and data["output"]["images"][0] == image  # a copy


def saves_then_runs_on(prefix: str, nodes: int) -> dict[str, Any]:
    """A graph whose first output node saves under ``prefix`` and after which ``nodes`` more nodes
    run (each one a node event or three the page hears), ending in a second save."""
    prompt = graph(4, prefix=prefix)
    prompt = {"3": prompt["3"], "1": prompt["1"], "2": prompt["2"]}  # the save runs first
    for index in range(nodes):
        source = "2" if index == 0 else str(99 + index)
        prompt[str(100 + index)] = {"class_type": "ImageInvert", "inputs": {"image": [source, 0]}}
    prompt["9"] = {
        "class_type": "SaveImage",
        "inputs": {"images": [str(99 + nodes), 0], "filename_prefix": "tail"},
    }
    return prompt


async def test_every_executed_the_page_hears_names_the_file_as_stored_however_many_events_follow(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    files: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Her page shows an output from the ``executed`` event's name (``/view``): when the name ComfyUI
    gave was taken in her storage and the file is stored under the next one, every ``executed`` the
    worker sends names the stored file, also when more events follow it than the completion can
    carry (the oldest of them then go out on their own, before the completion)."""
    monkeypatch.setattr(job_files, "LISTING_SECONDS", 3600.0)
    storage = LocalStorage(files)
    calls = LeaseCalls()
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path), storage) as running:
        calls.watch(running.worker.queue.http)
        warm = await finished(alice, await submit(alice, graph(1, prefix="warm")))  # her names listed
        await storage.put("users/alice/output/second_00001_.png", aiter_chunks(b"another image"), "image/png")
        job_id = await submit(alice, saves_then_runs_on("second", 120))
        done = await finished(alice, job_id)
    assert warm.state == done.state == JobState.SUCCEEDED, done.error
    assert {o.node_id: o.filename for o in done.outputs} == {"3": "second_00002_.png", "9": "tail_00001_.png"}
    completions = calls.bodies(job_id, "complete")  # one refused as too large may come first
    events = calls.events_sent(job_id) + [event for body in completions for event in body["events"]]
    told = [
        item["filename"]
        for event in events
        if event["type"] == "executed" and event["data"]["node"] == "3"
        for item in event["data"]["output"]["images"]
    ]
    assert told and set(told) == {"second_00002_.png"}


class LostFirstReply(LocalStorage):
    """A store whose first put lands but whose answer is lost (an S3 500 after the write, a reset
    connection): the worker sees the store's silence and puts the file again."""

    lost = False

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], content_type: str = "", *, create_only: bool = False
    ) -> int:
        size = await super().put(key, chunks, content_type, create_only=create_only)
        if not self.lost:
            self.lost = True
            raise StorageUnavailableError(f"no answer for {key}")
        return size


async def test_an_output_whose_put_landed_but_whose_answer_was_lost_is_stored_once(tmp_path: Path) -> None:
    storage = LostFirstReply(tmp_path / "files")
    kept = tmp_path / "kept"
    (kept / "output").mkdir(parents=True)
    (kept / "output" / "cat_00001_.png").write_bytes(b"this job's")
    outputs = await store_outputs(kept, storage, "ada", entry_of("cat_00001_.png"), patience=5.0)
    assert [(o.filename, o.size) for o in outputs] == [("cat_00001_.png", len(b"this job's"))]
    assert await storage.list("users/ada/output/") == ["users/ada/output/cat_00001_.png"]


async def test_a_name_taken_by_other_bytes_after_a_lost_answer_moves_to_the_next(tmp_path: Path) -> None:
    """Same size, other bytes: the file under the name is not the one this put sent."""

    class TakenMeanwhile(LocalStorage):
        lost = False

        async def put(
            self, key: str, chunks: AsyncIterable[bytes], content_type: str = "", *, create_only: bool = False
        ) -> int:
            if not self.lost:
                self.lost = True
                await super().put(key, aiter_chunks(b"other job"), content_type, create_only=create_only)
                raise StorageUnavailableError(f"no answer for {key}")
            return await super().put(key, chunks, content_type, create_only=create_only)

    storage = TakenMeanwhile(tmp_path / "files")
    kept = tmp_path / "kept"
    (kept / "output").mkdir(parents=True)
    (kept / "output" / "cat_00001_.png").write_bytes(b"this job")
    outputs = await store_outputs(kept, storage, "ada", entry_of("cat_00001_.png"), patience=5.0)
    assert [o.filename for o in outputs] == ["cat_00002_.png"]
    assert await read(storage, "users/ada/output/cat_00001_.png") == b"other job"
    assert await read(storage, "users/ada/output/cat_00002_.png") == b"this job"


@contextlib.contextmanager
def answer_lost_once(endpoint: str) -> Iterator[str]:
    """A proxy in front of the bucket at ``endpoint`` that passes every request on, but answers the
    first conditional put (``If-None-Match``) with a 500 once the bucket has stored it: a write that
    landed and whose answer was lost on the way back, as R2 or a reset connection can do."""
    lost = threading.Event()

    class Forward(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "expect")}
            reply = httpx.request(self.command, endpoint + self.path, headers=headers, content=body)
            if self.command == "PUT" and "If-None-Match" in self.headers and not lost.is_set():
                lost.set()
                reply = httpx.Response(500, content=b"<Error><Code>InternalError</Code></Error>")
            self.send_response(reply.status_code)
            for name, value in reply.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection", "date"):
                    self.send_header(name, value)
            size = reply.headers.get("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", size or str(len(reply.content)))
            self.end_headers()
            self.wfile.write(reply.content)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert lost.is_set(), "no conditional put went through the proxy: the test proved nothing"


async def test_an_output_whose_answer_the_bucket_lost_is_stored_once_by_a_real_s3_client(
    tmp_path: Path, s3_endpoint: str
) -> None:
    """boto3's own retry of a put that landed found its own file under the name (412) and the output
    moved to the next counter: two copies, one that no history names. The worker's own retry, which
    knows the answer was lost, is the only one for a conditional put."""
    make_bucket(s3_endpoint, "lost-answers")
    kept = tmp_path / "kept"
    (kept / "output").mkdir(parents=True)
    (kept / "output" / "cat_00001_.png").write_bytes(PNG + b"this job's")
    with answer_lost_once(s3_endpoint) as proxy:
        storage = open_storage("s3://lost-answers", s3_settings(proxy))
        outputs = await store_outputs(kept, storage, "ada", entry_of("cat_00001_.png"), patience=5.0)
    assert [o.filename for o in outputs] == ["cat_00001_.png"]
    assert await storage.list("users/ada/output/") == ["users/ada/output/cat_00001_.png"]
    assert await read(storage, "users/ada/output/cat_00001_.png") == PNG + b"this job's"
