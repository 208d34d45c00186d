"""Queue, queue panel, history and cancel through the workspace API, on the real queue."""

from __future__ import annotations

from typing import Any

import httpx

from services.protocol.jobs import OutputFile
from tests.support.jobs import GRAPH
from tests.support.queue_manager_app import WORKER_AUTH, run_on_worker

JSON = {"Content-Type": "application/json"}  # as the frontend labels every queue edit


def queue_prompt(client: httpx.Client, user: str, prompt: dict[str, Any] | None = None) -> httpx.Response:
    body = {
        "prompt": prompt or GRAPH,
        "client_id": "tab-1",
        "extra_data": {"extra_pnginfo": {"workflow": {}}},
    }
    return client.post(f"/w/{user}/api/prompt", json=body)


def test_queue_prompt_puts_the_job_on_the_shared_queue(alice: httpx.Client, worker: httpx.Client) -> None:
    reply = queue_prompt(alice, "alice")
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["node_errors"] == {} and answer["number"] == 1
    mine = alice.get(f"/api/jobs/{answer['prompt_id']}").json()
    assert mine["user"] == "alice" and mine["client_id"] == "tab-1" and mine["state"] == "queued"


def test_the_queue_panel_shows_your_jobs_with_their_place_and_nobody_elses(
    alice: httpx.Client, bob: httpx.Client, worker: httpx.Client
) -> None:
    first = queue_prompt(alice, "alice").json()["prompt_id"]
    second = queue_prompt(bob, "bob").json()["prompt_id"]
    alice_queue = alice.get("/w/alice/api/queue").json()
    bob_queue = bob.get("/w/bob/api/queue").json()
    assert [item[1] for item in alice_queue["queue_pending"]] == [first]
    assert [item[1] for item in bob_queue["queue_pending"]] == [second]
    assert bob.get("/w/bob/api/workshop/places").json() == {
        "running": [],
        "waiting": [{"prompt_id": second, "place": 2}],  # second in the shared line
    }
    assert alice.get("/w/alice/api/prompt").json() == {"exec_info": {"queue_remaining": 1}}


def test_a_node_the_gpus_do_not_have_is_refused_with_comfyuis_error(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    graph = {**GRAPH, "9": {"class_type": "UpscaleWithMagic", "inputs": {}}}
    reply = queue_prompt(alice, "alice", graph)
    assert reply.status_code == 400
    assert reply.json()["error"] == {
        "type": "invalid_prompt",
        "message": "Cannot execute because node UpscaleWithMagic does not exist.",
        "details": "Node ID '#9'",
        "extra_info": {},
    }


def test_a_graph_without_outputs_and_a_ui_format_workflow_are_refused_with_a_fix(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    no_output = queue_prompt(alice, "alice", {"1": GRAPH["1"], "2": GRAPH["2"]})
    assert no_output.json()["error"]["type"] == "prompt_no_outputs"
    ui_format = queue_prompt(alice, "alice", {"nodes": [], "links": []})
    assert ui_format.status_code == 400 and "Export (API)" in ui_format.json()["error"]["message"]
    assert alice.post("/w/alice/api/prompt", json={}).json()["error"]["type"] == "no_prompt"


def test_deleting_from_the_queue_cancels_only_your_own_jobs(
    alice: httpx.Client, bob: httpx.Client, worker: httpx.Client
) -> None:
    job_id = queue_prompt(alice, "alice").json()["prompt_id"]
    bob.post("/w/bob/api/queue", json={"delete": [job_id]})
    assert alice.get(f"/api/jobs/{job_id}").json()["state"] == "queued"
    alice.post("/w/alice/api/queue", json={"delete": [job_id]})
    assert alice.get(f"/api/jobs/{job_id}").json()["state"] == "cancelled"
    assert alice.get("/w/alice/api/queue").json()["queue_pending"] == []


def test_interrupt_asks_the_worker_to_stop_your_running_job(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    job_id = queue_prompt(alice, "alice").json()["prompt_id"]
    worker.post("/api/workers/w1/claim", params={"wait": 5}, headers=WORKER_AUTH)
    running = alice.get("/w/alice/api/queue").json()["queue_running"]
    assert [item[1] for item in running] == [job_id]
    alice.post("/w/alice/api/interrupt", json={"prompt_id": job_id})
    assert alice.get(f"/api/jobs/{job_id}").json()["cancel_requested"] is True


def test_history_shows_your_finished_jobs_outputs_and_hides_them_on_request(
    alice: httpx.Client, bob: httpx.Client, worker: httpx.Client
) -> None:
    queue_prompt(alice, "alice")
    output = OutputFile(node_id="3", kind="images", filename="inverted_00001_.png", type="output")
    job_id = run_on_worker(worker, [output])
    history = alice.get("/w/alice/api/history", params={"max_items": 64}).json()
    entry = history[job_id]
    assert entry["outputs"] == {
        "3": {"images": [{"filename": "inverted_00001_.png", "subfolder": "", "type": "output"}]}
    }
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert entry["prompt"][1] == job_id
    assert list(alice.get(f"/w/alice/api/history/{job_id}").json()) == [job_id]
    assert bob.get(f"/w/bob/api/history/{job_id}").json() == {}
    assert bob.get("/w/bob/api/history").json() == {}
    alice.post("/w/alice/api/history", json={"clear": True})
    assert alice.get("/w/alice/api/history").json() == {}


def test_account_tokens_are_not_kept_and_run_selected_nodes_is(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    extra = {"api_key_comfy_org": "secret-key", "extra_pnginfo": {"workflow": {}}}
    body = {"prompt": GRAPH, "client_id": "c", "extra_data": extra, "partial_execution_targets": ["3"]}
    job_id = alice.post("/w/alice/api/prompt", json=body).json()["prompt_id"]
    kept = alice.get(f"/api/jobs/{job_id}").json()["extra_data"]
    assert "api_key_comfy_org" not in kept and kept["partial_execution_targets"] == ["3"]


def test_malformed_queue_edits_change_nothing_and_do_not_fail(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    job_id = queue_prompt(alice, "alice").json()["prompt_id"]
    for body in (b"[1, 2]", b"not json", b'{"delete": "' + job_id.encode() + b'"}'):
        for route in ("queue", "history", "interrupt"):
            assert alice.post(f"/w/alice/api/{route}", content=body, headers=JSON).status_code == 200
    assert alice.get(f"/api/jobs/{job_id}").json()["state"] == "queued"
    reply = alice.post("/w/alice/api/prompt", content=b"[]", headers=JSON)
    assert reply.json()["error"]["type"] == "no_prompt"


def test_queue_front_runs_her_job_before_her_waiting_ones_and_passes_nobody_else(
    alice: httpx.Client, bob: httpx.Client, worker: httpx.Client
) -> None:
    first = queue_prompt(alice, "alice").json()["prompt_id"]
    second = queue_prompt(alice, "alice").json()["prompt_id"]
    bobs = queue_prompt(bob, "bob").json()["prompt_id"]
    body = {"prompt": GRAPH, "client_id": "tab-1", "front": True}  # the frontend's Queue Front
    front = alice.post("/w/alice/api/prompt", json=body).json()
    assert front["number"] < 0, "as in ComfyUI, whose queue panel lists pending jobs by number"
    pending = alice.get("/w/alice/api/queue").json()["queue_pending"]
    assert [item[1] for item in pending] == [front["prompt_id"], first, second]
    claimed = [run_on_worker(worker, []) for _ in range(4)]
    assert claimed[:2] == [front["prompt_id"], first]
    assert claimed.index(bobs) < claimed.index(second), "her front job took her own place, not bob's"
