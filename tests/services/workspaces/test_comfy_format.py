"""Our job records in ComfyUI's shapes, as the frontend's queue and history panels read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.protocol.jobs import Job, JobError, JobState, OutputFile
from services.queue_manager.workspaces.comfy_format import history_answer, queue_answer

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


def test_the_queue_lists_running_then_waiting_in_line_order_with_places() -> None:
    jobs = [
        job(1, JobState.QUEUED, position=4),
        job(2, JobState.RUNNING),
        job(3, JobState.QUEUED, position=1),
    ]
    answer = queue_answer(jobs)
    assert [item[1] for item in answer["queue_running"]] == ["job-2"]
    assert [(item[0], item[1]) for item in answer["queue_pending"]] == [(2, "job-3"), (5, "job-1")]
    assert answer["queue_pending"][0][3]["queue_position"] == 1
