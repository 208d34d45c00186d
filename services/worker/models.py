"""Model files the worker must hold before it reports ready: a manifest, a sync, a verification.

The manifest (YAML or JSON: a file ``WORKER_MODELS_MANIFEST``, or the text itself in
``WORKER_MODELS_MANIFEST_JSON`` as cloud pools get it) lists each file::

    models:
      - path: checkpoints/sd_xl_base_1.0.safetensors   # under ComfyUI's model folders
        size: 6938078334
        sha256: 31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b
        source: sdxl/sd_xl_base_1.0.safetensors        # key in the models bucket (default: path)

Where the files go: the shared volume (``WORKER_SHARED_MODELS_DIR``: a Verda shared filesystem,
a RunPod network volume, a GPU host's model folder) when there is one, else this worker's own disk
(``WORKER_MODELS_DIR``). ComfyUI reads them from there through ``extra_model_paths.yaml``.

A shared volume is filled once: the sync takes ``.comfy-models.lock`` on the volume (created with
O_EXCL, its mtime renewed while held; a lock left by a sync that died is taken over once it is
``WORKER_MODELS_LOCK_STALE_SECONDS`` old), so the first worker downloads and the others wait, then
find every file verified. A sync whose lock was taken over while its host stood still (a frozen VM,
a volume that hung) writes not one more byte: before a write it reads the lock again once a second
has passed on either of its clocks (``VolumeLock.due``: a read is a round trip on a network volume,
so not per MiB), and a lock that no longer names it stops the sync, which waits for the new holder
and looks again. A volume mounted read-only is only checked.

Each file is downloaded to ``<name>.part`` (resumed with a ranged read after an interruption),
hashed while it streams, checked against the manifest's size and sha256, renamed into place and
marked verified (``.<name>.sha256``), so it is hashed once. A read the bucket or the network cuts
off goes on from where it broke, for ``WORKER_STORAGE_RETRY_SECONDS``; then the sync fails naming
the models still missing (what came down stays for the next start). A part whose whole size is on
disk (the sync killed before its rename) is checked without a read; a resumed file that fails the
hash is downloaded once more from its start (its part on disk was of a version of the file replaced
in the bucket since). A file that came down whole and still fails is remembered on the volume
(``.<name>.rejected``: the object's key and version in the bucket, its ETag, and both checksums), so
the workers waiting for the volume's lock, and a container started again, fail at once with the same
message instead of downloading it again each; a new upload (another version) or a corrected sha256 in
the manifest is downloaded and checked again. No name the sync uses (a model's folders, the file,
its part, its marks) may be a link: the sync would write, or trust a file, outside the folder; it
refuses, naming the link.
Before downloading anything the bucket is asked for every file: a missing file or a size that
differs from the manifest is refused with the list of what is wrong, and a hash mismatch after a
download likewise; so are models the folder's disk has no room left for.

The folder then holds exactly the manifest's files: what the sync put there (a file with its
verified mark, a partial download) for a model the manifest no longer lists is removed, under the
volume's lock (never while another sync holds it) and only inside the folder (links are not
followed). A file the sync never marked (put there by hand) is not the sync's to remove: it is
named in the log and left. What was removed is logged and said in the sync's final report.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from services.protocol.workers import ModelsProgress, WorkerCapabilities, WorkerRegistration
from services.storage import (
    S3Settings,
    Storage,
    StorageError,
    StorageUnavailableError,
    open_storage,
    patiently,
)
from services.storage.base import FileMissingError
from services.worker.manifest import (
    LOCK_NAME,
    ModelFile,
    bookkeeping,
    manifest_problem,
    marked_model,
    own_names,
)
from services.worker.queue_client import QueueClient
from services.worker.settings import WorkerSettings

log = logging.getLogger(__name__)
HASH_CHUNK = 8 * 1024 * 1024
REPORT_WAIT_SECONDS = 10.0
LOCK_TAKEOVERS = 3  # passes of a sync whose volume lock other syncs took over
LOCK_CHECK_SECONDS = 1.0  # a sync writing reads the volume's lock again once this much time has passed
Report = Callable[[ModelsProgress], Awaitable[None]]


class ModelError(Exception):
    """A manifest problem or a model that could not be obtained or verified."""


class LockLostError(ModelError):
    """The volume's lock was taken over by another sync while this one held it."""


class Manifest(BaseModel):
    models: list[ModelFile] = Field(default_factory=list)

    @field_validator("models")
    @classmethod
    def _side_by_side(cls, models: list[ModelFile]) -> list[ModelFile]:
        problem = manifest_problem([model.path for model in models])
        if problem is not None:
            raise ValueError(problem)
        return models


def parse_manifest(text: str, where: str, as_json: bool = False) -> Manifest:
    try:
        data: Any = json.loads(text) if as_json else yaml.safe_load(text)
        return Manifest.model_validate(data or {})
    except (ValueError, yaml.YAMLError, ValidationError) as exc:
        raise ModelError(f"models manifest {where} is invalid: {exc}") from exc


def load_manifest(path: Path) -> Manifest:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ModelError(f"models manifest {path} does not exist: fix WORKER_MODELS_MANIFEST") from exc
    return parse_manifest(text, str(path), as_json=path.suffix == ".json")


def manifest_of(settings: WorkerSettings) -> Manifest | None:
    """The manifest this worker holds to, or None when it has none."""
    if settings.models_manifest_json:
        return parse_manifest(settings.models_manifest_json, "WORKER_MODELS_MANIFEST_JSON", as_json=True)
    if settings.models_manifest is not None:
        return load_manifest(settings.models_manifest)
    return None


def _hash_file(path: Path, digest: Any) -> None:
    with path.open("rb") as handle:
        while block := handle.read(HASH_CHUNK):
            digest.update(block)


def _marker(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256")


def _part(path: Path) -> Path:
    """Where ``path`` is downloaded to before its check and rename."""
    return path.with_name(f"{path.name}.part")


def _rejection_mark(path: Path) -> Path:
    return path.with_name(f".{path.name}.rejected")


class Rejection(BaseModel):
    """One object of the models bucket (``key`` at ``version``) that came down whole and failed the
    manifest's check (``sha256``, ``size``): what it was found to be."""

    key: str
    version: str
    sha256: str
    size: int
    found_sha256: str
    found_size: int

    def applies_to(self, model: ModelFile, version: str | None) -> bool:
        """The same object checked against the same manifest entry: it would fail the same way."""
        return (self.key, self.version, self.sha256, self.size) == (
            model.key,
            version,
            model.sha256,
            model.size,
        )

    def message(self, model: ModelFile, remembered: bool) -> str:
        """What is wrong (the model, both checksums) and the fix; the same each time it is seen."""
        seen = (
            "; an earlier sync downloaded it whole, so it is not downloaded again until its file in the "
            "bucket or the manifest changes"
            if remembered
            else ""
        )
        return (
            f"model {model.path} from the models bucket does not match the manifest: {self.key} (version "
            f"{self.version}) has {self.found_size} bytes and sha256 {self.found_sha256}, the manifest says "
            f"{self.size} bytes and sha256 {self.sha256}{seen}: fix the manifest or re-upload the file "
            f"(upload the right file to {self.key}, or correct this model's sha256 in the stack config's "
            "models and run pulumi up), then start the worker again"
        )


def _rejection(path: Path, model: ModelFile, version: str | None) -> Rejection | None:
    """The verdict kept beside ``path`` when it is on this very object and manifest entry."""
    try:
        rejection = Rejection.model_validate_json(_rejection_mark(path).read_text())
    except (OSError, ValidationError):
        return None
    return rejection if rejection.applies_to(model, version) else None


def _mark_verified(path: Path, model: ModelFile) -> None:
    _marker(path).write_text(model.sha256)
    _rejection_mark(path).unlink(missing_ok=True)


def _hash_matches_now(path: Path, model: ModelFile) -> bool:
    if not path.is_file() or path.stat().st_size != model.size:
        return False
    digest = hashlib.sha256()
    _hash_file(path, digest)
    return digest.hexdigest() == model.sha256


async def _hash_matches(path: Path, model: ModelFile) -> bool:
    """The file has the manifest's size and sha256 (hashed off the event loop)."""
    return await asyncio.to_thread(_hash_matches_now, path, model)


def verified(path: Path, model: ModelFile) -> bool:
    """The file is in place with the manifest's size and was hashed to the manifest's sha256."""
    marker = _marker(path)
    return (
        path.is_file()
        and path.stat().st_size == model.size
        and marker.is_file()
        and marker.read_text().strip() == model.sha256
    )


def stale_files(target: Path, manifest: Manifest) -> tuple[list[Path], list[str]]:
    """Files under ``target`` the manifest does not list: those the sync wrote (to remove: the model,
    its mark, a partial download) and those it never marked (left, named). Links are not followed,
    so nothing outside ``target`` is ever named."""
    keep = {PurePosixPath(model.path) for model in manifest.models}
    remove: set[Path] = set()
    unmarked: list[str] = []
    for folder, _, names in os.walk(target, followlinks=False):
        here = PurePosixPath(Path(folder).relative_to(target).as_posix())
        for name in names:
            relative, model = here / name, marked_model(name)
            if relative in keep or bookkeeping(relative):
                continue
            if model is not None and here / model not in keep:
                remove.update(Path(folder) / other for other in (name, model, f".{model}.sha256"))
            elif model is None and not (Path(folder) / f".{name}.sha256").is_file():
                unmarked.append(str(relative))
    return sorted(path for path in remove if path.is_file() or path.is_symlink()), sorted(unmarked)


def clocks() -> tuple[float, float]:
    """This host's monotonic and wall clocks: a host that stood still sees at least one of them move on
    by that time when it wakes (a suspended machine's monotonic clock stops; its wall clock does not)."""
    return time.monotonic(), time.time()


class VolumeLock:
    """One sync at a time on a shared volume: a lock file created with O_EXCL, renewed while held.

    A lock whose mtime is older than ``stale`` belongs to a sync that died; it is taken over (under
    a short second lock, so two waiters never both remove it) once this waiter has also seen it
    unchanged for half that long on its own clock: a live holder renews every quarter of it, so a
    holder (or a volume server) whose clock is behind this host's never loses its lock."""

    def __init__(self, directory: Path, stale: float, poll: float = 1.0) -> None:
        self.path = directory / LOCK_NAME
        self.stale, self.poll = stale, poll
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renew: asyncio.Task[None] | None = None
        self._seen: tuple[int, str] | None = None
        self._seen_at = time.monotonic()
        self.check_every = min(LOCK_CHECK_SECONDS, stale / 8)
        self._checked: tuple[float, float] | None = None

    def _unchanged_for(self) -> float:
        """Seconds (this host's monotonic clock) the lock file has looked the same: mtime and holder."""
        try:
            seen: tuple[int, str] | None = (self.path.stat().st_mtime_ns, self.path.read_text())
        except FileNotFoundError:
            seen = None
        if seen != self._seen:
            self._seen, self._seen_at = seen, time.monotonic()
        return time.monotonic() - self._seen_at

    def _try_create(self, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(self.owner)
        return True

    def _age(self, path: Path) -> float | None:
        try:
            return time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None

    def _take_over_stale(self) -> None:
        if self._unchanged_for() < self.stale / 2:
            return
        breaker = self.path.with_name(LOCK_NAME + ".break")
        age = self._age(breaker)
        if age is not None and age > self.stale:
            breaker.unlink(missing_ok=True)  # a take-over that itself died
        if not self._try_create(breaker):
            return
        try:
            age = self._age(self.path)
            if age is not None and age > self.stale:
                log.warning("taking over the models lock %s: its sync stopped %.0fs ago", self.path, age)
                self.path.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)

    async def acquire(self, waiting: Callable[[str], Awaitable[None]]) -> None:
        """Wait (reporting who holds it) until this worker holds the lock."""
        while not self._try_create(self.path):
            self._take_over_stale()
            with contextlib.suppress(OSError):
                await waiting(self.path.read_text().strip())
            await asyncio.sleep(self.poll)  # another host holds it: nothing to wake us but its file
        self._renew = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        while self.held():
            os.utime(self.path)
            await asyncio.sleep(max(self.stale / 4, 0.05))

    def held(self) -> bool:
        """The lock file still names this sync (it was not taken over while this host stood still)."""
        try:
            return self.path.read_text().strip() == self.owner
        except FileNotFoundError:
            return False

    def due(self) -> bool:
        """Whether the lock must be read again before the next write. It is read on the volume (a
        round trip to its server on a network volume), so not before every MiB but once
        ``check_every`` has passed on either of this host's clocks, or the wall clock went back. A
        take-over needs this sync silent for half the stale time on the taker's clock, so this host
        stood still at least that long: when it wakes, the first write reads the lock first."""
        if self._checked is None:
            return True
        (mono, wall), (was_mono, was_wall) = clocks(), self._checked
        return mono - was_mono >= self.check_every or not 0 <= wall - was_wall < self.check_every

    def check_held(self) -> None:
        """Raise ``LockLostError`` when another sync took the lock over: not one more byte written."""
        checked = clocks()
        if not self.held():
            raise LockLostError(
                f"another worker took over the models lock {self.path} (this sync had not renewed it "
                f"for {self.stale:.0f}s: WORKER_MODELS_LOCK_STALE_SECONDS); this sync stops writing and "
                "waits for it"
            )
        self._checked = checked

    async def release(self) -> None:
        if self._renew is not None:
            self._renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew
        with contextlib.suppress(FileNotFoundError):
            if self.path.read_text().strip() == self.owner:
                self.path.unlink()


class Tally:
    """Files and bytes done, the rate and the time left: for the progress bar and the admin page."""

    def __init__(self, manifest: Manifest, report: Report | None) -> None:
        self.progress = ModelsProgress(
            files_total=len(manifest.models), bytes_total=sum(m.size for m in manifest.models)
        )
        self.report = report
        self.started = time.monotonic()
        self.downloaded = 0
        self._sent = 0.0
        self._pending: asyncio.Task[None] | None = None

    async def publish(self, force: bool = False) -> None:
        """Send the progress: at most every 2 s and never holding up the download (one report in
        flight at a time); a state change waits for its report, a bounded time."""
        if self.report is None or (not force and time.monotonic() - self._sent < 2.0):
            return
        if not force and self._pending is not None and not self._pending.done():
            return
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.downloaded / elapsed
        left = self.progress.bytes_total - self.progress.bytes_done
        self.progress.rate_bytes_per_s = int(rate)
        self.progress.eta_seconds = round(left / rate, 1) if rate > 0 else None
        self._sent = time.monotonic()
        self._pending = asyncio.create_task(self._send(self.report, self.progress.model_copy()))
        if force:
            await asyncio.wait({self._pending}, timeout=REPORT_WAIT_SECONDS)

    @staticmethod
    async def _send(report: Report, progress: ModelsProgress) -> None:
        try:
            await report(progress)
        except Exception as exc:  # progress must never stop the sync
            log.warning("could not report the models sync: %s", exc)

    async def state(self, state: str, message: str = "") -> None:
        self.progress.state, self.progress.message = state, message
        await self.publish(force=True)

    async def file_done(self, model: ModelFile) -> None:
        self.progress.files_done += 1
        await self.publish()

    async def advance(self, count: int) -> None:
        self.progress.bytes_done += count
        self.downloaded += count
        await self.publish()


class ModelSync:
    """Brings one target folder to exactly the manifest's files, verified."""

    def __init__(self, settings: WorkerSettings, vault: Storage | None, progress: Progress, tally: Tally):
        self.settings, self.vault, self.bar, self.tally = settings, vault, progress, tally
        self.target = settings.shared_models_dir or settings.models_dir
        self.downloads: list[str] = []
        self.removed: list[str] = []
        self.lock: VolumeLock | None = None

    async def run(self, manifest: Manifest) -> None:
        """Sync; a sync whose volume lock was taken over (its host stood still past the stale time)
        waits for the new holder and looks again, a few times at most."""
        self._refuse_links(manifest)
        for _ in range(LOCK_TAKEOVERS):
            try:
                await self._run_once(manifest)
                return
            except LockLostError as exc:
                log.warning("%s", exc)
                self.tally.progress.files_done = self.tally.progress.bytes_done = 0
        raise ModelError(
            f"the models lock on {self.target} was taken over {LOCK_TAKEOVERS} times while this worker "
            "synced: its host or the volume stood still longer than WORKER_MODELS_LOCK_STALE_SECONDS "
            f"({self.settings.models_lock_stale_seconds:.0f}s); raise it, then start the worker again"
        )

    async def _run_once(self, manifest: Manifest) -> None:
        missing = [m for m in manifest.models if not verified(self.target / m.path, m)]
        if not missing and not stale_files(self.target, manifest)[0]:
            self.tally.progress.files_done, self.tally.progress.bytes_done = (
                len(manifest.models),
                self.tally.progress.bytes_total,
            )
            return
        if self.settings.shared_models_dir is None:
            await self._sync(manifest)
            return
        lock = self._lock()
        if lock is None:
            await self._check_read_only(missing)
            return
        await lock.acquire(self._waiting)
        self.lock = lock
        try:
            await self._sync(manifest)
        finally:
            self.lock = None
            await lock.release()

    def _refuse_links(self, manifest: Manifest) -> None:
        """A model's folder, file, partial download or mark that is a link (to anywhere): the sync
        would write through it, or trust a file outside the volume; refused, naming the link."""
        for model in manifest.models:
            link = next((name for name in own_names(model.path) if (self.target / name).is_symlink()), None)
            if link is not None:
                raise ModelError(
                    f"{link} on the models volume is a link (to {os.readlink(self.target / link)}), in "
                    f"{self.target}: the sync neither writes nor reads models through links; remove the "
                    "link (the sync then downloads the file) or put the file or folder itself there"
                )

    def _lock(self) -> VolumeLock | None:
        """The volume's lock, or None when the volume is read-only here."""
        if not os.access(self.target, os.W_OK):
            return None
        lock = VolumeLock(self.target, self.settings.models_lock_stale_seconds)
        probe = self.target / f".comfy-write-probe-{lock.owner.replace(':', '-')}"
        try:
            probe.touch()
            probe.unlink()
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return None
            raise
        return lock

    async def _waiting(self, holder: str) -> None:
        await self.tally.state("waiting", f"another worker ({holder}) is filling the shared volume")

    async def _check_read_only(self, missing: list[ModelFile]) -> None:
        """A read-only volume is filled by someone else (the GPU host's sync): hash what lacks a mark."""
        for model in missing:
            if not await _hash_matches(self.target / model.path, model):
                raise ModelError(
                    f"model {model.path} is not on the read-only models volume {self.target} with the "
                    f"manifest's size {model.size} and sha256: the volume's sync (`python -m "
                    "services.worker sync-models` with it mounted writable) did not finish; see its log"
                )
            await self.tally.file_done(model)

    def _prune(self, manifest: Manifest) -> None:
        """Remove what the sync put here for models the manifest no longer lists (the caller holds
        the volume's lock, or the folder is this worker's own disk)."""
        remove, unmarked = stale_files(self.target, manifest)
        for path in remove:
            path.unlink(missing_ok=True)
        self.removed = [str(p.relative_to(self.target)) for p in remove if not p.name.startswith(".")]
        if self.removed:
            log.info("removed from %s, not in the manifest: %s", self.target, ", ".join(self.removed))
        if unmarked:
            log.warning(
                "left in %s, not in the manifest but not put there by the sync (remove them by hand "
                "if they are not needed): %s", self.target, ", ".join(unmarked),
            )  # fmt: skip

    def removed_note(self) -> str:
        """The final report's message: what the sync removed, if anything."""
        if not self.removed:
            return ""
        return f"removed {len(self.removed)} files not in the manifest: {', '.join(self.removed)}"

    async def _sync(self, manifest: Manifest) -> None:
        self._prune(manifest)
        todo = []
        for model in manifest.models:
            path = self.target / model.path
            if not verified(path, model) and not await self._adopt(model, path):
                todo.append(model)
        try:
            await self._check_bucket(todo)
            self._check_room(todo)
            await self.tally.state("syncing")
            for model in manifest.models:
                if model in todo:
                    await self._download(model, self.target / model.path)
                else:
                    self.tally.progress.bytes_done += model.size
                await self.tally.file_done(model)
        except StorageUnavailableError as exc:
            raise self._unanswered(exc, [m for m in todo if not verified(self.target / m.path, m)]) from exc

    def _unanswered(self, exc: StorageUnavailableError, missing: list[ModelFile]) -> ModelError:
        """The bucket stayed away past the retries: what is still missing, and what to do."""
        names = ", ".join(m.path for m in missing[:20]) + (" ..." if len(missing) > 20 else "")
        bucket = self.vault.url if self.vault is not None else self.settings.models_url
        return ModelError(
            f"the models bucket {bucket} did not answer for "
            f"{self.settings.storage_retry_seconds:.0f}s (WORKER_STORAGE_RETRY_SECONDS): {exc}. Still "
            f"missing: {names}. What came down is kept and the next sync resumes it: check the bucket's "
            "endpoint (WORKER_MODELS_S3_ENDPOINT_URL) and the network, then start the worker again"
        )

    @staticmethod
    async def _adopt(model: ModelFile, path: Path) -> bool:
        """A file put in place by hand: hashed once, then marked verified like a download."""
        if not await _hash_matches(path, model):
            return False
        _mark_verified(path, model)
        return True

    async def _check_bucket(self, todo: list[ModelFile]) -> None:
        if not todo:
            return
        vault = self._vault(todo[0])
        rejected = [m for m in todo if _rejection_mark(self.target / m.path).is_file()]
        async for attempt in patiently(self.settings.storage_retry_seconds):
            with attempt:
                sizes = await asyncio.gather(*(vault.size(model.key) for model in todo))
                versions = await asyncio.gather(*(vault.version(model.key) for model in rejected))
        for model, version in zip(rejected, versions, strict=True):
            rejection = _rejection(self.target / model.path, model, version)
            if rejection is not None:
                raise ModelError(rejection.message(model, remembered=True))
        wrong = [
            f"{m.key} ({'missing' if size is None else f'{size} bytes, the manifest says {m.size}'})"
            for m, size in zip(todo, sizes, strict=True)
            if size != m.size
        ]
        if wrong:
            raise ModelError(
                f"the models bucket {self.settings.models_url} does not hold the manifest's files: "
                f"{', '.join(wrong)}. Upload them (or fix the manifest's size/source), then start the "
                "worker again"
            )

    def _check_room(self, todo: list[ModelFile]) -> None:
        """Refuse before downloading what the disk or volume cannot hold (hours in, it would fail on
        whichever file filled it): the room left must hold what is still to come of every file."""
        partial = {m.path: _part(self.target / m.path) for m in todo}
        needed = sum(m.size - (p.stat().st_size if (p := partial[m.path]).is_file() else 0) for m in todo)
        existing = next(folder for folder in (self.target, *self.target.parents) if folder.exists())
        free = shutil.disk_usage(existing).free
        if needed > free:
            largest = max(todo, key=lambda m: m.size)
            raise ModelError(
                f"the models still to download ({len(todo)} files, largest {largest.path}) need "
                f"{needed / 1e6:,.1f} MB but {self.target} has {free / 1e6:,.1f} MB free: give the models "
                "volume (modelsVolume.sizeGb) or the worker's disk more room, or list fewer models"
            )

    def _vault(self, model: ModelFile) -> Storage:
        if self.vault is None:
            raise ModelError(
                f"model {model.path} is not in {self.target} and WORKER_MODELS_URL is not set: put the "
                "file there or set WORKER_MODELS_URL to the models bucket"
            )
        return self.vault

    async def _download(self, model: ModelFile, target: Path) -> None:
        """Bring the file down, resuming its partial download; a resumed file that fails the hash is
        started over once (the part on disk was of another version of the file: re-uploaded under
        the same name since, with the manifest updated)."""
        vault = self._vault(model)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = _part(target)
        resumed = partial.is_file() and partial.stat().st_size > 0
        async for attempt in patiently(self.settings.storage_retry_seconds):
            with attempt:  # read before the bytes: a file replaced meanwhile is another version
                version = await vault.version(model.key)
        actual = await self._fetch(vault, model, partial)
        if actual != model.sha256 and resumed:
            log.warning(
                "model %s: the part on disk was of another version of the file; starting over", model.path
            )
            self.tally.progress.bytes_done -= partial.stat().st_size
            partial.unlink()
            actual = await self._fetch(vault, model, partial)
        self._verify(model, target, actual, version or "")
        partial.replace(target)
        _mark_verified(target, model)

    async def _fetch(self, vault: Storage, model: ModelFile, partial: Path) -> str:
        """Fill ``partial`` up to the model's size from the bucket, from where it stops; a read cut
        off (the bucket or the network away) goes on from there, for ``WORKER_STORAGE_RETRY_SECONDS``.
        Return the sha256 of what is in ``partial``."""
        digest = hashlib.sha256()
        start = _resume_point(partial, model)
        if start:
            await asyncio.to_thread(_hash_file, partial, digest)
            self.tally.progress.bytes_done += start
        # The bar shows the file in flight only: a row kept per file fetched was drawn again at each
        # new one, so many small files took time growing with their square, holding the event loop.
        task = self.bar.add_task(model.path, total=model.size, completed=start)
        self.downloads.append(model.path)
        log.info("downloading model %s from byte %d of %d", model.path, start, model.size)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "ab") as handle:
                async for attempt in patiently(self.settings.storage_retry_seconds):
                    with attempt:
                        await self._stream(vault, model, handle, digest, task)
        finally:
            self.bar.remove_task(task)
        return digest.hexdigest()

    async def _stream(self, vault: Storage, model: ModelFile, handle: Any, digest: Any, task: TaskID) -> None:
        """Append the bytes from the end of ``handle`` on (none when it holds the whole size: the
        bucket refuses a range that starts at the file's end)."""
        handle.flush()
        start = handle.tell()
        if start >= model.size:
            return
        async for chunk in _chunks(vault, model, start):
            if self.lock is not None and self.lock.due():
                await asyncio.to_thread(self.lock.check_held)
            await asyncio.to_thread(handle.write, chunk)
            digest.update(chunk)
            self.bar.advance(task, len(chunk))
            await self.tally.advance(len(chunk))

    @staticmethod
    def _verify(model: ModelFile, target: Path, actual: str, version: str) -> None:
        """The download in ``target``'s part is the manifest's file; else it is removed and the verdict
        on that object kept beside ``target`` (``Rejection``), so no other sync downloads it again."""
        partial = _part(target)
        size = partial.stat().st_size
        if size == model.size and actual == model.sha256:
            return
        partial.unlink()
        rejection = Rejection(
            key=model.key, version=version, sha256=model.sha256, size=model.size,
            found_sha256=actual, found_size=size,
        )  # fmt: skip
        _rejection_mark(target).write_text(rejection.model_dump_json())
        raise ModelError(rejection.message(model, remembered=False))


def _resume_point(partial: Path, model: ModelFile) -> int:
    """Where the partial download goes on from: its size (0 when none, or when it is longer than the
    model, which it cannot be part of)."""
    start = partial.stat().st_size if partial.is_file() else 0
    if start > model.size:
        partial.unlink()
        return 0
    return start


async def _chunks(vault: Storage, model: ModelFile, start: int) -> AsyncIterator[bytes]:
    try:
        async for chunk in vault.get(model.key, start=start):
            yield chunk
    except FileMissingError as exc:
        raise ModelError(f"model {model.path}: {model.key} is not in the models bucket") from exc


def _failure(settings: WorkerSettings, exc: StorageError | OSError) -> ModelError:
    """What went wrong outside the sync's own checks, where, and what to do."""
    target = settings.shared_models_dir or settings.models_dir
    if isinstance(exc, StorageError):
        return ModelError(
            f"the models bucket {settings.models_url} refused the sync: {exc}. Check that "
            "WORKER_MODELS_URL names the bucket and the WORKER_MODELS_S3_* key may read it, then start "
            "the worker again"
        )
    return ModelError(
        f"the models could not be written to {target}: {exc}. What came down is kept (*.part) and the "
        "next sync resumes it: free room on that disk or volume (or give it more: modelsVolume.sizeGb), "
        "check it is writable, then start the worker again"
    )


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )


def models_vault(settings: WorkerSettings) -> Storage | None:
    """The models bucket, read with its own read-only key (``WORKER_MODELS_S3_*``, which the settings
    require for an s3:// bucket), never with the files' (``S3_*``)."""
    if not settings.models_url:
        return None
    s3 = S3Settings(
        endpoint_url=settings.models_s3_endpoint_url,
        access_key_id=settings.models_s3_access_key_id,
        secret_access_key=settings.models_s3_secret_access_key,
    )
    return open_storage(settings.models_url, s3)


def queue_reporter(settings: WorkerSettings, queue: QueueClient) -> Report:
    """Progress for the admin page: the worker registers as starting, with its models sync."""

    async def report(progress: ModelsProgress) -> None:
        caps = WorkerCapabilities(pool=settings.pool, provider=settings.provider, models_sync=progress)
        await queue.register(WorkerRegistration(worker_id=settings.worker_id, capabilities=caps))

    return report


async def ensure_models(
    settings: WorkerSettings, vault: Storage | None = None, report: Report | None = None
) -> list[str]:
    """Make every manifest file present and verified; return their paths (what the worker advertises).
    ``report`` hears the progress (files, bytes, rate, time left) every few seconds and at each change."""
    manifest = manifest_of(settings)
    if manifest is None:
        return []
    tally = Tally(manifest, report)
    try:
        vault = vault or models_vault(settings)
        with progress_bar() as bar:
            sync = ModelSync(settings, vault, bar, tally)
            await sync.run(manifest)
    except (ModelError, StorageError, OSError) as exc:
        await tally.state("failed", str(exc))
        if isinstance(exc, ModelError):
            raise
        raise _failure(settings, exc) from exc
    await tally.state("ready", sync.removed_note())
    log.info("%d model files ready in %s", len(manifest.models), sync.target)
    return [model.path for model in manifest.models]
