"""``python -m bench.workspaces`` runs end to end with tiny sizes and prints its one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_workspaces_bench_prints_memory_and_ready_time() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.workspaces", "--users", "3", "--loads", "1"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    figures = json.loads(done.stdout)
    assert set(figures) == {
        "rss_mb_100_users",
        "ready_ms_p50",
        "ready_ms_first_load",
        "ready_cpu_ms_p50",
        "ready_ms_p50_playwright",
        "ready_ms_p50_static_floor",
    }
    assert 20 < figures["rss_mb_100_users"] < 2000
    assert figures["ready_ms_p50"] > 0 and figures["ready_ms_p50_playwright"] > 0
    assert figures["ready_ms_p50_static_floor"] > 0
