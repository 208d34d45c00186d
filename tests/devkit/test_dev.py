"""``make dev``: the platform from the checkout as processes, a job runs, and Ctrl-C stops it all."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from devkit.dev import ROOT
from devkit.servers import free_port, wait_until

pytestmark = pytest.mark.slow

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "dev"}},
}


def banner_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_make_dev_runs_a_job_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "dev.out"
    with out.open("w") as sink:
        dev = subprocess.Popen(
            [sys.executable, "-m", "devkit.dev", "--port", str(port), "--state", str(tmp_path / "state")],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: any("Ctrl-C" in line for line in banner_lines(out)), 90, "the dev banner")
        text = out.read_text()
        assert f"http://127.0.0.1:{port}/w/alice/   login alice / alice-dev" in text
        assert f"http://127.0.0.1:{port}/admin   login admin / admin-dev" in text
        alice = httpx.Client(base_url=f"http://127.0.0.1:{port}/w/alice/api", auth=("alice", "alice-dev"))
        prompt_id = alice.post("/prompt", json={"prompt": GRAPH, "client_id": "dev-test"}).json()["prompt_id"]
        wait_until(lambda: prompt_id in alice.get(f"/history/{prompt_id}").json(), 60, "the job's history")
        outputs = alice.get(f"/history/{prompt_id}").json()[prompt_id]["outputs"]["3"]["images"]
        assert alice.get("/view", params=outputs[0]).content.startswith(b"\x89PNG")
        redis_url = text.split("Redis: ")[1].split()[0]
    finally:
        dev.send_signal(signal.SIGINT)
        code = dev.wait(timeout=60)
    assert code == 0, out.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
