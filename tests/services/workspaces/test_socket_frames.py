"""A participant's socket takes small frames only, as the queue manager's image runs it: the stock
frontend sends a ~100-byte ``feature_flags`` and nothing else, but uvicorn's default took 16 MiB frames,
so one participant's ten sockets sending them held ~230 MB more of the server's memory and kept its
event loop from answering anyone for seconds (measured: /health took 3.3 s after 480 MB)."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from devkit.qm_server import ROOT, QueueManagerProcess, qm_env

IMAGE = ROOT / "images/queue-manager/Dockerfile"


def image_ws_options() -> tuple[str, ...]:
    """The ``--ws-max-size`` the image's uvicorn command line gives (none: uvicorn's 16 MiB)."""
    cmd = re.search(r"^CMD (\[.*\])", IMAGE.read_text().replace("\\\n", ""), re.MULTILINE)
    assert cmd is not None, f"{IMAGE} has no CMD"
    command: list[str] = json.loads(cmd.group(1))
    found = command.index("--ws-max-size") if "--ws-max-size" in command else None
    return () if found is None else tuple(command[found : found + 2])


def test_a_frame_too_large_closes_that_socket_and_the_server_keeps_answering(redis_url: str) -> None:
    """Run as the image runs it (its ``--ws-max-size``, 1 MiB)."""
    assert image_ws_options() == ("--ws-max-size", "1048576")
    env = qm_env(redis_url, {"alice": "alice-pw"}, {"gpu": "gpu-token"})
    server = QueueManagerProcess(env, extra_args=image_ws_options()).start()
    try:
        client = httpx.Client(base_url=server.url)
        client.post("/api/auth/login", json={"user": "alice", "password": "alice-pw"}).raise_for_status()
        cookie = {"Cookie": f"qm_session={client.cookies['qm_session']}"}
        url = server.url.replace("http", "ws") + "/w/alice/ws?clientId=x"
        with connect(url, additional_headers=cookie, open_timeout=10, max_size=None) as socket:
            assert json.loads(socket.recv(timeout=10))["type"] == "status"
            socket.send(json.dumps({"type": "feature_flags", "data": {}}))  # what the frontend sends
            assert json.loads(socket.recv(timeout=10))["type"] == "feature_flags"
            with pytest.raises(ConnectionClosed) as closed:
                socket.send("x" * (2 * 1024 * 1024))
                socket.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
        started = time.monotonic()
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        assert time.monotonic() - started < 1
        client.close()
    finally:
        server.stop()
