"""A cap on each participant's open WebSockets (``QM_MAX_SOCKETS_PER_USER``), per queue manager process.

Every browser tab of a workspace holds one socket (``/w/<user>/ws``), scripts may hold more
(``/api/events``); past the cap a new one is accepted and closed at once with code 1008 and a
reason that says what to do, so one participant cannot hold the server's connections.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from fastapi import WebSocket

CLOSE_CODE = 1008  # policy violation


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
        return (
            f"{user} already has {self.limit} open connections (QM_MAX_SOCKETS_PER_USER): "
            "close other tabs of the workspace"
        )


async def refuse(websocket: WebSocket, slots: SocketSlots, user: str) -> None:
    """Accept and close at once, so the browser gets the close code and the reason."""
    await websocket.accept()
    await websocket.close(code=CLOSE_CODE, reason=slots.refusal(user))
