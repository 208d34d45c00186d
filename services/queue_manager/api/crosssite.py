"""Only the workshop's own pages may change anything: cross-site requests and sockets are refused.

A browser attaches the session cookie (and cached HTTP Basic credentials) to requests another site
makes it send, so every state-changing request (POST, PUT, PATCH, DELETE) and every WebSocket
upgrade is checked, as ComfyUI's own origin-only middleware does, but on every host name:

- ``Sec-Fetch-Site`` (sent by every current browser) must be ``same-origin`` or ``none`` (typed by
  the user), never ``cross-site`` or ``same-site`` (another port or subdomain);
- ``Origin``, when sent, must name the host the request came to: ``Host``, which nginx sets to the
  name the browser asked for (ports compared when both sides carry one, as nginx's ``$host`` drops
  it). ``X-Forwarded-Host`` is never consulted: a client can write it, and nginx drops it;
- and that name must be this site's: ``QM_PUBLIC_URL``'s host, or a loopback name (the local stack,
  tests). Another name whose DNS points at the server (rebinding, or the VPS's address typed) makes
  a page whose Origin and Host agree, both its own: its requests would otherwise pass, from every
  visitor's own address (a login spray past the per-address limits). No other site can make a
  browser send a loopback name to the server.

Clients that are no browser (workers, the CLI, curl) send neither header and are unaffected.

A body a browser sends to a JSON route must be declared ``application/json``: a ``text/plain``, form
or unlabelled body is what a page on another site can send without asking (no CORS preflight), so
it gets 415. A browser marks every such request (the Fetch standard sends ``Origin`` with every
request that is not a GET or HEAD, and current browsers add ``Sec-Fetch-*``); a request with none
of these marks is no browser's, so no other site can have made it, and its label is not checked:
ComfyUI's own scripts and test client post JSON that Python's urllib labels form-encoded.
The routes that take other bodies are named in ``OTHER_BODIES``: the login form, uploads, and
the two routes the stock ComfyUI frontend posts without a content type (settings, user data files).
"""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from services.queue_manager.api.errors import send_refusal

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALLOWED_SITES = frozenset({b"same-origin", b"none"})
OTHER_BODIES = re.compile(r"^(/api/auth/login|/w/[^/]+/(api/)?(upload/|settings|userdata))")
"""Paths whose bodies are not JSON: the login form, uploads (multipart), and settings and user data
files, which the stock frontend posts as ``text/plain`` (``fetch`` with a string body)."""
BROWSER_MARKS = (b"origin", b"sec-fetch-site", b"sec-fetch-mode", b"sec-fetch-dest")
JSON_TYPE = re.compile(r"^application/([\w.+-]+\+)?json\s*(;|$)", re.IGNORECASE)


def _host_matches(origin: str, host: str) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) names ``host`` (``host[:port]``)."""
    try:
        left, right = urlsplit(origin), urlsplit(f"//{host}")
        if left.port is None or right.port is None:
            return bool(left.hostname) and left.hostname == right.hostname
        return left.hostname == right.hostname and left.port == right.port
    except ValueError:  # a port that is no number
        return False


LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


@functools.cache
def site_names(public_url: str) -> frozenset[str]:
    """The host names a browser may call this site by: ``QM_PUBLIC_URL``'s and the loopback ones."""
    name = urlsplit(public_url).hostname
    return LOOPBACK | ({name} if name else set())


def cross_site_problem(headers: dict[bytes, bytes], names: frozenset[str] = LOOPBACK) -> str | None:
    """Why a request or socket with these headers comes from another site, or None when it does not;
    ``names``: this site's host names (``site_names``)."""
    site = headers.get(b"sec-fetch-site")
    if site is not None and site not in ALLOWED_SITES:
        return (
            f"cross-site request refused (Sec-Fetch-Site: {site.decode('latin-1')}): "
            "use the workshop's own pages for this"
        )
    origin = headers.get(b"origin")
    if origin is None:
        return None
    host = headers.get(b"host", b"").decode("latin-1")
    text = origin.decode("latin-1")
    if not _host_matches(text, host):
        return f"cross-site request refused: Origin {text!r} is not this site ({host or 'no Host'})"
    if urlsplit(text).hostname not in names:
        return (
            f"request refused: {text!r} is another name for this server; open the workshop at "
            f"{' or '.join(sorted(names - LOOPBACK) or sorted(names))}"
        )
    return None


def from_browser(headers: dict[bytes, bytes]) -> bool:
    """Whether a browser sent this request (a script or worker sends none of these headers)."""
    return any(name in headers for name in BROWSER_MARKS)


def content_problem(path: str, headers: dict[bytes, bytes]) -> str | None:
    """Why a browser's state-changing request body is refused on a JSON route, or None."""
    if OTHER_BODIES.match(path) or not from_browser(headers):
        return None
    declared = headers.get(b"content-type")
    if declared is None:
        has_body = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers
        return "send the body as JSON with 'Content-Type: application/json'" if has_body else None
    if JSON_TYPE.match(declared.decode("latin-1")):
        return None
    return f"send the body as JSON with 'Content-Type: application/json', not {declared.decode('latin-1')!r}"


def _names(scope: Scope) -> frozenset[str]:
    """This site's host names, from the started app's settings (loopback ones before it started)."""
    settings = getattr(scope["app"].state, "settings", None)
    return site_names(settings.public_url) if settings is not None else LOOPBACK


class CrossSite:
    """ASGI middleware: 403 for a cross-site state change, 415 for a JSON route's non-JSON body,
    a refused handshake (closed before accept, HTTP 403) for a cross-site WebSocket."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            problem = cross_site_problem(dict(scope["headers"]), _names(scope))
            if problem is not None:
                await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
                return
        elif kind == "http" and scope["method"] in UNSAFE_METHODS:
            headers = dict(scope["headers"])
            problem = cross_site_problem(headers, _names(scope))
            status = 403
            if problem is None:
                problem, status = content_problem(scope["path"], headers), 415
            if problem is not None:
                await send_refusal(send, status, problem)
                return
        await self.app(scope, receive, send)
