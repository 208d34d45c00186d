"""Per-participant files on the GPU: the issue's attack end to end. Alice's upload, outputs and
previews pass through the same worker as Bob's jobs; whatever name Bob's workflow gives (plain,
``[input]``, ``[output]``, ``[temp]``, absolute, ``..``), his job never gets Alice's bytes, even
though it reaches the worker (the participant API queues it without the workspace's checks)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.doubles.comfyui_nodes import png_meta
from services.protocol.jobs import Job, JobState
from services.storage import StorageError
from services.storage.local import LocalStorage
from services.worker import job_files as job_files_module
from services.worker.agent import Agent
from services.worker.comfy_client import ComfyClient
from services.worker.job_files import SALT_INPUT, ComfyFolders, JobFiles, file_names, salted
from services.worker.supervisor import ComfyNotReadyError
from tests.support.jobs import finished, graph, participant, put_input, submit
from tests.support.queue_manager_app import LiveServer
from tests.support.worker_agent import pull_worker, worker_settings

SECRET = b"\x89PNG\r\n\x1a\n" + json.dumps({"width": 32, "height": 32, "color": 0xA11CE}).encode()
BOBS = b"\x89PNG\r\n\x1a\n" + json.dumps({"width": 32, "height": 32, "color": 0xB0B}).encode()


def load(name: str, prefix: str = "out") -> dict[str, Any]:
    """LoadImage ``name``, save it, and preview it (a temp file)."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def colours(files: Path, user: str) -> set[int]:
    """The colour of every image the user has in storage (the double's PNGs carry it)."""
    found = set()
    for path in (files / "users" / user).rglob("*.png"):
        found.add(int(png_meta(path.read_bytes()).get("color", -1)))
    return found


async def alice_job(alice: httpx.AsyncClient) -> Job:
    """Alice loads her secret upload: it is saved (output) and previewed (temp) on the worker."""
    job = await finished(alice, await submit(alice, load("secret.png"), inputs=[{"filename": "secret.png"}]))
    assert job.state == JobState.SUCCEEDED, job.error
    return job


def invalid_file(job: Job) -> None:
    assert job.state == JobState.FAILED and job.error is not None
    assert job.error.type == "prompt_outputs_failed_validation", job.error
    assert job.error.node_id == "1" and job.error.node_type == "LoadImage"
    assert "Invalid image file" in job.error.message


async def test_bob_naming_alices_upload_outputs_or_previews_never_gets_her_bytes(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    put_input(files, "alice", "secret.png", SECRET)
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), participant(qm, "bob") as bob:
        job = await alice_job(alice)
        output, preview = (o for o in job.outputs)
        names = [
            "secret.png",
            "secret.png [input]",
            f"{output.filename} [output]",
            f"{preview.filename} [temp]",
        ]
        for name in names:
            invalid_file(await finished(bob, await submit(bob, load(name, "bob"))))
        # Naming her file among the job's inputs reads Bob's own prefix only.
        theirs = [{"filename": "secret.png"}]
        stolen = await finished(bob, await submit(bob, load("secret.png"), inputs=theirs))
    assert stolen.state == JobState.FAILED and stolen.error is not None
    assert stolen.error.type == "InputUnavailable" and "users/bob/input/secret.png" in stolen.error.message
    assert colours(files, "alice") == {0xA11CE}
    assert not (files / "users" / "bob").exists()
    for folder in (comfy.folders.input, comfy.folders.output, comfy.folders.temp):
        assert list(folder.iterdir()) == [], f"{folder} keeps files after the jobs"


async def test_names_outside_comfyuis_folders_are_refused_before_comfyui_reads_them(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    """ComfyUI joins a LoadImage name to its folder unchecked: the worker's disk (here user-file
    storage itself) must not be readable by an absolute name or by climbing with ``..``."""
    put_input(files, "alice", "secret.png", SECRET)
    secret = files / "users/alice/input/secret.png"
    climbing = Path("..") / ".." / secret.relative_to(tmp_path)
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), participant(qm, "bob") as bob:
        for name in (str(secret), str(climbing), f"{climbing} [output]", f"{secret} [temp]"):
            invalid_file(await finished(bob, await submit(bob, load(name, "bob"))))
    assert not (files / "users" / "bob").exists()


async def bob_job(bob: httpx.AsyncClient) -> Job:
    """Bob loads his own upload of the same name as Alice's."""
    job = await finished(bob, await submit(bob, load("secret.png"), inputs=[{"filename": "secret.png"}]))
    assert job.state == JobState.SUCCEEDED, job.error
    return job


@pytest.fixture
def alices_secret(files: Path) -> None:
    put_input(files, "alice", "secret.png", SECRET)


@pytest.fixture
def both_uploaded(files: Path) -> None:
    put_input(files, "alice", "secret.png", SECRET)
    put_input(files, "bob", "secret.png", BOBS)


@pytest.mark.usefixtures("both_uploaded")
async def test_annotated_names_resolve_within_the_owners_files(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), participant(qm, "bob") as bob:
        first = await bob_job(bob)
        alices = await alice_job(alice)
        output, preview = first.outputs
        assert alices.outputs[0].filename == output.filename  # the same name, each owner their own file
        reused = []
        for name in (f"{output.filename} [output]", f"{preview.filename} [temp]"):  # as the workspace sends
            reused.append(await finished(bob, await submit(bob, load(name, "again"))))
        mine = [{"filename": output.filename, "type": "output"}]  # or naming it among the job's inputs
        reused.append(
            await finished(bob, await submit(bob, load(f"{output.filename} [output]"), inputs=mine))
        )
    assert [job.state for job in reused] == [JobState.SUCCEEDED] * 3, [job.error for job in reused]
    assert colours(files, "bob") == {0xB0B} and colours(files, "alice") == {0xA11CE}


@pytest.mark.usefixtures("both_uploaded")
async def test_each_owner_numbers_on_from_their_own_outputs_and_identical_graphs_rerun(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), participant(qm, "bob") as bob:
        await alice_job(alice)
        bobs = await bob_job(bob)
        again = await alice_job(alice)
    assert bobs.outputs[0].filename == "out_00001_.png"
    assert again.outputs[0].filename == "out_00002_.png"
    assert (files / "users/alice/output/out_00001_.png").stat().st_size > 0
    assert colours(files, "bob") == {0xB0B} and colours(files, "alice") == {0xA11CE}


async def test_a_worker_whose_folders_are_not_comfyuis_refuses_to_start(
    comfy: ComfyUIDouble, tmp_path: Path
) -> None:
    settings = worker_settings(comfy, "http://127.0.0.1:9", tmp_path, data_dir=tmp_path / "elsewhere")
    agent = Agent(settings)
    with pytest.raises(ComfyNotReadyError, match=r"--input-directory .*elsewhere/input"):
        await agent.start()
    await agent.stop()


async def test_a_retry_on_the_same_worker_makes_its_outputs_again(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    files: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first attempt's outputs could not be stored: its files are gone from ComfyUI's folders, so
    the second attempt must run the output nodes again rather than replay them from ComfyUI's cache."""
    original, failures = LocalStorage.put, [1]

    async def flaky(self: LocalStorage, key: str, *args: Any, **kwargs: Any) -> int:
        if "/output/" in key and failures:
            failures.pop()
            raise StorageError("the bucket is briefly unreachable")
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStorage, "put", flaky)
    put_input(files, "alice", "secret.png", SECRET)
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job = await alice_job(alice)
    assert job.attempts == 2 and colours(files, "alice") == {0xA11CE}


def test_output_nodes_are_salted_per_attempt_even_when_something_links_from_them() -> None:
    prompt = {**load("in.png"), "4": {"class_type": "Consumer", "inputs": {"x": ["2", 0]}}}
    salted_prompt = salted(prompt, "job:2", {"SaveImage"})
    assert {n for n, node in salted_prompt.items() if SALT_INPUT in node["inputs"]} == {"2", "3", "4"}
    assert salted_prompt["2"]["inputs"][SALT_INPUT] == "job:2" and SALT_INPUT not in prompt["2"]["inputs"]


@pytest.mark.usefixtures("alices_secret")
async def test_a_jobs_files_are_staged_only_once_comfyui_holds_no_other_prompt(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, monkeypatch: Any
) -> None:
    """A prompt still running in ComfyUI (one the worker abandoned) must not see the next owner's
    files, nor leave outputs for the next job to name."""
    polls: list[float] = []
    original = ComfyClient.queue

    async def counted(self: ComfyClient) -> tuple[list[str], list[str]]:
        polls.append(time.monotonic())
        return await original(self)

    monkeypatch.setattr(ComfyClient, "queue", counted)
    comfy.knobs.node_seconds = 1.0
    empty = {"width": 8, "height": 8, "batch_size": 1, "color": 3}
    busy = {
        "1": {"class_type": "EmptyImage", "inputs": empty},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    async with (
        pull_worker(worker_settings(comfy, qm.url, tmp_path, warmup=False)),
        httpx.AsyncClient() as http,
    ):
        await http.post(f"{comfy.url}/prompt", json={"prompt": busy, "prompt_id": "abandoned"})
        job_id = await submit(alice, load("secret.png"), inputs=[{"filename": "secret.png"}])
        async with asyncio.timeout(10):
            while len(polls) < 3:
                await asyncio.sleep(0.02)  # polling the worker's ComfyUI /queue calls
        assert comfy.state.running is not None and comfy.state.running.prompt_id == "abandoned"
        assert list(comfy.folders.input.iterdir()) == []
        comfy.knobs.node_seconds = 0.0
        job = await finished(alice, job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert comfy.state.timings[job_id][0] >= comfy.state.timings["abandoned"][1]


class Staging:
    """What ComfyUI held each time the worker submitted a job, and how often it asked ``/queue``."""

    def __init__(self, comfy: ComfyUIDouble, monkeypatch: Any) -> None:
        self.held_at_submit: list[str | None] = []
        self.queue_asks = 0
        submit_original, queue_original = ComfyClient.submit, ComfyClient.queue

        async def submit(client: ComfyClient, prompt: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            running = comfy.state.running
            self.held_at_submit.append(running.prompt_id if running else None)
            await submit_original(client, prompt, *args, **kwargs)

        async def queue(client: ComfyClient) -> tuple[list[str], list[str]]:
            self.queue_asks += 1
            return await queue_original(client)

        monkeypatch.setattr(ComfyClient, "submit", submit)
        monkeypatch.setattr(ComfyClient, "queue", queue)


async def test_after_a_prompt_ended_normally_the_next_job_is_staged_without_asking_comfyui(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, monkeypatch: Any
) -> None:
    """ComfyUI says ``executing {node: null}`` only once the prompt is off its queue: the GPU's next
    job goes straight in (the warmup's own staging is the only ``/queue`` look)."""
    staging = Staging(comfy, monkeypatch)
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), participant(qm, "bob") as bob:
        asks_after_warmup = staging.queue_asks
        first = await submit(alice, graph(1))
        second = await submit(bob, graph(2))
        jobs = [await finished(alice, first), await finished(bob, second)]
    assert [job.state for job in jobs] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert asks_after_warmup == 1 and staging.queue_asks == 1
    assert staging.held_at_submit == [None, None, None]  # the warmup's and both jobs': ComfyUI held none


async def test_after_a_cancel_the_next_job_waits_until_comfyui_has_let_the_interrupted_prompt_go(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, monkeypatch: Any
) -> None:
    """ComfyUI reports an interrupt before it is done with the prompt: the next owner's files are
    staged only once ComfyUI holds no prompt."""
    staging = Staging(comfy, monkeypatch)
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), participant(qm, "bob") as bob:
        comfy.knobs.history_lag_seconds = 0.5  # it lets the interrupted prompt go half a second later
        sleeping = graph(1)
        sleeping["2"] = {"class_type": "TestSleep", "inputs": {"value": ["1", 0], "seconds": 20.0}}
        cancelled = await submit(alice, sleeping)
        async with asyncio.timeout(10):
            while comfy.state.running is None:
                await asyncio.sleep(0.01)  # polling the double's state
        following = await submit(bob, graph(2))
        assert (await alice.post(f"/api/jobs/{cancelled}/cancel")).status_code == 200
        jobs = [await finished(alice, cancelled), await finished(bob, following)]
    assert [job.state for job in jobs] == [JobState.CANCELLED, JobState.SUCCEEDED]
    assert staging.held_at_submit[-1] is None  # the interrupted prompt had left ComfyUI
    assert comfy.state.timings[following][0] >= comfy.state.timings[cancelled][1]


class CountedStorage(LocalStorage):
    """Local storage that counts its listings."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listings = 0

    async def list(self, prefix: str = "") -> list[str]:
        self.listings += 1
        return await super().list(prefix)


async def test_a_run_of_short_jobs_shares_one_listing_of_the_owners_outputs(
    tmp_path: Path, files: Path, monkeypatch: Any
) -> None:
    """Jobs a moment apart share a listing (the GPU would otherwise wait for it between short
    jobs); a later job lists again and sees what was stored meanwhile (another worker's output)."""
    storage = CountedStorage(files)
    job_files = JobFiles(ComfyFolders.under(tmp_path / "comfy"), storage)
    outputs = files / "users" / "alice" / "output"
    outputs.mkdir(parents=True)
    (outputs / "t_00001_.png").write_bytes(b"png")

    def job(color: int) -> Job:
        return Job(id=f"job-{color}", user="alice", prompt=graph(color), queued_at=datetime.now(UTC))

    first, second = await job_files.prepare(job(1)), await job_files.prepare(job(2))
    assert first.earlier == second.earlier == ["t_00001_.png"] and storage.listings == 1
    (outputs / "t_00002_.png").write_bytes(b"png")  # stored by another worker
    monkeypatch.setattr(job_files_module, "LISTING_SECONDS", 0.0)  # as if a second went by
    third = await job_files.prepare(job(3))
    assert third.earlier == ["t_00001_.png", "t_00002_.png"] and storage.listings == 2


async def test_the_owners_placeholders_are_made_while_the_last_job_runs_and_moved_in_whole(
    tmp_path: Path, files: Path
) -> None:
    """The stand-ins for the owner's earlier outputs are made in the spool ahead (the running job's
    folders untouched) and reach ComfyUI's output folder with the job, however many there are."""
    job_files = JobFiles(ComfyFolders.under(tmp_path / "comfy"), LocalStorage(files))
    outputs = files / "users" / "alice" / "output"
    (outputs / "sub").mkdir(parents=True)
    names = [f"t_{n:05}_.png" for n in range(1, 40)] + ["sub/v_00003.mp4"]
    for name in names:
        (outputs / name).write_bytes(b"stored")
    job = Job(id="job-1", user="alice", prompt=graph(1), queued_at=datetime.now(UTC))
    await asyncio.to_thread(job_files.folders.clear)
    prepared = await job_files.prepare(job)
    assert sorted(job_files.owners["alice"].record) == sorted(names)  # made ahead, in the spool
    assert list(job_files.folders.output.iterdir()) == []  # the running job's turn is not disturbed
    async with job_files.staged(job, prepared):
        staged = sorted(file_names(job_files.folders.output))
        sizes = {(job_files.folders.output / name).stat().st_size for name in names}
    assert staged == sorted(names) and sizes == {0}
    assert list(job_files.folders.output.iterdir()) == []  # emptied for the next owner


def cached_nodes(comfy: ComfyUIDouble, job: Job) -> list[str]:
    """The nodes ComfyUI answered from its cache for the job (its ``execution_cached``)."""
    messages = comfy.state.history[job.id]["status"]["messages"]
    return next(data["nodes"] for kind, data in messages if kind == "execution_cached")


async def test_the_owners_identical_rerun_is_a_cache_hit_naming_her_earlier_file(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    """As on ComfyUI: every node cached, the first run's file named again and nothing new written;
    her file is served as it was (not the empty stand-in the worker numbers on from)."""
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        first = await finished(alice, await submit(alice, graph(color=0x5EED)))
        again = await finished(alice, await submit(alice, graph(color=0x5EED)))
        view = await alice.get("/w/alice/api/view", params={"filename": "t_00001_.png", "type": "output"})
    assert first.state == again.state == JobState.SUCCEEDED, again.error
    assert cached_nodes(comfy, again) == ["1", "2", "3"]
    assert [o.filename for o in again.outputs] == [o.filename for o in first.outputs] == ["t_00001_.png"]
    assert again.outputs[0].size == first.outputs[0].size > 0
    assert [p.name for p in (files / "users/alice/output").iterdir()] == ["t_00001_.png"]
    assert view.status_code == 200 and png_meta(view.content)["color"] == 0xFFFFFF ^ 0x5EED  # inverted


async def test_bob_running_alices_exact_graph_right_after_her_gets_his_own_new_file(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), participant(qm, "bob") as bob:
        hers = await finished(alice, await submit(alice, graph(color=0xA11CE)))
        his = await finished(bob, await submit(bob, graph(color=0xA11CE)))
        name = his.outputs[0].filename
        peek = await bob.get("/w/alice/api/view", params={"filename": name, "type": "output"})
        own = await bob.get("/w/bob/api/view", params={"filename": name, "type": "output"})
    assert hers.state == his.state == JobState.SUCCEEDED, his.error
    assert cached_nodes(comfy, his) == ["1", "2"]  # his SaveImage ran: its result is not hers
    assert (files / "users/bob/output" / name).stat().st_size == his.outputs[0].size > 0
    assert peek.status_code in (401, 403, 404), peek.text
    assert own.status_code == 200 and own.content == (files / "users/bob/output" / name).read_bytes()


async def test_a_cache_hit_naming_a_file_the_owner_no_longer_has_names_it_as_comfyui_does(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    """ComfyUI names a cached output whether or not the file is still there; /view then says 404."""
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        first = await finished(alice, await submit(alice, graph(color=0xDE1)))
        (files / "users/alice/output/t_00001_.png").unlink()
        again = await finished(alice, await submit(alice, graph(color=0xDE1)))
        view = await alice.get("/w/alice/api/view", params={"filename": "t_00001_.png", "type": "output"})
        history = await alice.get(f"/w/alice/api/history/{again.id}")
    assert first.state == again.state == JobState.SUCCEEDED, again.error
    assert [(o.filename, o.size) for o in again.outputs] == [("t_00001_.png", 0)]
    assert view.status_code == 404
    assert history.status_code == 200
    assert history.json()[again.id]["outputs"]["3"]["images"][0]["filename"] == "t_00001_.png"


async def test_a_cache_hit_is_reported_only_once_the_files_it_names_are_stored(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    alice: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rerun can end while the first run's file is still on its way to storage (the worker
    stores outputs while the next job runs): the owner is told of it once she can view it."""
    original = LocalStorage.put

    async def slow(self: LocalStorage, key: str, *args: Any, **kwargs: Any) -> int:
        if "/output/" in key:
            await asyncio.sleep(0.5)  # a slow bucket: the rerun ends meanwhile
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStorage, "put", slow)
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        first_id = await submit(alice, graph(color=0x51))
        again = await finished(alice, await submit(alice, graph(color=0x51)))
        view = await alice.get("/w/alice/api/view", params={"filename": "t_00001_.png", "type": "output"})
        first = await finished(alice, first_id)
    assert again.state == first.state == JobState.SUCCEEDED, again.error
    assert cached_nodes(comfy, again) == ["1", "2", "3"]
    assert view.status_code == 200 and png_meta(view.content)["color"] == 0xFFFFFF ^ 0x51  # inverted


def test_output_nodes_are_salted_per_owner_and_per_attempt_on_a_rerun(tmp_path: Path) -> None:
    files = JobFiles(ComfyFolders.under(tmp_path), LocalStorage(tmp_path / "files"))
    first = Job(id="j1", user="alice", prompt={}, attempts=1, queued_at=datetime.now(UTC))
    salt = files.salt
    assert salt(first) == salt(first.model_copy(update={"id": "j2"}))  # her identical rerun: a cache hit
    assert salt(first) != salt(first.model_copy(update={"user": "bob"}))
    reruns = [
        first.model_copy(update={"attempts": 2}),  # a retry
        first.model_copy(update={"comfyui_losses": 1}),  # ComfyUI was lost with the job in it
        first.model_copy(update={"attempts": 2, "comfyui_losses": 1}),
        first.model_copy(update={"id": "j2", "attempts": 2}),
    ]
    assert len({salt(first), *map(salt, reruns)}) == 1 + len(reruns)
    bobs = salt(first.model_copy(update={"user": "bob"}))
    before = salt(first)
    files.unstored("alice")  # a job of hers ended without its files in storage
    assert salt(first) != before and salt(first.model_copy(update={"user": "bob"})) == bobs
    restarted = JobFiles(ComfyFolders.under(tmp_path), LocalStorage(tmp_path / "files"))
    assert restarted.salt(first) not in (before, salt(first))  # an attached ComfyUI outlives the worker


async def test_a_rerun_after_a_failed_job_never_names_a_file_that_was_not_stored(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    """Her first graph saved an image, then another of its nodes failed: the image never reached
    storage, so her rerun of the saving part must save it again rather than name it from the cache."""
    put_input(files, "alice", "bad.png", b"this is text, not a PNG\n")
    saving = graph(color=0xFA11)
    failing = {
        "3": saving["3"],  # the double runs the outputs in the graph's order: this one first
        **saving,
        "11": {"class_type": "LoadImage", "inputs": {"image": "bad.png"}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "never"}},
    }
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        first = await finished(alice, await submit(alice, failing, inputs=[{"filename": "bad.png"}]))
        again = await finished(alice, await submit(alice, graph(color=0xFA11)))
        view = await alice.get("/w/alice/api/view", params={"filename": "t_00001_.png", "type": "output"})
    assert first.state == JobState.FAILED and first.error is not None
    assert "t_00001_.png" in json.dumps(
        comfy.state.history[first.id]["outputs"]
    )  # saved, then the job failed
    assert again.state == JobState.SUCCEEDED, again.error
    assert cached_nodes(comfy, again) == ["1", "2"]
    assert view.status_code == 200 and again.outputs[0].size > 0
