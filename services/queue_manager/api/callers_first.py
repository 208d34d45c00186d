"""Routes that take bodies check their caller before reading a byte of the body.

FastAPI reads (and parses) a request's body before it runs the route's dependencies, so a route's
own check of credentials came after an upload (up to ``QM_MAX_UPLOAD_BYTES``) was spooled to disk,
or a worker's registration (up to ``QM_MAX_CATALOGUE_BYTES``) was parsed in memory: anyone, without
any login, could hold the queue manager's disk or memory with a few such requests at once. This
middleware runs the same check (the dependency the route uses) on the request's head alone and
answers a caller without the right credentials at once, as the route would have.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

from fastapi import HTTPException, Request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import ASGIApp, Receive, Scope, Send

from services.queue_manager.api.errors import REDIS_DOWN, send_refusal

CallerCheck = Callable[[Request, dict[str, str]], Awaitable[object]]
"""Raises ``HTTPException`` for a caller the route refuses; gets the path's named groups."""


class CallersFirst:
    """ASGI middleware: for a POST whose path matches one of ``checks``, run that check first."""

    def __init__(self, app: ASGIApp, checks: Sequence[tuple[re.Pattern[str], CallerCheck]]) -> None:
        self.app = app
        self.checks = checks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for pattern, check in self.checks:
                if found := pattern.match(scope["path"]):
                    if not await self._passes(check, Request(scope), found.groupdict(), send):
                        return
                    break
        await self.app(scope, receive, send)

    async def _passes(self, check: CallerCheck, request: Request, groups: dict[str, str], send: Send) -> bool:
        try:
            await check(request, groups)
        except HTTPException as exc:
            await send_refusal(send, exc.status_code, str(exc.detail), dict(exc.headers or {}))
            return False
        except (RedisConnectionError, RedisTimeoutError):
            await send_refusal(send, 503, REDIS_DOWN, {"Retry-After": "2"})
            return False
        return True
