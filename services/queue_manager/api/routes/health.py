"""Liveness, readiness and Prometheus metrics (no auth: they reveal counts, never content; why the
queue manager is not ready goes to its log, not to the public answer)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from services.queue_manager.api.deps import StoreDep
from services.queue_manager.metrics import METRICS
from services.queue_manager.scrape import refresh_gauges

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/health")
async def health() -> dict[str, str]:
    """The process answers (liveness)."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "Redis is not reachable"}})
async def ready(store: StoreDep) -> dict[str, str]:
    """Redis answers, so the queue can take jobs (readiness)."""
    try:
        await store.redis.ping()
    except (RedisError, OSError) as exc:
        log.warning("not ready: Redis is not reachable", extra={"error": repr(exc)})
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not ready") from None
    return {"status": "ready"}


@router.get("/metrics", response_class=Response)
async def metrics(store: StoreDep) -> Response:
    """Prometheus text format: queue depth per pool and user, leases, latencies, workers by state."""
    await refresh_gauges(store, METRICS)
    return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)
