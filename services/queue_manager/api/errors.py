"""Bad input gets a 4xx that says what is wrong: store refusals, oversize bodies, Redis outages."""

from __future__ import annotations

import errno
import json
import re
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.queue_manager.errors import QueueError


async def queue_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueError)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)


REDIS_DOWN = "the queue's database is not reachable, try again in a moment"


async def redis_down(_: Request, exc: Exception) -> JSONResponse:
    detail = f"{REDIS_DOWN} ({type(exc).__name__})"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "2"})


async def too_deep(_: Request, exc: Exception) -> JSONResponse:
    detail = "the JSON is nested too deeply (hundreds of levels): send a flatter body"
    return JSONResponse({"detail": detail, "error": detail}, status_code=400)


NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
NO_ROOM_DETAIL = (
    "the server has no room left to store this: nothing was stored. Tell the organizer: the server's "
    "disk (or the file store's quota) is full, and frees up once files are deleted or the disk is grown"
)


async def no_room(_: Request, exc: Exception) -> JSONResponse:
    """507 for a write the server's disk has no room for (her upload, a spooled snapshot): it names
    no folder of the server's; any other OSError stays the server's fault (500)."""
    assert isinstance(exc, OSError)
    if exc.errno not in NO_ROOM:
        raise exc
    return JSONResponse({"detail": NO_ROOM_DETAIL, "error": NO_ROOM_DETAIL}, status_code=507)


async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, but a body that is no UTF-8 is shown as text instead of failing the answer."""
    assert isinstance(exc, RequestValidationError)
    readable = {bytes: lambda raw: raw.decode("utf-8", "replace")}
    return JSONResponse({"detail": jsonable_encoder(exc.errors(), custom_encoder=readable)}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(QueueError, queue_error)
    app.add_exception_handler(RecursionError, too_deep)
    app.add_exception_handler(RedisConnectionError, redis_down)
    app.add_exception_handler(RedisTimeoutError, redis_down)
    app.add_exception_handler(OSError, no_room)


DEFAULT_MAX_BYTES = 2_000_000
UPLOAD_FORM_BYTES = 64 * 1024  # room for the multipart envelope around a file of the largest size
MIB = 1024 * 1024


@dataclass(frozen=True)
class Limit:
    """How many bytes a request body may have, and what to tell a client that sends more."""

    bytes: int
    message: str


def body_limit(limit: int) -> Limit:
    return Limit(limit, f"request body larger than {limit} bytes (QM_MAX_BODY_BYTES)")


def catalogue_limit(limit: int) -> Limit:
    message = (
        f"worker registration larger than {limit} bytes (QM_MAX_CATALOGUE_BYTES): its node catalogue "
        "is unusually big; raise QM_MAX_CATALOGUE_BYTES on the queue manager"
    )
    return Limit(limit, message)


def upload_limit(limit: int) -> Limit:
    size = f"{limit / MIB:g} MiB" if limit >= MIB else f"{limit} bytes"
    message = (
        f"the upload is larger than {size} (QM_MAX_UPLOAD_BYTES): send a smaller file, "
        "e.g. scale the image down or export it at a lower resolution"
    )
    return Limit(limit + UPLOAD_FORM_BYTES, message)


def restore_limit(limit: int) -> Limit:
    size = f"{limit / MIB:g} MiB" if limit >= MIB else f"{limit} bytes"
    message = (
        f"the snapshot is larger than {size} (QM_MAX_UPLOAD_BYTES, as the site's own limit): restore it on "
        "the server with `python -m services.queue_manager.cli restore --in <file>`"
    )
    return Limit(limit, message)


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; an HTTPException so FastAPI's body parsing passes it on."""

    def __init__(self, limit: Limit) -> None:
        super().__init__(413, limit.message)


REGISTER_PATH = "/api/workers/register"
RESTORE_PATH = "/api/admin/restore"  # a snapshot, spooled to disk as it comes


class BodyLimit:
    """Refuse request bodies above ``Settings.max_body_bytes`` (declared or streamed) with 413;
    paths matching ``uploads`` (participants' file uploads) may be up to ``max_upload_bytes``, and a
    worker's registration (which carries its node catalogue) up to ``max_catalogue_bytes``, and the
    admin's restore of a snapshot up to ``max_upload_bytes`` (nginx's limit too)."""

    def __init__(self, app: ASGIApp, uploads: re.Pattern[str] | None = None) -> None:
        self.app = app
        self.uploads = uploads

    def limit(self, scope: Scope) -> Limit:
        settings = getattr(scope["app"].state, "settings", None)
        if settings is None:  # not started yet: the smallest limit
            return body_limit(DEFAULT_MAX_BYTES)
        if self.uploads is not None and self.uploads.match(scope["path"]):
            return upload_limit(settings.max_upload_bytes)
        if scope["path"] == REGISTER_PATH:
            return catalogue_limit(settings.max_catalogue_bytes)
        if scope["path"] == RESTORE_PATH:
            return restore_limit(settings.max_upload_bytes)
        return body_limit(settings.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit.bytes:
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

    def _counting(self, receive: Receive, limit: Limit) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit.bytes:
                raise BodyTooLarge(limit)
            return message

        return counted

    async def _refuse(self, send: Send, limit: Limit) -> None:
        await send_refusal(send, 413, limit.message)


async def send_refusal(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Answer ``{"detail": message}`` with ``status`` from ASGI middleware (before any route runs)."""
    body = json.dumps({"detail": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
