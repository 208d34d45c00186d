"""The worker tells the workspaces which node classes check their own inputs.

ComfyUI skips some of its prompt checks for such a class (``execution.validate_inputs``); the
workshop's extension, loaded into the worker's ComfyUI, finds them as ComfyUI does, and the worker
puts them into the catalogue it publishes. The function the extension runs is plain Python, held
here against classes written as ComfyUI's own test pack writes them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from services.protocol.own_checks import OWN_CHECKS, OWN_CHECKS_ROUTE, as_comfyui_serves, with_own_checks
from services.worker.supervisor import extra_model_paths

EXTENSION = "services.worker.comfyui_extension.comfy_workshop_checks"


class TakesItsInputs:
    @classmethod
    def VALIDATE_INPUTS(cls, input1: Any = None, input2: Any = None) -> bool:
        return True


class TakesTypes:
    @classmethod
    def VALIDATE_INPUTS(cls, input_types: Any, input1: Any = None) -> bool:
        return True


class TakesEverything:
    @classmethod
    async def VALIDATE_INPUTS(cls, **kwargs: Any) -> bool:
        return True


class ChecksNothing:
    pass


class V3Node:
    @classmethod
    def validate_inputs(cls, value: float, threshold: float) -> bool:
        return True


def test_the_classes_with_their_own_check_are_found_as_comfyui_finds_them() -> None:
    extension = importlib.import_module(EXTENSION)
    classes = {
        "TakesItsInputs": TakesItsInputs,
        "TakesTypes": TakesTypes,
        "TakesEverything": TakesEverything,
        "ChecksNothing": ChecksNothing,
        "V3Node": V3Node,
    }
    found = extension.own_checks(
        classes, lambda cls: cls is V3Node, lambda cls, name: getattr(cls, name, None)
    )
    assert found == {
        "TakesItsInputs": {"inputs": ["cls", "input1", "input2"], "any": False},
        "TakesTypes": {"inputs": ["cls", "input_types", "input1"], "any": False},
        "TakesEverything": {"inputs": ["cls"], "any": True},
        "V3Node": {"inputs": ["cls", "value", "threshold"], "any": False},
    }
    assert extension.ROUTE == OWN_CHECKS_ROUTE


def test_the_workers_comfyui_loads_the_extension(tmp_path: Path) -> None:
    config = yaml.safe_load(extra_model_paths([tmp_path / "models"]))
    folder = Path(config["comfy_workshop"]["custom_nodes"])
    assert (folder / "comfy_workshop_checks" / "__init__.py").is_file()
    assert {path.name for path in folder.iterdir() if not path.name.startswith("__")} == {
        "comfy_workshop_checks"
    }


def test_the_catalogue_carries_each_classes_own_check_and_serves_as_comfyui() -> None:
    object_info: dict[str, Any] = {"A": {"input": {}, "output": []}, "B": {"input": {}, "output": []}}
    checks = {"A": {"inputs": ["cls", "value"], "any": False}}
    published = with_own_checks(object_info, checks)
    assert published["A"][OWN_CHECKS] == checks["A"]
    assert published["B"][OWN_CHECKS] is None  # says: no check of its own
    assert {name: as_comfyui_serves(node) for name, node in published.items()} == object_info
    assert with_own_checks(object_info, None) == object_info  # a ComfyUI without the extension says nothing
