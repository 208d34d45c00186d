"""The queue manager's app: ``uvicorn services.queue_manager.main:app`` (settings from ``QM_*``).

``create_app(settings)`` builds an app for given settings (tests, benchmarks); without settings
they are read from the environment when the app starts, so a missing secret stops the start with
a message naming the variable, rather than failing at import.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from redis.asyncio import Redis

from services.queue_manager import logs
from services.queue_manager.api.errors import BodyLimit, install_error_handlers
from services.queue_manager.api.main import api_router
from services.queue_manager.auth import Authenticator
from services.queue_manager.background import running
from services.queue_manager.dispatch import dispatching
from services.queue_manager.settings import Settings
from services.queue_manager.store import Store


def connect(settings: Settings) -> Redis:
    """A Redis client for the queue; timeouts so an unreachable Redis fails requests, not hangs them."""
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry_on_timeout=True,
    )


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
        try:
            async with running(store), dispatching(store, config):
                yield
        finally:
            await redis.aclose()

    app = FastAPI(
        title="comfy-workshop queue manager",
        summary="A fair, lease-based ComfyUI job queue for workshop participants and GPU workers.",
        version="1",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(api_router)
    app.add_middleware(BodyLimit)
    return app


app = create_app()
