"""The workshop benchmark runs end to end at a tiny size and prints its one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_bench_prints_its_three_figures() -> None:
    args = [
        "--participants",
        "2",
        "--jobs-each",
        "2",
        "--capacity",
        "2",
        "--job-minutes",
        "1",
        "--compression",
        "120",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "bench.workshop", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    figures = json.loads(result.stdout)
    assert set(figures) == {"makespan_ratio", "gpu_billed_over_busy", "p95_wait_s"}
    assert figures["makespan_ratio"] >= 1.0 and figures["gpu_billed_over_busy"] >= 1.0
