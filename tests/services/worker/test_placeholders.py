"""An owner's placeholders are kept between her jobs and only what changed is made or removed, yet
every job still numbers on from its owner's own files and sees no one else's names: across
alternating owners, deleted and overwritten names, new subfolders, failed jobs and odd entries."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import Job, JobState
from services.storage.local import LocalStorage
from services.worker import job_files as job_files_module
from services.worker.job_files import ComfyFolders, JobFiles
from services.worker.outputs import renames, store_outputs
from services.worker.placeholders import OwnerPlaceholders, file_names
from tests.support.jobs import finished, graph, participant, submit
from tests.support.queue_manager_app import LiveServer
from tests.support.worker_agent import pull_worker, worker_settings


def stored(files: Path, user: str, *names: str) -> None:
    """Outputs the user has in storage from earlier jobs (each file's content is its name)."""
    for name in names:
        path = files / "users" / user / "output" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())


def save(output: Path, prefix: str, body: bytes = b"png") -> str:
    """What ComfyUI's SaveImage does: list the folder and write the highest counter + 1."""
    subfolder, _, stem = prefix.rpartition("/")
    folder = output / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(stem)}_(\d+)_\.png$")
    taken = [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.match(name))]
    counter = max(taken, default=0) + 1
    name = f"{stem}_{counter:05}_.png"
    (folder / name).write_bytes(body)
    return f"{subfolder}/{name}" if subfolder else name


class Worker:
    """The worker's files for jobs run one after the other, as the runner stages them."""

    def __init__(self, tmp_path: Path, files: Path) -> None:
        self.files = JobFiles(ComfyFolders.under(tmp_path / "comfy"), LocalStorage(files))
        self.stored = files
        self.count = 0

    def job(self, user: str) -> Job:
        self.count += 1
        return Job(id=f"job-{self.count}", user=user, prompt=graph(self.count), queued_at=datetime.now(UTC))

    @property
    def output(self) -> Path:
        return self.files.folders.output

    async def run(self, user: str, prefix: str = "t") -> str:
        """One job that saves one image; its kept output is stored, as the runner does."""
        job = self.job(user)
        async with self.files.staged(job) as stage:
            name = save(self.output, prefix)
            stage.keep_outputs()
        target = self.stored / "users" / job.user / "output" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((self.files.kept(job.id) / "output" / name).read_bytes())
        self.files.discard(job.id)
        return name

    def placeholders(self) -> list[str]:
        """The placeholder folders kept in the spool (one per owner at most)."""
        root = self.files.placeholders_root
        return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def staged_now(worker: Worker) -> dict[str, int]:
    """The output folder as the job sees it: name -> size."""
    return {name: (worker.output / name).stat().st_size for name in file_names(worker.output)}


async def test_numbering_continues_for_each_owner_across_alternating_jobs(
    tmp_path: Path, files: Path
) -> None:
    stored(files, "alice", "t_00001_.png", "t_00002_.png", "sub/v_00004_.png")
    stored(files, "bob", *(f"t_{n:05}_.png" for n in range(1, 8)))
    worker = Worker(tmp_path, files)
    jobs = [("alice", "t"), ("bob", "t"), ("alice", "t"), ("alice", "sub/v"), ("bob", "t"), ("alice", "t")]
    names = [(user, await worker.run(user, prefix)) for user, prefix in jobs]
    assert names == [
        ("alice", "t_00003_.png"),
        ("bob", "t_00008_.png"),
        ("alice", "t_00004_.png"),
        ("alice", "sub/v_00005_.png"),
        ("bob", "t_00009_.png"),
        ("alice", "t_00005_.png"),
    ]
    assert (files / "users/alice/output/t_00001_.png").read_bytes() == b"t_00001_.png"  # never written over
    assert len(worker.placeholders()) == 2  # one folder per owner, kept


async def test_numbering_continues_before_the_last_output_is_listed_from_storage(
    tmp_path: Path, files: Path
) -> None:
    """Her next job starts before the last one's output is stored: it numbers past it all the same."""
    worker = Worker(tmp_path, files)
    for expected in range(1, 5):
        job = worker.job("alice")
        async with worker.files.staged(job) as stage:
            assert save(worker.output, "t") == f"t_{expected:05}_.png"
            stage.keep_outputs()
        worker.files.discard(job.id)  # nothing reached storage


async def test_untouched_placeholders_are_kept_not_made_again(tmp_path: Path, files: Path) -> None:
    """The cost of a job's placeholders is what changed: the owner's 300 earlier outputs are the
    same empty files at her next job, not 300 new ones (a hard link to each, made during her first
    job, still names the very file: its inode cannot be reused meanwhile)."""
    stored(files, "alice", *(f"t_{n:05}_.png" for n in range(1, 301)))
    worker = Worker(tmp_path, files)
    marks = tmp_path / "marks"
    marks.mkdir()
    job = worker.job("alice")
    async with worker.files.staged(job) as stage:
        first = sorted(file_names(worker.output))
        for name in first:
            os.link(worker.output / name, marks / name)  # ctime changes; size, inode and mtime stay
        save(worker.output, "t")
        stage.keep_outputs()
    worker.files.discard(job.id)
    async with worker.files.staged(worker.job("alice")):
        second = sorted(file_names(worker.output))
        same = [name for name in first if os.path.samefile(marks / name, worker.output / name)]
    assert len(first) == 300 and len(second) == 301 and same == first


@pytest.mark.parametrize("made", ["elsewhere", "by this worker"])
async def test_a_name_deleted_from_storage_is_no_placeholder_at_her_next_job(
    tmp_path: Path, files: Path, monkeypatch: pytest.MonkeyPatch, made: str
) -> None:
    stored(files, "alice", "t_00001_.png", "t_00002_.png")
    worker = Worker(tmp_path, files)
    if made == "elsewhere":
        stored(files, "alice", "t_00003_.png")
    else:
        assert await worker.run("alice", "t") == "t_00003_.png"
    await worker.run("alice", "x")
    (files / "users/alice/output/t_00003_.png").unlink()
    monkeypatch.setattr(job_files_module, "LISTING_SECONDS", 0.0)  # as if a second went by
    async with worker.files.staged(worker.job("alice")):
        assert staged_now(worker) == {"t_00001_.png": 0, "t_00002_.png": 0, "x_00001_.png": 0}
        assert save(worker.output, "t") == "t_00003_.png"  # as ComfyUI numbers after a delete


async def test_a_long_run_remembers_only_the_names_made_since_each_owners_last_listing(
    tmp_path: Path, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker runs for days: what it keeps of the names it made is what her storage listing cannot
    show yet (one name per owner here, her last job's), not every output of the run."""
    monkeypatch.setattr(job_files_module, "LISTING_SECONDS", 0.0)  # each job lists: a second apart
    stored(files, "carol", "t_00001_.png")
    worker = Worker(tmp_path, files)
    owners = ("alice", "bob", "carol")
    names: dict[str, list[str]] = {owner: [] for owner in owners}
    for _ in range(40):
        for owner in owners:
            names[owner].append(await worker.run(owner))
            remembered = {user: len(made) for user, made in worker.files.produced.items()}
            assert all(count <= 1 for count in remembered.values()), remembered
            assert worker.files.made == {}

    assert names["alice"] == names["bob"] == [f"t_{n:05}_.png" for n in range(1, 41)]
    assert names["carol"] == [f"t_{n:05}_.png" for n in range(2, 42)]
    assert (files / "users/carol/output/t_00001_.png").read_bytes() == b"t_00001_.png"  # never written over


async def test_a_job_prepared_before_her_last_output_was_listed_numbers_past_it(
    tmp_path: Path, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Her job prepared ahead (its listing older than her last job's output) is staged after a newer
    listing made the worker forget that output's name: the name still holds a placeholder."""
    monkeypatch.setattr(job_files_module, "LISTING_SECONDS", 0.0)
    stored(files, "alice", "t_00001_.png")
    worker = Worker(tmp_path, files)
    ahead = worker.job("alice")
    prepared = await worker.files.prepare(ahead)  # lists t_00001_ only

    assert await worker.run("alice") == "t_00002_.png"
    await worker.files.prepare(worker.job("alice"))  # a newer listing: t_00002_ is in storage now
    assert "t_00002_.png" not in worker.files.produced.get("alice", {})

    async with worker.files.staged(ahead, prepared):
        assert staged_now(worker) == {"t_00001_.png": 0, "t_00002_.png": 0}
        assert save(worker.output, "t") == "t_00003_.png"


async def test_a_job_discarded_while_its_outputs_leave_her_placeholders_leaves_nothing_behind(
    tmp_path: Path, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run ends (its outputs stored or given up) before her placeholders are parted from its
    outputs: the names the parting finds are let go with the job, not kept for the worker's life."""
    started, go_on = threading.Event(), threading.Event()
    split = OwnerPlaceholders.split

    def held(self: OwnerPlaceholders, output: Path) -> list[str]:
        started.set()
        go_on.wait(timeout=10)
        return split(self, output)

    monkeypatch.setattr(OwnerPlaceholders, "split", held)
    worker = Worker(tmp_path, files)
    job = worker.job("alice")

    async def run() -> None:
        async with worker.files.staged(job) as stage:
            save(worker.output, "t")
            stage.keep_outputs()

    task = asyncio.create_task(run())
    assert await asyncio.to_thread(started.wait, 10)
    worker.files.discard(job.id)
    go_on.set()
    await task

    assert worker.files.made == {}
    assert [left < math.inf for _, left in worker.files.produced["alice"].values()] == [True]
    assert not (worker.files.folders.spool / job.id).exists()


@pytest.mark.parametrize("how", ["in place", "renamed over"])
async def test_a_job_writing_a_fixed_name_over_a_placeholder_keeps_that_file(
    tmp_path: Path, files: Path, how: str
) -> None:
    stored(files, "alice", "fixed.png", "t_00001_.png")
    worker = Worker(tmp_path, files)
    job = worker.job("alice")
    async with worker.files.staged(job) as stage:
        if how == "in place":
            (worker.output / "fixed.png").write_bytes(b"new")
        else:  # another file, even an empty one, is the job's output
            (worker.output / "fixed.tmp").write_bytes(b"")
            os.replace(worker.output / "fixed.tmp", worker.output / "fixed.png")
        stage.keep_outputs()
    kept = worker.files.kept(job.id) / "output"
    assert {name: (kept / name).read_bytes() for name in file_names(kept)} == {
        "fixed.png": b"new" if how == "in place" else b""
    }
    worker.files.discard(job.id)
    async with worker.files.staged(worker.job("alice")):
        assert staged_now(worker) == {"fixed.png": 0, "t_00001_.png": 0}  # numbered past, not over


async def test_a_job_saving_into_a_new_subfolder_keeps_it_and_her_next_job_numbers_on(
    tmp_path: Path, files: Path
) -> None:
    stored(files, "alice", "t_00001_.png")
    worker = Worker(tmp_path, files)
    name = await worker.run("alice", "new/deep/t")
    assert name == "new/deep/t_00001_.png"
    assert (files / "users/alice/output" / name).read_bytes() == b"png"
    async with worker.files.staged(worker.job("alice")):
        assert staged_now(worker) == {"t_00001_.png": 0, name: 0}
        assert save(worker.output, "new/deep/t") == "new/deep/t_00002_.png"


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
async def test_a_job_that_keeps_nothing_leaves_no_stray_file_and_her_next_job_is_right(
    tmp_path: Path, files: Path, ending: str
) -> None:
    stored(files, "alice", "t_00001_.png", "sub/t_00001_.png")
    worker = Worker(tmp_path, files)
    await worker.run("alice")
    job = worker.job("alice")
    with pytest.raises(RuntimeError) if ending == "failed" else contextlib.nullcontext():
        async with worker.files.staged(job):
            save(worker.output, "t", b"half")
            (worker.output / "sub/t_00001_.png").write_bytes(b"over")  # not stored: no job output
            still_open = (worker.output / "t_00001_.png").open("wb")  # a node ComfyUI has not stopped yet
            if ending == "failed":
                raise RuntimeError("the job failed")
    with still_open:
        still_open.write(b"late")  # into whatever file the placeholder is now
    worker.files.discard(job.id)
    assert not (worker.files.folders.spool / job.id).exists()
    assert all(not list(worker.files.folders.of(kind).iterdir()) for kind in ("input", "output", "temp"))
    assert len(worker.placeholders()) <= 1
    async with worker.files.staged(worker.job("alice")):
        assert staged_now(worker) == {"t_00001_.png": 0, "t_00002_.png": 0, "sub/t_00001_.png": 0}
        assert save(worker.output, "t") == "t_00003_.png"


async def test_bob_never_sees_a_placeholder_of_alice_even_right_after_her_job(
    tmp_path: Path, files: Path
) -> None:
    """Bob's job, prepared while hers runs and staged the moment it ends (her outputs still being
    split from her placeholders), sees only his own names."""
    stored(files, "alice", *(f"alice_{n:05}_.png" for n in range(1, 200)))
    stored(files, "bob", "bob_00001_.png")
    worker = Worker(tmp_path, files)
    await worker.run("alice")  # her placeholders are kept now
    hers, his = worker.job("alice"), worker.job("bob")
    seen: dict[str, int] = {}
    async with worker.files.staged(hers) as stage:
        prepared = await worker.files.prepare(his)
        save(worker.output, "t")
        stage.keep_outputs()
        bobs = asyncio.create_task(enter(worker, his, prepared, seen))  # waits for the folders
    await bobs
    assert seen == {"bob_00001_.png": 0}


async def enter(worker: Worker, job: Job, prepared: Any, seen: dict[str, int]) -> None:
    async with worker.files.staged(job, prepared):
        seen.update(staged_now(worker))


async def test_her_next_job_staged_while_her_last_one_is_split_waits_for_the_split(
    tmp_path: Path, files: Path
) -> None:
    stored(files, "alice", *(f"t_{n:05}_.png" for n in range(1, 200)))
    worker = Worker(tmp_path, files)
    first, second = worker.job("alice"), worker.job("alice")
    prepared = await worker.files.prepare(second)
    seen: dict[str, int] = {}
    async with worker.files.staged(first) as stage:
        assert save(worker.output, "t") == "t_00200_.png"
        stage.keep_outputs()
        following = asyncio.create_task(enter(worker, second, prepared, seen))  # waits for the folders
    await following
    assert len(seen) == 200 and set(seen.values()) == {0}  # her new output is a placeholder too
    assert (worker.files.kept(first.id) / "output/t_00200_.png").read_bytes() == b"png"


async def test_an_entry_that_is_no_file_puts_the_placeholders_in_doubt_and_nothing_is_lost(
    tmp_path: Path, files: Path
) -> None:
    stored(files, "alice", "t_00001_.png", "t_00002_.png")
    worker = Worker(tmp_path, files)
    await worker.run("alice")
    job = worker.job("alice")
    async with worker.files.staged(job) as stage:
        name = save(worker.output, "t")
        (worker.output / "link.png").symlink_to(worker.output / name)
        stage.keep_outputs()
    kept = worker.files.kept(job.id) / "output"
    assert sorted(os.listdir(kept)) == ["link.png", "t_00004_.png"]  # placeholders dropped, output kept
    assert (kept / "t_00004_.png").read_bytes() == b"png"
    worker.files.discard(job.id)
    assert worker.placeholders() == []  # forgotten: made again
    async with worker.files.staged(worker.job("alice")):
        assert save(worker.output, "t") == "t_00005_.png"


async def test_alternating_owners_through_the_worker_each_number_on_from_their_own_files(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    """End to end with the ComfyUI double: alice, bob, alice, bob, alice, each her own next file."""
    stored(files, "alice", "t_00001_.png", "t_00002_.png")
    stored(files, "bob", *(f"t_{n:05}_.png" for n in range(1, 6)))
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), participant(qm, "bob") as bob:
        clients = {"alice": alice, "bob": bob}
        order = ["alice", "bob", "alice", "bob", "alice"]
        ids = [await submit(clients[user], graph(color=index)) for index, user in enumerate(order)]
        jobs = [await finished(clients[user], job_id) for user, job_id in zip(order, ids, strict=True)]
    assert all(job.state == JobState.SUCCEEDED for job in jobs), [job.error for job in jobs]
    assert [job.outputs[0].filename for job in jobs] == [
        "t_00003_.png",
        "t_00006_.png",
        "t_00004_.png",
        "t_00007_.png",
        "t_00005_.png",
    ]
    assert (files / "users/alice/output/t_00001_.png").read_bytes() == b"t_00001_.png"
    assert (files / "users/bob/output/t_00001_.png").read_bytes() == b"t_00001_.png"
    assert all(
        (files / "users" / job.user / "output" / job.outputs[0].filename).stat().st_size > 0 for job in jobs
    )


async def test_where_comfyuis_folders_cannot_be_renamed_the_placeholders_move_one_by_one_and_stay_right(
    tmp_path: Path, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ComfyUI's output folder may be a mount point: nothing is renamed onto or from it as a whole."""
    monkeypatch.setattr(job_files_module, "renamable", lambda folder: False)
    stored(files, "alice", "t_00001_.png", "sub/t_00002_.png")
    stored(files, "bob", "t_00004_.png")
    worker = Worker(tmp_path, files)
    jobs = [("alice", "t"), ("alice", "sub/t"), ("bob", "t"), ("alice", "t"), ("bob", "t")]
    names = [await worker.run(user, prefix) for user, prefix in jobs]
    assert names == ["t_00002_.png", "sub/t_00003_.png", "t_00005_.png", "t_00003_.png", "t_00006_.png"]
    assert len(worker.placeholders()) == 2  # each owner's kept
    async with worker.files.staged(worker.job("bob")):
        assert staged_now(worker) == {"t_00004_.png": 0, "t_00005_.png": 0, "t_00006_.png": 0}


class BucketStorage(LocalStorage):
    """Local storage listing, as a bucket may, keys that climb out of the owner's prefix."""

    async def list(self, prefix: str = "") -> list[str]:
        return [*await super().list(prefix), f"{prefix}../../escaped.png", f"{prefix}sub/../../../up.png"]


async def test_a_stored_key_that_climbs_out_makes_no_file_outside_her_placeholders(
    tmp_path: Path, files: Path
) -> None:
    stored(files, "alice", "t_00001_.png")
    worker = Worker(tmp_path, files)
    worker.files.storage = BucketStorage(files)
    async with worker.files.staged(worker.job("alice")):
        assert staged_now(worker) == {"t_00001_.png": 0}
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == ["t_00001_.png"]  # the stored one only


async def stored_run(worker: Worker, job: Job, prepared: Any) -> tuple[str, str]:
    """Her job staged from ``prepared`` (maybe listed long before), its image stored as the runner
    stores it: under the next free counter when the name ComfyUI gave it is hers already. Returns
    the name ComfyUI gave and the name stored."""
    async with worker.files.staged(job, prepared) as stage:
        name = save(worker.output, "t", body=job.id.encode())
        stage.keep_outputs()
    entry = {"outputs": {"9": {"images": [{"filename": name, "subfolder": "", "type": "output"}]}}}
    outputs = await store_outputs(worker.files.kept(job.id), worker.files.storage, job.user, entry)
    worker.files.stored_as(job, renames(entry, outputs))
    worker.files.discard(job.id)
    return name, outputs[0].filename


async def test_two_workers_with_stale_listings_number_on_from_her_last_output_after_forgetting(
    tmp_path: Path, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers run alice's jobs, each prepared ahead with a listing the other worker's output
    made stale, while each worker's newer listings make it forget its own names: no output ever
    replaces one of her files, and each job numbers on from her last output."""
    monkeypatch.setattr(job_files_module, "LISTING_SECONDS", 0.0)  # each prepare lists: forgetting
    a, b = Worker(tmp_path / "a", files), Worker(tmp_path / "b", files)
    b.count = 100  # job ids of its own
    names: list[str] = []
    ran: list[str] = []
    taken = 0  # outputs ComfyUI named as a file of hers another worker had stored

    async def run(worker: Worker, job: Job, prepared: Any) -> None:
        nonlocal taken
        given, name = await stored_run(worker, job, prepared)
        names.append(name)
        ran.append(job.id)
        taken += given != name

    a1, b1 = a.job("alice"), b.job("alice")
    pa1, pb1 = await a.files.prepare(a1), await b.files.prepare(b1)  # both list nothing
    await run(a, a1, pa1)
    await run(b, b1, pb1)  # ComfyUI on b names it t_00001_ too: stored as the next
    for _ in range(3):
        a2, b2 = a.job("alice"), b.job("alice")
        pb2 = await b.files.prepare(b2)  # b lists, then a's next output makes that stale
        await run(a, a2, await a.files.prepare(a2))
        await run(b, b2, pb2)

    assert names == [f"t_{n:05}_.png" for n in range(1, 9)]
    assert taken == 4  # b's listing was stale each time: its output took the next free name
    for name, job_id in zip(names, ran, strict=True):  # each file is the job's that made it
        assert (files / "users/alice/output" / name).read_bytes() == job_id.encode()
    for worker in (a, b):  # and each worker keeps only the names its last listing cannot show
        assert len(worker.files.produced.get("alice", {})) <= 2 and worker.files.made == {}
