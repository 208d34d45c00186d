"""One participant cannot hold the server's connections: past QM_MAX_SOCKETS_PER_USER open sockets
(workspace tabs and event streams together) a new one is closed with code 1008 and a reason."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests.support.queue_manager_app import LiveServer, live_server, settings_for
from tests.support.sockets import next_text, open_socket_as


@pytest.fixture
def capped(redis_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(settings_for(redis_url, max_sockets_per_user=2), tmp_path / "files") as running:
        yield running


def greeted(socket: ClientConnection) -> bool:
    return next_text(socket)["type"] == "status"


def refused(socket: ClientConnection) -> str:
    with pytest.raises(ConnectionClosed) as closed:
        socket.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    return closed.value.rcvd.reason


def test_a_participant_past_the_cap_gets_a_clear_close(capped: LiveServer) -> None:
    with contextlib.ExitStack() as sockets:

        def opened(user: str, path: str = "") -> ClientConnection:
            """A socket closed when the test ends, whatever happens (websockets 17.1 wants a context)."""
            return sockets.enter_context(open_socket_as(capped, user, path))

        first, second = opened("alice"), opened("alice")
        assert greeted(first) and greeted(second)
        assert "QM_MAX_SOCKETS_PER_USER" in refused(opened("alice"))
        assert "QM_MAX_SOCKETS_PER_USER" in refused(opened("alice", "/api/events"))
        assert greeted(opened("bob"))  # the cap is per participant
        second.close()
        for _ in range(50):  # the server frees the slot once it has seen the close (bounded)
            try:
                if greeted(opened("alice")):
                    break
            except ConnectionClosed:
                continue
        else:
            raise AssertionError("a closed socket's slot was never given back")
