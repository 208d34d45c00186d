"""Security headers on every answer of the queue manager, pages and API alike.

The Content-Security-Policy lets a page run only the platform's own scripts (the stock ComfyUI
frontend's bundle, its import map by hash, the workers' web extensions served from this origin) and
talk only to this origin; nothing can frame a page from elsewhere, and no plugin content runs.
Styles may be inline: the frontend's component library injects them at run time. The policy was
checked against frontend 1.27.10 in headless Chromium (tests/e2e: no violation reported).

A route that needs another policy sets its own header (``/view`` sandboxes user files, the admin's
API docs load Swagger UI); the middleware only adds what a response does not already carry.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from functools import cache

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.queue_manager.workspaces.frontend import static_root

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL)


def script_hashes(html: str) -> list[str]:
    """CSP sources for each inline ``<script>`` of a page (the frontend's import map)."""
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in INLINE_SCRIPT.findall(html)
    ]


def policy(hashes: Iterable[str]) -> str:
    scripts = " ".join(["'self'", *hashes])
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {scripts}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "media-src 'self' data: blob:",
            "font-src 'self' data:",
            "connect-src 'self' data: blob:",
            "worker-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'self'",
        ]
    )


@cache
def page_policy() -> str:
    """The policy of every page: the installed frontend's inline import map allowed by its hash."""
    return policy(script_hashes((static_root() / "index.html").read_text()))


class SecurityHeaders:
    """ASGI middleware adding the CSP, ``nosniff`` and a same-origin referrer policy to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        defaults = [
            (b"content-security-policy", page_policy().encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
        ]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in defaults if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
