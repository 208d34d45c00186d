"""A pool's own warm-up workflow (stack config ``warmupWorkflow``) runs before the worker is ready."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.doubles.comfyui import ComfyUIDouble
from services.worker.agent import Agent, WarmupFailedError
from tests.support.jobs import graph
from tests.support.queue_manager_app import LiveServer
from tests.support.worker_agent import worker_settings


async def test_the_pools_warmup_graph_is_run_and_a_failing_one_keeps_the_worker_from_starting(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path
) -> None:
    broken = {"1": {"class_type": "NoSuchLoader", "inputs": {}}}
    agent = Agent(worker_settings(comfy, qm.url, tmp_path, warmup=True, warmup_workflow=broken))
    try:
        with pytest.raises(WarmupFailedError, match="the warmup workflow failed"):
            await agent.start()
    finally:
        await agent.stop()
    agent = Agent(worker_settings(comfy, qm.url, tmp_path, warmup=True, warmup_workflow=graph(color=9)))
    try:
        await agent.start()  # the pool's graph succeeds: the worker is ready
        assert agent.catalogue
    finally:
        await agent.stop()
