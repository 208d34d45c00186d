"""The API documentation (``/docs``, ``/redoc``, ``/openapi.json``), for the admin only: it lists every
route, the admin's and the workers' included, which is a map for an attacker and of no use to a
participant. The pages load Swagger UI and ReDoc from their CDN, so they get a policy that allows it."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from services.queue_manager.api.deps import AdminUser

router = APIRouter(include_in_schema=False)
CDN = "https://cdn.jsdelivr.net"
DOCS_POLICY = (
    f"default-src 'self'; script-src 'self' 'unsafe-inline' {CDN}; style-src 'self' 'unsafe-inline' {CDN} "
    "https://fonts.googleapis.com; font-src 'self' https://fonts.gstatic.com; img-src 'self' data: "
    "https://fastapi.tiangolo.com https://cdn.redoc.ly; worker-src 'self' blob:; object-src 'none'; "
    "frame-ancestors 'self'"
)
TITLE = "comfy-workshop queue manager"


@router.get("/openapi.json")
async def openapi(request: Request, _: AdminUser) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger(_: AdminUser) -> HTMLResponse:
    page = get_swagger_ui_html(openapi_url="/openapi.json", title=f"{TITLE} - API")
    page.headers["Content-Security-Policy"] = DOCS_POLICY
    return page


@router.get("/redoc")
async def redoc(_: AdminUser) -> HTMLResponse:
    page = get_redoc_html(openapi_url="/openapi.json", title=f"{TITLE} - API")
    page.headers["Content-Security-Policy"] = DOCS_POLICY
    return page
