"""Our job records in ComfyUI's shapes, as the frontend's queue and history panels read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.protocol.comfyui import history_answer, queue_answer
from services.protocol.jobs import Job, JobError, JobState, OutputFile

START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def job(number: int, state: JobState, **extra: object) -> Job:
    finished = START + timedelta(minutes=number) if state.finished else None
    return Job(
        id=f"job-{number}", user="ada", prompt={}, state=state, queued_at=START, finished_at=finished, **extra
    )


def test_history_keeps_the_newest_max_items_oldest_first_like_comfyui() -> None:
    jobs = [job(n, JobState.SUCCEEDED) for n in (3, 1, 2)] + [job(9, JobState.QUEUED)]
    assert list(history_answer(jobs)) == ["job-1", "job-2", "job-3"]
    assert list(history_answer(jobs, max_items=2)) == ["job-2", "job-3"]
    assert list(history_answer(jobs, max_items=1, offset=1)) == ["job-2"]


def test_a_failed_job_reads_as_comfyuis_execution_error() -> None:
    error = JobError(type="OutOfMemoryError", message="CUDA out of memory", node_id="5", node_type="KSampler")
    entry = history_answer([job(1, JobState.FAILED, error=error)])["job-1"]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    kind, data = entry["status"]["messages"][-1]
    assert kind == "execution_error"
    assert data["exception_message"] == "CUDA out of memory" and data["node_type"] == "KSampler"


def test_outputs_are_grouped_by_node_and_kind() -> None:
    outputs = [
        OutputFile(node_id="9", kind="images", filename="a.png"),
        OutputFile(node_id="9", kind="images", filename="b.png"),
        OutputFile(node_id="12", kind="videos", filename="c.mp4", subfolder="clips"),
    ]
    entry = history_answer([job(1, JobState.SUCCEEDED, outputs=outputs)])["job-1"]
    assert [i["filename"] for i in entry["outputs"]["9"]["images"]] == ["a.png", "b.png"]
    assert entry["outputs"]["12"]["videos"] == [{"filename": "c.mp4", "subfolder": "clips", "type": "output"}]


def test_the_queue_lists_running_then_waiting_by_number_with_places_in_line() -> None:
    jobs = [
        job(1, JobState.QUEUED, position=1, outputs_to_execute=["3"]),
        job(2, JobState.RUNNING),
        job(3, JobState.QUEUED, position=4),
    ]
    for each, number in zip(jobs, (11, 10, 12), strict=True):
        each.number = number
    answer = queue_answer(jobs)
    assert [item[1] for item in answer["queue_running"]] == ["job-2"]
    assert [(item[0], item[1]) for item in answer["queue_pending"]] == [(11, "job-1"), (12, "job-3")]
    assert answer["queue_pending"][0][3] == {}  # extra_data as sent: no client_id, nothing of ours
    assert answer["queue_pending"][0][4] == ["3"]


def test_history_pages_as_comfyui_offset_from_the_oldest() -> None:
    jobs = [job(n, JobState.SUCCEEDED) for n in (1, 2, 3, 4)]
    assert list(history_answer(jobs, offset=2)) == ["job-3", "job-4"]
    assert list(history_answer(jobs, max_items=2, offset=1)) == ["job-2", "job-3"]
    assert list(history_answer(jobs, max_items=2, offset=0)) == ["job-1", "job-2"]
    assert history_answer(jobs, offset=4) == {} and history_answer(jobs, offset=100) == {}
    assert history_answer(jobs, offset=0) == history_answer(jobs)


def test_a_history_entry_carries_number_outputs_to_execute_and_comfyuis_messages() -> None:
    done = job(1, JobState.SUCCEEDED, outputs_to_execute=["3", "4"], client_id="tab")
    done.number = 7
    entry = history_answer([done])["job-1"]
    assert (
        entry["prompt"][0] == 7
        and entry["prompt"][3] == {"client_id": "tab"}
        and entry["prompt"][4] == ["3", "4"]
    )
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert kinds == ["execution_start", "execution_cached", "execution_success"]
    assert all("timestamp" in data for _, data in entry["status"]["messages"])


def test_an_execution_error_keeps_what_comfyui_said_of_the_failed_node() -> None:
    own = {
        "executed": ["1"],
        "current_inputs": {"image": ["<tensor>"]},
        "current_outputs": ["1"],
        "traceback": ["  File x\n"],
    }
    error = JobError(type="RuntimeError", message="boom", node_id="2", node_type="ImageInvert", comfy=own)
    _, data = history_answer([job(1, JobState.FAILED, error=error)])["job-1"]["status"]["messages"][-1]
    assert data["executed"] == ["1"] and data["current_inputs"] == {"image": ["<tensor>"]}
    assert data["current_outputs"] == ["1"] and data["traceback"] == ["  File x\n"]
    assert data["exception_type"] == "RuntimeError" and data["node_id"] == "2"
