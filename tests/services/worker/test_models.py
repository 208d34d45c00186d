"""Model files: found on shared storage, or synced from the models vault (S3, moto), resumed, verified."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.s3 import make_bucket, s3_settings
from services.protocol.workers import MAX_MODELS, ModelsProgress, RegisterReply, WorkerRegistration
from services.storage import Storage, aiter_chunks, open_storage
from services.storage.local import LocalStorage
from services.worker import push
from services.worker.agent import Agent
from services.worker.cli import app
from services.worker.models import ModelError, ensure_models, load_manifest, parse_manifest, queue_reporter
from services.worker.pull import run_pull
from services.worker.push import verda_app
from services.worker.queue_client import QueueClient
from services.worker.settings import WorkerSettings
from tests.support.jobs import graph, submit, until
from tests.support.queue_manager_app import ADMIN, ADMIN_PASSWORD, POOL, POOL_TOKEN, LiveServer
from tests.support.storage_spy import record_starts
from tests.support.worker_agent import worker_settings

WEIGHTS = bytes(range(256)) * 4096  # 1 MiB of "weights"


def bucket_of(tmp_path: Path) -> str:
    return f"models-{tmp_path.name.lower().replace('_', '-')}"[:60]


@pytest.fixture
async def vault(s3_endpoint: str, tmp_path: Path) -> Storage:
    bucket = bucket_of(tmp_path)
    make_bucket(s3_endpoint, bucket)
    storage = open_storage(f"s3://{bucket}", s3_settings(s3_endpoint))
    await storage.put("sd/model.safetensors", aiter_chunks(WEIGHTS))
    return storage


def manifest(
    tmp_path: Path, sha: str = hashlib.sha256(WEIGHTS).hexdigest(), size: int = len(WEIGHTS)
) -> Path:
    path = tmp_path / "models.yaml"
    entry = {
        "path": "checkpoints/model.safetensors",
        "size": size,
        "sha256": sha,
        "source": "sd/model.safetensors",
    }
    path.write_text(yaml.safe_dump({"models": [entry]}))
    return path


def settings(tmp_path: Path) -> WorkerSettings:
    return WorkerSettings(
        models_manifest=manifest(tmp_path),
        models_url="file:///unused-models-bucket",
        models_dir=tmp_path / "models",
    )


async def test_a_missing_model_is_synced_from_the_vault_and_verified(vault: Storage, tmp_path: Path) -> None:
    held = await ensure_models(settings(tmp_path), vault)
    assert held == ["checkpoints/model.safetensors"]
    assert (tmp_path / "models/checkpoints/model.safetensors").read_bytes() == WEIGHTS


async def test_an_interrupted_download_resumes_where_it_stopped(vault: Storage, tmp_path: Path) -> None:
    partial = tmp_path / "models/checkpoints/model.safetensors.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(WEIGHTS[:300_000])
    reads = record_starts(vault)
    await ensure_models(settings(tmp_path), vault)
    assert reads == [300_000]
    assert (tmp_path / "models/checkpoints/model.safetensors").read_bytes() == WEIGHTS


async def test_a_verified_model_is_not_downloaded_again(vault: Storage, tmp_path: Path) -> None:
    await ensure_models(settings(tmp_path), vault)
    await vault.delete("sd/model.safetensors")
    assert await ensure_models(settings(tmp_path), vault) == ["checkpoints/model.safetensors"]


async def test_a_model_on_shared_storage_is_used_where_it_is(tmp_path: Path) -> None:
    shared = tmp_path / "shared/checkpoints/model.safetensors"
    shared.parent.mkdir(parents=True)
    shared.write_bytes(WEIGHTS)
    config = WorkerSettings(
        models_manifest=manifest(tmp_path),
        shared_models_dir=tmp_path / "shared",
        models_dir=tmp_path / "models",
    )
    assert await ensure_models(config) == ["checkpoints/model.safetensors"]
    assert not (tmp_path / "models").exists()


async def test_models_the_disk_cannot_hold_are_refused_before_any_download(
    vault: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest larger than the worker's disk (or a volume) fails at once, naming what to fix."""
    real = shutil.disk_usage

    def small_disk(path: str | Path) -> Any:
        return real(path)._replace(free=len(WEIGHTS) - 1)

    monkeypatch.setattr("services.worker.models.shutil.disk_usage", small_disk)
    with pytest.raises(ModelError, match=r"checkpoints/model\.safetensors\) need 1\.0 MB .* more room"):
        await ensure_models(settings(tmp_path), vault)
    assert not (tmp_path / "models/checkpoints/model.safetensors.part").exists()
    partial = tmp_path / "models/checkpoints/model.safetensors.part"  # what is already there counts
    partial.parent.mkdir(parents=True)
    partial.write_bytes(WEIGHTS[:10])
    assert await ensure_models(settings(tmp_path), vault) == ["checkpoints/model.safetensors"]


async def test_a_hash_mismatch_is_refused_and_the_bad_file_removed(vault: Storage, tmp_path: Path) -> None:
    config = settings(tmp_path)
    config.models_manifest = manifest(tmp_path, sha="0" * 64)
    with pytest.raises(ModelError, match=r"does not match the manifest.*fix the manifest or re-upload"):
        await ensure_models(config, vault)
    kept = [path.name for path in (tmp_path / "models/checkpoints").iterdir()]
    assert kept == [".model.safetensors.rejected"]  # the verdict on that upload, not the file


def test_a_bad_manifest_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - path: ../escape.bin\n    size: 1\n    sha256: nothex\n")
    with pytest.raises(ModelError, match=r"(?s)invalid.*'\.\./escape\.bin' must be a relative path"):
        load_manifest(path)
    with pytest.raises(ModelError, match="does not exist: fix WORKER_MODELS_MANIFEST"):
        load_manifest(tmp_path / "none.yaml")


@pytest.mark.parametrize(
    ("paths", "problem"),
    [
        (["checkpoints/a.bin", "checkpoints//a.bin"], "without '.', '..', '//'"),
        (["checkpoints/a.bin", "checkpoints/a.bin.part"], "keeps for itself"),
        (["checkpoints/a", "checkpoints/a/b.bin"], "checkpoints/a is a file and a folder"),
    ],
)
def test_a_manifest_the_sync_cannot_keep_side_by_side_is_refused_before_any_download(
    tmp_path: Path, paths: list[str], problem: str
) -> None:
    """One file spelled twice (two sha256s), a name of the sync's own, a file that is another's
    folder: the worker says so before it downloads, instead of failing a verification later."""
    models = [{"path": path, "size": 1, "sha256": "0" * 64} for path in paths]
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": models}))
    with pytest.raises(ModelError, match=re.escape(problem)):
        load_manifest(tmp_path / "models.yaml")


def test_a_manifest_without_a_source_is_refused_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="WORKER_MODELS_URL"):
        WorkerSettings(models_manifest=manifest(tmp_path))


def test_a_worker_reads_the_models_bucket_with_the_models_key_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hand-run worker given the files' key (S3_*, which writes every participant's files) but not
    the models bucket's read-only one refuses to start naming the variables: it read the models
    bucket with the files' key, which either fails in the morning or works only with a key too wide."""
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "files-key")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "files-secret")
    needed = "WORKER_MODELS_S3_ACCESS_KEY_ID and WORKER_MODELS_S3_SECRET_ACCESS_KEY"
    with pytest.raises(ValueError, match=needed):
        WorkerSettings(models_manifest=manifest(tmp_path), models_url="s3://comfy-models")
    with pytest.raises(ValueError, match=needed):  # half a key is none
        WorkerSettings(
            models_manifest=manifest(tmp_path), models_url="s3://comfy-models", models_s3_access_key_id="k"
        )
    keyed = WorkerSettings(
        models_manifest=manifest(tmp_path),
        models_url="s3://comfy-models",
        models_s3_access_key_id="models-key",
        models_s3_secret_access_key="models-secret",
    )
    assert keyed.models_url == "s3://comfy-models"
    local = WorkerSettings(models_manifest=manifest(tmp_path), models_url=(tmp_path / "bucket").as_uri())
    assert local.models_s3_access_key_id is None, "a file:// bucket needs no key"


class CountingVault:
    """The models bucket, counting each file's downloads (a Storage like any other)."""

    def __init__(self, inner: Storage) -> None:
        self.inner, self.reads = inner, Counter[str]()
        self.size, self.exists, self.version = inner.size, inner.exists, inner.version

    def get(self, key: str, start: int = 0):  # type: ignore[no-untyped-def]
        self.reads[key] += 1
        return self.inner.get(key, start)


def shared_settings(tmp_path: Path, name: str) -> WorkerSettings:
    return WorkerSettings(
        models_manifest=manifest(tmp_path),
        models_url="file:///unused-models-bucket",
        shared_models_dir=tmp_path / "volume",
        models_dir=tmp_path / f"{name}-disk",
        models_lock_stale_seconds=5,
    )


async def test_two_workers_on_one_volume_download_each_file_once(vault: Storage, tmp_path: Path) -> None:
    (tmp_path / "volume").mkdir()
    counting = CountingVault(vault)
    first, second = [shared_settings(tmp_path, name) for name in ("a", "b")]
    held = await asyncio.gather(
        ensure_models(first, counting),  # type: ignore[arg-type]
        ensure_models(second, counting),  # type: ignore[arg-type]
    )
    assert held == [["checkpoints/model.safetensors"]] * 2
    assert counting.reads == {"sd/model.safetensors": 1}
    assert (tmp_path / "volume/checkpoints/model.safetensors").read_bytes() == WEIGHTS
    assert not (tmp_path / "volume/.comfy-models.lock").exists()


async def test_two_workers_on_one_volume_download_a_file_that_fails_its_checksum_once(
    vault: Storage, tmp_path: Path
) -> None:
    """The one holding the volume's lock downloads it and finds the wrong sha256; the one waiting
    then fails at once, with the same reason, instead of downloading it again."""
    (tmp_path / "volume").mkdir()
    counting = CountingVault(vault)
    first, second = [shared_settings(tmp_path, name) for name in ("a", "b")]
    for config in (first, second):
        config.models_manifest = manifest(tmp_path, sha="0" * 64)
    failed = await asyncio.gather(
        ensure_models(first, counting),  # type: ignore[arg-type]
        ensure_models(second, counting),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert all(isinstance(error, ModelError) for error in failed), failed
    assert counting.reads == {"sd/model.safetensors": 1}
    assert all(
        "0" * 64 in str(error) and hashlib.sha256(WEIGHTS).hexdigest() in str(error) for error in failed
    )


async def test_a_lock_left_by_a_sync_that_died_is_taken_over(vault: Storage, tmp_path: Path) -> None:
    lock = tmp_path / "volume/.comfy-models.lock"
    lock.parent.mkdir()
    lock.write_text("dead-host:1:x")
    os.utime(lock, (time.time() - 60, time.time() - 60))
    assert await ensure_models(shared_settings(tmp_path, "a"), vault) == ["checkpoints/model.safetensors"]


async def test_a_fresh_lock_makes_the_sync_wait_and_say_who_holds_it(vault: Storage, tmp_path: Path) -> None:
    lock = tmp_path / "volume/.comfy-models.lock"
    lock.parent.mkdir()
    lock.write_text("other-host:7:y")
    heard: list[ModelsProgress] = []

    async def report(progress: ModelsProgress) -> None:
        heard.append(progress)
        if progress.state == "waiting":
            lock.unlink(missing_ok=True)  # the other sync ends

    await ensure_models(shared_settings(tmp_path, "a"), vault, report)
    assert heard[0].state == "waiting" and "other-host:7:y" in heard[0].message
    assert heard[-1].state == "ready" and heard[-1].bytes_done == heard[-1].bytes_total == len(WEIGHTS)


async def test_a_file_missing_from_the_bucket_is_refused_before_any_download(
    vault: Storage, tmp_path: Path
) -> None:
    path = tmp_path / "models.yaml"
    present = {"path": "checkpoints/a.safetensors", "size": len(WEIGHTS), "source": "sd/model.safetensors"}
    absent = {"path": "loras/b.safetensors", "size": 10, "sha256": "1" * 64, "source": "nope/b.safetensors"}
    present["sha256"] = hashlib.sha256(WEIGHTS).hexdigest()
    path.write_text(yaml.safe_dump({"models": [present, absent]}))
    config = WorkerSettings(models_manifest=path, models_url="file:///models", models_dir=tmp_path / "disk")
    heard: list[ModelsProgress] = []

    async def report(progress: ModelsProgress) -> None:
        heard.append(progress)

    with pytest.raises(
        ModelError, match=r"does not hold the manifest's files: nope/b\.safetensors \(missing\)"
    ):
        await ensure_models(config, vault, report)
    assert not (tmp_path / "disk").exists()
    assert heard[-1].state == "failed" and "nope/b.safetensors" in heard[-1].message


async def test_a_worker_missing_a_model_says_why_on_the_admin_page_and_takes_no_job(
    s3_endpoint: str, comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    make_bucket(s3_endpoint, "models-missing")
    path = tmp_path / "models.yaml"
    entry = {"path": "loras/b.safetensors", "size": 10, "sha256": "1" * 64, "source": "nope/b.safetensors"}
    path.write_text(yaml.safe_dump({"models": [entry]}))
    config = worker_settings(
        comfy, qm.url, tmp_path, models_manifest=path, models_url="s3://models-missing",
        models_s3_endpoint_url=s3_endpoint, models_s3_access_key_id="test",
        models_s3_secret_access_key="test", models_dir=tmp_path / "disk",
    )  # fmt: skip
    job_id = await submit(alice, graph())
    with pytest.raises(ModelError, match=r"nope/b\.safetensors \(missing\)"):
        await run_pull(Agent(config), QueueClient(qm.url, POOL_TOKEN))
    async with httpx.AsyncClient(base_url=qm.url, auth=(ADMIN, ADMIN_PASSWORD)) as admin:
        [worker] = (await admin.get("/api/admin/workers")).json()
    sync = worker["capabilities"]["models_sync"]
    assert (
        worker["state"] == "starting"
        and sync["state"] == "failed"
        and "nope/b.safetensors" in sync["message"]
    )
    assert (await alice.get(f"/api/jobs/{job_id}")).json()["state"] == "queued"


async def test_a_failure_naming_many_models_still_reaches_the_admin_page(
    qm: LiveServer, tmp_path: Path
) -> None:
    """The sync's reason is shown on the admin page, which takes at most 2000 characters of it: a
    bucket missing forty models with long paths made a longer reason, the queue manager refused the
    report (422), and the admin page showed nothing of the worker, nor why it failed."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    folder = "loras/" + "workshop-styles-" * 5
    entries = [{"path": f"{folder}{n:03d}.safetensors", "size": 1, "sha256": f"{n:064x}"} for n in range(40)]
    manifest_path = tmp_path / "models.yaml"
    manifest_path.write_text(yaml.safe_dump({"models": entries}))
    config = WorkerSettings(
        pool=POOL, worker_id="gpu-many", models_manifest=manifest_path, models_url=bucket.as_uri(),
        models_dir=tmp_path / "disk",
    )  # fmt: skip
    queue = QueueClient(qm.url, POOL_TOKEN)

    async def failure_shown() -> bool:
        return any(
            (w["capabilities"].get("models_sync") or {}).get("state") == "failed"
            for w in await admin_workers(qm)
        )

    try:
        with pytest.raises(ModelError) as err:
            await ensure_models(config, LocalStorage(bucket), queue_reporter(config, queue))
        await until(failure_shown, "the sync's failure on the admin page", timeout=30)  # its report sent
    finally:
        await queue.aclose()
    assert len(str(err.value)) > 2000  # the worker's own log keeps the whole reason
    [worker] = await admin_workers(qm)
    sync = worker["capabilities"]["models_sync"]
    assert sync["state"] == "failed", sync
    assert sync["message"].startswith(str(err.value)[:1000]) and len(sync["message"]) <= 2000


def container_settings(
    comfy: ComfyUIDouble, qm: LiveServer, s3_endpoint: str, tmp_path: Path, **extra: object
) -> WorkerSettings:
    """A serverless container: WORKER_QUEUE_URL is the queue manager's public URL, a shared volume."""
    return worker_settings(
        comfy, qm.url, tmp_path, provider="verda-serverless", worker_id="container-1",
        models_manifest=manifest(tmp_path), models_url=f"s3://{bucket_of(tmp_path)}",
        models_s3_endpoint_url=s3_endpoint, models_s3_access_key_id="test",
        models_s3_secret_access_key="test", shared_models_dir=tmp_path / "volume", **extra,
    )  # fmt: skip


async def admin_workers(qm: LiveServer) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=qm.url, auth=(ADMIN, ADMIN_PASSWORD)) as admin:
        workers: list[dict[str, Any]] = (await admin.get("/api/admin/workers")).json()
    return workers


async def test_a_push_container_shows_its_models_sync_on_the_admin_page_then_idle(
    vault: Storage, s3_endpoint: str, comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path
) -> None:
    lock = tmp_path / "volume/.comfy-models.lock"
    lock.parent.mkdir()
    lock.write_text("other-container:7:y")  # another container fills the volume
    config = container_settings(comfy, qm, s3_endpoint, tmp_path, models_lock_stale_seconds=600)
    container = LiveServer(verda_app(config, Agent(config, LocalStorage(tmp_path / "files"))))
    starting = asyncio.create_task(asyncio.to_thread(container.start))  # its lifespan syncs the models
    try:
        seen: list[dict[str, Any]] = []

        async def admin_sees_it_waiting() -> None:
            while not seen:
                seen.extend(
                    w
                    for w in await admin_workers(qm)
                    if (w["capabilities"]["models_sync"] or {}).get("state") == "waiting"
                )

        await asyncio.wait_for(admin_sees_it_waiting(), timeout=20)
        [waiting] = seen
        sync = waiting["capabilities"]["models_sync"]
        assert waiting["worker_id"] == "container-1" and waiting["state"] == "starting"
        assert (sync["files_total"], sync["bytes_total"]) == (1, len(WEIGHTS))
        assert "other-container:7:y" in sync["message"]
        lock.unlink()  # the other sync ends: this container downloads what it did not leave
        await starting
        [ready] = await admin_workers(qm)
        assert ready["state"] == "idle" and ready["capabilities"]["models"] == [
            "checkpoints/model.safetensors"
        ]
    finally:
        if not starting.done():
            lock.unlink(missing_ok=True)
            await asyncio.gather(starting, return_exceptions=True)
        container.stop()
    assert (tmp_path / "volume/checkpoints/model.safetensors").read_bytes() == WEIGHTS


async def test_a_push_container_that_cannot_get_its_models_says_why_on_the_admin_page(
    s3_endpoint: str, comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path
) -> None:
    make_bucket(s3_endpoint, bucket_of(tmp_path))  # empty: the manifest's file is not there
    (tmp_path / "volume").mkdir()
    config = container_settings(comfy, qm, s3_endpoint, tmp_path)
    with pytest.raises(ModelError, match=r"sd/model\.safetensors \(missing\)"):
        await push.start_agent(Agent(config, LocalStorage(tmp_path / "files")))
    [worker] = await admin_workers(qm)
    sync = worker["capabilities"]["models_sync"]
    assert worker["state"] == "starting" and sync["state"] == "failed"
    assert "sd/model.safetensors (missing)" in sync["message"]


def leftover(folder: Path, relative: str, marked: bool = True) -> Path:
    """A file an earlier sync left (with its verified mark), or one put there by hand (no mark)."""
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"old weights")
    if marked:
        path.with_name(f".{path.name}.sha256").write_text("2" * 64)
    return path


async def test_files_the_sync_left_that_the_manifest_dropped_are_removed_and_reported(
    vault: Storage, tmp_path: Path
) -> None:
    disk = tmp_path / "models"
    old = leftover(disk, "loras/yesterday.safetensors")
    cut = leftover(disk, "checkpoints/dropped.safetensors.part", marked=False)  # a cut download
    by_hand = leftover(disk, "checkpoints/mine.safetensors", marked=False)
    heard: list[ModelsProgress] = []

    async def report(progress: ModelsProgress) -> None:
        heard.append(progress)

    assert await ensure_models(settings(tmp_path), vault, report) == ["checkpoints/model.safetensors"]
    assert not old.exists() and not old.with_name(".yesterday.safetensors.sha256").exists()
    assert not cut.exists()
    assert by_hand.read_bytes() == b"old weights", "a file the sync never wrote is not its to remove"
    assert heard[-1].state == "ready" and "loras/yesterday.safetensors" in heard[-1].message
    # Nothing is downloaded again: a verified volume with a stale file is only pruned.
    stale = leftover(disk, "vae/old.safetensors")
    await vault.delete("sd/model.safetensors")
    await ensure_models(settings(tmp_path), vault)
    assert not stale.exists() and (disk / "checkpoints/model.safetensors").read_bytes() == WEIGHTS


async def test_pruning_waits_for_the_volumes_lock_and_never_leaves_the_folder(
    vault: Storage, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    outside = leftover(tmp_path / "elsewhere", "loras/theirs.safetensors")
    stale = leftover(volume, "loras/old.safetensors")
    (volume / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    lock = volume / ".comfy-models.lock"
    lock.write_text("other-host:7:y")
    present_while_waiting: list[bool] = []

    async def report(progress: ModelsProgress) -> None:
        if progress.state == "waiting":
            present_while_waiting.append(stale.exists())
            lock.unlink(missing_ok=True)  # the other sync ends

    await ensure_models(shared_settings(tmp_path, "a"), vault, report)
    assert present_while_waiting == [True], "nothing is removed while another sync holds the lock"
    assert not stale.exists()
    assert outside.read_bytes() == b"old weights", "a link out of the folder is not followed"
    assert (volume / "linked").is_symlink()


async def test_a_hosts_finished_sync_models_run_leaves_the_admin_page(
    qm: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = tmp_path / "volume/checkpoints"
    volume.mkdir(parents=True)
    (volume / "model.safetensors").write_bytes(WEIGHTS)  # on the volume already: hashed once
    env = {
        "WORKER_QUEUE_URL": qm.url, "WORKER_TOKEN": POOL_TOKEN, "WORKER_POOL": POOL,
        "WORKER_ID": "gpu-host-1-models", "WORKER_MODELS_MANIFEST": str(manifest(tmp_path)),
        "WORKER_SHARED_MODELS_DIR": str(tmp_path / "volume"),
    }  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    heard: list[str] = []
    original = QueueClient.register

    async def spy(self: QueueClient, registration: WorkerRegistration) -> RegisterReply:
        heard.append(registration.worker_id)
        return await original(self, registration)

    monkeypatch.setattr(QueueClient, "register", spy)
    result = await asyncio.to_thread(CliRunner().invoke, app, ["sync-models"])
    assert result.exit_code == 0, result.output
    assert "gpu-host-1-models" in heard, "the sync showed on the admin page while it ran"
    assert [w["worker_id"] for w in await admin_workers(qm)] == [], "and left it once it finished"


def test_a_hand_written_manifest_with_more_files_than_a_worker_reports_is_refused() -> None:
    """A GPU host's own manifest file is not checked by pulumi preview: past MAX_MODELS paths the
    queue manager would refuse the worker's registration, so the manifest is refused first."""
    models = [
        {"path": f"loras/{n}.safetensors", "size": 1, "sha256": "a" * 64} for n in range(MAX_MODELS + 1)
    ]
    with pytest.raises(ModelError, match="list fewer models"):
        parse_manifest(json.dumps({"models": models}), "WORKER_MODELS_MANIFEST_JSON", as_json=True)
