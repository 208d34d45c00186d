"""The benchmarks run end to end at tiny sizes and print one JSON object (numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def bench(*args: str) -> dict[str, float]:
    command = [sys.executable, "-m", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout))


def test_the_queue_benchmark_reports_latency_and_throughput() -> None:
    result = bench("bench.queue", "--jobs", "10", "--workers", "2", "--users", "2")
    assert {"dispatch_ms_p50", "dispatch_ms_p99", "jobs_per_s", "event_ms_p99"} <= set(result)
    assert result["jobs"] == 20 and result["events"] == 60


def test_the_fault_benchmark_loses_nothing_while_killing_everything() -> None:
    result = bench("bench.faults", "--jobs", "30", "--workers", "2")
    assert result["jobs"] == 30 and result["lost"] == 0
    assert result["duplicates_unexplained"] == 0
