"""The organizer's admin page: ``/admin/`` (HTML + vanilla JS, no CDN) and ``/admin/api/stats``.

The page shows the live queue (a waiting job held, prepared, for a busy worker says which worker
holds it), workers per pool and provider with state, current job and the job each holds next,
participants, dead letters, the jobs the evening's save held as running (they run again after the
night: that evening, and carried over the next day), per pool the last hour's GPU use and the jobs
held for its busy workers now, and charts (queue depth, jobs per minute, GPU busy share, cost so far),
and its buttons call the queue manager's admin API (``/api/admin/...``: cancel, requeue,
priorities, pause/resume, drain). Everything needs the admin login; without it the page sends the
browser to ``/w/login?next=/admin/``.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.queue_manager.admin.stats import Stats, collect
from services.queue_manager.api.deps import AdminUser, StoreDep, logged_in

router = APIRouter(tags=["admin page"])
ASSETS = files("services.queue_manager.admin")
NO_STORE = {"Cache-Control": "no-store"}


@router.get("/admin", include_in_schema=False)
async def without_slash() -> RedirectResponse:
    return RedirectResponse("/admin/", status_code=308)


@router.get("/admin/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request) -> Response:
    """The admin page for the admin; everyone else is sent to log in."""
    principal = await logged_in(request)
    if principal is None or not principal.admin:
        return RedirectResponse("/w/login?next=/admin/", status_code=303)
    return HTMLResponse(ASSETS.joinpath("page.html").read_text(), headers=NO_STORE)


@router.get("/admin/app.js", include_in_schema=False)
async def script() -> Response:
    return Response(ASSETS.joinpath("app.js").read_text(), media_type="text/javascript", headers=NO_STORE)


@router.get("/admin/api/stats")
async def stats(request: Request, _: AdminUser, store: StoreDep) -> Stats:
    """Samples of queue depth and GPU use, jobs per minute for the last hour, cost so far, participants."""
    configured = request.app.state.auth.participants.users
    return await collect(store, configured, request.app.state.settings.gpu_prices)
