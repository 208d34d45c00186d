"""One participant cannot hold the server's connections: past QM_MAX_SOCKETS_PER_USER open sockets
(workspace tabs and event streams together) a new one is closed with code 1008 and a reason."""

from __future__ import annotations

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
        socket.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    return closed.value.rcvd.reason


def test_a_participant_past_the_cap_gets_a_clear_close(capped: LiveServer) -> None:
    first, second = open_socket_as(capped, "alice"), open_socket_as(capped, "alice")
    assert greeted(first) and greeted(second)
    third = open_socket_as(capped, "alice")
    assert "QM_MAX_SOCKETS_PER_USER" in refused(third)
    assert "QM_MAX_SOCKETS_PER_USER" in refused(open_socket_as(capped, "alice", "/api/events"))
    bob = open_socket_as(capped, "bob")
    assert greeted(bob)  # the cap is per participant
    second.close()
    for _ in range(50):  # the server frees the slot once it has seen the close (bounded)
        again = open_socket_as(capped, "alice")
        try:
            if greeted(again):
                break
        except ConnectionClosed:
            continue
    else:
        raise AssertionError("a closed socket's slot was never given back")
    for socket in (first, third, bob, again):
        socket.close()
