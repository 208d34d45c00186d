"""Jobs run end to end: a participant submits to the real queue manager, the agent pulls and runs
them on the ComfyUI double, and the participant sees the outcome and the stored outputs."""

from __future__ import annotations

from pathlib import Path

import httpx

from services.protocol.jobs import JobState
from tests.doubles.comfyui import ComfyUIDouble
from tests.services.worker.conftest import (
    QueueManagerServer,
    finished,
    graph,
    pull_worker,
    submit,
    worker_settings,
)


async def test_a_job_succeeds_and_its_outputs_land_under_the_owners_prefix(
    comfy: ComfyUIDouble, qm: QueueManagerServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job = await finished(alice, await submit(alice, graph(color=1, batch=2)))
    assert job.state == JobState.SUCCEEDED, job.error
    assert [o.filename for o in job.outputs] == ["t_00001_.png", "t_00002_.png"]
    stored = tmp_path / "files" / "users" / "alice" / "output" / "t_00001_.png"
    assert stored.read_bytes().startswith(b"\x89PNG")
    assert job.outputs[0].size == stored.stat().st_size and job.outputs[0].content_type == "image/png"
