"""``POST /prompt`` refuses a bad graph at once, with ComfyUI 0.3.64's own 400 body.

The expected bodies are the real ComfyUI's answers to the same graphs (recorded with
``python main.py --cpu``; the input specs of the ComfyUI double's catalogue are the real ones), so
the frontend outlines the same inputs it would on ComfyUI.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.doubles.comfyui_nodes import catalogue
from devkit.servers import wait_until
from services.protocol.own_checks import OWN_CHECKS, with_own_checks
from tests.support.jobs import GRAPH
from tests.support.queue_manager_app import ADMIN, ADMIN_PASSWORD, login, register_worker

WIDTH_SPEC = ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}]


def graph(**changes: Any) -> dict[str, Any]:
    """GRAPH with nodes replaced (a value of None removes the node)."""
    nodes = copy.deepcopy(GRAPH)
    nodes.update(changes)
    return {node_id: node for node_id, node in nodes.items() if node is not None}


def empty_image(**inputs: Any) -> dict[str, Any]:
    values = {**GRAPH["1"]["inputs"], **inputs}
    return {"class_type": "EmptyImage", "inputs": {k: v for k, v in values.items() if v is not None}}


def submit(client: httpx.Client, prompt: Any, user: str = "alice", **extra: Any) -> httpx.Response:
    return client.post(f"/w/{user}/api/prompt", json={"prompt": prompt, "client_id": "tab", **extra})


def refusal(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 400, reply.text
    body: dict[str, Any] = reply.json()
    return body


def failed_outputs(node_errors: dict[str, Any], details: str = "") -> dict[str, Any]:
    return {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": details,
            "extra_info": {},
        },
        "node_errors": node_errors,
    }


def one_error(node_id: str, class_type: str, error: dict[str, Any], outputs: list[str]) -> dict[str, Any]:
    return {node_id: {"errors": [error], "dependent_outputs": outputs, "class_type": class_type}}


def test_a_value_out_of_range_is_refused_naming_the_input(alice: httpx.Client, worker: httpx.Client) -> None:
    below = refusal(submit(alice, graph(**{"1": empty_image(width=0)})))
    assert below == failed_outputs(
        one_error(
            "1",
            "EmptyImage",
            {
                "type": "value_smaller_than_min",
                "message": "Value 0 smaller than min of 1",
                "details": "width",
                "extra_info": {"input_name": "width", "input_config": WIDTH_SPEC, "received_value": 0},
            },
            ["3"],
        )
    )
    above = refusal(submit(alice, graph(**{"1": empty_image(width=100000)})))
    assert above["node_errors"]["1"]["errors"][0]["message"] == "Value 100000 bigger than max of 16384"


def test_values_convert_as_in_comfyui_and_a_value_that_does_not_is_refused(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    bad = refusal(submit(alice, graph(**{"1": empty_image(width="abc")})))
    error = bad["node_errors"]["1"]["errors"][0]
    assert error["type"] == "invalid_input_type"
    assert error["message"] == "Failed to convert an input value to a INT value"
    assert error["details"] == "width, abc, invalid literal for int() with base 10: 'abc'"
    accepted = submit(alice, graph(**{"1": empty_image(width="64", height=64.7)}))
    assert accepted.status_code == 200, accepted.text
    queued = alice.get(f"/api/jobs/{accepted.json()['prompt_id']}").json()
    assert queued["prompt"]["1"]["inputs"]["width"] == 64 and queued["prompt"]["1"]["inputs"]["height"] == 64


def test_a_missing_input_a_bad_link_and_a_wrong_type_are_refused(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    missing = refusal(submit(alice, graph(**{"1": empty_image(width=None)})))
    assert missing == failed_outputs(
        one_error(
            "1",
            "EmptyImage",
            {
                "type": "required_input_missing",
                "message": "Required input is missing",
                "details": "width",
                "extra_info": {"input_name": "width"},
            },
            ["3"],
        )
    )
    three = refusal(
        submit(alice, graph(**{"2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0, 1]}}}))
    )
    assert three["node_errors"]["2"]["errors"][0]["type"] == "bad_linked_input"
    video = {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8}}
    mismatch = refusal(
        submit(
            alice, graph(**{"4": video, "2": {"class_type": "ImageInvert", "inputs": {"image": ["4", 0]}}})
        )
    )
    assert mismatch["node_errors"]["2"]["errors"][0] == {
        "type": "return_type_mismatch",
        "message": "Return type mismatch between linked nodes",
        "details": "image, received_type(VIDEO) mismatch input_type(IMAGE)",
        "extra_info": {
            "input_name": "image",
            "input_config": ["IMAGE", {}],
            "received_type": "VIDEO",
            "linked_node": ["4", 0],
        },
    }


def test_a_link_to_a_missing_node_or_output_fails_as_in_comfyui(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    inner = refusal(
        submit(alice, graph(**{"2": {"class_type": "ImageInvert", "inputs": {"image": ["9", 0]}}}))
    )
    error = inner["node_errors"]["2"]["errors"][0]
    assert error["type"] == "exception_during_inner_validation" and error["details"] == "'9'"
    assert error["extra_info"]["exception_type"] == "KeyError"
    assert error["extra_info"]["input_name"] == "images" and error["extra_info"]["linked_node"] == ["2", 0]
    slot = refusal(
        submit(alice, graph(**{"2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 5]}}}))
    )
    assert slot["node_errors"]["2"]["errors"][0]["details"] == "tuple index out of range"
    on_output = refusal(
        submit(alice, graph(**{"3": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}))
    )
    assert on_output["node_errors"]["3"]["errors"][0]["type"] == "exception_during_validation"


def test_a_cycle_fails_its_outputs_without_naming_a_node(alice: httpx.Client, worker: httpx.Client) -> None:
    loop = {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}
    assert refusal(submit(alice, graph(**{"1": loop}))) == failed_outputs({})
    itself = {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}
    assert refusal(submit(alice, graph(**{"2": itself}))) == failed_outputs({})


def test_unknown_nodes_no_outputs_and_no_prompt_are_comfyuis_errors(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    no_class = refusal(submit(alice, graph(**{"9": {"inputs": {}}})))
    assert no_class["error"]["message"] == "Cannot execute because a node is missing the class_type property."
    assert no_class["error"]["details"] == "Node ID '#9'" and no_class["node_errors"] == {}
    no_outputs = {
        "type": "prompt_no_outputs",
        "message": "Prompt has no outputs",
        "details": "",
        "extra_info": {},
    }
    assert refusal(submit(alice, graph(**{"3": None})))["error"] == no_outputs
    assert refusal(submit(alice, {}))["error"] == no_outputs
    assert refusal(submit(alice, GRAPH, partial_execution_targets=[]))["error"] == no_outputs
    assert refusal(submit(alice, GRAPH, partial_execution_targets=["2"]))["error"] == no_outputs
    assert (
        refusal(alice.post("/w/alice/api/prompt", json={"client_id": "tab"}))["error"]["type"] == "no_prompt"
    )


def test_a_value_not_in_the_list_is_refused_with_the_list(alice: httpx.Client, worker: httpx.Client) -> None:
    scale = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["1", 0],
            "upscale_method": "magic",
            "width": 64,
            "height": 64,
            "crop": "disabled",
        },
    }
    error = refusal(submit(alice, graph(**{"2": scale})))["node_errors"]["2"]["errors"][0]
    assert error["type"] == "value_not_in_list"
    assert (
        error["details"]
        == "upscale_method: 'magic' not in ['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos']"
    )


def test_a_bad_output_is_left_out_and_the_others_run(alice: httpx.Client, worker: httpx.Client) -> None:
    broken = {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "y"}}
    reply = submit(alice, graph(**{"4": broken}))
    assert reply.status_code == 200, reply.text
    assert reply.json()["node_errors"]["4"]["errors"][0]["type"] == "exception_during_validation"
    queue = alice.get("/w/alice/api/queue").json()
    assert queue["queue_pending"][0][4] == ["3"]  # outputs to execute: only the good one


def upload(client: httpx.Client, user: str, name: str) -> None:
    files = {"image": (name, b"\x89PNG " + name.encode(), "image/png")}
    client.post(f"/w/{user}/api/upload/image", files=files).raise_for_status()


def load_and_save(image: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }


@pytest.mark.parametrize(
    "name", ["secret.png", "secret.png [input]", "secret.png [output]", "secret.png [temp]"]
)
def test_nobody_can_load_another_participants_file_by_its_name(
    name: str, alice: httpx.Client, bob: httpx.Client, worker: httpx.Client, tmp_path: Path
) -> None:
    upload(alice, "alice", "secret.png")
    for folder in ("output", "temp"):
        (tmp_path / "files" / "users" / "alice" / folder).mkdir(parents=True)
        (tmp_path / "files" / "users" / "alice" / folder / "secret.png").write_bytes(b"\x89PNG alice's")
    refused = refusal(submit(bob, load_and_save(name), user="bob"))
    assert refused == failed_outputs(
        one_error(
            "1",
            "LoadImage",
            {
                "type": "custom_validation_failed",
                "message": "Custom validation failed for node",
                "details": f"image - Invalid image file: {name}",
                "extra_info": {"input_name": "image"},
            },
            ["2"],
        )
    )
    mine = submit(alice, load_and_save(name))
    assert mine.status_code == 200, mine.text
    job = alice.get(f"/api/jobs/{mine.json()['prompt_id']}").json()
    kind = name.partition("[")[2].rstrip("]") or "input"
    assert job["inputs"] == [{"filename": "secret.png", "subfolder": "", "type": kind}]


def test_a_custom_nodes_own_checks_are_left_to_the_gpus_comfyui(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    """A custom node's own validation code may accept values outside its declared range or list
    (ComfyUI then skips those checks): only the GPU's ComfyUI can judge, so they pass here."""
    nodes = catalogue([])
    nodes["Fraction"] = {
        "input": {"required": {"image": ["IMAGE"], "amount": ["FLOAT", {"min": 0.0, "max": 1.0}]}},
        "output": ["IMAGE"],
        "output_node": False,
        "python_module": "custom_nodes.testing-pack",
    }
    register_worker(worker, nodes, worker_id="w2", digest="cat-custom")
    fraction = {"class_type": "Fraction", "inputs": {"image": ["1", 0], "amount": 5.0}}
    reply = submit(alice, graph(**{"2": fraction}))
    assert reply.status_code == 200, reply.text
    missing = refusal(
        submit(alice, graph(**{"2": {"class_type": "Fraction", "inputs": {"image": ["1", 0]}}}))
    )
    assert missing["node_errors"]["2"]["errors"][0]["type"] == "required_input_missing"  # always ComfyUI's


def pack_catalogue(checks: bool) -> dict[str, Any]:
    """Nodes of ComfyUI's own test pack as its /object_info has them, with what the workshop's
    extension says of their own checks when ``checks`` (the worker adds it to the catalogue)."""
    pack = "custom_nodes.testing-pack"
    nodes: dict[str, Any] = {
        "StubInt": {
            "input": {"required": {"value": ["INT", {"default": 0, "min": -4294967295, "max": 4294967295}]}},
            "output": ["INT"],
            "output_node": False,
            "python_module": pack,
        },
        "StubImage": {
            "input": {
                "required": {
                    "content": [["WHITE", "BLACK", "NOISE"]],
                    "height": ["INT", {"default": 512, "min": 1, "max": 1073741824, "step": 1}],
                    "width": ["INT", {"default": 512, "min": 1, "max": 68719476736, "step": 1}],
                    "batch_size": ["INT", {"default": 1, "min": 1, "max": 1073741824, "step": 1}],
                }
            },
            "output": ["IMAGE"],
            "output_node": False,
            "python_module": pack,
        },
        "TestCustomValidation4": {
            "input": {"required": {"input1": ["FLOAT"], "input2": ["FLOAT"]}},
            "output": ["IMAGE"],
            "output_node": False,
            "python_module": pack,
        },
        "TestCustomValidation5": {
            "input": {
                "required": {
                    "input1": ["FLOAT", {"min": 0.0, "max": 1.0}],
                    "input2": ["FLOAT", {"min": 0.0, "max": 1.0}],
                }
            },
            "output": ["IMAGE"],
            "output_node": False,
            "python_module": pack,
        },
    }
    own = {
        "TestCustomValidation4": {"inputs": ["cls", "input1", "input2"], "any": False},
        "TestCustomValidation5": {"inputs": ["cls"], "any": True},
    }
    return with_own_checks({**catalogue([]), **nodes}, own if checks else None)


SAVE = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "pack"}}


def publish_pack(
    alice: httpx.Client, worker: httpx.Client, app_factory: Callable[[], httpx.Client], checks: bool
) -> None:
    """A worker offers the pack; the admin approves it (a version that says its nodes' own checks
    for the first time changes every node: it waits for her, as any change does)."""
    register_worker(worker, pack_catalogue(checks), worker_id="w2", digest="cat-pack")
    admin = login(app_factory(), ADMIN, ADMIN_PASSWORD)
    assert admin.post("/api/admin/catalogues/cat-pack/approve").status_code in (204, 404)  # 404: live already
    wait_until(
        lambda: "TestCustomValidation4" in alice.get("/w/alice/api/object_info").json(),
        timeout=10,
        what="the pack served",
    )


def test_a_custom_node_without_its_own_check_is_checked_as_comfyui_checks_it(
    alice: httpx.Client, worker: httpx.Client, app_factory: Callable[[], httpx.Client]
) -> None:
    """With the worker saying which classes check their own inputs, every other custom node's values
    and links get ComfyUI's checks at once (the bodies are the real ComfyUI's answers), instead of a
    wait for a GPU and an execution error; the inputs a node's own check takes stay with the GPU."""
    publish_pack(alice, worker, app_factory, checks=True)
    stub = {
        "class_type": "StubImage",
        "inputs": {"content": "PURPLE", "height": 8, "width": 8, "batch_size": 1},
    }
    assert refusal(submit(alice, {"2": stub, "3": SAVE})) == failed_outputs(
        one_error(
            "2",
            "StubImage",
            {
                "type": "value_not_in_list",
                "message": "Value not in list",
                "details": "content: 'PURPLE' not in ['WHITE', 'BLACK', 'NOISE']",
                "extra_info": {
                    "input_name": "content",
                    "input_config": [["WHITE", "BLACK", "NOISE"], {}],
                    "received_value": "PURPLE",
                },
            },
            ["3"],
        )
    )
    int_link = {
        "1": {"class_type": "StubInt", "inputs": {"value": 5}},
        "2": {"class_type": "TestCustomValidation4", "inputs": {"input1": ["1", 0], "input2": 3.0}},
        "3": SAVE,
    }
    assert refusal(submit(alice, int_link)) == failed_outputs(
        one_error(
            "2",
            "TestCustomValidation4",
            {
                "type": "return_type_mismatch",
                "message": "Return type mismatch between linked nodes",
                "details": "input1, received_type(INT) mismatch input_type(FLOAT)",
                "extra_info": {
                    "input_name": "input1",
                    "input_config": ["FLOAT", {}],
                    "received_type": "INT",
                    "linked_node": ["1", 0],
                },
            },
            ["3"],
        )
    )
    kwargs = {"class_type": "TestCustomValidation5", "inputs": {"input1": 0.0, "input2": 5.0}}
    assert submit(alice, {"2": kwargs, "3": SAVE}).status_code == 200  # its **kwargs check takes every input


def test_the_published_own_checks_stay_out_of_the_catalogue_participants_get(
    alice: httpx.Client, worker: httpx.Client, app_factory: Callable[[], httpx.Client]
) -> None:
    publish_pack(alice, worker, app_factory, checks=True)
    served = alice.get("/w/alice/api/object_info").json()
    assert served["TestCustomValidation4"] == pack_catalogue(checks=False)["TestCustomValidation4"]
    assert (
        OWN_CHECKS
        not in alice.get("/w/alice/api/object_info/TestCustomValidation5").json()["TestCustomValidation5"]
    )


def test_a_catalogue_that_does_not_say_leaves_custom_nodes_checks_to_the_gpu(
    alice: httpx.Client, worker: httpx.Client, app_factory: Callable[[], httpx.Client]
) -> None:
    """A GPU's ComfyUI without the workshop's extension cannot say which custom nodes check their
    own inputs: any may, so their values and link types wait for the GPU, as before."""
    publish_pack(alice, worker, app_factory, checks=False)
    stub = {
        "class_type": "StubImage",
        "inputs": {"content": "PURPLE", "height": 8, "width": 8, "batch_size": 1},
    }
    assert submit(alice, {"2": stub, "3": SAVE}).status_code == 200
