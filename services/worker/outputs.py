"""Every output a finished job has, of any kind, streamed to user-file storage from where the worker
set ComfyUI's output and temp files aside when the job ended (``job_files``).

ComfyUI's history names outputs per node under keys such as ``images``, ``gifs``, ``videos`` or
``audio`` (and sometimes non-file lists like ``animated: [true]``): any list of objects with a
``filename`` is a file. Each is stored as ``storage_key(owner, OutputFile)``, keeping ComfyUI's own
name, so the owner's workspace finds it where ComfyUI's ``/view`` would.

A file the entry names that the job did not write is a ComfyUI cache hit replaying the owner's own
earlier output (output nodes are salted per owner: ``job_files``): it is in the owner's storage
already (or was deleted since, as it can be on ComfyUI) and is named as it is, nothing uploaded.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.protocol.jobs import OutputFile, storage_key
from services.storage import Storage

CHUNK = 1024 * 1024


def output_files(entry: dict[str, Any]) -> list[OutputFile]:
    """The files a history entry names, in node order; two nodes naming one file each keep it."""
    files: dict[tuple[str, str, str, str], OutputFile] = {}
    for node_id, ui in (entry.get("outputs") or {}).items():
        for kind, items in (ui or {}).items():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and item.get("filename"):
                    ref = OutputFile(
                        node_id=str(node_id),
                        kind=kind,
                        filename=item["filename"],
                        subfolder=item.get("subfolder", ""),
                        type="temp" if item.get("type") == "temp" else "output",
                    )
                    files.setdefault((ref.node_id, ref.type, ref.subfolder, ref.filename), ref)
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


async def store_output(folder: Path, storage: Storage, user: str, ref: OutputFile) -> OutputFile:
    """Stream one output from ``folder/<type>/<subfolder>/<name>`` (where the worker set ComfyUI's
    files aside) to storage, unless it is a cache hit; return it with its size and content type."""
    path = written(folder, ref)
    if path is None:
        return await reused_output(storage, user, ref)
    content_type = mimetypes.guess_type(ref.filename)[0] or "application/octet-stream"
    size = await storage.put(storage_key(user, ref), file_chunks(path), content_type)
    return ref.model_copy(update={"size": size, "content_type": content_type})


async def store_outputs(folder: Path, storage: Storage, user: str, entry: dict[str, Any]) -> list[OutputFile]:
    """Every output of the entry, each file copied once however many nodes name it."""
    stored: dict[tuple[str, str, str], OutputFile] = {}
    outputs = []
    for ref in output_files(entry):
        place = (ref.type, ref.subfolder, ref.filename)
        if place not in stored:
            stored[place] = await store_output(folder, storage, user, ref)
        outputs.append(stored[place].model_copy(update={"node_id": ref.node_id, "kind": ref.kind}))
    return outputs
