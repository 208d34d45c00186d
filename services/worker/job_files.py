"""One job's files on the GPU: ComfyUI's input, output and temp folders hold one owner's files at a time.

ComfyUI resolves every file name a node is given inside its own three folders: ``LoadImage``
reads ``name`` from the input folder and ``name [output]`` / ``[temp]`` / ``[input]`` from that
folder, and it joins the name to the folder without any check, so an absolute name, or one that
climbs with ``..``, reads any file the ComfyUI process can read. A worker serves many participants,
so for each job it:

* empties the three folders before the job (a killed run's leftovers too) and again once the
  job's outputs are in storage: no job can name a file another participant's job put there;
* stages only the owner's files: the inputs the job names and the ``name [output]`` /
  ``name [temp]`` files its graph names (each read from the owner's prefix of user-file storage,
  so whatever the job says it can name nothing else), each in the folder of its type; and the
  owner's earlier output names as empty files, so ``SaveImage`` numbers on from the owner's last
  file instead of writing ``ComfyUI_00001_.png`` over it (the names in storage, listed at most
  ``LISTING_SECONDS`` before, and those the worker's own jobs made since). A name stored since by
  another worker is not among them: ComfyUI may pick it again, and ``outputs`` then stores the
  file under the next free counter instead of over hers;
* refuses, before ComfyUI sees the graph, a value that names an existing file outside the folders
  (absolute, or with ``..``), with ComfyUI's own validation error;
* gives every output node (``output_node`` in ComfyUI's catalogue, or a node nothing links from)
  every node reading an upload (``salted_classes``) and every node naming a file the job stages
  (``staged_names``: a custom loader may do neither) an input naming its owner (``salt``),
  which ComfyUI keeps in the node's cache key but does not pass to the node. An identical rerun
  by the owner is ComfyUI's cache hit, as on ComfyUI itself: its outputs name the owner's earlier
  files, which are in the owner's storage already (``outputs``). Another participant's identical
  graph re-runs its output nodes and loaders, so a cached result never names a file of someone
  else's job nor hands him her loaded file; and a re-run of one job (a retry, or after ComfyUI was
  lost) names its attempt too, so it never replays files of an attempt that were never stored.
  Likewise, once a job of the owner ends without its files reaching storage (it failed, was
  cancelled or lost, or storing failed), and whenever the worker starts, the owner's salt changes:
  a cached result can only name a file that is in the owner's storage, or on its way there.
  The owner's earlier outputs are staged as empty placeholders (above); those the job leaves as
  they were are not its outputs and are parted from them when the job ends, so a cache hit naming
  one never copies the empty placeholder over the owner's file. The placeholders stay in the
  spool between the owner's jobs and only the names that changed are made or removed for a job
  (``placeholders.OwnerPlaceholders``).

Staging waits until ComfyUI holds no prompt (``until_idle``). The folders must be the ones ComfyUI
uses: ``verify`` writes a file into each and reads it back through ComfyUI's ``/view`` when the
worker starts.

So that the GPU never waits for storage, the folders belong to one job only while ComfyUI runs it
(``slot``): a pull worker ``prepare``s its next job (inputs fetched from storage into the worker's
spool, next to but outside ComfyUI's folders) while the current one runs; when ComfyUI is done with
a job, its output and temp files are moved aside into the spool (a rename) and the folders are
emptied, and the next job's files are moved in. The outputs go to storage from the spool while the
next job runs, and are removed once stored. Each owner's placeholders are parted from her job's
outputs after the folders are the next job's; her own next job waits for that (her placeholders'
``lock``), and a job that keeps nothing leaves them to be made afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from services.protocol.jobs import FileRef, Job, split_annotation, storage_key
from services.storage import Storage, StorageError, patiently
from services.worker.comfy_client import (
    ComfyBusyError,
    ComfyClient,
    ComfyUnavailableError,
    PromptRejectedError,
)
from services.worker.placeholders import OwnerPlaceholders, file_names, move_files, to_the_end

SALT_INPUT = "workshop_job"
IDLE_SECONDS = 30.0
LISTING_SECONDS = 1.0  # an owner's output names listed this recently are not listed again
KINDS = ("input", "output", "temp")


class StagingCancelledError(Exception):
    """The job's owner cancelled it while its files were fetched (``JobFiles.staged``)."""


@contextlib.asynccontextmanager
async def stopped_by(stop: asyncio.Event | None) -> AsyncIterator[None]:
    """Run the block, cut short with ``StagingCancelledError`` the moment ``stop`` is set (a store
    that does not answer is waited for minutes; her cancel must not wait with it)."""
    if stop is None:
        yield
        return
    async with asyncio.timeout(None) as scope:

        def cut(done: asyncio.Future[Any]) -> None:
            if not done.cancelled():
                scope.reschedule(-1)  # past: the block is cancelled at once

        watch = asyncio.ensure_future(stop.wait())
        watch.add_done_callback(cut)
        try:
            yield
        except TimeoutError:
            if scope.expired():
                raise StagingCancelledError from None
            raise
        finally:
            watch.cancel()


class FoldersMismatchError(Exception):
    """ComfyUI does not use the worker's folders: the worker cannot keep participants' files apart."""


@dataclass(frozen=True)
class ComfyFolders:
    """ComfyUI's input, output and temp folders (``temp`` must be named so: see ``flags``)."""

    input: Path
    output: Path
    temp: Path

    @classmethod
    def under(cls, data_dir: Path) -> ComfyFolders:
        return cls(data_dir / "input", data_dir / "output", data_dir / "temp")

    def of(self, kind: str) -> Path:
        folder: Path = getattr(self, kind)
        return folder

    @property
    def spool(self) -> Path:
        """The worker's own folder for prepared inputs and finished outputs: outside the three
        folders, so no job's graph can name a file in it (``inside``)."""
        return self.input.parent / ".workshop-spool"

    def flags(self) -> list[str]:
        """ComfyUI's flags for these folders: its temp folder is ``temp`` inside ``--temp-directory``."""
        return [
            *("--input-directory", str(self.input), "--output-directory", str(self.output)),
            *("--temp-directory", str(self.temp.parent)),
        ]

    def clear(self) -> None:
        """Empty the three folders (they stay, empty)."""
        for kind in KINDS:
            folder = self.of(kind)
            folder.mkdir(parents=True, exist_ok=True)
            for entry in os.scandir(folder):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def path(self, ref: FileRef) -> Path:
        return self.of(ref.type) / ref.subfolder.strip("/") / ref.filename

    def inside(self, name: str) -> bool:
        """Whether ``name`` (as a node gets it, maybe annotated) resolves inside ComfyUI's folders,
        or names no existing file at all (text, a model name: nothing to read)."""
        bare, kind = split_annotation(name)
        target = os.path.join(self.of(kind), bare)
        if not os.path.exists(target):
            return True
        real = os.path.realpath(target)
        return any(
            os.path.commonpath([real, os.path.realpath(self.of(k))]) == os.path.realpath(self.of(k))
            for k in KINDS
        )


def rerun(job: Job) -> bool:
    """Whether ComfyUI may have seen this job before: a retry, or a run after ComfyUI was lost."""
    return job.attempts > 1 or job.comfyui_losses > 0


def salted_classes(catalogue: dict[str, Any]) -> set[str]:
    """The node classes salted wherever they are in a graph: ComfyUI's output nodes, and the nodes
    that read an uploaded file (an input with an ``*_upload`` option). ComfyUI keys a loader's
    cached result on its inputs, and on the file's content only when the class asks for it
    (``IS_CHANGED``; the core ``Load3D`` does not): unsalted, another participant's identical inputs
    naming a file of his own would be answered with her loaded file."""
    return {name for name, spec in catalogue.items() if spec.get("output_node") or reads_upload(spec)}


def reads_upload(spec: dict[str, Any]) -> bool:
    inputs = spec.get("input") or {}
    options = [
        value[1]
        for group in ("required", "optional")
        for value in (inputs.get(group) or {}).values()
        if isinstance(value, list) and len(value) > 1 and isinstance(value[1], dict)
    ]
    return any(key.endswith("_upload") and flag for option in options for key, flag in option.items())


def salted(
    prompt: dict[str, Any], salt: str, output_classes: Collection[str] = (), files: Collection[str] = ()
) -> dict[str, Any]:
    """The graph with ``SALT_INPUT = salt`` on every output node: each node of an
    ``output_classes`` class (``salted_classes``), and each node no other node links from; and on
    every node with an input naming one of ``files`` (the owner's files the job stages, as
    ``staged_names`` gives them): a custom loader that neither flags its input as an upload nor
    hashes the file would otherwise be answered from the cache with another participant's file."""
    linked = {
        str(value[0])
        for node in prompt.values()
        for value in (node.get("inputs") or {}).values()
        if isinstance(value, list) and len(value) == 2
    }
    reading = {node_id for node_id, _, _, value in string_inputs(prompt) if staged_name(value) in files}
    return {
        node_id: {**node, "inputs": {**(node.get("inputs") or {}), SALT_INPUT: salt}}
        if node_id not in linked or node.get("class_type") in output_classes or node_id in reading
        else node
        for node_id, node in prompt.items()
    }


def staged_name(value: str) -> str:
    """A node's file name as ``type:subfolder/name`` (ComfyUI's default type is ``input``)."""
    bare, kind = split_annotation(value)
    return f"{kind}:{bare.strip('/')}"


def staged_names(job: Job) -> set[str]:
    """The files a job stages (its inputs and the annotated files it names), as ``staged_name``."""
    return {
        f"{ref.type}:{'/'.join(part for part in (ref.subfolder.strip('/'), ref.filename) if part)}"
        for ref in [*job.inputs, *annotated_refs(job.prompt)]
    }


def string_inputs(prompt: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str, str]]:
    """Every ``(node id, node, input name, value)`` whose value is a string."""
    for node_id, node in prompt.items():
        for name, value in (node.get("inputs") or {}).items():
            if isinstance(value, str):
                yield str(node_id), node, name, value


async def until_idle(comfy: ComfyClient, limit: float = IDLE_SECONDS, poll: float = 0.1) -> None:
    """Return once ComfyUI runs and holds no prompt; ``ComfyBusyError`` after ``limit`` seconds.
    A job's files are staged only then: a prompt the worker abandoned (cancelled, lease
    lost) that is still running could otherwise read the next owner's files, or save its own
    owner's images where the next job can name them. The first looks come quickly (a prompt that
    just ended is listed for a moment more), then every ``poll`` seconds."""
    deadline = time.monotonic() + limit
    delay = 0.002
    while True:
        running, pending = await comfy.queue()
        if not running and not pending:
            return
        if time.monotonic() > deadline:
            raise ComfyBusyError(
                f"ComfyUI at {comfy.base_url} still runs a prompt that is no job of this worker's after "
                f"{limit:.0f} s: one it stopped whose node never checks for an interrupt, or one left there "
                "before this worker started"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, poll)


def annotated_refs(prompt: dict[str, Any]) -> list[FileRef]:
    """The ``name [output]`` and ``name [temp]`` files a graph names (ComfyUI's annotated names)."""
    refs = []
    for _, _, _, value in string_inputs(prompt):
        name, kind = split_annotation(value, default="")
        subfolder, _, filename = name.rpartition("/")
        if kind in ("output", "temp"):
            with contextlib.suppress(ValidationError):
                refs.append(FileRef(filename=filename, subfolder=subfolder, type=kind))
    return refs


def outside_error(node_id: str, node: dict[str, Any], name: str, value: str) -> PromptRejectedError:
    """ComfyUI's own 400 for a file it cannot find, naming the fix."""
    details = f"{name} - Invalid image file: {value[:200]} (name one of your own files, as the picker offers)"
    error = {"type": "custom_validation_failed", "message": "Custom validation failed for node"}
    body = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {
            node_id: {
                "errors": [{**error, "details": details, "extra_info": {"input_name": name}}],
                "dependent_outputs": [],
                "class_type": node.get("class_type"),
            }
        },
    }
    return PromptRejectedError(body)


@dataclass(frozen=True)
class Prepared:
    """A job's files fetched ahead, in the spool: its inputs under ``root/<kind>/`` and the names of
    its owner's earlier outputs (her placeholders are brought up to date ahead too, when they are
    not in use: see ``OwnerPlaceholders``)."""

    root: Path
    earlier: list[str]
    listed_at: float = 0.0  # when the listing of ``earlier`` started (``time.monotonic``)


class Stage:
    """One job's turn in the folders: the graph to submit, and whether its outputs are kept."""

    def __init__(self, prompt: dict[str, Any]) -> None:
        self.prompt = prompt
        self.keep = False

    def keep_outputs(self) -> None:
        """ComfyUI finished the job: move its output and temp files aside when the turn ends."""
        self.keep = True


def move_entries(source: Path, target: Path) -> None:
    """Move every entry of ``source`` into ``target`` (renames: one filesystem)."""
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(source):
        os.replace(entry.path, target / entry.name)


def renamable(folder: Path) -> bool:
    """A folder of its own (no link, no mount point): it can be renamed as a whole."""
    return folder.is_dir() and not folder.is_symlink() and not os.path.ismount(folder)


def swap_in(source: Path, target: Path) -> None:
    """Give the empty folder ``target`` ``source``'s entries: one rename of the folder onto it,
    however many files it holds (entry by entry where that cannot be)."""
    if not source.is_dir():
        return
    if renamable(target):
        with contextlib.suppress(OSError):  # e.g. not empty after all: entry by entry
            os.replace(source, target)
            return
    move_entries(source, target)


def swap_out(source: Path, target: Path) -> None:
    """Move ``source``'s entries to the new folder ``target``, leaving ``source`` empty: one rename
    of the folder where it can be."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if renamable(source) and not target.exists():
        with contextlib.suppress(OSError):
            os.replace(source, target)
            source.mkdir()
            return
    move_entries(source, target)


class JobFiles:
    """Stages one job's files in ComfyUI's folders and clears them after it."""

    def __init__(self, folders: ComfyFolders, storage: Storage, patience: float = 0.0) -> None:
        self.folders, self.storage = folders, storage
        self.patience = patience  # how long a read waits for a store that does not answer (``patiently``)
        self.output_classes: set[str] = set()  # ``salted_classes`` of ComfyUI's catalogue, once read
        self.slot = asyncio.Lock()  # the folders hold one job's files at a time
        # Output names each owner's jobs made here: a job staged before the last one's outputs
        # reached storage numbers on from them too, instead of writing the same name again. Owner ->
        # name -> (the job that made it, when its files left the spool: stored or given up; ``inf``
        # until then). A listing started after that tells whether she has the file still: once one
        # has, the name is forgotten here (``_listed``), so this holds only the names made since.
        self.produced: dict[str, dict[str, tuple[str, float]]] = {}
        self.made: dict[str, tuple[str, list[str]]] = {}  # job id -> (owner, the names it made)
        self.listings: dict[str, tuple[float, asyncio.Task[list[str]]]] = {}  # owner -> (started, listing)
        self.listed: dict[str, tuple[float, frozenset[str]]] = {}  # owner -> her latest listing, finished
        # Jobs whose kept outputs are on their way to storage: job id -> (owner, set once done).
        self.storing: dict[str, tuple[str, asyncio.Event]] = {}
        self.epoch = secrets.token_hex(4)  # an attached ComfyUI may keep results from before a restart
        self.generation: dict[str, int] = {}  # owner -> jobs here whose files did not all reach storage
        self.owners: dict[str, OwnerPlaceholders] = {}  # each owner's placeholders, kept between her jobs
        self.splitting: dict[str, asyncio.Task[None]] = {}  # job id -> its outputs leaving the placeholders

    def salt(self, job: Job) -> str:
        """The output nodes' cache-key input: the owner (user names hold no ``/``) as of the last job
        of theirs whose files did not reach storage, and on a re-run the job and its attempt too."""
        owner = f"{job.user}/{self.epoch}/{self.generation.get(job.user, 0)}"
        return f"{owner}/{job.id}/{job.attempts}/{job.comfyui_losses}" if rerun(job) else owner

    def unstored(self, user: str) -> None:
        """A job of ``user`` may have made files that will not reach storage: ComfyUI's cached results
        of their output nodes are not reused from now on."""
        self.generation[user] = self.generation.get(user, 0) + 1

    def kept(self, job_id: str) -> Path:
        """Where a finished job's output and temp files wait (``<kind>/<subfolder>/<name>``) until
        they are stored."""
        return self.folders.spool / job_id / "out"

    def discard(self, job_id: str) -> None:
        """Remove whatever the spool holds for the job (prepared inputs, kept outputs); once its
        outputs are split from its owner's placeholders, if they are being split still."""
        folder = self.folders.spool / job_id

        def gone(_: object = None) -> None:
            self._left(job_id)  # after the split: the names it adds to what the job made leave too
            shutil.rmtree(folder, ignore_errors=True)

        split = self.splitting.get(job_id)
        if split is None:
            gone()
        else:
            split.add_done_callback(gone)
        _, done = self.storing.pop(job_id, ("", None))
        if done is not None:
            done.set()

    def _left(self, job_id: str) -> None:
        """The names the job made are in its owner's storage now or never will be: a listing
        started from now on tells whether she has them."""
        user, names = self.made.pop(job_id, ("", []))
        made = self.produced.get(user, {})
        now = time.monotonic()
        for name in names:
            if made.get(name, ("", 0.0))[0] == job_id:  # a later job's file of that name is its own
                made[name] = (job_id, now)

    def stored_as(self, job: Job, renamed: dict[tuple[str, str, str], str]) -> None:
        """The job's outputs stored under another name than ComfyUI gave them (its name was taken in
        her storage, ``outputs``): the new names are hers now, as the names it wrote are, so her
        next jobs here number on past them without listing her storage again."""
        stored = [
            f"{sub.strip('/')}/{name}".lstrip("/")
            for (kind, sub, _), name in renamed.items()
            if kind == "output"
        ]
        self._made(job, stored)

    def _made(self, job: Job, names: list[str]) -> None:
        """``names`` (``sub/name`` in the output folder) are files of ``job``'s owner now, on their way
        to storage until the job leaves the spool (``_left``); added to what the job made so far."""
        self.produced.setdefault(job.user, {}).update(dict.fromkeys(names, (job.id, math.inf)))
        _, earlier = self.made.get(job.id, (job.user, []))
        self.made[job.id] = (job.user, [*earlier, *names])

    async def stored_before(self, job: Job) -> None:
        """Until the outputs of the owner's jobs that ended here before ``job`` are stored (or given
        up): a cache hit names those files, and its owner must find them once told of them."""
        for job_id, (user, done) in list(self.storing.items()):
            if job_id == job.id:
                return
            if user == job.user:
                await done.wait()

    async def prepare(self, job: Job) -> Prepared:
        """Fetch the job's files (its inputs, the ``[output]``/``[temp]`` files it names) and its
        owner's output names into the spool, outside ComfyUI's folders, while another job runs.
        Raises ``StorageError`` for a missing input."""
        root = self.folders.spool / job.id / "in"
        await asyncio.to_thread(shutil.rmtree, root, True)
        listed_at, earlier = await self._earlier(job.user)
        for ref in job.inputs:
            if not await self._fetch(job.user, ref, root):
                key = storage_key(job.user, ref)
                raise StorageError(
                    f"input file {ref.filename!r} is not among your files (looked for {key}): upload "
                    "it again and resubmit"
                )
        for ref in annotated_refs(job.prompt):
            await self._fetch(job.user, ref, root)  # the owner's own output or preview, when they have it
        prepared = Prepared(root, earlier, listed_at=listed_at)
        owner = self._owner(job.user)
        if owner.lock.locked():  # her job runs: her placeholders are brought up to date at staging
            return prepared
        async with owner.lock:
            await to_the_end(owner.sync, self._wanted(job.user, prepared))
        return prepared

    async def verify(self, comfy: ComfyClient) -> None:
        """Refuse to start when ComfyUI does not read these folders (``FoldersMismatchError``)."""
        await asyncio.to_thread(self.folders.clear)
        await asyncio.to_thread(shutil.rmtree, self.placeholders_root, True)  # an earlier run's
        for kind in KINDS:
            probe = self.folders.of(kind) / f"workshop-probe-{secrets.token_hex(8)}.txt"
            body = secrets.token_bytes(16)
            probe.write_bytes(body)
            try:
                async with comfy.view(probe.name, "", kind) as reply:
                    seen = await reply.aread()
            except (httpx.HTTPStatusError, ComfyUnavailableError):
                seen = b""
            finally:
                probe.unlink(missing_ok=True)
            if seen != body:
                raise FoldersMismatchError(
                    f"ComfyUI at {comfy.base_url} does not use {self.folders.of(kind)} as its {kind} "
                    f"folder, so the worker cannot keep participants' files apart: start ComfyUI with "
                    f"{' '.join(self.folders.flags())}, or set WORKER_DATA_DIR to the folder holding "
                    "the input/, output/ and temp/ folders it uses"
                )

    @contextlib.asynccontextmanager
    async def staged(
        self, job: Job, prepared: Prepared | None = None, cancel: asyncio.Event | None = None
    ) -> AsyncIterator[Stage]:
        """The folders hold only ``job``'s owner's files while the block runs (one job at a time:
        ``slot``); yields the graph to submit (output nodes salted). Raises ``StorageError`` for a
        missing input, ``PromptRejectedError`` for a name outside the folders and
        ``StagingCancelledError`` when ``cancel`` is set while its files are fetched. With
        ``Stage.keep_outputs`` the job's output and temp files move to ``kept`` at the end."""
        async with self.slot:
            stage = Stage(salted(job.prompt, self.salt(job), self.output_classes, staged_names(job)))
            owner = self._owner(job.user)
            await owner.lock.acquire()  # once her last job's outputs are split from her placeholders
            try:
                if prepared is None:
                    await to_the_end(self.folders.clear)
                    async with stopped_by(cancel):
                        prepared = await self.prepare(job)
                await to_the_end(self._move_in, prepared, owner, self._wanted(job.user, prepared))
                self.check(job.prompt)
                yield stage
            finally:
                if stage.keep:
                    self.storing[job.id] = (job.user, asyncio.Event())
                else:
                    self.unstored(job.user)
                try:
                    await to_the_end(self._move_out, job, stage)
                finally:
                    split = self._after(job, stage, owner)
        await asyncio.shield(split)  # the folders are the next job's already

    def _after(self, job: Job, stage: Stage, owner: OwnerPlaceholders) -> asyncio.Task[None]:
        """The owner's placeholders once her job's turn ended: split from its outputs (kept, in
        a task of its own, after the folders are the next job's), or forgotten; her lock is
        released after."""
        split = asyncio.create_task(self._split(job, owner, stage.keep))
        self.splitting[job.id] = split
        split.add_done_callback(lambda _: self.splitting.pop(job.id, None))
        return split

    async def _split(self, job: Job, owner: OwnerPlaceholders, keep: bool) -> None:
        try:
            if not keep:
                await to_the_end(owner.forget)
                return
            self._made(job, await to_the_end(owner.split, self.kept(job.id) / "output"))
        except OSError:  # e.g. a folder the job made unreadable: her placeholders are made afresh
            await to_the_end(owner.forget)
            raise
        finally:
            owner.lock.release()

    def _owner(self, user: str) -> OwnerPlaceholders:
        owner = self.owners.get(user)
        if owner is None:
            owner = self.owners[user] = OwnerPlaceholders(self.placeholders_root)
        return owner

    @property
    def placeholders_root(self) -> Path:
        """The owners' placeholder folders, in the spool (no job id starts with a dot)."""
        return self.folders.spool / ".placeholders"

    def _wanted(self, user: str, prepared: Prepared) -> set[str]:
        """The owner's earlier output names as listed, and those this worker made for her since,
        except the ``[output]`` files the job fetched: the names to hold a placeholder."""
        made = self.produced.get(user, {})  # a name whose job's files left the spool before the listing:
        names = set(prepared.earlier)  # the listing has it if she still does
        names.update(name for name, (_, left) in made.items() if left >= prepared.listed_at)
        started, latest = self.listed.get(user, (0.0, frozenset()))
        if started > prepared.listed_at:  # names forgotten since the job's own listing are in this one
            names.update(latest)
        fetched = prepared.root / "output"
        return names.difference(file_names(fetched)) if fetched.is_dir() else names

    def _move_in(self, prepared: Prepared, owner: OwnerPlaceholders, wanted: set[str]) -> None:
        """Empty the folders (a killed run's leftovers too), then move the prepared files in, and
        the owner's placeholders, brought up to date, as the output folder (a rename of each
        folder), with the ``[output]`` files the job names among them."""
        self.folders.clear()
        for kind in ("input", "temp"):
            swap_in(prepared.root / kind, self.folders.of(kind))
        swap_in(owner.sync(wanted), self.folders.output)
        move_files(prepared.root / "output", self.folders.output)
        shutil.rmtree(prepared.root, ignore_errors=True)

    def _move_out(self, job: Job, stage: Stage) -> None:
        """Move the job's output and temp folders aside when it keeps them (a rename of each; its
        outputs are split from the owner's placeholders there after); then empty the folders."""
        if stage.keep:
            for kind in ("output", "temp"):
                swap_out(self.folders.of(kind), self.kept(job.id) / kind)
        self.folders.clear()

    def check(self, prompt: dict[str, Any]) -> None:
        for node_id, node, name, value in string_inputs(prompt):
            if not self.folders.inside(value):
                raise outside_error(node_id, node, name, value)

    async def _earlier(self, user: str) -> tuple[float, list[str]]:
        """When the listing started and the owner's output names in storage, listed at most
        ``LISTING_SECONDS`` ago: jobs a second apart list each time, while a run of short jobs
        shares one listing (what this worker made since is in ``produced``)."""
        started, listing = self.listings.get(user, (0.0, None))
        failed = listing is not None and listing.done() and listing.exception() is not None
        if listing is None or failed or time.monotonic() - started > LISTING_SECONDS:
            started, listing = time.monotonic(), asyncio.create_task(self._list_outputs(user))
            self.listings[user] = (started, listing)
            listing.add_done_callback(functools.partial(self._listed, user, started))
        return started, await asyncio.shield(listing)  # a cancelled prepare leaves it to the next one

    def _listed(self, user: str, started: float, listing: asyncio.Task[list[str]]) -> None:
        """Her listing that started at ``started`` finished: a name whose job's files left the spool
        before then is in it if she still has the file, so ``produced`` forgets it; a job prepared
        with an earlier listing takes this one's names instead (``_wanted``)."""
        if listing.cancelled() or listing.exception() is not None:
            return
        if started <= self.listed.get(user, (-math.inf, frozenset()))[0]:
            return  # a later listing finished first
        self.listed[user] = (started, frozenset(listing.result()))
        made = self.produced.get(user, {})
        for name in [name for name, (_, left) in made.items() if left < started]:
            del made[name]
        if not made:
            self.produced.pop(user, None)

    async def _list_outputs(self, user: str) -> list[str]:
        """Her output names; a key no output of hers can have (absolute, or climbing with ``..``,
        which a bucket allows) is left out: its placeholder would be made outside her folder."""
        prefix = f"users/{user}/output/"
        async for attempt in patiently(self.patience):
            with attempt:
                keys = await self.storage.list(prefix)
        names = [key.removeprefix(prefix) for key in keys]
        return [name for name in names if not name.startswith("/") and ".." not in name.split("/")]

    async def _fetch(self, user: str, ref: FileRef, root: Path) -> bool:
        """Copy one of ``user``'s files to ``root/<kind>/...``; False when they have no such file. A
        store that does not answer is waited for (``patience``)."""
        key = storage_key(user, ref)
        path = root / ref.type / ref.subfolder.strip("/") / ref.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            async for attempt in patiently(self.patience):
                with attempt, path.open("wb") as handle:
                    async for chunk in self.storage.get(key):
                        handle.write(chunk)
        except FileNotFoundError:
            path.unlink(missing_ok=True)
            return False
        return True
