"""The queue manager's app: ``uvicorn services.queue_manager.main:app`` (settings from ``QM_*``).

``create_app(settings)`` builds an app for given settings (tests, benchmarks); without settings
they are read from the environment when the app starts, so a missing secret stops the start with
a message naming the variable, rather than failing at import.

The lifespan opens the user-file storage (``QM_FILES_URL``) once as ``app.state.storage``, shared
by the workspaces and everything else; a test may set ``app.state.storage`` before the app starts
to use its own. It starts the push pools' dispatchers (``app.state.dispatchers``), which adopt the
requests a queue manager before them left running before this one answers any call.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.queue_manager import logs
from services.queue_manager.api.callers_first import CallersFirst
from services.queue_manager.api.crosssite import CrossSite
from services.queue_manager.api.deps import admin_caller, holder_caller, participant_caller, pool_caller
from services.queue_manager.api.errors import BodyLimit, install_error_handlers
from services.queue_manager.api.headers import SecurityHeaders
from services.queue_manager.api.main import api_router
from services.queue_manager.auth import Authenticator
from services.queue_manager.background import running
from services.queue_manager.dispatch import dispatching
from services.queue_manager.sessions import Logins
from services.queue_manager.settings import Settings
from services.queue_manager.socket_slots import SocketCap, SocketSlots
from services.queue_manager.store import Store, connect
from services.queue_manager.workspaces import UPLOAD_PATH, WORKSPACE_PATH
from services.queue_manager.workspaces.deps import workspace_owner
from services.storage import Storage, StorageError, open_storage

log = logging.getLogger(__name__)

CALLER_CHECKS = (
    (WORKSPACE_PATH, workspace_owner),
    (re.compile(r"/api/workers/"), pool_caller),
    (re.compile(r"/api/jobs(/|$)"), participant_caller),
    (re.compile(r"/api/admin/"), admin_caller),
    (re.compile(r"/api/(leases|push)/"), holder_caller),
)
"""The routes whose callers are checked on the request's head, before its body is read: uploads
(up to QM_MAX_UPLOAD_BYTES) and a worker's registration (up to QM_MAX_CATALOGUE_BYTES) would
otherwise be spooled or parsed whole for anyone, and a lease or push call (up to QM_MAX_BODY_BYTES)
parsed for anyone with no token. The lease and push routes, called many times a second by busy
workers, find their holder once: the check leaves it on the request's state for the route."""


def open_files(settings: Settings) -> Storage | None:
    """The user-file storage, or None (logged) when it cannot be opened: the queue keeps working and
    the workspaces answer 503 with the reason until the organizer fixes ``QM_FILES_URL``."""
    try:
        return open_storage(settings.files_url)
    except (StorageError, OSError) as exc:
        detail = {"files_url": settings.files_url, "error": str(exc)}
        log.error("user-file storage cannot be opened: set QM_FILES_URL to a usable place", extra=detail)
        return None


def create_app(settings: Settings | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = settings or Settings()
        logs.configure(config.log_level)
        auth = Authenticator(config)
        config = config.model_copy(update={"participants": {}})  # from here on only hashes exist
        redis = connect(config)
        store = Store(redis, config)
        app.state.settings, app.state.store, app.state.auth = config, store, auth
        app.state.logins = Logins(auth, store.redis, store.keys, store.scripts, config)
        app.state.socket_slots = SocketSlots(config.max_sockets_per_user)
        if getattr(app.state, "storage", None) is None:
            app.state.storage = open_files(config)
        try:
            async with running(store), dispatching(store, config) as dispatchers:
                app.state.dispatchers = dispatchers
                yield
        finally:
            await redis.aclose()

    app = FastAPI(
        title="comfy-workshop queue manager",
        summary="A fair, lease-based ComfyUI job queue for workshop participants and GPU workers.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # /docs, /redoc and /openapi.json are the admin's (api/routes/docs.py)
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    app.include_router(api_router)
    app.add_middleware(SocketCap)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(CallersFirst, checks=CALLER_CHECKS)
    app.add_middleware(CrossSite)  # a cross-site request is refused before any route runs
    app.add_middleware(BodyLimit, uploads=UPLOAD_PATH)  # outermost: an oversized body is never read
    return app


app = create_app()
