"""Property-based fuzzing of every HTTP route of the queue manager app (participant workspace,
participant API, worker and admin APIs, pages): nested, oversized, non-ASCII, NUL and wrong-typed
values in the path, the query, the body and multipart forms (file names and fields, names that
clash with a stored file), with malformed credentials and cookies, as a participant, the admin, a
worker or nobody. Whatever is sent, the answer is never a 5xx. The WebSocket routes get such
handshakes and then text, JSON and binary frames: no handshake is answered with a 5xx and no
socket's handler crashes (an unhandled exception in the server's log). Bounded: a few examples per
route, no deadline.

The routes come from the app itself, so a new route is fuzzed without touching this file.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from devkit.doubles.comfyui_nodes import catalogue
from devkit.servers import RedisServer, wait_until
from services.queue_manager.main import create_app
from tests.support.queue_manager_app import (
    ADMIN,
    ADMIN_PASSWORD,
    WORKER_AUTH,
    LiveServer,
    live_server,
    login,
    register_worker,
    settings_for,
)

pytestmark = pytest.mark.slow
PARAM = re.compile(r"\{(\w+)(:path)?\}")
QUERY_NAMES = [
    *("filename", "subfolder", "type", "preview", "channel", "max_items", "offset", "dir", "recurse"),
    *("split", "full_info", "overwrite", "clientId", "seconds", "user", "state", "limit"),
]


def http_routes(routes: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path template) of every HTTP route, through FastAPI's included routers."""
    for route in routes:
        if isinstance(route, APIRoute):
            for method in sorted(route.methods or ()):
                yield method, prefix + route.path
        elif hasattr(route, "original_router"):
            yield from http_routes(route.original_router.routes, prefix + route.include_context.prefix)


def socket_routes(routes: Any, prefix: str = "") -> Iterator[str]:
    """The path template of every WebSocket route, through FastAPI's included routers."""
    for route in routes:
        if isinstance(route, APIWebSocketRoute):
            yield prefix + route.path
        elif hasattr(route, "original_router"):
            yield from socket_routes(route.original_router.routes, prefix + route.include_context.prefix)


ROUTES = sorted(set(http_routes(create_app().routes)))
SOCKET_ROUTES = sorted(set(socket_routes(create_app().routes)))

BODY_KEYS = [
    *("prompt", "prompt_id", "delete", "clear", "client_id", "user", "password", "priority"),
    *("worker_id", "capabilities", "front", "extra_data", "number"),
]

# Values a participant can type or a script can send: the edges found before, and anything else.
nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            ".",
            "..",
            "a//b.png",
            "²",
            "-1",
            "1e999",
            "é" * 200,
            "x" * 300,
            "a\x00b",
            "webp;²",
            "alice",
            "../bob",
            "%2e%2e",
            "null",
            "[]",
            "{}",
            "🙂.png",
            "x.png [output]",
            "a.png",
        ]
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | nasty_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(nasty_text, inner, max_size=4),
    max_leaves=20,
)
deep_json = st.integers(min_value=100, max_value=50_000).map(lambda n: b"[" * n + b"]" * n)
bodies = st.one_of(
    st.none(),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(
        st.sampled_from(
            [
                "prompt",
                "prompt_id",
                "delete",
                "clear",
                "client_id",
                "user",
                "password",
                "priority",
                "worker_id",
                "capabilities",
                "front",
                "extra_data",
            ]
        ),
        json_values,
        max_size=4,
    ).map(lambda value: json.dumps(value).encode()),
    deep_json,
    st.binary(max_size=64),
)


# Credentials and cookies as a client may mangle them: each replaces the client's own.
hostile_headers = st.sampled_from(
    [
        {},
        {b"Authorization": b"Basic \xff\xfe"},
        {b"Authorization": b"Basic " + base64.b64encode(b"\xff:\xfe")},
        {b"Authorization": b"Basic " + base64.b64encode(b"alice")},
        {b"Authorization": b"Bearer"},
        {b"Authorization": b"Bearer \xc3\xa9"},
        {b"Cookie": b"qm_session=" + b"x" * 4000},
        {b"Cookie": b"qm_session=a.b.c"},
    ]
)
# A multipart form as the upload routes take it: the file's name and the other fields.
forms = st.none() | st.tuples(
    nasty_text,
    st.dictionaries(
        st.sampled_from(["subfolder", "type", "overwrite", "original_ref"]), nasty_text, max_size=3
    ),
)


@pytest.fixture(scope="module")
def fuzz_server(redis_proc: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    config = settings_for(redis_proc.url, key_prefix="fuzz", claim_wait_max_seconds=0.2)
    with live_server(config, tmp_path_factory.mktemp("files")) as running:
        yield running


@pytest.fixture(scope="module")
def clients(fuzz_server: LiveServer) -> Iterator[dict[str, httpx.Client]]:
    made = {
        "alice": login(httpx.Client(base_url=fuzz_server.url, timeout=20), "alice"),
        "admin": login(httpx.Client(base_url=fuzz_server.url, timeout=20), ADMIN, ADMIN_PASSWORD),
        "worker": httpx.Client(base_url=fuzz_server.url, timeout=20, headers=WORKER_AUTH),
        "nobody": httpx.Client(base_url=fuzz_server.url, timeout=20),
    }
    register_worker(made["nobody"], catalogue(["a.png"]))
    made["alice"].post("/w/alice/api/upload/image", files={"image": ("a.png", b"\x89PNG\r\n", "image/png")})
    yield made
    for client in made.values():
        client.close()


def fill(template: str, values: list[str]) -> str:
    """The path with each ``{param}`` replaced (``{user}`` mostly by the logged-in participant)."""
    given = iter(values)

    def one(match: re.Match[str]) -> str:
        value = next(given)
        if match.group(1) == "user" and not value.startswith("~"):
            return "alice"
        return quote(value, safe="/" if match.group(2) else "")

    return PARAM.sub(one, template)


@pytest.mark.parametrize(("method", "template"), ROUTES)
def test_no_input_gets_a_server_error(clients: dict[str, httpx.Client], method: str, template: str) -> None:
    if template == "/api/admin/drain":
        pytest.skip("waits by design (up to its 'seconds'); fuzzed by test_schema without waiting")

    @given(
        who=st.sampled_from(sorted(clients)),
        params=st.lists(nasty_text, min_size=4, max_size=4),
        query=st.dictionaries(st.sampled_from(QUERY_NAMES) | st.text(max_size=8), nasty_text, max_size=4),
        body=bodies,
        content_type=st.sampled_from(["application/json", "text/plain", None]),
        extra=hostile_headers,
        form=forms,
    )
    @settings(
        max_examples=12, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def send(
        who: str,
        params: list[str],
        query: dict[str, str],
        body: bytes | None,
        content_type: str | None,
        extra: dict[bytes, bytes],
        form: tuple[str, dict[str, str]] | None,
    ) -> None:
        labelled = {b"Content-Type": content_type.encode()} if content_type and body is not None else {}
        headers = {**labelled, **extra}
        path = fill(template, params)
        client = clients[who]
        if form is not None and method == "POST":
            name, fields = form
            files = {"image": (name, b"\x89PNG\r\n\x1a\n", "image/png")}
            reply = client.post(path, params=query, files=files, data=fields, headers=extra)
        else:
            reply = client.request(method, path, params=query, content=body, headers=headers)
        assert reply.status_code < 500, (
            f"{method} {path} {query} as {who}: {reply.status_code} {reply.text[:300]}"
        )

    send()


frames = st.one_of(
    st.binary(max_size=32),
    nasty_text,
    json_values.map(json.dumps),
    st.just(json.dumps({"type": "feature_flags", "data": {}})),
)


class Crashes(logging.Handler):
    """Unhandled exceptions the server logs (uvicorn's "Exception in ASGI application")."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(self.format(record))


@pytest.fixture
def crashes() -> Iterator[Crashes]:
    handler, logger = Crashes(), logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def sockets_open(server: LiveServer) -> bool:
    assert server.server is not None
    return any(isinstance(c, WebSocketsSansIOProtocol) for c in server.server.server_state.connections)


def credentials(client: httpx.Client) -> dict[str, str]:
    """What a client logs in with on a socket's handshake: its session cookie or its bearer token."""
    if (session := client.cookies.get("qm_session")) is not None:
        return {"Cookie": f"qm_session={session}"}
    return {"Authorization": client.headers["authorization"]} if "authorization" in client.headers else {}


@pytest.mark.parametrize("template", SOCKET_ROUTES)
def test_no_handshake_or_frame_crashes_a_socket(
    clients: dict[str, httpx.Client], fuzz_server: LiveServer, crashes: Crashes, template: str
) -> None:
    @given(
        who=st.sampled_from(sorted(clients)),
        params=st.lists(nasty_text, min_size=4, max_size=4),
        query=st.dictionaries(st.sampled_from(["clientId", "x"]), nasty_text, max_size=2),
        sent=st.lists(frames, max_size=4),
    )
    @settings(
        max_examples=12, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def send(who: str, params: list[str], query: dict[str, str], sent: list[str | bytes]) -> None:
        crashes.seen.clear()
        url = f"ws://127.0.0.1:{fuzz_server.port}{fill(template, params)}?{urlencode(query)}"
        try:
            with connect(url, additional_headers=credentials(clients[who]), open_timeout=10) as socket:
                for frame in sent:
                    socket.send(frame)
        except InvalidStatus as refused:
            assert refused.response.status_code < 500, f"{url} as {who}: {refused.response.status_code}"
        except ConnectionClosed:
            pass  # the server may close it: not logged in, someone else's workspace
        wait_until(lambda: not sockets_open(fuzz_server), timeout=10, what="the server to end the socket")
        assert not crashes.seen, f"{url} as {who}, sent {sent!r}: {crashes.seen[0][-600:]}"

    send()
