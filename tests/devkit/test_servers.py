"""The test servers' launchers: a port picked for a server stays free for it."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import httpx
import pytest

from devkit.servers import LISTEN_PORTS_FLOOR, ephemeral_low, free_port, http_get, polling_client


def test_a_picked_port_is_never_one_an_outgoing_connection_could_take_before_the_server_binds() -> None:
    """Under load a test's own client connections took the port picked for its next server
    ("address already in use"): the kernel gives outgoing connections local ports from its ephemeral
    range, where ``bind(0)`` picks too."""
    low = ephemeral_low()
    picked = {free_port() for _ in range(300)}
    assert all(LISTEN_PORTS_FLOOR <= port < low for port in picked), sorted(p for p in picked if p >= low)[:5]
    assert len(picked) > 250  # spread, so that two test processes rarely pick one port


def test_a_picked_port_can_be_listened_on_and_a_port_in_use_is_never_picked() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        assert taken not in {free_port() for _ in range(300)}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", free_port()))
        server.listen()


def test_polling_a_starting_server_builds_no_tls_context_per_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """``httpx.get`` builds a client and a TLS context loading the CA bundle (~25 ms of CPU) on each
    call: a 20 ms poll loop took a core from the server it waited for."""
    polling_client()  # the one client every poll shares, made at the first poll
    loaded: list[object] = []
    original = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loaded.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", free_port()))  # bound, not listening: every poll is refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/ready"
        for _ in range(20):
            with pytest.raises(httpx.ConnectError):
                http_get(url, timeout=1)
    assert loaded == []
