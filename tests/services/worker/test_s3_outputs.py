"""In the cloud the worker writes user files to an S3-compatible bucket (R2): moto stands in for it."""

from __future__ import annotations

from pathlib import Path

import httpx

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.s3 import make_bucket, s3_client, s3_settings
from services.protocol.jobs import JobState
from services.storage import open_storage
from services.worker.agent import Agent
from services.worker.pull import PullWorker
from services.worker.queue_client import QueueClient
from tests.support.jobs import finished, graph, submit
from tests.support.queue_manager_app import LiveServer
from tests.support.worker_agent import worker_settings


async def test_outputs_go_to_the_bucket_under_the_owners_prefix(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, s3_endpoint: str
) -> None:
    make_bucket(s3_endpoint, "workshop-files")
    s3 = s3_settings(s3_endpoint)
    settings = worker_settings(comfy, qm.url, tmp_path, storage_url="s3://workshop-files/files")
    agent = Agent(settings, open_storage(settings.storage_url, s3))
    queue = QueueClient(qm.url, settings.token.get_secret_value())
    await agent.start()
    worker = PullWorker(agent, queue)
    try:
        job_id = await submit(alice, graph(color=51))
        await worker.run(max_jobs=1)
    finally:
        await agent.stop()
        await queue.aclose()
    job = await finished(alice, job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    stored = s3_client(s3_endpoint).get_object(
        Bucket="workshop-files", Key="files/users/alice/output/t_00001_.png"
    )
    assert stored["ContentType"] == "image/png" and stored["Body"].read().startswith(b"\x89PNG")
