"""The real queue manager (uvicorn on loopback, real Redis), a serverless platform double and the
push dispatcher between them (``tests.support.dispatch_rig``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from devkit.push_platform import Platform, simulated_worker


@pytest.fixture
def make_platform() -> Callable[..., Platform]:
    def make(job_seconds: float = 0.1, **kwargs: Any) -> Platform:
        return Platform(runner=simulated_worker(job_seconds, heartbeat_seconds=0.2), **kwargs)

    return make
