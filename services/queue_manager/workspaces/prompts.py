"""The files a workspace prompt names, and the checks it passes before it is queued.

``check`` runs ComfyUI's own validation (``validation``) on the workers' catalogue, with the
participant's own files as the only files a file input may name; ``staged_files`` lists the files
the GPU worker must bring along for the job (the participant's uploads the graph names, and their
outputs named as ``name [output]`` or ``name [temp]``).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from services.protocol.jobs import UI_FORMAT_HINT, FileRef, split_annotation
from services.queue_manager.catalogues import spec_options, upload_kind
from services.queue_manager.workspaces.files import UserFiles
from services.queue_manager.workspaces.validation import PromptProblem, Verdict, validate


def file_values(prompt: dict[str, Any], nodes: dict[str, Any]) -> set[str]:
    """The values of every file input (upload flag) in the graph that are names, not links."""
    values = set()
    for node in prompt.values():
        node = node if isinstance(node, dict) else {}
        class_type, inputs = node.get("class_type"), node.get("inputs")
        info = nodes.get(class_type) if isinstance(class_type, str) else None
        if not isinstance(info, dict) or not isinstance(inputs, dict):
            continue
        for category in ("required", "optional"):
            for name, spec in (info.get("input", {}).get(category) or {}).items():
                if upload_kind(spec_options(spec)) and isinstance(inputs.get(name), str):
                    values.add(inputs[name])
    return values


def file_ref(value: str) -> FileRef | None:
    """The participant's file a file input's value names, or None when it names no valid file."""
    name, kind = split_annotation(value)
    subfolder, _, filename = name.rpartition("/")
    try:
        return FileRef(filename=filename, subfolder=subfolder, type=kind)
    except ValidationError:
        return None


async def owned_files(files: UserFiles, values: set[str], uploads: set[str]) -> dict[str, FileRef]:
    """Which of ``values`` name one of the participant's own files (``uploads``: their inputs)."""
    owned = {}
    for value in values:
        ref = file_ref(value)
        if ref is None:
            continue
        name = f"{ref.subfolder}/{ref.filename}" if ref.subfolder else ref.filename
        if (name in uploads) if ref.type == "input" else await files.exists(ref):
            owned[value] = ref
    return owned


def check_shape(prompt: Any) -> dict[str, Any]:
    if not isinstance(prompt, dict):
        raise PromptProblem("invalid_prompt", "the prompt must be a JSON object of node id -> node")
    if "nodes" in prompt and "links" in prompt:
        raise PromptProblem("invalid_prompt", UI_FORMAT_HINT)
    return prompt


def targets_of(body: dict[str, Any]) -> list[Any] | None:
    """``partial_execution_targets`` ("Run selected nodes"): None (all outputs) or a list of node ids."""
    targets = body.get("partial_execution_targets")
    if targets is None or isinstance(targets, list):
        return targets
    raise PromptProblem("invalid_prompt", "partial_execution_targets must be a list of output node ids")


async def check(
    body: dict[str, Any], nodes: dict[str, Any], files: UserFiles
) -> tuple[Verdict | None, list[FileRef]]:
    """ComfyUI's checks of ``body["prompt"]`` (converted in place); raises ``PromptProblem``.

    Returns the verdict (None while no worker has published a catalogue: the GPU's ComfyUI judges)
    and the files the job takes along.
    """
    prompt = check_shape(body["prompt"])
    targets = targets_of(body)
    uploads = set(await files.inputs())
    owned = await owned_files(files, file_values(prompt, nodes), uploads) if nodes else {}
    verdict = validate(prompt, nodes, owned.__contains__, targets) if nodes else None
    staged = {
        (r.type, r.subfolder, r.filename): r for r in [*referenced_inputs(prompt, uploads), *owned.values()]
    }
    return verdict, list(staged.values())


def referenced_inputs(prompt: dict[str, Any], available: set[str]) -> list[FileRef]:
    """The participant's uploaded files the graph names (``LoadImage.image`` and the like)."""
    refs: dict[tuple[str, str], FileRef] = {}
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        for value in inputs.values() if isinstance(inputs, dict) else ():
            if not isinstance(value, str):
                continue
            name, kind = split_annotation(value)
            if name in available and kind == "input":
                subfolder, _, filename = name.rpartition("/")
                refs[(subfolder, filename)] = FileRef(filename=filename, subfolder=subfolder, type="input")
    return list(refs.values())
