"""What the site shows and to whom: a Content-Security-Policy on every page, participants' files never
rendered as pages of the site, the API docs only for the admin, and /ready saying only ready or not."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

import httpx
import pytest

from services.queue_manager.workspaces.frontend import static_root
from tests.support.queue_manager_app import ADMIN, ADMIN_PASSWORD, LiveServer, login

SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>'


def importmap_source() -> str:
    html = (static_root() / "index.html").read_text()
    body = re.search(r'<script type="importmap">(.*?)</script>', html, re.DOTALL)
    assert body is not None
    return f"'sha256-{base64.b64encode(hashlib.sha256(body.group(1).encode()).digest()).decode()}'"


def test_every_page_carries_the_content_security_policy(alice: httpx.Client, server: LiveServer) -> None:
    admin = login(httpx.Client(base_url=server.url), ADMIN, ADMIN_PASSWORD)
    for client, path in [(alice, "/w/login"), (alice, "/w/alice/"), (admin, "/admin/"), (alice, "/health"),
                         (alice, "/w/alice/api/queue"), (alice, "/w/alice/assets/favicon.ico")]:  # fmt: skip
        reply = client.get(path)
        policy = reply.headers.get("content-security-policy", "")
        assert "script-src 'self'" in policy and "object-src 'none'" in policy, path
        assert "frame-ancestors 'self'" in policy and reply.headers["x-content-type-options"] == "nosniff"
    page = alice.get("/w/alice/").headers["content-security-policy"]
    assert importmap_source() in page  # the frontend's inline import map, allowed by its hash only
    assert "'unsafe-inline'" not in page.split("script-src")[1].split(";")[0]
    assert "<script>" not in alice.get("/w/login").text  # the login form's script is a file now
    admin.close()


def upload(client: httpx.Client, name: str, data: bytes, media_type: str) -> str:
    reply = client.post("/w/alice/api/upload/image", files={"image": (name, data, media_type)})
    assert reply.status_code == 200, reply.text
    saved: str = reply.json()["name"]
    return saved


@pytest.mark.parametrize(
    ("name", "data", "media_type"),
    [("evil.svg", SVG, "image/svg+xml"), ("evil.html", b"<script>alert(1)</script>", "text/html"),
     ("notes.txt", b"hello", "text/plain"), ("blob.bin", b"\x00\x01", "application/octet-stream")],
)  # fmt: skip
def test_uploaded_svg_html_and_other_non_media_are_never_served_inline(
    alice: httpx.Client, name: str, data: bytes, media_type: str
) -> None:
    upload(alice, name, data, media_type)
    reply = alice.get("/w/alice/api/view", params={"filename": name, "type": "input"})
    assert reply.status_code == 200 and reply.content == data
    assert reply.headers["content-disposition"].startswith("attachment;")
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in reply.headers["content-security-policy"]
    assert "html" not in reply.headers["content-type"]


def test_images_are_shown_in_place_and_any_name_fits_the_header(alice: httpx.Client) -> None:
    for given in ("cat.png", '😺 Ärger "q".png'):
        name = upload(alice, given, b"\x89PNG\r\n\x1a\n", "image/png")
        reply = alice.get("/w/alice/api/view", params={"filename": name, "type": "input"})
        assert reply.status_code == 200
        assert reply.headers["content-disposition"].startswith("inline;")
        assert "filename*=UTF-8''" in reply.headers["content-disposition"]


def test_api_docs_are_for_the_admin_only(
    app_factory: Callable[[], httpx.Client], alice: httpx.Client
) -> None:
    nobody, admin = app_factory(), login(app_factory(), ADMIN, ADMIN_PASSWORD)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert nobody.get(path).status_code == 401, path
        assert alice.get(path).status_code == 403, path
        assert admin.get(path).status_code == 200, path
    assert "/api/admin/queue" in admin.get("/openapi.json").json()["paths"]


def test_ready_says_only_whether_it_is_ready(alice: httpx.Client, server: LiveServer) -> None:
    store = server.app.state.store
    real_ping = store.redis.ping

    async def unreachable() -> None:
        raise ConnectionError("Error 111 connecting to redis-secret-host:6379. Connection refused.")

    assert alice.get("/ready").json() == {"status": "ready"}
    store.redis.ping = unreachable
    try:
        reply = alice.get("/ready")
    finally:
        store.redis.ping = real_ping
    assert reply.status_code == 503 and reply.json() == {"detail": "not ready"}
