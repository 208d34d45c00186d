"""The generated nginx config, run by real nginx on loopback in front of a real queue manager:
routing, TLS redirect, security headers, WebSocket upgrade, upload limit, the worker-only port."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from devkit.nginx import nginx_test, running_nginx, self_signed
from devkit.qm_server import QueueManagerProcess
from devkit.servers import RedisServer, free_port, wait_until
from infra.templates.nginx import NginxSpec, Tls, nginx_site

pytest.importorskip("services.queue_manager.main")
pytestmark = pytest.mark.slow
PASSWORD = "pw-ada-0123456789"
WORKER_TOKEN = "worker-token-0123456789"


@dataclass
class Site:
    https: str
    http: str
    workers: str


@pytest.fixture(scope="module")
def queue_manager(redis_proc: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The queue manager process as behind the VPS's nginx; one that exits at start fails naming its
    log at once, and its output goes to that file (a pipe nobody read could fill and stall it)."""
    env = {
        "QM_ENV": "development",
        "QM_REDIS_URL": redis_proc.url,
        "QM_PARTICIPANTS": json.dumps({"ada": PASSWORD}),
        "QM_WORKER_TOKENS": json.dumps({"gpu": WORKER_TOKEN}),
        "QM_MAX_BODY_BYTES": str(100 * 1024 * 1024),  # so any 413 below is nginx's
        "QM_PUBLIC_URL": "https://localhost",
    }
    log = tmp_path_factory.mktemp("queue-manager") / "log"
    server = QueueManagerProcess(
        env, log_path=log, extra_args=("--proxy-headers", "--forwarded-allow-ips", "*")
    ).start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def site(queue_manager: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("nginx")
    cert, key = self_signed(directory)
    http, https, workers = free_port(), free_port(), free_port()
    spec = NginxSpec(
        "localhost", upstream=queue_manager, tls=Tls(str(cert), str(key)), http_port=http, https_port=https,
        worker_port=workers, max_upload_mb=1,
    )  # fmt: skip
    config = nginx_site(spec)
    assert nginx_test(directory / "check", config).returncode == 0
    with running_nginx(directory / "run", config):
        urls = Site(f"https://127.0.0.1:{https}", f"http://127.0.0.1:{http}", f"http://127.0.0.1:{workers}")
        wait_until(lambda: _client().get(f"{urls.https}/health").status_code == 200, 60, "nginx")
        yield urls


def _client() -> httpx.Client:
    return httpx.Client(verify=False, timeout=10)


def test_the_site_answers_through_tls_with_security_headers(site: Site) -> None:
    response = _client().get(f"{site.https}/health")
    assert response.json() == {"status": "ok"}
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_plain_http_redirects_to_https(site: Site) -> None:
    response = _client().get(f"{site.http}/w/ada/")
    assert response.status_code == 301
    assert response.headers["location"].startswith("https://") and response.headers["location"].endswith(
        "/w/ada/"
    )


def test_login_and_the_api_reach_the_queue_manager(site: Site) -> None:
    client = _client()
    login = client.post(f"{site.https}/api/auth/login", json={"user": "ada", "password": PASSWORD})
    assert login.status_code == 200 and login.json()["user"] == "ada"
    assert (
        client.post(f"{site.https}/api/auth/login", json={"user": "ada", "password": "no"}).status_code == 401
    )


def test_the_event_websocket_upgrades_through_nginx(site: Site) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    basic = base64.b64encode(f"ada:{PASSWORD}".encode()).decode()
    uri = site.https.replace("https://", "wss://") + "/api/events"
    with connect(
        uri, ssl=context, additional_headers={"Authorization": f"Basic {basic}"}, open_timeout=10
    ) as ws:
        assert ws.response is not None and ws.response.status_code == 101
        ws.ping().wait(5)


def test_uploads_over_the_limit_are_refused_by_nginx(site: Site) -> None:
    client = _client()
    too_big = client.post(f"{site.https}/api/jobs", content=b"x" * (2 * 1024 * 1024))
    assert too_big.status_code == 413 and too_big.headers["server"] == "nginx"
    small = client.post(f"{site.https}/api/jobs", content=b"{}", headers={"content-type": "application/json"})
    assert small.status_code != 413


def test_metrics_are_not_public(site: Site) -> None:
    assert _client().get(f"{site.https}/metrics").status_code == 404


def test_the_worker_port_serves_only_the_worker_api(site: Site) -> None:
    client = _client()
    assert client.get(f"{site.workers}/health").status_code == 200
    assert client.get(f"{site.workers}/api/admin/queue").status_code == 404
    assert client.get(f"{site.workers}/w/ada/").status_code == 404
    register = client.post(
        f"{site.workers}/api/workers/register", headers={"Authorization": f"Bearer {WORKER_TOKEN}"}, json={}
    )
    assert register.status_code not in (404, 413)  # reached the queue manager (which validates the body)


def test_a_websocket_without_login_is_refused_by_the_queue_manager(site: Site) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    uri = site.https.replace("https://", "wss://") + "/api/events"
    with (
        pytest.raises((InvalidStatus, ConnectionClosed)) as raised,
        connect(uri, ssl=context, open_timeout=10) as ws,
    ):
        ws.recv(timeout=5)
    if isinstance(raised.value, InvalidStatus):
        assert raised.value.response.status_code == 403
    else:
        assert isinstance(raised.value, ConnectionClosed)
        assert raised.value.rcvd is not None and raised.value.rcvd.code == 1008


def test_workspace_and_admin_pages_route_to_the_queue_manager(site: Site) -> None:
    client = _client()
    login = client.get(f"{site.https}/w/login")
    assert login.status_code == 200 and "text/html" in login.headers["content-type"]
    # Not logged in: the queue manager sends the browser to its login page, keeping where it was going.
    for path in ("/w/ada/", "/admin/"):
        response = client.get(f"{site.https}{path}")
        assert (response.status_code, response.headers["location"]) == (303, f"/w/login?next={path}")


def test_the_frontend_bundle_is_sent_compressed(site: Site) -> None:
    from services.queue_manager.workspaces.frontend import static_root

    bundle = max((static_root() / "assets").glob("*.js"), key=lambda p: p.stat().st_size)
    headers = {"Accept-Encoding": "gzip"}  # to a logged-in browser: nobody else gets the frontend's files
    response = _client().get(
        f"{site.https}/w/ada/assets/{bundle.name}", headers=headers, auth=("ada", PASSWORD)
    )
    assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
    assert len(response.content) == bundle.stat().st_size
    assert response.num_bytes_downloaded < bundle.stat().st_size / 2


def test_the_sites_own_pages_pass_the_cross_site_check_through_nginx(site: Site) -> None:
    """nginx hands the queue manager ``Host`` without the port; the browser's Origin carries it."""
    client = _client()
    body = {"user": "ada", "password": PASSWORD}
    own = client.post(f"{site.https}/api/auth/login", json=body, headers={"Origin": site.https})
    assert own.status_code == 200
    foreign = client.post(
        f"{site.https}/api/auth/login", json=body, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    uri = site.https.replace("https://", "wss://") + "/api/events"
    basic = base64.b64encode(f"ada:{PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}", "Origin": site.https, "Sec-Fetch-Site": "same-origin"}
    with connect(uri, ssl=context, additional_headers=headers, open_timeout=10) as ws:
        assert ws.response is not None and ws.response.status_code == 101


def test_another_name_for_the_server_does_not_pass_the_cross_site_check(site: Site) -> None:
    """A page of a name whose DNS points at the server (rebinding) sends its own name as Origin and
    Host; nginx serves any name on the site's port, so the queue manager refuses names not its own."""
    body = {"user": "ada", "password": PASSWORD}
    rebound = {"Host": "evil.example", "Origin": "https://evil.example", "Sec-Fetch-Site": "same-origin"}
    login = _client().post(f"{site.https}/api/auth/login", json=body, headers=rebound)
    assert login.status_code == 403 and "another name for this server" in login.text


def test_a_forwarded_host_the_client_writes_does_not_pass_the_cross_site_check(site: Site) -> None:
    """Another site's script cannot make the queue manager take its Origin for this site by adding
    X-Forwarded-Host: nginx drops it, and the queue manager compares Origin with Host alone."""
    client = _client()
    body = {"user": "ada", "password": PASSWORD}
    forged = {"Origin": "https://evil.example", "X-Forwarded-Host": "evil.example"}
    login = client.post(f"{site.https}/api/auth/login", json=body, headers=forged)
    assert login.status_code == 403 and "evil.example" in login.text
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    basic = base64.b64encode(f"ada:{PASSWORD}".encode()).decode()
    uri = site.https.replace("https://", "wss://") + "/api/events"
    with (
        pytest.raises((InvalidStatus, ConnectionClosed)),
        connect(uri, ssl=context, additional_headers={"Authorization": f"Basic {basic}", **forged}) as ws,
    ):
        ws.recv(timeout=5)


class _EchoHeaders(BaseHTTPRequestHandler):
    """An upstream that answers every request with the headers it received, as JSON."""

    def do_GET(self) -> None:
        body = json.dumps({name.lower(): value for name, value in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.mark.parametrize("path", ["/api/auth/me", "/api/workers/x", "/api/events", "/w/ada/ws"])
def test_nginx_hands_the_upstream_no_forwarded_host_a_client_wrote(
    tmp_path_factory: pytest.TempPathFactory, path: str
) -> None:
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHeaders)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    directory = tmp_path_factory.mktemp("nginx-echo")
    cert, key = self_signed(directory)
    https, workers = free_port(), free_port()
    spec = NginxSpec(
        "localhost", upstream=f"127.0.0.1:{echo.server_address[1]}", tls=Tls(str(cert), str(key)),
        http_port=free_port(), https_port=https, worker_port=workers, max_upload_mb=1,
    )  # fmt: skip
    written = {"X-Forwarded-Host": "evil.example", "X-Forwarded-For": "198.51.100.7"}
    try:
        with running_nginx(directory / "run", nginx_site(spec)):
            url = f"https://127.0.0.1:{https}"
            wait_until(lambda: _client().get(f"{url}/health").status_code == 200, 60, "nginx")
            seen = [_client().get(f"{url}{path}", headers=written).json()]
            if path.startswith("/api/workers/"):
                seen.append(_client().get(f"http://127.0.0.1:{workers}{path}", headers=written).json())
    finally:
        echo.shutdown()
    for headers in seen:
        assert "x-forwarded-host" not in headers, headers
        assert headers["x-forwarded-for"] == "127.0.0.1"  # set by nginx, as before


@pytest.mark.parametrize("path", ["/api/events", "/w/ada/ws", "/w/ada/api/ws"])
@pytest.mark.parametrize(
    "marks",
    [{"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}],
)
def test_a_socket_opened_by_another_site_is_refused_through_nginx(
    site: Site, path: str, marks: dict[str, str]
) -> None:
    """Cross-site WebSocket hijacking: another site's page opening ada's socket with her cached
    credentials gets no socket, whatever nginx forwards."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    basic = base64.b64encode(f"ada:{PASSWORD}".encode()).decode()
    uri = site.https.replace("https://", "wss://") + path
    with (
        pytest.raises((InvalidStatus, ConnectionClosed)) as raised,
        connect(
            uri, ssl=context, additional_headers={"Authorization": f"Basic {basic}", **marks}, open_timeout=30
        ) as ws,
    ):
        ws.recv(timeout=5)
    if isinstance(raised.value, InvalidStatus):
        assert raised.value.response.status_code == 403
    else:
        assert raised.value.rcvd is not None and raised.value.rcvd.code == 1008


def test_api_docs_are_not_public_and_pages_keep_their_csp(site: Site) -> None:
    client = _client()
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(f"{site.https}{path}").status_code == 401, path
        assert client.get(f"{site.workers}{path}").status_code == 404, path
    login = client.get(f"{site.https}/w/login")
    assert "script-src 'self'" in login.headers["content-security-policy"]


def _status_of_raw_path(url: str, path: str, headers: dict[str, str] | None = None) -> int:
    """The status nginx answers a request line carrying ``path`` exactly as written (an HTTP client
    would normalise the dots and escapes that are the point here)."""
    parts = urlsplit(url)
    lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{lines}Connection: close\r\n\r\n".encode()
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10) as plain:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn = context.wrap_socket(plain, server_hostname="localhost") if parts.scheme == "https" else plain
        conn.sendall(request)
        head = conn.recv(64)
    return int(head.split(b" ", 2)[1])


def test_path_tricks_reach_no_route_a_prefix_guards(site: Site) -> None:
    """nginx guards by path: the public site never serves /metrics, the tailnet's worker port only the
    worker API. Doubled slashes, dot segments, escaped dots and slashes, backslashes and a guarded
    path after an allowed prefix reach neither, even with the admin's credentials."""
    admin = {"Authorization": "Basic " + base64.b64encode(b"admin:development-only-secret").decode()}
    assert _status_of_raw_path(site.https, "/api/admin/queue", admin) == 200  # the credentials work
    for path in ("/api/admin/queue", "//api/admin/queue", "/./api/admin/queue", "/api/workers/../admin/queue",
                 "/api/workers/%2e%2e/admin/queue", "/api/workers/..%2Fadmin%2Fqueue",
                 "/api/leases/..%2f..%2fapi%2fadmin%2fqueue", "/api/workers/..%252Fadmin/queue",
                 "/api/workers/..;/admin/queue", "/api/workers/..\\..\\api\\admin\\queue",
                 "/health%2F..%2Fapi%2Fadmin%2Fqueue", "/metrics/../api/admin/queue", "/api%2Fadmin%2Fqueue",
                 "/api/workers/%2e%2e%2f%2e%2e%2fw/ada/", "/docs"):  # fmt: skip
        assert _status_of_raw_path(site.workers, path, admin) == 404, path
    for path in ("/metrics", "//metrics", "/./metrics", "/%6detrics", "/w/../metrics",
                 "/w/x/..%2F..%2Fmetrics", "/api/workers/..%2F..%2Fmetrics", "/api/workers/../../metrics",
                 "/%2fmetrics", "/metrics/.", "/METRICS", "/metrics;x", "/metrics%3F",
                 "/metrics?x=1"):  # fmt: skip
        assert _status_of_raw_path(site.https, path) in (400, 404), path
    for path in ("/metrics/", "/metrics%2F"):  # the queue manager's redirect back to /metrics, guarded
        assert _status_of_raw_path(site.https, path) in (307, 404), path


def test_a_client_cannot_pick_its_own_address_for_the_login_limit(site: Site) -> None:
    """Run last: it spends this address's failed logins for one name. As in production, the queue
    manager trusts the X-Forwarded-For that nginx sets; a client's own X-Forwarded-For must not reset
    its count (QM_LOGIN_FAILURES_PER_USER, 10 by default)."""
    client = _client()
    statuses = [
        client.post(
            f"{site.https}/api/auth/login",
            json={"user": "guess", "password": "wrong"},
            headers={"X-Forwarded-For": f"198.51.100.{n}"},
        ).status_code
        for n in range(12)
    ]
    assert 429 in statuses, statuses
