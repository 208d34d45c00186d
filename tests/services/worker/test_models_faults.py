"""The models sync attacked: a kill at the wrong moment, a bucket that changed or stopped answering,
links on the volume pointing out of it. Against the S3 double (moto) on loopback, through a TCP
proxy that breaks the way a network does."""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from rich.progress import Progress, TaskID

from devkit.s3 import make_bucket, s3_settings
from services.protocol.workers import ModelsProgress
from services.storage import Storage, aiter_chunks, open_storage
from services.worker import models
from services.worker.models import ModelError, ensure_models
from services.worker.settings import WorkerSettings
from tests.support.storage_spy import record_starts
from tests.support.tcp_proxy import FlakyProxy

OLD = bytes(range(256)) * 4096  # 1 MiB of yesterday's weights
NEW = bytes(reversed(range(256))) * 4096  # the same size, re-uploaded under the same name
KEY, PATH = "sd/model.safetensors", "checkpoints/model.safetensors"


def bucket_of(tmp_path: Path) -> str:
    return f"faults-{tmp_path.name.lower().replace('_', '-')}"[:60]


async def bucket(endpoint: str, tmp_path: Path, content: bytes = NEW) -> Storage:
    name = bucket_of(tmp_path)
    make_bucket(endpoint, name)
    storage = open_storage(f"s3://{name}", s3_settings(endpoint))
    await storage.put(KEY, aiter_chunks(content))
    return storage


def config(tmp_path: Path, content: bytes = NEW, shared: bool = False, **more: float) -> WorkerSettings:
    manifest = tmp_path / "models.yaml"
    entry = {"path": PATH, "size": len(content), "sha256": hashlib.sha256(content).hexdigest(), "source": KEY}
    manifest.write_text(yaml.safe_dump({"models": [entry]}))
    where = {"shared_models_dir": tmp_path / "volume"} if shared else {}
    return WorkerSettings(
        models_manifest=manifest,
        models_url="file:///unused-models-bucket",
        models_dir=tmp_path / "disk",
        **{"models_lock_stale_seconds": 5, **where, **more},  # type: ignore[arg-type]
    )


def partial_of(folder: Path, content: bytes) -> Path:
    partial = folder / f"{PATH}.part"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(content)
    return partial


async def test_a_sync_killed_after_the_last_byte_before_the_rename_finishes_the_file(
    s3_endpoint: str, tmp_path: Path
) -> None:
    """The whole file is in <name>.part: asking the bucket for the bytes from its end is refused
    (416 InvalidRange, on S3 as on R2), so the file is checked and put in place without a read."""
    vault = await bucket(s3_endpoint, tmp_path)
    partial_of(tmp_path / "disk", NEW)
    assert await ensure_models(config(tmp_path), vault) == [PATH]
    assert (tmp_path / "disk" / PATH).read_bytes() == NEW
    assert not (tmp_path / "disk" / f"{PATH}.part").exists()


async def test_a_resume_after_the_bucket_file_changed_meanwhile_starts_the_file_over(
    s3_endpoint: str, tmp_path: Path
) -> None:
    """Killed mid-file yesterday; the file was re-uploaded under the same name and the manifest
    updated: the part on disk is of the old file, the rest the new one's. The mix fails the hash, so
    the sync starts the file over once instead of refusing a file the bucket holds right."""
    vault = await bucket(s3_endpoint, tmp_path, NEW)
    partial_of(tmp_path / "disk", OLD[:300_000])
    assert await ensure_models(config(tmp_path, NEW), vault) == [PATH]
    assert (tmp_path / "disk" / PATH).read_bytes() == NEW


async def test_a_file_changed_in_the_bucket_under_the_same_name_is_refused_naming_it(
    s3_endpoint: str, tmp_path: Path
) -> None:
    """The manifest still says yesterday's sha256: nothing unverified is put in place, and the
    message names the model, both hashes and the fix."""
    vault = await bucket(s3_endpoint, tmp_path, NEW)
    partial_of(tmp_path / "disk", NEW[:300_000])
    with pytest.raises(
        ModelError, match=rf"{PATH} from the models bucket does not match the manifest"
    ) as err:
        await ensure_models(config(tmp_path, OLD), vault)
    assert hashlib.sha256(OLD).hexdigest() in str(err.value) and "re-upload" in str(err.value)
    assert not (tmp_path / "disk" / PATH).exists()
    assert not (tmp_path / "disk" / f"{PATH}.part").exists()


async def test_a_whole_file_that_failed_its_checksum_is_not_downloaded_again_until_it_is_reuploaded(
    s3_endpoint: str, tmp_path: Path
) -> None:
    """The bucket holds a file whose sha256 is not the config's: each worker waiting on the volume,
    and each restart of a serverless container, downloaded the whole file again (minutes of a GPU
    billed by the minute, for a file that never passes) before failing the same way. The verdict on
    that object (its key and version in the bucket) is kept on the volume: the next sync fails at
    once, naming the model, both checksums and the fix, on the admin page too; a re-upload is tried."""
    vault = await bucket(s3_endpoint, tmp_path, NEW)
    starts = record_starts(vault)
    (tmp_path / "volume").mkdir()
    with pytest.raises(ModelError, match="does not match the manifest"):
        await ensure_models(config(tmp_path, OLD, shared=True), vault)
    assert starts == [0]

    heard: list[ModelsProgress] = []

    async def report(progress: ModelsProgress) -> None:
        heard.append(progress)

    with pytest.raises(ModelError) as err:  # the next worker, or the container started again
        await ensure_models(config(tmp_path, OLD, shared=True), vault, report)
    assert starts == [0], "the file known to fail its checksum was downloaded again"
    message = str(err.value)
    assert PATH in message and KEY in message, message
    assert hashlib.sha256(OLD).hexdigest() in message and hashlib.sha256(NEW).hexdigest() in message
    assert "re-upload" in message and "sha256" in message and "stack config" in message
    assert heard[-1].state == "failed" and heard[-1].message == message

    await vault.put(KEY, aiter_chunks(OLD))  # the organizer uploads the right file
    assert await ensure_models(config(tmp_path, OLD, shared=True), vault) == [PATH]
    assert starts == [0, 0] and (tmp_path / "volume" / PATH).read_bytes() == OLD
    assert sorted(p.name for p in (tmp_path / "volume/checkpoints").iterdir()) == [
        ".model.safetensors.sha256",
        "model.safetensors",
    ]


async def test_a_checksum_corrected_in_the_config_downloads_the_file_it_had_refused(
    s3_endpoint: str, tmp_path: Path
) -> None:
    """The bucket's file was right and the config's sha256 wrong: once the config is corrected the
    remembered verdict (on the old sha256) no longer holds and the file is downloaded."""
    vault = await bucket(s3_endpoint, tmp_path, NEW)
    with pytest.raises(ModelError, match="does not match the manifest"):
        await ensure_models(config(tmp_path, OLD), vault)
    assert await ensure_models(config(tmp_path, NEW), vault) == [PATH]
    assert (tmp_path / "disk" / PATH).read_bytes() == NEW


@pytest.mark.parametrize(
    "link", ["checkpoints", PATH, f"{PATH}.part", "checkpoints/.model.safetensors.sha256"]
)
async def test_a_link_on_the_volume_pointing_out_of_it_is_refused_and_nothing_is_written_outside(
    s3_endpoint: str, tmp_path: Path, link: str
) -> None:
    """A folder, a model, its partial download or its mark made a link to somewhere else: the sync
    never writes (nor trusts) through it, and says which link to remove."""
    vault = await bucket(s3_endpoint, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"precious")
    volume = tmp_path / "volume"
    (volume / "checkpoints").mkdir(parents=True)
    if link == "checkpoints":
        (volume / "checkpoints").rmdir()
        (volume / link).symlink_to(outside, target_is_directory=True)
    else:
        (volume / link).symlink_to(victim)
    before = sorted(p.name for p in outside.iterdir())
    with pytest.raises(ModelError, match=rf"{link.replace('.', '[.]')} on the models volume is a link"):
        await ensure_models(config(tmp_path, shared=True), vault)
    assert sorted(p.name for p in outside.iterdir()) == before
    assert victim.read_bytes() == b"precious"


async def test_a_download_cut_off_by_the_network_is_resumed_where_it_broke(
    s3_endpoint: str, tmp_path: Path
) -> None:
    await bucket(s3_endpoint, tmp_path)
    proxy = FlakyProxy(urlsplit(s3_endpoint).port or 0)
    async with proxy.running():
        vault = open_storage(f"s3://{bucket_of(tmp_path)}", s3_settings(proxy.endpoint))
        starts = record_starts(vault)
        proxy.cut_after = 400_000
        assert await ensure_models(config(tmp_path, storage_retry_seconds=30), vault) == [PATH]
    assert proxy.cuts == 1
    assert starts[0] == 0 and len(starts) == 2 and 0 < starts[1] <= 400_000
    assert (tmp_path / "disk" / PATH).read_bytes() == NEW


async def test_an_outage_that_lasts_ends_the_sync_naming_what_is_missing_and_the_fix(
    s3_endpoint: str, tmp_path: Path
) -> None:
    """The bucket stops answering midway and stays away: after the retries, the sync fails naming
    the model still missing, the bucket and what to do; what came down stays for the resume."""
    await bucket(s3_endpoint, tmp_path)
    proxy = FlakyProxy(urlsplit(s3_endpoint).port or 0)
    async with proxy.running():
        vault = open_storage(f"s3://{bucket_of(tmp_path)}", s3_settings(proxy.endpoint))
        proxy.cut_after, proxy.down_after_cut = 400_000, True
        with pytest.raises(ModelError) as err:
            await ensure_models(config(tmp_path, storage_retry_seconds=1), vault)
    message = str(err.value)
    assert f"Still missing: {PATH}" in message and "did not answer" in message
    assert bucket_of(tmp_path) in message
    assert "start the worker again" in message
    partial = tmp_path / "disk" / f"{PATH}.part"
    assert 0 < partial.stat().st_size < len(NEW)


async def test_a_ranged_read_answered_with_the_whole_file_still_resumes_right(
    s3_endpoint: str, tmp_path: Path
) -> None:
    """Something on the way ignores the Range header and the bucket answers 200 with the whole file:
    the part on disk must not get the file's start appended a second time, nor the file be read
    twice (the reply's missing Content-Range says it is whole: its first bytes are skipped)."""
    await bucket(s3_endpoint, tmp_path)
    partial_of(tmp_path / "disk", NEW[:300_000])
    proxy = FlakyProxy(urlsplit(s3_endpoint).port or 0)
    async with proxy.running():
        vault = open_storage(f"s3://{bucket_of(tmp_path)}", s3_settings(proxy.endpoint))
        starts = record_starts(vault)
        proxy.drop_range = True
        assert await ensure_models(config(tmp_path), vault) == [PATH]
    assert starts == [300_000]
    assert (tmp_path / "disk" / PATH).read_bytes() == NEW


class Paced:
    """The bucket, handing each read out 64 KiB at a time, each after ``go`` (a Storage like any other)."""

    def __init__(self, inner: Storage) -> None:
        self.inner, self.size, self.version = inner, inner.size, inner.version
        self.go, self.first = asyncio.Event(), asyncio.Event()

    async def get(self, key: str, start: int = 0) -> AsyncIterator[bytes]:
        async for chunk in self.inner.get(key, start):
            for at in range(0, len(chunk), 65536):
                yield chunk[at : at + 65536]
                self.first.set()
                await self.go.wait()


@pytest.mark.parametrize("clock", ["monotonic", "wall"])
async def test_a_sync_whose_lock_was_taken_over_stops_writing_and_waits_for_the_new_holder(
    clock: str, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its host paused past the stale time (a frozen VM, a volume that hung), so another worker took
    the lock and went on with the same file: when it wakes it must not write one more byte into
    that file (two writers), but wait for the other and then find its files verified. Its clocks
    moved on by the pause, or only its wall clock (a suspended machine's monotonic clock stops)."""
    paused = {"monotonic": 0.0, "wall": 0.0}
    real = models.clocks
    monkeypatch.setattr(
        models, "clocks", lambda: tuple(a + b for a, b in zip(real(), paused.values(), strict=True))
    )
    paced = Paced(await bucket(s3_endpoint, tmp_path))
    volume = tmp_path / "volume"
    volume.mkdir()
    waiting = asyncio.Event()

    async def report(progress: ModelsProgress) -> None:
        if progress.state == "waiting" and "host-b:7:took-over" in progress.message:
            waiting.set()

    settings = config(tmp_path, shared=True)
    sync = asyncio.create_task(ensure_models(settings, paced, report))  # type: ignore[arg-type]
    await asyncio.wait_for(paced.first.wait(), 30)
    partial, lock = volume / f"{PATH}.part", volume / ".comfy-models.lock"
    written = partial.stat().st_size
    lock.write_text("host-b:7:took-over")  # what the other worker's take-over leaves
    paused[clock] = settings.models_lock_stale_seconds  # how long it stood still meanwhile
    paced.go.set()
    await asyncio.wait_for(waiting.wait(), 30)
    assert partial.stat().st_size == written, "it went on writing into the other worker's file"
    partial.write_bytes(NEW)  # the other worker finishes the file and leaves
    partial.replace(volume / PATH)
    (volume / "checkpoints/.model.safetensors.sha256").write_text(hashlib.sha256(NEW).hexdigest())
    lock.unlink()
    assert await asyncio.wait_for(sync, 30) == [PATH]
    assert (volume / PATH).read_bytes() == NEW


def limited_sync(tmp_path: Path, bucket: Path, limit: int | None) -> subprocess.CompletedProcess[str]:
    """``sync-models`` in its own process, whose files cannot grow past ``limit`` bytes (the disk
    filling up midway; the write fails as it would with ENOSPC)."""

    def cap() -> None:
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {
        **os.environ,
        "WORKER_MODELS_MANIFEST": str(config(tmp_path, shared=True).models_manifest),
        "WORKER_MODELS_URL": bucket.as_uri(),
        "WORKER_SHARED_MODELS_DIR": str(tmp_path / "volume"),
        "WORKER_MODELS_DIR": str(tmp_path / "disk"),
    }
    env.pop("WORKER_TOKEN", None)
    command = [sys.executable, "-m", "services.worker", "sync-models"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, preexec_fn=cap)


def test_a_disk_that_fills_up_midway_leaves_no_file_a_later_sync_takes_as_done(tmp_path: Path) -> None:
    """The write fails mid-file: the sync says where and what to do, nothing is in place or marked
    verified, and once there is room the next sync resumes and puts the right file there."""
    bucket = tmp_path / "bucket"
    (bucket / KEY).parent.mkdir(parents=True)
    (bucket / KEY).write_bytes(NEW)
    (tmp_path / "volume").mkdir()

    full = limited_sync(tmp_path, bucket, limit=300_000)
    assert full.returncode == 1
    assert str(tmp_path / "volume") in full.stderr and "free room" in full.stderr, full.stderr
    assert not (tmp_path / "volume" / PATH).exists()
    assert not (tmp_path / "volume/checkpoints/.model.safetensors.sha256").exists()
    assert 0 < (tmp_path / "volume" / f"{PATH}.part").stat().st_size <= 300_000

    again = limited_sync(tmp_path, bucket, limit=None)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "volume" / PATH).read_bytes() == NEW


async def test_a_live_holder_whose_clock_is_behind_keeps_its_lock(s3_endpoint: str, tmp_path: Path) -> None:
    """Another host renews the lock with its own clock two minutes behind ours (or the volume's
    server stamps its time): by our clock the lock looks long stale, yet it changes at every renewal,
    so it is not taken over while renewed; once the renewals stop, it is."""
    vault = await bucket(s3_endpoint, tmp_path)
    lock = tmp_path / "volume/.comfy-models.lock"
    lock.parent.mkdir()
    lock.write_text("host-b:7:behind")
    renewing = True
    polls = asyncio.Event()
    heard = 0

    async def renew() -> None:
        while renewing:
            behind = time.time() - 120
            os.utime(lock, (behind, behind))
            await asyncio.sleep(0.1)  # the other host's renewal period

    async def report(progress: ModelsProgress) -> None:
        nonlocal heard, renewing
        if progress.state == "waiting":
            heard += 1
            if heard == 4:  # four polls, 1 s apart: four times the stale time
                assert lock.read_text() == "host-b:7:behind", "a live holder's lock was taken over"
                assert not (tmp_path / "volume" / f"{PATH}.part").exists()
                renewing = False
                polls.set()

    renewer = asyncio.create_task(renew())
    settings = config(tmp_path, shared=True, models_lock_stale_seconds=1)
    assert await asyncio.wait_for(ensure_models(settings, vault, report), 60) == [PATH]
    await renewer
    assert polls.is_set() and (tmp_path / "volume" / PATH).read_bytes() == NEW


async def test_a_sync_on_a_shared_volume_reads_its_lock_by_time_not_per_mib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock lives on the shared volume, whose every read is a round trip to its server (Verda's
    shared filesystem, a RunPod network volume): read before each MiB written, it cost a round trip
    per MiB (with 1 ms each, a 1 GiB sync went from 248 to 158 MB/s). It is read again only once a
    bounded time has passed, which is all a take-over needs (test above)."""
    content = os.urandom(1 << 20) * 48  # 48 MiB
    bucket = tmp_path / "bucket"
    (bucket / KEY).parent.mkdir(parents=True)
    (bucket / KEY).write_bytes(content)
    (tmp_path / "volume").mkdir()
    reads = 0
    held = models.VolumeLock.held

    def counted(lock: models.VolumeLock) -> bool:
        nonlocal reads
        reads += 1
        return held(lock)

    monkeypatch.setattr(models.VolumeLock, "held", counted)
    settings = config(tmp_path, content, shared=True)
    started = time.monotonic()
    assert await ensure_models(settings.model_copy(update={"models_url": bucket.as_uri()})) == [PATH]
    seconds = time.monotonic() - started
    assert (tmp_path / "volume" / PATH).read_bytes() == content
    assert reads <= 3 + seconds / models.LOCK_CHECK_SECONDS, f"{reads} reads of the lock in {seconds:.1f}s"


async def test_a_manifest_of_many_small_files_syncs_in_time_linear_in_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest of hundreds of LoRAs: the sync's progress bar kept a row for every file it had
    fetched and drew them all again at each new file, so its time grew with the square of the files
    (200 files of 16 KiB took 16 s, 2 000 would take half an hour) and, the drawing holding the
    event loop, a shared volume's lock went unrenewed and was taken over from a live sync. The bar
    shows the files in flight only."""
    bucket, entries = tmp_path / "bucket", []
    for index in range(300):
        data = os.urandom(16384)
        (bucket / f"loras/l{index:03d}.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (bucket / f"loras/l{index:03d}.safetensors").write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        entries.append({"path": f"loras/l{index:03d}.safetensors", "size": len(data), "sha256": sha})
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": entries}))
    shown: list[int] = []
    make_bar = models.progress_bar

    def counting_bar() -> Progress:
        bar = make_bar()
        add = bar.add_task

        def add_task(*args: Any, **kwargs: Any) -> TaskID:
            shown.append(len(bar.tasks) + 1)
            return add(*args, **kwargs)

        bar.add_task = add_task  # type: ignore[method-assign]
        return bar

    monkeypatch.setattr(models, "progress_bar", counting_bar)
    settings = WorkerSettings(
        models_manifest=tmp_path / "models.yaml",
        models_url=bucket.as_uri(),
        shared_models_dir=tmp_path / "volume",
        models_dir=tmp_path / "disk",
    )
    (tmp_path / "volume").mkdir()
    started = time.monotonic()
    assert len(await ensure_models(settings)) == 300
    seconds = time.monotonic() - started
    assert max(shown) == 1, f"the bar showed up to {max(shown)} files at once"
    assert seconds < 20, f"300 files of 16 KiB took {seconds:.1f}s"
