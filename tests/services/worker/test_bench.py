"""The worker benchmark runs end to end with a handful of jobs and reports its three figures."""

from __future__ import annotations

from bench.worker import run


def test_the_benchmark_reports_overhead_and_readiness() -> None:
    result = run(jobs=5)
    assert set(result) == {"overhead_ms_p50", "overhead_ms_p99", "ready_s"}
    assert 0 < result["overhead_ms_p50"] <= result["overhead_ms_p99"] and result["ready_s"] > 0
