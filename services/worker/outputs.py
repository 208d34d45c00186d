"""Every output a finished job has, of any kind, streamed to user-file storage from where the worker
set ComfyUI's output and temp files aside when the job ended (``job_files``).

ComfyUI's history names outputs per node under keys such as ``images``, ``gifs``, ``videos`` or
``audio`` (and sometimes non-file lists like ``animated: [true]``): any list of objects with a
``filename`` is a file. Each is stored as ``storage_key(owner, OutputFile)``, keeping ComfyUI's own
name, so the owner's workspace finds it where ComfyUI's ``/view`` would.

Nothing a job stores ever replaces a file its owner has: ComfyUI's own savers (``SaveImage``,
``SaveAnimatedWEBP``/``PNG``, ``SaveAudio``, ``SaveVideo``, ...) name a file
``<prefix>_<counter, 5 digits or more>_<.ext>`` and number on from the highest counter in the
output folder, which holds the owner's earlier names only as the worker knew them
(``job_files``): another worker running her jobs at the same time, or a file stored since the
worker listed her names, can have taken the same name. So every such file is stored
``create_only``, and when its name is taken it is stored under the next counter free in her
storage (``MAX_TRIES`` names at most, then ``OutputsNotStored``, which is retried), and reported
under that name: the job's outputs, and so its record and her history, and every ``executed``
event her page hears (``renamed_executed``), name the file as stored. The runner holds each
``executed`` until the job's files are stored (her page would find nothing at ComfyUI's name, or
the other job's file), then sends it renamed, in the report or, behind more events than a report
carries, just before it. A name without the counter is a node's own fixed name, which ComfyUI
itself writes over on every run: it is stored as ever, replacing her file of that name.

A file the entry names that the job did not write is a ComfyUI cache hit replaying the owner's own
earlier output (output nodes are salted per owner: ``job_files``): it is in the owner's storage
already (or was deleted since, as it can be on ComfyUI) and is named as it is, nothing uploaded.

The graph an output embeds is the one its owner submitted, without the worker's salt (``embedded_prompt``).
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from services.protocol.jobs import OutputFile, storage_key
from services.storage import KeyTakenError, Storage, StorageError, StorageUnavailableError, holds, patiently
from services.worker.embedded_prompt import unsalt_file

CHUNK = 1024 * 1024
COUNTED = re.compile(
    r"(?P<stem>.*)_(?P<n>\d{5,})_(?P<ext>\.[^./]*)?"
)  # ComfyUI's ``{prefix}_{counter:05}_.ext``
MAX_TRIES = 8  # names tried for one output before the job's storing fails (and is retried)
Place = tuple[str, str, str]  # (type, subfolder, filename) of an output


def item_place(item: dict[str, Any]) -> Place:
    """Where a file item of ComfyUI's ``ui`` is (any type but ``temp`` is ``output``)."""
    kind = "temp" if item.get("type") == "temp" else "output"
    return kind, item.get("subfolder", ""), item.get("filename", "")


def place(ref: OutputFile) -> Place:
    """Where an output is, one key however many nodes name it."""
    return ref.type, ref.subfolder, ref.filename


def file_items(ui: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """The files a node's ``ui`` output names, as (kind, item): ``{"images": [{"filename", ...}]}``;
    text (``{"text": [...]}``, PreviewAny) and other values name none."""
    for kind, items in (ui if isinstance(ui, dict) else {}).items():
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("filename"):
                yield kind, item


def names_files(ui: Any) -> bool:
    return next(file_items(ui), None) is not None


def output_files(entry: dict[str, Any]) -> list[OutputFile]:
    """The files a history entry names, in node order; two nodes naming one file each keep it."""
    files: dict[tuple[str, str, str, str], OutputFile] = {}
    for node_id, ui in (entry.get("outputs") or {}).items():
        for kind, item in file_items(ui):
            kind_of, subfolder, filename = item_place(item)
            ref = OutputFile(
                node_id=str(node_id), kind=kind, filename=filename, subfolder=subfolder, type=kind_of
            )
            files.setdefault((ref.node_id, *place(ref)), ref)
    return list(files.values())


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A file's bytes, a megabyte at a time, read off the event loop."""
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk


def written(folder: Path, ref: OutputFile) -> Path | None:
    """Where the job wrote ``ref`` (``folder/<type>/<subfolder>/<name>``); None for a cache hit."""
    path = folder / ref.type / ref.subfolder.strip("/") / ref.filename
    return path if path.is_file() else None


def replays(folder: Path, entry: dict[str, Any]) -> bool:
    """Whether the entry names a file the job did not write (a cache hit)."""
    return any(written(folder, ref) is None for ref in output_files(entry))


async def reused_output(storage: Storage, user: str, ref: OutputFile) -> OutputFile:
    """A cache hit's output: the owner's earlier file, with its size when they still have it."""
    content_type = mimetypes.guess_type(ref.filename)[0] or "application/octet-stream"
    size = await storage.size(storage_key(user, ref))
    return ref.model_copy(update={"size": size or 0, "content_type": content_type})


async def put_file(
    storage: Storage, key: str, path: Path, content_type: str, patience: float, create_only: bool = False
) -> int:
    """Stream the file at ``path`` to ``key``; while the store does not answer (an outage), try again
    for ``patience`` seconds at most: the outputs are set aside and the next job runs meanwhile.
    A ``create_only`` put whose answer was lost may have landed: when its retry finds the name taken
    by this very file (same bytes), that is the file stored, not a name to move from."""
    unanswered = False
    async for attempt in patiently(patience):
        with attempt:
            try:
                return await storage.put(key, file_chunks(path), content_type, create_only=create_only)
            except StorageUnavailableError:
                unanswered = True
                raise
            except KeyTakenError:
                landed = await stored_already(storage, key, path) if unanswered else None
                if landed is None:
                    raise
                return landed
    raise AssertionError("unreachable: tenacity reraises the last failure")  # pragma: no cover


async def stored_already(storage: Storage, key: str, path: Path) -> int | None:
    """The size of the file at ``path`` when ``key`` holds its bytes; None when it holds another file."""
    size = (await asyncio.to_thread(path.stat)).st_size
    return size if await holds(storage, key, file_chunks(path), size) else None


async def store_output(
    folder: Path, storage: Storage, user: str, ref: OutputFile, patience: float = 0.0
) -> OutputFile:
    """Stream one output from ``folder/<type>/<subfolder>/<name>`` (where the worker set ComfyUI's
    files aside) to storage, unless it is a cache hit; return it with its size and content type,
    and the name it is stored under (a counted name taken in her storage moves to a free one).
    A store that does not answer is waited for ``patience`` seconds (``put_file``)."""
    path = written(folder, ref)
    if path is None:
        return await reused_output(storage, user, ref)
    await asyncio.to_thread(unsalt_file, path)
    content_type = mimetypes.guess_type(ref.filename)[0] or "application/octet-stream"
    counted = COUNTED.fullmatch(ref.filename)
    if counted is None:  # a node's fixed name: written over, as ComfyUI does
        size = await put_file(storage, storage_key(user, ref), path, content_type, patience)
        return ref.model_copy(update={"size": size, "content_type": content_type})
    stem, ext = counted["stem"], counted["ext"] or ""
    name, counter = ref, int(counted["n"])
    for _ in range(MAX_TRIES):
        try:
            size = await put_file(storage, storage_key(user, name), path, content_type, patience, True)
        except KeyTakenError:
            counter = await highest_counter(storage, storage_key(user, name), stem, counter) + 1
            name = ref.model_copy(update={"filename": f"{stem}_{counter:05}_{ext}"})
            continue
        return name.model_copy(update={"size": size, "content_type": content_type})
    raise StorageError(
        f"{ref.filename!r} and the next {MAX_TRIES - 1} names after it were taken in your storage by "
        "files stored at the same time: the job is retried"
    )


async def highest_counter(storage: Storage, key: str, stem: str, at_least: int) -> int:
    """The highest counter among the files named ``<stem>_<counter>_...`` in ``key``'s folder, and
    ``at_least`` (ComfyUI numbers on from the highest, whatever the extension)."""
    base = f"{key.rpartition('/')[0]}/{stem}_"
    highest = at_least
    for stored in await storage.list(base):
        found = COUNTED.fullmatch(stored.rpartition("/")[2])
        if found is not None and found["stem"] == stem:
            highest = max(highest, int(found["n"]))
    return highest


async def store_outputs(
    folder: Path, storage: Storage, user: str, entry: dict[str, Any], patience: float = 0.0
) -> list[OutputFile]:
    """Every output of the entry, each file copied once however many nodes name it; in the order of
    ``output_files``, each named as stored."""
    stored: dict[Place, OutputFile] = {}
    outputs = []
    for ref in output_files(entry):
        where = place(ref)
        if where not in stored:
            stored[where] = await store_output(folder, storage, user, ref, patience)
        outputs.append(stored[where].model_copy(update={"node_id": ref.node_id, "kind": ref.kind}))
    return outputs


def renames(entry: dict[str, Any], outputs: list[OutputFile]) -> dict[Place, str]:
    """Where ``store_outputs`` stored a file under another name than ComfyUI's: place -> stored name."""
    return {
        place(ref): out.filename
        for ref, out in zip(output_files(entry), outputs, strict=True)
        if out.filename != ref.filename
    }


def renamed_executed(data: dict[str, Any], renamed: dict[Place, str]) -> dict[str, Any]:
    """An ``executed`` event's data with each file naming the file as stored."""
    output = data.get("output")
    if not renamed or not isinstance(output, dict):
        return data
    changed = {kind: renamed_items(items, renamed) for kind, items in output.items()}
    return {**data, "output": changed}


def renamed_items(items: Any, renamed: dict[Place, str]) -> Any:
    if not isinstance(items, list):
        return items
    return [renamed_item(item, renamed) if isinstance(item, dict) else item for item in items]


def renamed_item(item: dict[str, Any], renamed: dict[Place, str]) -> dict[str, Any]:
    stored = renamed.get(item_place(item))
    return item if stored is None else {**item, "filename": stored}
