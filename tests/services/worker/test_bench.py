"""The worker benchmark runs end to end with a handful of jobs and reports its five figures."""

from __future__ import annotations

from bench import gpu
from bench.gpu import NOOP, VIDEO, Phase
from bench.worker import run


def test_the_benchmark_reports_overhead_readiness_and_cancel_time() -> None:
    result = run(jobs=5, cancels=3)
    assert set(result) == {"overhead_ms_p50", "overhead_ms_p99", "ready_s", "cancel_ms_p50", "cancel_ms_p99"}
    assert 0 < result["overhead_ms_p50"] <= result["overhead_ms_p99"] and result["ready_s"] > 0
    assert 0 < result["cancel_ms_p50"] <= result["cancel_ms_p99"]


def test_the_gpu_benchmark_compares_direct_and_platform_runs() -> None:
    small = [
        Phase(NOOP.name, 6, NOOP.node_seconds, NOOP.output_bytes, NOOP.first_color),
        Phase(VIDEO.name, 2, 0.1, 2_000_000, VIDEO.first_color),
    ]
    result = gpu.run(small)
    assert set(result) == {
        "noop_makespan_ratio",
        "video_makespan_ratio",
        "gap_ms_p50",
        "gap_ms_p99",
        "noop_floor_ratio",
        "noop_cpu_ms_per_job",
        "direct_gap_ms_p50",
        "noop_gap_ms_p50",
        "video_gap_ms_p50",
    }
    assert result["noop_makespan_ratio"] > 0 and result["video_makespan_ratio"] > 0
    assert 0 <= result["gap_ms_p50"] <= result["gap_ms_p99"]
    assert result["noop_floor_ratio"] > 0 and result["direct_gap_ms_p50"] >= 0
    cpu = result["noop_cpu_ms_per_job"]
    assert set(cpu) == {"worker", "queue_manager", "redis", "s3", "comfyui"}
    # the servers' CPU is read from /proc in clock ticks (10 ms): over six jobs one may read 0
    assert cpu["worker"] > 0 and all(ms >= 0 for ms in cpu.values())
