"""Dependencies every route reads as prose: ``user: CurrentUser``, ``_: AdminUser``, ``pool: WorkerPool``,
``store: StoreDep``. Auth and ownership checks live here, never pasted into handlers."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Path, Request, status
from starlette.requests import HTTPConnection

from services.protocol.jobs import PROMPT_ID
from services.protocol.workers import HolderCall
from services.queue_manager.auth import DEVICE_COOKIE, SESSION_COOKIE, Authenticator, Principal
from services.queue_manager.push_requests import Chains, PushReply
from services.queue_manager.sessions import Caller, LoginRefused, Logins
from services.queue_manager.settings import Settings
from services.queue_manager.store import Store

T = TypeVar("T")

BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="comfy-workshop"'}


def shared(connection: HTTPConnection, name: str, kind: type[T]) -> T:
    """The one ``kind`` the lifespan put on ``app.state`` as ``name`` (store, settings, auth, logins)."""
    value: T = getattr(connection.app.state, name)
    return value


def _shared(name: str, kind: type[T]) -> Callable[[Request], Awaitable[T]]:
    """A dependency that hands a route ``shared(request, name, kind)``."""

    async def dependency(request: Request) -> T:
        return shared(request, name, kind)

    return dependency


def client_address(connection: HTTPConnection) -> str:
    """The caller's address (behind nginx: the browser's, from uvicorn's ``--proxy-headers``)."""
    return connection.client.host if connection.client else ""


def caller_of(connection: HTTPConnection) -> Caller:
    """Where a login attempt comes from: address and device cookie (``sessions.LoginGate``)."""
    return Caller(client_address(connection), connection.cookies.get(DEVICE_COOKIE, ""))


def too_many_logins(exc: LoginRefused) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": str(exc.retry_after)}
    )


async def principal_of(connection: HTTPConnection) -> Principal | None:
    """Who a request or WebSocket comes from: session cookie first, then HTTP Basic; None for
    nobody. ``LoginRefused`` when Basic credentials come too often wrong (see ``sessions``)."""
    logins = shared(connection, "logins", Logins)
    headers = connection.headers
    cookie = connection.cookies.get(SESSION_COOKIE)
    return await logins.principal(headers.get("authorization"), cookie, caller_of(connection))


async def logged_in(connection: HTTPConnection) -> Principal | None:
    """``principal_of`` for pages and sockets: a refused login is nobody (sent to log in)."""
    try:
        return await principal_of(connection)
    except LoginRefused:
        return None


# The per-request dependencies read app state directly instead of depending on ``AuthDep``:
# every nested ``Depends`` costs a resolution step on each request of the hot worker routes.
async def current_principal(request: Request) -> Principal:
    try:
        principal = await principal_of(request)
    except LoginRefused as exc:
        raise too_many_logins(exc) from None
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
    auth = shared(request, "auth", Authenticator)
    pool = auth.worker_pool(request.headers.get("authorization", ""))
    if pool is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "workers must send 'Authorization: Bearer <token of their pool>' (QM_WORKER_TOKENS)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return pool


# The same checks on a request's head alone, before its body is read (``callers_first``).
async def pool_caller(request: Request, _: dict[str, str]) -> str:
    return await worker_pool(request)


async def participant_caller(request: Request, _: dict[str, str]) -> Principal:
    return await current_principal(request)


async def admin_caller(request: Request, _: dict[str, str]) -> Principal:
    return await admin_principal(await current_principal(request))


@dataclass(frozen=True)
class Holder:
    """Who calls a lease or push route: a pool's token (``reply`` None) or a push request's reply token."""

    pool: str
    reply: PushReply | None = None


async def lease_holder(request: Request) -> Holder:
    """The pool a lease holder acts for: its pool's token, or the reply token of a push request in
    flight (``push_requests``), which acts only on the lease and push-request routes. Found once per
    request: ``holder_caller`` finds it on the request's head and the route's dependency reuses it."""
    found: Holder | None = getattr(request.state, "holder", None)
    if found is None:
        found = request.state.holder = await _holder_of(request)
    return found


async def holder_caller(request: Request, _: dict[str, str]) -> Holder:
    return await lease_holder(request)


async def _holder_of(request: Request) -> Holder:
    header = request.headers.get("authorization", "")
    pool = shared(request, "auth", Authenticator).worker_pool(header)
    if pool is not None:
        return Holder(pool)
    scheme, _, token = header.partition(" ")
    chains = Chains(shared(request, "store", Store))
    reply = await chains.reply_of(token) if scheme.lower() == "bearer" else None
    if reply is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "lease holders must send 'Authorization: Bearer <token of their pool>' (QM_WORKER_TOKENS), "
            "or a push container the reply_token of its request while that request runs",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Holder(reply.pool, reply)


HolderDep = Annotated[Holder, Depends(lease_holder)]
Call = TypeVar("Call", bound=HolderCall)


def named(model: type[Call]) -> Callable[..., Awaitable[Call]]:
    """A dependency that gives a lease or push route its ``model`` body once the caller may speak
    for the container it names: with a push request's reply token only the one the request's calls
    named first (``Chains.check_named``), and only with a lease the request was given (a lease
    call's token, ``next``'s ``after``: ``Chains.check_lease``); a pool's token as before. The body
    is validated first, so a malformed name never binds a request, nor does a call with a lease
    that is not its own."""

    async def dependency(call: Call, holder: HolderDep, request: Request) -> Call:
        if holder.reply is not None:
            chains = Chains(shared(request, "store", Store))
            if (lease_token := call.lease_token()) is not None:  # the lease is the request's own
                await chains.check_lease(holder.reply, lease_token)
            await chains.check_named(holder.reply, call.worker_id)
        return call

    # FastAPI reads the body's model from the signature: here it is ``model``, not the type variable.
    signature = inspect.signature(dependency)
    body, *rest = signature.parameters.values()
    typed = signature.replace(parameters=[body.replace(annotation=model), *rest])
    setattr(dependency, "__signature__", typed)  # noqa: B010
    return dependency


StoreDep = Annotated[Store, Depends(_shared("store", Store))]
SettingsDep = Annotated[Settings, Depends(_shared("settings", Settings))]
AuthDep = Annotated[Authenticator, Depends(_shared("auth", Authenticator))]
LoginsDep = Annotated[Logins, Depends(_shared("logins", Logins))]
CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
CurrentUser = Annotated[str, Depends(current_user)]
AdminUser = Annotated[Principal, Depends(admin_principal)]
WorkerPool = Annotated[str, Depends(worker_pool)]
JobId = Annotated[str, Path(pattern=f"^{PROMPT_ID.pattern}$", description="the job's id (its prompt_id)")]
"""A job id in a route's path: any id a job can have, a UUID or the ``prompt_id`` its owner chose."""
