"""The one router index: every URL area of the queue manager is included here."""

from __future__ import annotations

from fastapi import APIRouter

from services.queue_manager.admin import router as admin_page_router
from services.queue_manager.api.routes import admin, auth, docs, events, health, jobs, leases, push, workers
from services.queue_manager.workspaces import router as workspaces_router

api_router = APIRouter()
# Routes are matched in this order on every request: the busiest (worker calls, submits) first.
api_router.include_router(leases.router)
api_router.include_router(workers.router)
api_router.include_router(push.router)
api_router.include_router(jobs.router)
api_router.include_router(events.router)
api_router.include_router(health.router)
api_router.include_router(auth.router)
api_router.include_router(admin.router)
api_router.include_router(docs.router)
api_router.include_router(workspaces_router)
api_router.include_router(admin_page_router)
