"""ComfyUI's own checks of a ``POST /prompt``, run on the workers' catalogue before the job is queued.

ComfyUI (0.3.64) refuses a bad graph at once with 400 and ``node_errors``, and the frontend outlines
the inputs named there. The same rules, from each node's ``/object_info`` input specs:

- every node has a ``class_type`` the GPUs have (``invalid_prompt``); the output nodes that run are
  those with ``output_node``, or only those listed in ``partial_execution_targets`` (an empty list
  runs nothing: ``prompt_no_outputs``);
- from each output node back through its links: required inputs present
  (``required_input_missing``), links are ``[node_id, slot]`` (``bad_linked_input``) to a node and
  output that exist (else ComfyUI's ``KeyError``/``IndexError`` as ``exception_during_validation``
  on the output, ``exception_during_inner_validation`` on an inner node), of a matching type
  (``return_type_mismatch``); widget values convert to INT/FLOAT/STRING/BOOLEAN
  (``invalid_input_type``), lie within ``min``/``max`` (``value_smaller_than_min``,
  ``value_bigger_than_max``) and in a list input's values (``value_not_in_list``);
- a link cycle fails its outputs with no node named, as in ComfyUI;
- a file input (``LoadImage.image`` and every input with an upload flag) must name one of the
  participant's own files, ``name [output]``/``[temp]``/``[input]`` included; anything else is
  refused exactly as ComfyUI refuses a missing file (``custom_validation_failed``), so nobody can
  load another participant's file by its name.

An output whose graph fails is left out; the prompt is refused only when no output is left, and an
accepted prompt answers the other outputs' errors in ``node_errors`` as ComfyUI does.

What only the GPU's ComfyUI can judge is left to it: a node's own validation code
(``VALIDATE_INPUTS``). As in ComfyUI, it takes over the link type check when it takes
``input_types``, and the range and list checks of the inputs it takes; which those are, the worker
publishes with the catalogue (``OwnCheck``). Its verdict comes from the GPU: that refusal reaches
the participant as an ``execution_error`` carrying ComfyUI's ``node_errors``, and is never retried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.protocol.comfyui import problem
from services.protocol.own_checks import OWN_CHECKS
from services.queue_manager.catalogues import spec_options, upload_kind

FILE_MESSAGES = {"video_upload": "Invalid video file", "audio_upload": "Invalid audio file"}
CONVERSIONS: dict[str, Callable[[Any], Any]] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
LONG_LIST = 20  # ComfyUI leaves a longer list of values out of its answer


@dataclass
class PromptProblem(Exception):
    """A refusal as ComfyUI answers it: ``error`` fields and ``node_errors``."""

    kind: str
    message: str
    details: str = ""
    node_errors: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    """An accepted prompt: the outputs that run, and the errors of those left out."""

    outputs: list[str]
    node_errors: dict[str, Any]


@dataclass(frozen=True)
class OwnCheck:
    """What a node class's own ``VALIDATE_INPUTS`` takes over from ComfyUI's checks: the link type
    check (``types``: it takes ``input_types``) and the min/max and list checks of ``inputs`` (of
    every input with ``every``: it takes ``**kwargs``)."""

    inputs: frozenset[str] = frozenset()
    every: bool = False
    types: bool = False

    def takes(self, name: str) -> bool:
        return self.every or name in self.inputs


NO_OWN_CHECK = OwnCheck()
UNKNOWN_CUSTOM_CHECK = OwnCheck(every=True, types=True)


def own_check(info: dict[str, Any]) -> OwnCheck:
    """The class's own check as its worker published it (``services.protocol.own_checks``). A
    catalogue that does not say (a GPU's ComfyUI without the workshop's extension) leaves every check
    of a custom node's inputs to the GPU, as any of them may have its own."""
    if OWN_CHECKS not in info:
        custom = str(info.get("python_module", "")).startswith("custom_nodes")
        return UNKNOWN_CUSTOM_CHECK if custom else NO_OWN_CHECK
    said = info[OWN_CHECKS]
    if not isinstance(said, dict):
        return NO_OWN_CHECK
    inputs = frozenset(str(name) for name in said.get("inputs") or [] if isinstance(name, str))
    return OwnCheck(inputs, said.get("any") is True, "input_types" in inputs)


class CycleError(Exception):
    """Reached a node again while checking its own inputs."""


def _invalid(message: str, node_id: str) -> PromptProblem:
    return PromptProblem("invalid_prompt", message, f"Node ID '#{node_id}'")


def output_nodes(prompt: dict[str, Any], nodes: dict[str, Any], targets: list[str] | None) -> list[str]:
    """The outputs that run, after checking every node names a class the GPUs have."""
    outputs = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise _invalid("Cannot execute because a node is missing the class_type property.", node_id)
        class_type = node["class_type"]
        if not isinstance(class_type, str) or class_type not in nodes:
            raise _invalid(f"Cannot execute because node {class_type} does not exist.", node_id)
        if nodes[class_type].get("output_node") is True and (targets is None or node_id in targets):
            outputs.append(node_id)
    if not outputs:
        raise PromptProblem("prompt_no_outputs", "Prompt has no outputs")
    return outputs


def input_specs(info: dict[str, Any]) -> dict[str, tuple[Any, str, dict[str, Any]]]:
    """Each required and optional input: ``(type, "required"|"optional", options)``."""
    specs: dict[str, tuple[Any, str, dict[str, Any]]] = {}
    for category in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(category) or {}).items():
            if name in specs:
                continue
            kind = spec[0] if isinstance(spec, list) and spec else spec
            specs[name] = (kind, category, spec_options(spec))
    return specs


def types_match(received: Any, wanted: Any) -> bool:
    """ComfyUI's link type rule ("A,B" lists overlap); ``*`` (any type) matches everything."""
    if received == wanted or "*" in (received, wanted):
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in wanted.split(",")})


def _error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return problem(kind, message, details, extra)


class Checker:
    """One prompt's checks; ``owns(value)`` says whether a file input's value (``name [output]``
    and the like) names one of the participant's own files."""

    def __init__(self, prompt: dict[str, Any], nodes: dict[str, Any], owns: Callable[[str], bool]) -> None:
        self.prompt, self.nodes, self.owns = prompt, nodes, owns
        self.results: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        self._open: set[str] = set()

    def node(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        """``(valid, errors)`` of one node and everything it links to (raises on a broken link)."""
        if node_id in self.results:
            return self.results[node_id]
        if node_id in self._open:
            raise CycleError(node_id)
        self._open.add(node_id)
        try:
            result = self._check(node_id)
        finally:
            self._open.discard(node_id)
        self.results[node_id] = result
        return result

    def _check(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        node = self.prompt[node_id]
        inputs = node["inputs"]
        info = self.nodes[node["class_type"]]
        own = own_check(info)
        errors: list[dict[str, Any]] = []
        valid = True
        for name, (kind, category, options) in input_specs(info).items():
            config = [kind, options]
            if name not in inputs:
                if category == "required":
                    errors.append(
                        _error("required_input_missing", "Required input is missing", name, input_name=name)
                    )
                continue
            if isinstance(inputs[name], list):
                linked, link_errors = self._link(name, inputs[name], kind, config, own.types)
                errors += link_errors
                valid = valid and linked
            else:
                errors += self._value(
                    inputs, name, kind, options, own.takes(name) or upload_kind(options) is not None
                )
        errors += self._files(inputs, info)
        return (valid and not errors), errors

    def _link(
        self, name: str, link: list[Any], kind: Any, config: list[Any], own_types: bool
    ) -> tuple[bool, list[dict[str, Any]]]:
        if len(link) != 2:
            message = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
            return True, [
                _error(
                    "bad_linked_input",
                    message,
                    name,
                    input_name=name,
                    input_config=config,
                    received_value=link,
                )
            ]
        source = link[0]
        received = tuple(self.nodes[self.prompt[source]["class_type"]].get("output", []))[link[1]]
        if not own_types and not types_match(received, kind):
            details = f"{name}, received_type({received}) mismatch input_type({kind})"
            return True, [
                _error(
                    "return_type_mismatch",
                    "Return type mismatch between linked nodes",
                    details,
                    input_name=name,
                    input_config=config,
                    received_type=received,
                    linked_node=link,
                )
            ]
        try:
            return self.node(source)[0], []
        except CycleError:
            return False, []
        except Exception as exc:
            self.results[source] = (False, [_inner_exception(exc, name, config, link)])
            return False, []

    def _value(
        self, inputs: dict[str, Any], name: str, kind: Any, options: dict[str, Any], own_check: bool
    ) -> list[dict[str, Any]]:
        """Convert a widget value as ComfyUI does (kept in the prompt), then check range and list."""
        value = inputs[name]
        if isinstance(value, dict) and "__value__" in value:
            value = inputs[name] = value["__value__"]
        convert = CONVERSIONS.get(kind) if isinstance(kind, str) else None
        if convert is not None:
            try:
                value = inputs[name] = convert(value)
            except Exception as exc:
                return [
                    _error(
                        "invalid_input_type",
                        f"Failed to convert an input value to a {kind} value",
                        f"{name}, {value}, {exc}",
                        input_name=name,
                        input_config=[kind, options],
                        received_value=value,
                        exception_message=str(exc),
                    )
                ]
        return [] if own_check else _range_and_list(name, value, kind, options)

    def _files(self, inputs: dict[str, Any], info: dict[str, Any]) -> list[dict[str, Any]]:
        """The participant's own files only: what LoadImage's own check says of a missing file."""
        errors = []
        for name, (_, _, options) in input_specs(info).items():
            flag = upload_kind(options)
            value = inputs.get(name)
            if flag is None or name not in inputs or isinstance(value, list) or self.owns(str(value)):
                continue
            message = FILE_MESSAGES.get(flag, "Invalid image file")
            errors.append(
                _error(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    f"{name} - {message}: {value}",
                    input_name=name,
                )
            )
        return errors


def _range_and_list(name: str, value: Any, kind: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    config: list[Any] | None = [kind, options]
    if "min" in options and value < options["min"]:
        message = f"Value {value} smaller than min of {options['min']}"
        return [
            _error(
                "value_smaller_than_min",
                message,
                name,
                input_name=name,
                input_config=config,
                received_value=value,
            )
        ]
    if "max" in options and value > options["max"]:
        message = f"Value {value} bigger than max of {options['max']}"
        return [
            _error(
                "value_bigger_than_max",
                message,
                name,
                input_name=name,
                input_config=config,
                received_value=value,
            )
        ]
    if isinstance(kind, list) and value not in kind:
        listed = f"(list of length {len(kind)})" if len(kind) > LONG_LIST else str(kind)
        config = None if len(kind) > LONG_LIST else config
        details = f"{name}: '{value}' not in {listed}"
        return [
            _error(
                "value_not_in_list",
                "Value not in list",
                details,
                input_name=name,
                input_config=config,
                received_value=value,
            )
        ]
    return []


def _inner_exception(exc: Exception, name: str, config: list[Any], link: list[Any]) -> dict[str, Any]:
    return _error(
        "exception_during_inner_validation",
        "Exception when validating inner node",
        str(exc),
        input_name=name,
        input_config=config,
        exception_message=str(exc),
        exception_type=_type_name(exc),
        traceback=[],
        linked_node=link,
    )


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _check_output(checker: Checker, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
    try:
        return checker.node(node_id)
    except CycleError:
        return False, []
    except Exception as exc:
        reasons = [
            _error(
                "exception_during_validation",
                "Exception when validating node",
                str(exc),
                exception_type=_type_name(exc),
                traceback=[],
            )
        ]
        checker.results[node_id] = (False, reasons)
        return False, reasons


def validate(
    prompt: dict[str, Any],
    nodes: dict[str, Any],
    owns: Callable[[str], bool],
    targets: list[str] | None = None,
) -> Verdict:
    """Check ``prompt`` (its widget values converted in place, as ComfyUI queues them) or raise
    ``PromptProblem`` with ComfyUI's answer."""
    checker = Checker(prompt, nodes, owns)
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for output in output_nodes(prompt, nodes, targets):
        valid, reasons = _check_output(checker, output)
        if valid:
            good.append(output)
            continue
        failed.append((output, reasons))
        for node_id, (ok, errors) in checker.results.items():
            if not ok and errors:
                entry = node_errors.setdefault(
                    node_id,
                    {"errors": errors, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]},
                )
                entry["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errors in failed for e in errors)
        raise PromptProblem(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details, node_errors
        )
    return Verdict(good, node_errors)
