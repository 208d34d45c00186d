"""The workspace pages: ``/w/login``, ``/w/`` (to your own workspace) and ``/w/<user>/`` with its assets."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.requests import HTTPConnection

from services.queue_manager.workspaces.deps import session_user
from services.queue_manager.workspaces.frontend import asset_response, index_response

pages = APIRouter()
assets = APIRouter()
root_assets = APIRouter()
LOGIN_PAGE = files("services.queue_manager.workspaces").joinpath("login.html")
LOGIN_SCRIPT = files("services.queue_manager.workspaces").joinpath("login.js")


@pages.get("/w/login", response_class=HTMLResponse)
async def login_page() -> HTMLResponse:
    """A small form that logs in through ``POST /api/auth/login`` and opens the workspace."""
    return HTMLResponse(LOGIN_PAGE.read_text(), headers={"Cache-Control": "no-store"})


@pages.get("/w/login.js")
async def login_script() -> Response:
    return Response(
        LOGIN_SCRIPT.read_text(), media_type="text/javascript", headers={"Cache-Control": "no-cache"}
    )


@pages.get("/w/")
@pages.get("/w")
async def own_workspace(request: Request) -> RedirectResponse:
    who = await session_user(request)
    return RedirectResponse(f"/w/{who}/" if who else "/w/login", status_code=303)


@pages.get("/w/{user}")
async def without_slash(user: str) -> RedirectResponse:
    """The frontend needs the trailing slash: its API base is the page path's folder."""
    return RedirectResponse(f"/w/{user}/", status_code=308)


@assets.get("/")
async def workspace(request: Request, user: str) -> Response:
    """The ComfyUI frontend, for its owner only; anyone else is sent to log in."""
    who = await session_user(request)
    if who != user:
        target = f"/w/{who}/" if who else f"/w/login?next=/w/{user}/"
        return RedirectResponse(target, status_code=303)
    return index_response()


@assets.get("/user.css")
async def user_css(user: str) -> Response:
    return Response("", media_type="text/css")


async def logged_in_asset(connection: HTTPConnection, path: str) -> Response:
    """A file of the frontend package, for a logged-in browser only (any participant or the admin):
    the package is public, but its 11 MB bundle, which nginx gzips anew on every request, would let
    an anonymous loop spend the server's CPU and bandwidth. Nobody else needs it: the login page is
    ours."""
    if await session_user(connection) is None:
        return JSONResponse({"detail": "log in first: open /w/login"}, status_code=401)
    return asset_response(path)


@assets.get("/{path:path}")
async def asset(request: Request, path: str, user: str) -> Response:
    """The frontend's static files (``logged_in_asset``)."""
    return await logged_in_asset(request, path)


@root_assets.get("/assets/{path:path}")
async def root_asset(request: Request, path: str) -> Response:
    """The frontend names a few of its files from the site root, as stock ComfyUI serves it there:
    the progress favicon frames (``/assets/images/favicon_progress_16x16/frame_N.png``), the default
    avatar and ``/assets/favicon.ico``. The same files as under ``/w/<user>/assets/``."""
    return await logged_in_asset(request, f"assets/{path}")


@root_assets.get("/favicon.ico")
async def favicon() -> Response:
    """The tab icon browsers ask the site root for on pages that name none (the login and admin
    pages, the workspace before the frontend sets its own): the frontend's ComfyUI icon, for anyone
    (the login page's too)."""
    return asset_response("assets/favicon.ico")
