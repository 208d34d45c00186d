"""A cap on each participant's open WebSockets (``QM_MAX_SOCKETS_PER_USER``), per queue manager process.

Every browser tab of a workspace holds one socket (``/w/<user>/ws``) and scripts may hold event
streams (``/api/events``); past the cap a new one is accepted and closed at once with code 1008 and
a reason that says what to do, so one participant cannot hold all of the server's connections.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterator

from starlette.types import ASGIApp, Receive, Scope, Send

CLOSE_CODE = 1008  # policy violation
WORKSPACE_SOCKET = re.compile(r"^/w/([^/]+)/(?:api/)?ws$")


class SocketSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, user: str) -> Iterator[bool]:
        """Whether ``user`` may open one more socket; if so it counts until the block ends."""
        if self.open[user] >= self.limit:
            yield False
            return
        self.open[user] += 1
        try:
            yield True
        finally:
            self.open[user] -= 1
            if not self.open[user]:
                del self.open[user]

    def refusal(self, user: str) -> str:
        return f"{user} has {self.limit} connections open (QM_MAX_SOCKETS_PER_USER): close other tabs"


async def refuse(send: Send, receive: Receive, reason: str) -> None:
    """Accept and close at once (ASGI), so the client gets the close code and the reason."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": CLOSE_CODE, "reason": reason})


class SocketCap:
    """ASGI middleware holding a slot of the path's participant for each workspace socket."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = WORKSPACE_SOCKET.match(scope["path"]) if scope["type"] == "websocket" else None
        slots: SocketSlots | None = getattr(scope["app"].state, "socket_slots", None)
        if found is None or slots is None:
            await self.app(scope, receive, send)
            return
        user = found.group(1)
        with slots.hold(user) as admitted:
            if admitted:
                await self.app(scope, receive, send)
                return
        await refuse(send, receive, slots.refusal(user))
