"""Dependencies every route reads as prose: ``user: CurrentUser``, ``_: AdminUser``, ``pool: WorkerPool``,
``store: StoreDep``. Auth and ownership checks live here, never pasted into handlers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, WebSocket, status

from services.queue_manager.auth import SESSION_COOKIE, Authenticator, Principal
from services.queue_manager.settings import Settings
from services.queue_manager.store import Store

BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="comfy-workshop"'}


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_auth(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


def principal_of(auth: Authenticator, connection: Request | WebSocket) -> Principal | None:
    """Who a request or WebSocket comes from: session cookie first, then HTTP Basic."""
    return auth.principal(connection.headers.get("authorization"), connection.cookies.get(SESSION_COOKIE))


# The per-request dependencies read app state directly instead of depending on ``get_auth``:
# every nested ``Depends`` costs a resolution step on each request of the hot worker routes.
async def current_principal(request: Request) -> Principal:
    principal = principal_of(request.app.state.auth, request)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "log in: send HTTP Basic credentials or the session cookie from POST /api/auth/login",
            headers=BASIC_CHALLENGE,
        )
    return principal


async def admin_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs the admin login")
    return principal


async def current_user(principal: Annotated[Principal, Depends(current_principal)]) -> str:
    return principal.user


async def worker_pool(request: Request) -> str:
    auth: Authenticator = request.app.state.auth
    pool = auth.worker_pool(request.headers.get("authorization", ""))
    if pool is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "workers must send 'Authorization: Bearer <token of their pool>' (QM_WORKER_TOKENS)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return pool


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
AuthDep = Annotated[Authenticator, Depends(get_auth)]
CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
CurrentUser = Annotated[str, Depends(current_user)]
AdminUser = Annotated[Principal, Depends(admin_principal)]
WorkerPool = Annotated[str, Depends(worker_pool)]
