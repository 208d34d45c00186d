"""Anyone without a login reaches nothing but the login page: the stock frontend's files (its 11 MB
bundle, ~3 MB gzipped by nginx per request) are served to logged-in browsers only, so an anonymous
loop cannot spend the server's CPU and bandwidth on them. The login page keeps its tab icon."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from services.queue_manager.workspaces.frontend import static_root


def bundle() -> str:
    return max((static_root() / "assets").glob("*.js"), key=lambda p: p.stat().st_size).name


def test_nobody_gets_the_frontends_files(app_factory: Callable[[], httpx.Client]) -> None:
    anonymous = app_factory()
    for path in (f"/w/alice/assets/{bundle()}", f"/assets/{bundle()}", f"/w/nobody/assets/{bundle()}",
                 "/w/alice/scripts/api.js", "/assets/images/favicon_progress_16x16/frame_0.png"):  # fmt: skip
        reply = anonymous.get(path)
        assert reply.status_code == 401, (path, reply.status_code)
        assert len(reply.content) < 200 and "/w/login" in reply.json()["detail"]
    assert anonymous.get("/w/login").status_code == 200
    assert anonymous.get("/w/login.js").status_code == 200
    assert anonymous.get("/favicon.ico").status_code == 200  # the login page's tab icon


def test_a_logged_in_browser_gets_them(alice: httpx.Client) -> None:
    page = alice.get("/w/alice/")
    script = re.search(r'src="\./(assets/index-[^"]+\.js)"', page.text)
    assert script is not None and alice.get(f"/w/alice/{script.group(1)}").status_code == 200
    assert alice.get("/assets/images/favicon_progress_16x16/frame_0.png").status_code == 200
