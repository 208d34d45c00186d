"""The workshop's ComfyUI extension: which node classes check their own inputs.

ComfyUI skips some of its checks of a ``POST /prompt`` for a node class with its own
``VALIDATE_INPUTS`` (V3 nodes: ``validate_inputs``): the link type check when that function takes
``input_types``, the min/max and list checks of each input it takes (all of them when it takes
``**kwargs``). ``/object_info`` does not say which classes those are, so the workspaces, which check
every graph before it waits for a GPU, could not tell. ``GET /comfy-workshop/validators`` answers
``{class: {"inputs": [argument names], "any": takes **kwargs}}`` for every class with such a
function, found as ComfyUI's ``execution.validate_inputs`` finds it; the worker publishes it with the
node catalogue (``services.protocol.own_checks``).

The worker's own ComfyUI loads this folder through its ``extra_model_paths.yaml`` (``custom_nodes``);
a ComfyUI the worker attaches to needs it added the same way, or the workspaces leave every check
of a custom node's inputs to the GPU, as before. Importable without ComfyUI (``own_checks`` is plain
Python); the route is added only inside a running ComfyUI.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

ROUTE = (
    "/comfy-workshop/validators"  # services.protocol.own_checks.OWN_CHECKS_ROUTE (no import: runs in ComfyUI)
)
NODE_CLASS_MAPPINGS: dict[str, Any] = {}  # no node: ComfyUI loads a custom-nodes module that has this


def validate_function(node_class: type, is_v3: bool, real_override: Callable[[type, str], Any]) -> Any:
    """The class's own check, as ComfyUI 0.3.64's ``execution.validate_inputs`` looks it up."""
    if is_v3:
        return real_override(node_class, "validate_inputs")
    return getattr(node_class, "VALIDATE_INPUTS", None)


def signature(function: Any) -> dict[str, Any]:
    spec = inspect.getfullargspec(function)
    return {"inputs": list(spec.args), "any": spec.varkw is not None}


def own_checks(
    classes: Mapping[str, type],
    is_v3: Callable[[type], bool] = lambda _: False,
    real_override: Callable[[type, str], Any] = lambda cls, name: None,
) -> dict[str, dict[str, Any]]:
    """Every class with its own input check -> the inputs that check takes."""
    found = {}
    for name, node_class in classes.items():
        with contextlib.suppress(Exception):  # a pack's odd class must not take the route down
            function = validate_function(node_class, is_v3(node_class), real_override)
            if function is not None:
                found[name] = signature(function)
    return found


def _register() -> None:  # pragma: no cover - runs inside ComfyUI only
    server = importlib.import_module("server")
    nodes = importlib.import_module("nodes")
    execution = importlib.import_module("execution")
    web = importlib.import_module("aiohttp.web")
    internal = execution._ComfyNodeInternal

    async def validators(request: Any) -> Any:
        found = own_checks(
            nodes.NODE_CLASS_MAPPINGS, lambda cls: issubclass(cls, internal), execution.first_real_override
        )
        return web.json_response(found)

    server.PromptServer.instance.routes.get(ROUTE)(validators)


with contextlib.suppress(ImportError, AttributeError):
    _register()
