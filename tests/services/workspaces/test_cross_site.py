"""A page on another site cannot make a participant's (or the admin's) browser change anything:
cross-site state changes and socket upgrades are refused, JSON routes take only JSON, and the
workshop's own pages keep working (same origin, directly and behind a proxy that drops the port)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.jobs import GRAPH
from tests.support.queue_manager_app import ADMIN, ADMIN_PASSWORD, LiveServer, live_server, settings_for

EVIL = "https://evil.example"


def own_origin(server: LiveServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def test_a_foreign_origin_cannot_queue_a_prompt_even_as_text_plain(alice: httpx.Client) -> None:
    body = json.dumps({"prompt": GRAPH})
    reply = alice.post(
        "/w/alice/api/prompt", content=body, headers={"Content-Type": "text/plain", "Origin": EVIL}
    )
    assert reply.status_code == 403
    assert "evil.example" in reply.json()["detail"]
    assert alice.get("/w/alice/api/queue").json() == {"queue_running": [], "queue_pending": []}


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_sec_fetch_site_from_another_site_is_refused(alice: httpx.Client, site: str) -> None:
    reply = alice.post("/w/alice/api/interrupt", json={}, headers={"Sec-Fetch-Site": site})
    assert reply.status_code == 403
    assert site in reply.json()["detail"]


def test_a_json_route_refuses_text_plain_with_415_naming_the_fix(
    server: LiveServer, alice: httpx.Client
) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"):
        own = {"Origin": own_origin(server), "Sec-Fetch-Site": "same-origin"}
        headers = {"Content-Type": content_type, **own}
        reply = alice.post("/w/alice/api/prompt", content=json.dumps({"prompt": GRAPH}), headers=headers)
        assert reply.status_code == 415, content_type
        assert "application/json" in reply.json()["detail"]
    unlabelled = alice.post(
        "/w/alice/api/queue", content=b'{"clear": true}', headers={"Sec-Fetch-Mode": "cors"}
    )
    assert unlabelled.status_code == 415


def test_a_script_that_is_no_browser_may_label_its_json_as_urllib_does(alice: httpx.Client) -> None:
    """ComfyUI's own scripts post JSON through urllib, which labels it form-encoded, with no
    Origin or Sec-Fetch-* header: no other site can have sent that, so it is taken."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = alice.post("/w/alice/api/prompt", content=json.dumps({"prompt": GRAPH}), headers=form)
    assert reply.status_code == 200, reply.text
    prompt_id = reply.json()["prompt_id"]
    assert alice.post("/w/alice/api/queue", content=json.dumps({"delete": [prompt_id]})).status_code == 200
    assert alice.get("/w/alice/api/queue").json() == {"queue_running": [], "queue_pending": []}


def test_the_own_pages_requests_pass(server: LiveServer, alice: httpx.Client) -> None:
    same = {"Origin": own_origin(server), "Sec-Fetch-Site": "same-origin"}
    assert alice.post("/w/alice/api/interrupt", json={}, headers=same).status_code == 200
    # The stock frontend posts settings and user data with fetch's default text/plain.
    settings = alice.post(
        "/w/alice/api/settings/Comfy.Locale", content=b'"en"', headers={**same, "Content-Type": "text/plain"}
    )
    assert settings.status_code == 200
    assert alice.get("/w/alice/api/settings/Comfy.Locale").json() == "en"
    # nginx passes Host without the port ($host): the host names still agree.
    proxied = {"Origin": own_origin(server), "Host": "127.0.0.1"}
    assert alice.post("/w/alice/api/interrupt", json={}, headers=proxied).status_code == 200
    # X-Forwarded-Host is anyone's to write (nginx drops it): it never makes a foreign Origin this site.
    forwarded = {"Origin": "https://workshop.example", "X-Forwarded-Host": "workshop.example"}
    assert alice.post("/w/alice/api/interrupt", json={}, headers=forwarded).status_code == 403


def test_login_logout_and_admin_routes_refuse_a_foreign_origin(
    app_factory: Callable[[], httpx.Client], alice: httpx.Client
) -> None:
    client = app_factory()
    body = {"user": "alice", "password": "alice-pw"}
    login = client.post("/api/auth/login", json=body, headers={"Origin": EVIL})
    assert login.status_code == 403
    assert "qm_session" not in client.cookies
    assert alice.post("/api/auth/logout", headers={"Origin": EVIL}).status_code == 403
    assert alice.get("/api/auth/me").status_code == 200
    basic = "Basic " + base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()
    pause = client.post("/api/admin/pause", headers={"Authorization": basic, "Origin": EVIL})
    assert pause.status_code == 403
    assert client.post("/api/admin/pause", headers={"Authorization": basic}).status_code == 204


def test_a_socket_from_a_foreign_origin_is_refused(server: LiveServer, alice: httpx.Client) -> None:
    cookie = {"Cookie": f"qm_session={alice.cookies['qm_session']}"}
    url = f"ws://127.0.0.1:{server.port}/w/alice/ws?clientId=x"
    for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers={**cookie, **headers}, open_timeout=5)
        assert refused.value.response.status_code == 403
    with connect(url, additional_headers={**cookie, "Origin": own_origin(server)}, open_timeout=5) as socket:
        assert json.loads(socket.recv(timeout=5))["type"] == "status"


def test_a_page_of_another_name_for_this_server_is_refused(
    server: LiveServer, alice: httpx.Client, app_factory: Callable[[], httpx.Client]
) -> None:
    """A site whose name resolves to this server (DNS rebinding, or the VPS's address typed) sends
    Origin and Host alike, both its own: comparing the two passed it. A browser's request or socket
    must name this site (QM_PUBLIC_URL's host, or a loopback name for the local stack)."""
    rebound = {"Host": "evil.example", "Origin": "http://evil.example"}
    refused = alice.post("/w/alice/api/interrupt", json={}, headers=rebound)
    assert refused.status_code == 403, refused.text
    assert "evil.example" in refused.json()["detail"] and "127.0.0.1" in refused.json()["detail"]
    body = {"user": "alice", "password": "wrong"}
    assert app_factory().post("/api/auth/login", json=body, headers=rebound).status_code == 403
    cookie = {"Cookie": f"qm_session={alice.cookies['qm_session']}"}
    url = f"ws://127.0.0.1:{server.port}/w/alice/ws?clientId=x"
    with pytest.raises(InvalidStatus) as socket_refused:
        connect(url, additional_headers={**cookie, **rebound}, open_timeout=5)
    assert socket_refused.value.response.status_code == 403
    for own in ("127.0.0.1", "localhost"):  # the local stack, on either loopback name
        same = {"Host": own, "Origin": f"http://{own}:{server.port}"}
        assert alice.post("/w/alice/api/interrupt", json={}, headers=same).status_code == 200
    script = {"Host": "evil.example"}  # no browser's marks: no other site can have sent it
    assert alice.post("/w/alice/api/interrupt", json={}, headers=script).status_code == 200


def test_the_sites_own_name_passes(redis_url: str, tmp_path: Path) -> None:
    settings = settings_for(redis_url, public_url="https://workshop.example")
    with live_server(settings, tmp_path / "files") as running:
        alice = httpx.Client(base_url=running.url, auth=("alice", "alice-pw"))  # its cookie is Secure
        site = {"Host": "workshop.example", "Origin": "https://workshop.example"}
        assert alice.post("/w/alice/api/interrupt", json={}, headers=site).status_code == 200
        other = {"Host": "workshop.example.evil.example", "Origin": "https://workshop.example.evil.example"}
        assert alice.post("/w/alice/api/interrupt", json={}, headers=other).status_code == 403
        alice.close()
