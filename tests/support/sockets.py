"""A participant's WebSockets on the live queue manager: opened with their session cookie (as the
browser does after logging in), and read one JSON text frame at a time (bounded)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.support.queue_manager_app import LiveServer, login


def connect_with_session(server: LiveServer, session: str, path: str) -> ClientConnection:
    """A WebSocket to ``path`` (absolute, with any query) carrying the session cookie ``session``."""
    url = f"ws://127.0.0.1:{server.port}{path}"
    return connect(url, additional_headers={"Cookie": f"qm_session={session}"}, open_timeout=30)


def open_socket(
    server: LiveServer, client: httpx.Client, user: str, client_id: str, path: str = "ws"
) -> ClientConnection:
    """The socket a workspace tab ``client_id`` opens at ``/w/<user>/<path>``; ``client`` is logged in."""
    path = f"/w/{user}/{path}?clientId={client_id}"
    return connect_with_session(server, client.cookies["qm_session"], path)


def open_socket_as(server: LiveServer, user: str, path: str = "") -> ClientConnection:
    """Log ``user`` in and open ``path`` (default: their workspace socket) with the new session."""
    with httpx.Client(base_url=server.url) as client:
        session = login(client, user).cookies["qm_session"]
    return connect_with_session(server, session, path or f"/w/{user}/ws")


def next_text(socket: ClientConnection) -> dict[str, Any]:
    """The next frame, which must be JSON text (within 30 s)."""
    message = socket.recv(timeout=30)
    assert isinstance(message, str), f"expected a text frame, got {message!r}"
    parsed: dict[str, Any] = json.loads(message)
    return parsed
