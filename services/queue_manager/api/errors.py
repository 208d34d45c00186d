"""Bad input gets a 4xx that says what is wrong: store refusals, oversize bodies, Redis outages."""

from __future__ import annotations

import json

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.queue_manager.errors import QueueError


async def queue_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueError)
    return JSONResponse({"detail": exc.message}, status_code=exc.status)


async def redis_down(_: Request, exc: Exception) -> JSONResponse:
    detail = f"the queue's database is not reachable, try again in a moment ({type(exc).__name__})"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "2"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(QueueError, queue_error)
    app.add_exception_handler(RedisConnectionError, redis_down)
    app.add_exception_handler(RedisTimeoutError, redis_down)


DEFAULT_MAX_BYTES = 2_000_000


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; an HTTPException so FastAPI's body parsing passes it on."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit))


def too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes (QM_MAX_BODY_BYTES)"


class BodyLimit:
    """Refuse request bodies above ``Settings.max_body_bytes`` (declared or streamed) with 413."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = getattr(scope["app"].state, "settings", None)
        limit: int = settings.max_body_bytes if settings is not None else DEFAULT_MAX_BYTES
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        started = False

        async def watch_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._counting(receive, limit), watch_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, limit)

    def _counting(self, receive: Receive, limit: int) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
            return message

        return counted

    async def _refuse(self, send: Send, limit: int) -> None:
        body = json.dumps({"detail": too_large(limit)})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})
