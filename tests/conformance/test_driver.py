"""The comparison cannot hide a difference: what normalising removes is only what differs by nature
(ids, times, progress step values), and every other changed field is named."""

from __future__ import annotations

import copy

from tests.conformance.driver import Ids, collapse_progress, differences
from tests.conformance.fixtures import fixture_paths, load

ID_A, ID_B = "0b9e7e56-8c0c-4a53-9d7e-0d9a1c7e5f01", "7f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b"


def test_ids_and_numbers_become_placeholders_in_order_and_go_back_into_requests() -> None:
    ids = Ids()
    answer = ids.normalise(
        {"prompt_id": ID_B, "number": 7, "history": {ID_A: {"prompt": [8, ID_A, {}, {}, ["3", "1"]]}}}
    )
    assert answer == {
        "prompt_id": "{prompt:1}",
        "number": "{number:0}",
        "history": {"{prompt:2}": {"prompt": ["{number:1}", "{prompt:2}", {}, {}, ["1", "3"]]}},
    }
    assert ids.real('{"delete": ["{prompt:2}"]}') == f'{{"delete": ["{ID_A}"]}}'


def test_a_run_of_progress_keeps_each_shape_once_and_every_other_frame() -> None:
    def progress(value: float) -> dict[str, object]:
        return {"type": "progress", "data": {"value": value, "max": 30.0, "node": "2"}}

    status = {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}}}
    done = {"type": "executing", "data": {"node": None}}
    frames = collapse_progress([progress(0.1), status, progress(0.2), progress(0.3), done])
    assert frames == [{**progress(0.1), "data": {**progress(0.1)["data"], "value": "{value}"}}, status, done]


def test_every_changed_answer_field_and_frame_is_named() -> None:
    recorded = load(next(path for path in fixture_paths() if path.stem == "success"))
    replayed = copy.deepcopy(recorded)
    assert differences(recorded, replayed) == []
    replayed["steps"][1]["answer"]["body"]["node_errors"] = {"1": {}}
    replayed["sockets"]["a"].pop(-2)
    found = differences(recorded, replayed)
    assert any("step 1 POST /prompt.body.node_errors.1: not in the recording" in line for line in found)
    assert any(line.startswith("socket a: recorded [") for line in found)


def test_a_step_compares_only_the_fields_it_names() -> None:
    recorded = load(next(path for path in fixture_paths() if path.stem == "success"))
    replayed = copy.deepcopy(recorded)
    view = next(i for i, step in enumerate(recorded["steps"]) if step.get("compare"))
    replayed["steps"][view]["answer"]["body"] = {"size": 1, "sha256": "other pixels"}
    assert differences(recorded, replayed) == []
    replayed["steps"][view]["answer"]["status"] = 404
    assert differences(recorded, replayed) != []
