"""The routes that take big bodies (uploads up to QM_MAX_UPLOAD_BYTES, a worker's registration up to
QM_MAX_CATALOGUE_BYTES) answer a caller without the right credentials before reading the body: an
anonymous client streamed a 100 MB upload to disk, or a 32 MB registration into memory, and only
then heard 401, so a few at once filled the queue manager's disk or memory without any login."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.queue_manager_app import POOL_TOKEN, LiveServer

MULTIPART = "multipart/form-data; boundary=b"
PART = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'


def answer_before_the_body(
    url: str, path: str, content_type: str, headers: dict[str, str], size: int = 20 * 1024 * 1024
) -> int | None:
    """Send a request's head declaring ``size`` bytes (within the route's limit) and its first
    bytes, then wait (at most 5 s) for an answer: its status, or None when the server waits for the
    rest of the body."""
    parts = urlsplit(url)
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
    head += f"Content-Length: {size}\r\n{lines}\r\n"
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=5) as conn:
        conn.sendall(head.encode() + PART)
        try:
            reply = conn.recv(64)
        except TimeoutError:
            return None
    return int(reply.split(b" ", 2)[1])


def cookie_of(client: httpx.Client) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{name}={value}" for name, value in client.cookies.items())}


@pytest.mark.parametrize(
    ("path", "size"),
    [
        ("/w/alice/api/upload/image", 20 * 1024 * 1024),
        ("/w/alice/upload/mask", 20 * 1024 * 1024),
        ("/w/alice/api/prompt", 1024 * 1024),  # JSON routes: within QM_MAX_BODY_BYTES
        ("/w/alice/userdata/x", 1024 * 1024),
    ],
)
def test_a_workspace_body_without_the_owners_login_is_refused_before_it_is_read(
    server: LiveServer, bob: httpx.Client, path: str, size: int
) -> None:
    forged = {"Cookie": "qm_session=forged"}
    assert answer_before_the_body(server.url, path, MULTIPART, {}, size) == 401
    assert answer_before_the_body(server.url, path, MULTIPART, forged, size) == 401
    assert answer_before_the_body(server.url, path, MULTIPART, cookie_of(bob), size) == 403


def test_a_registration_without_a_pool_token_is_refused_before_its_body(server: LiveServer) -> None:
    path, kind = "/api/workers/register", "application/json"
    assert answer_before_the_body(server.url, path, kind, {}) == 401
    assert answer_before_the_body(server.url, path, kind, {"Authorization": "Bearer wrong"}) == 401


def test_the_job_and_admin_apis_refuse_a_body_before_reading_it(
    server: LiveServer, bob: httpx.Client
) -> None:
    size, kind = 1024 * 1024, "application/json"
    assert answer_before_the_body(server.url, "/api/jobs", kind, {}, size) == 401
    assert answer_before_the_body(server.url, "/api/admin/pause", kind, {}, size) == 401
    assert answer_before_the_body(server.url, "/api/admin/pause", kind, cookie_of(bob), size) == 403


def test_the_owners_upload_and_a_pools_registration_still_read_their_body(
    server: LiveServer, alice: httpx.Client
) -> None:
    """The check lets the right callers through to the body (they wait for it, then are answered)."""
    upload = "/w/alice/api/upload/image"
    assert answer_before_the_body(server.url, upload, MULTIPART, cookie_of(alice)) is None
    bearer = {"Authorization": f"Bearer {POOL_TOKEN}"}
    assert answer_before_the_body(server.url, "/api/workers/register", "application/json", bearer) is None
    stored = alice.post(upload, files={"image": ("ok.png", b"\x89PNG ok", "image/png")})
    assert stored.status_code == 200, stored.text


@pytest.mark.parametrize(
    "path", ["/api/leases/job-1/heartbeat", "/api/leases/job-1/complete", "/api/push/" + "c" * 20 + "/next"]
)
def test_the_lease_and_push_routes_refuse_a_body_without_a_token_before_reading_it(
    server: LiveServer, path: str
) -> None:
    """A lease or push call (bodies up to QM_MAX_BODY_BYTES) from a caller without a pool's token or a
    live reply token is answered 401 on its head; a pool's token still gets to send its body."""
    size, kind = 1024 * 1024, "application/json"
    assert answer_before_the_body(server.url, path, kind, {}, size) == 401
    assert answer_before_the_body(server.url, path, kind, {"Authorization": "Bearer wrong"}, size) == 401
    bearer = {"Authorization": f"Bearer {POOL_TOKEN}"}
    assert answer_before_the_body(server.url, path, kind, bearer, size) is None
