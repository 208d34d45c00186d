"""Fixtures every test tree shares. Servers are real and bound to loopback on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.s3 import moto_server
from devkit.servers import RedisServer, redis_server


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole test session."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_proc: RedisServer) -> Iterator[str]:
    """A clean database on the session's redis-server for each test."""
    client = redis.Redis(port=redis_proc.port)
    client.flushall()
    yield redis_proc.url
    client.flushall()
    client.close()


@pytest.fixture
def artifacts_dir() -> Path:
    """Where tests write what a person may want to look at (screenshots, generated files)."""
    path = Path(__file__).resolve().parent.parent / "artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """The S3 double (moto, kept-alive connections: ``devkit.s3``), one per test module, in its own
    process so that its memory is not counted as ours."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def comfy(tmp_path: Path) -> Iterator[ComfyUIDouble]:
    """The ComfyUI double on a loopback port, its folders under the test's tmp_path."""
    with ComfyUIDouble(tmp_path / "comfy") as double:
        yield double
