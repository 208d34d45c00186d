"""The push-pool benchmark runs end to end at a tiny size and prints its one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_push_bench_runs_the_jobs_in_one_chained_request_and_in_one_request_each() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.push", "--jobs", "4"],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )

    figures = json.loads(result.stdout)
    assert (figures["chained_requests"], figures["single_requests"]) == (1, 4)
    assert {"chained_gap_ms_p50", "single_gap_ms_p50", "chained_makespan_s", "single_makespan_s"} <= set(
        figures
    )
