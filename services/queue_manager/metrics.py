"""Prometheus metrics: latency histograms observed as jobs move, gauges read from Redis per scrape."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.protocol.jobs import Job
from services.protocol.workers import JobTiming

GAP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.dispatch_seconds = Histogram(
            "qm_dispatch_seconds",
            "queued to leased, per lease",
            ["pool"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "qm_job_seconds",
            "queued to finished, per job",
            ["state"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "qm_queue_depth",
            "queued jobs per scope (pool or *) and user",
            ["pool", "user"],
            registry=self.registry,
        )
        self.leases = Gauge("qm_leases", "jobs currently leased to workers", registry=self.registry)
        self.delayed = Gauge("qm_delayed", "jobs waiting out a retry backoff", registry=self.registry)
        self.dead = Gauge("qm_dead_letters", "dead-lettered jobs", registry=self.registry)
        self.workers = Gauge("qm_workers", "registered workers by state", ["state"], registry=self.registry)
        self.claims_waiting = Gauge(
            "qm_claims_waiting", "long-polling claims parked in this process", registry=self.registry
        )
        self.paused = Gauge("qm_dispatch_paused", "1 while dispatch is paused", registry=self.registry)
        self.gpu_busy = Counter(
            "qm_gpu_busy_seconds",
            "seconds GPUs ran jobs, as workers report them",
            ["pool"],
            registry=self.registry,
        )
        self.gpu_gap = Histogram(
            "qm_gpu_idle_gap_seconds",
            "a GPU idle between two jobs while the next one waited",
            ["pool"],
            buckets=GAP_BUCKETS,
            registry=self.registry,
        )
        self.upload_seconds = Histogram(
            "qm_upload_seconds",
            "a job's outputs into storage",
            ["pool"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.jobs_held = Gauge(
            "qm_jobs_held",
            "queued jobs held (prepared) for a busy worker of the pool; an idle worker's claim takes them",
            ["pool"],
            registry=self.registry,
        )
        self.gpu_busy_fraction = Gauge(
            "qm_gpu_busy_fraction",
            "share of the last hour the pool's live GPUs ran jobs",
            ["pool"],
            registry=self.registry,
        )

    def observe_dispatch(self, job: Job) -> None:
        if job.started_at is not None:
            seconds = (job.started_at - job.queued_at).total_seconds()
            self.dispatch_seconds.labels(pool=job.pool or "*").observe(max(seconds, 0.0))

    def observe_finished(self, state: str, seconds: float) -> None:
        self.job_seconds.labels(state=state).observe(max(seconds, 0.0))

    def observe_gpu(self, pool: str, timing: JobTiming | None) -> None:
        """A worker's timing of a job it ran on a GPU of ``pool``."""
        if not pool or timing is None:
            return
        if timing.gpu_seconds is not None:
            self.gpu_busy.labels(pool=pool).inc(timing.gpu_seconds)
        if timing.idle_gap_seconds is not None:
            self.gpu_gap.labels(pool=pool).observe(timing.idle_gap_seconds)
        if timing.upload_seconds is not None:
            self.upload_seconds.labels(pool=pool).observe(timing.upload_seconds)


METRICS = Metrics()
