"""Checking a workspace's ``POST /prompt`` against the catalogue before it is queued.

The queue manager cannot run ComfyUI's full validation (no models, no node code), but the two
mistakes a participant can fix before waiting for a GPU are caught here, with ComfyUI's own error
types so the frontend highlights the right nodes: a node the GPUs do not have (``invalid_prompt``)
and a graph without any output node (``prompt_no_outputs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.protocol.jobs import FileRef, split_annotation, validate_api_workflow
from services.queue_manager.workspaces.comfy_format import node_error


@dataclass
class PromptProblem(Exception):
    kind: str
    message: str
    node_errors: dict[str, Any] = field(default_factory=dict)


def check_against(prompt: Any, nodes: dict[str, Any]) -> None:
    """Raise ``PromptProblem`` when the graph is no API-format graph or cannot run on these nodes."""
    try:
        graph = validate_api_workflow(prompt)
    except ValueError as exc:
        raise PromptProblem("invalid_prompt", str(exc)) from None
    if not nodes:
        return  # no worker has published a catalogue yet: let the worker's ComfyUI judge
    unknown = {nid: n.class_type for nid, n in graph.items() if n.class_type not in nodes}
    if unknown:
        names = ", ".join(sorted(set(unknown.values())))
        errors = {
            nid: node_error(cls, "invalid_prompt", f"node type {cls!r} is not installed on the GPU workers")
            for nid, cls in unknown.items()
        }
        raise PromptProblem(
            "invalid_prompt", f"Cannot execute because a node type is missing: {names}", errors
        )
    if not any(nodes[n.class_type].get("output_node") for n in graph.values()):
        raise PromptProblem("prompt_no_outputs", "Prompt has no outputs: add a Save Image or Preview node")


def referenced_inputs(prompt: dict[str, Any], available: set[str]) -> list[FileRef]:
    """The participant's uploaded files the graph names (``LoadImage.image`` and the like)."""
    refs: dict[tuple[str, str], FileRef] = {}
    for node in prompt.values():
        for value in node.get("inputs", {}).values():
            if not isinstance(value, str):
                continue
            name, kind = split_annotation(value)
            if name in available and kind == "input":
                subfolder, _, filename = name.rpartition("/")
                refs[(subfolder, filename)] = FileRef(filename=filename, subfolder=subfolder, type="input")
    return list(refs.values())
