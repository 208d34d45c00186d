"""The ComfyUI double's ``POST /prompt`` validation: ComfyUI 0.3.64's ``validate_prompt``, rule by rule.

What the recordings (``tests/fixtures/comfyui/``) show and this module reproduces, quirks included:

* the first node without ``class_type`` or with an unknown one refuses the prompt (``invalid_prompt``);
* no output node (or none among ``partial_execution_targets``) is ``prompt_no_outputs``;
* each output validates its inputs depth first, once per node; errors sit on the node that has
  them, with ``input_config`` (the declared spec) and ``received_value``;
* a link to a node that does not exist raises ``KeyError`` inside the linked node's validation, so
  the error lands on the *linked* node as ``exception_during_inner_validation`` naming the input of
  the node that links to it;
* a cycle ends every node on it with no error of its own (ComfyUI hits its recursion limit): the
  prompt fails with ``node_errors`` empty;
* values are converted (``"64"`` becomes ``64``) in the prompt that is queued;
* ``LoadImage``/``LoadAudio`` check their file with their own validation (``custom_validation_failed``);
* outputs that validate are queued even when others fail (200 with those ``node_errors``); only when
  none validates is the answer 400 ``prompt_outputs_failed_validation``, whose ``details`` list the
  output nodes' own errors.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Result = tuple[bool, list[dict[str, Any]], str]
CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
# Nodes whose own VALIDATE_INPUTS checks these inputs (min/max/choices are then not checked).
CUSTOM_VALIDATION = {"LoadImage": "image", "LoadAudio": "audio"}
LONG_LIST = 20


def error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


class PromptRejected(Exception):
    """The 400 answer of ``POST /prompt``: ``body`` is exactly what ComfyUI sends."""

    def __init__(self, err: dict[str, Any], node_errors: dict[str, Any] | None = None) -> None:
        super().__init__(err["message"])
        self.body = {"error": err, "node_errors": node_errors or {}}


def full_type_name(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def types_match(received: Any, wanted: Any) -> bool:
    """ComfyUI's ``validate_node_input``: equal, ``*`` on either side, or a common ``A,B`` member."""
    if received == wanted or "*" in (received, wanted):
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    return bool(set(received.split(",")) & set(wanted.split(",")))


@dataclass
class Validator:
    prompt: dict[str, Any]
    known: dict[str, dict[str, Any]]
    file_exists: Callable[[str], bool]
    validated: dict[str, Result] = field(default_factory=dict)
    stack: list[str] = field(default_factory=list)

    def node(self, nid: str) -> Result:
        if nid in self.validated:
            return self.validated[nid]
        if nid in self.stack:
            raise RecursionError("maximum recursion depth exceeded")
        self.stack.append(nid)
        try:
            errors, valid = self._inputs(nid)
        finally:
            self.stack.pop()
        result = (not errors and valid, errors, nid)
        self.validated[nid] = result
        return result

    def _inputs(self, nid: str) -> tuple[list[dict[str, Any]], bool]:
        class_type = self.prompt[nid]["class_type"]
        spec = self.known[class_type]["input"]
        required, optional = spec.get("required", {}), spec.get("optional", {})
        inputs = self.prompt[nid].setdefault("inputs", {})
        errors: list[dict[str, Any]] = []
        valid = True
        for name, declared in {**required, **optional}.items():
            info = [declared[0], declared[1] if len(declared) > 1 else {}]
            if name not in inputs:
                if name in required:
                    errors.append(
                        error("required_input_missing", "Required input is missing", name, input_name=name)
                    )
            elif isinstance(inputs[name], list):
                valid = self._link(name, inputs[name], info, errors) and valid
            elif CUSTOM_VALIDATION.get(class_type) != name:
                errors.extend(self._value(inputs, name, info))
        custom = CUSTOM_VALIDATION.get(class_type)
        if custom is not None and custom in inputs and not self.file_exists(str(inputs[custom])):
            details = f"{custom} - Invalid {'image' if custom == 'image' else custom} file: {inputs[custom]}"
            errors.append(
                error(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    details,
                    input_name=custom,
                )
            )
        return errors, valid

    def _link(self, name: str, link: list[Any], info: list[Any], errors: list[dict[str, Any]]) -> bool:
        if len(link) != 2:
            errors.append(
                error(
                    "bad_linked_input",
                    "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    name,
                    input_name=name,
                    input_config=info,
                    received_value=link,
                )
            )
            return True
        source = self.prompt[link[0]]  # a missing node raises KeyError, as in ComfyUI
        received = self.known[source["class_type"]]["output"][link[1]]
        if not types_match(received, info[0]):
            details = f"{name}, received_type({received}) mismatch input_type({info[0]})"
            errors.append(
                error(
                    "return_type_mismatch",
                    "Return type mismatch between linked nodes",
                    details,
                    input_name=name,
                    input_config=info,
                    received_type=received,
                    linked_node=link,
                )
            )
            return True
        try:
            return self.node(str(link[0]))[0]
        except Exception as exc:
            kind, _, tb = sys.exc_info()
            assert kind is not None
            reason = error(
                "exception_during_inner_validation",
                "Exception when validating inner node",
                str(exc),
                input_name=name,
                input_config=info,
                exception_message=str(exc),
                exception_type=full_type_name(kind),
                traceback=traceback.format_tb(tb),
                linked_node=link,
            )
            self.validated[str(link[0])] = (False, [reason], str(link[0]))
            return False

    def _value(self, inputs: dict[str, Any], name: str, info: list[Any]) -> list[dict[str, Any]]:
        kind, extra, value = info[0], info[1], inputs[name]
        if isinstance(value, dict) and "__value__" in value:
            value = inputs[name] = value["__value__"]
        if isinstance(kind, str) and kind in CONVERT:
            try:
                value = inputs[name] = CONVERT[kind](value)
            except (TypeError, ValueError) as exc:
                return [
                    error(
                        "invalid_input_type",
                        f"Failed to convert an input value to a {kind} value",
                        f"{name}, {value}, {exc}",
                        input_name=name,
                        input_config=info,
                        received_value=value,
                        exception_message=str(exc),
                    )
                ]
        if "min" in extra and value < extra["min"]:
            return [
                error(
                    "value_smaller_than_min",
                    f"Value {value} smaller than min of {extra['min']}",
                    name,
                    input_name=name,
                    input_config=info,
                    received_value=value,
                )
            ]
        if "max" in extra and value > extra["max"]:
            return [
                error(
                    "value_bigger_than_max",
                    f"Value {value} bigger than max of {extra['max']}",
                    name,
                    input_name=name,
                    input_config=info,
                    received_value=value,
                )
            ]
        if isinstance(kind, list) and value not in kind:
            long = len(kind) > LONG_LIST
            listed = f"(list of length {len(kind)})" if long else str(kind)
            return [
                error(
                    "value_not_in_list",
                    "Value not in list",
                    f"{name}: '{value}' not in {listed}",
                    input_name=name,
                    input_config=None if long else info,
                    received_value=value,
                )
            ]
        return []


def output_nodes(
    prompt: dict[str, Any], known: dict[str, dict[str, Any]], targets: list[str] | None
) -> list[str]:
    """The output nodes to run: all of them, or only the ``targets`` among them."""
    return [
        nid
        for nid, node in prompt.items()
        if known[node["class_type"]].get("output_node") and (targets is None or nid in targets)
    ]


def check_classes(prompt: Any, known: dict[str, dict[str, Any]]) -> None:
    if not isinstance(prompt, dict):
        raise PromptRejected(error("invalid_prompt", "Invalid prompt: the prompt must be an object"))
    for nid, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            message = "Cannot execute because a node is missing the class_type property."
            raise PromptRejected(error("invalid_prompt", message, f"Node ID '#{nid}'"))
        if node["class_type"] not in known:
            message = f"Cannot execute because node {node['class_type']} does not exist."
            raise PromptRejected(error("invalid_prompt", message, f"Node ID '#{nid}'"))


def validate(
    prompt: Any,
    known: dict[str, dict[str, Any]],
    file_exists: Callable[[str], bool],
    targets: list[str] | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """The output ids to run and the ``node_errors`` of the others, or ``PromptRejected``."""
    check_classes(prompt, known)
    outputs = output_nodes(prompt, known, targets)
    if not outputs:
        raise PromptRejected(error("prompt_no_outputs", "Prompt has no outputs"))
    validator = Validator(prompt, known, file_exists)
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for output in outputs:
        valid, reasons = _output(validator, output)
        if valid:
            good.append(output)
            continue
        failed.append((output, reasons))
        for nid, (ok, errors, _) in validator.validated.items():
            if not ok and errors:
                entry = node_errors.setdefault(
                    nid, {"errors": errors, "dependent_outputs": [], "class_type": prompt[nid]["class_type"]}
                )
                entry["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons)
        raise PromptRejected(
            error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
            node_errors,
        )
    return good, node_errors


def _output(validator: Validator, output: str) -> tuple[bool, list[dict[str, Any]]]:
    try:
        valid, reasons, _ = validator.node(output)
        return valid, reasons
    except Exception as exc:
        kind, _, tb = sys.exc_info()
        assert kind is not None
        reasons = [
            error(
                "exception_during_validation",
                "Exception when validating node",
                str(exc),
                exception_type=full_type_name(kind),
                traceback=traceback.format_tb(tb),
            )
        ]
        validator.validated[output] = (False, reasons, output)
        return False, reasons
