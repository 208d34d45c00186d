"""Which node classes check their own inputs: how a worker tells the workspaces, in its catalogue.

ComfyUI leaves some of its ``POST /prompt`` checks to a node class's own ``VALIDATE_INPUTS``
(``validate_inputs`` for V3 nodes): the link type check when that function takes ``input_types``,
and the min/max and list checks of every input it takes (all, with ``**kwargs``). The workspaces
check each graph as ComfyUI would before it waits for a GPU, so they need to know those classes;
``/object_info`` does not say. The worker asks its ComfyUI (the workshop's extension,
``services/worker/comfyui_extension``, serves ``OWN_CHECKS_ROUTE``) and puts the answer in each class
of the catalogue it publishes under ``OWN_CHECKS``: ``{"inputs": [...], "any": bool}``, or null for a
class without such a function. A catalogue without the key (a ComfyUI without the extension) says
nothing: the workspaces then leave every check of a custom node's inputs to the GPU. The key is the
workshop's, not ComfyUI's: the workspaces' ``/object_info`` leaves it out.
"""

from __future__ import annotations

from typing import Any

OWN_CHECKS = "workshop_own_checks"
OWN_CHECKS_ROUTE = "/comfy-workshop/validators"


def with_own_checks(object_info: dict[str, Any], checks: dict[str, Any] | None) -> dict[str, Any]:
    """``object_info`` with each class's own check (null: none) under ``OWN_CHECKS``; as it is when
    the ComfyUI could not say (``checks`` None)."""
    if checks is None:
        return object_info
    return {
        name: {**node, OWN_CHECKS: checks.get(name)} if isinstance(node, dict) else node
        for name, node in object_info.items()
    }


def as_comfyui_serves(node: Any) -> Any:
    """A catalogue class as ComfyUI's ``/object_info`` has it: without the workshop's key."""
    if isinstance(node, dict) and OWN_CHECKS in node:
        return {key: value for key, value in node.items() if key != OWN_CHECKS}
    return node
