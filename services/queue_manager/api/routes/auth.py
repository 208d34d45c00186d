"""Log in (HTTP form or JSON), log out, and who am I. The session lives in Redis (``sessions``); the
cookie (``HttpOnly``, ``SameSite=Strict``) carries only its random id, signed with
``QM_SESSION_SECRET``. Logging out ends the session itself, not only the browser's cookie."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field, ValidationError

from services.queue_manager.api.deps import (
    CurrentPrincipal,
    SettingsDep,
    caller_of,
    shared,
    too_many_logins,
)
from services.queue_manager.auth import DEVICE_COOKIE, DEVICE_SECONDS, SESSION_COOKIE
from services.queue_manager.sessions import LoginRefused, Logins

router = APIRouter(prefix="/api/auth", tags=["auth"])


class LoginForm(BaseModel):
    user: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


LOGIN_SCHEMA = LoginForm.model_json_schema()
LOGIN_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": LOGIN_SCHEMA},
            "application/x-www-form-urlencoded": {"schema": LOGIN_SCHEMA},
        },
    }
}


class Me(BaseModel):
    user: str
    admin: bool


async def _login_form(request: Request) -> LoginForm:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("application/json"):
            data: Any = json.loads(await request.body())
        else:
            data = dict(await request.form())
        return LoginForm.model_validate(data)
    except (ValueError, ValidationError):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "send 'user' and 'password' as a form or as a JSON object",
        ) from None


LOGIN_ANSWERS: dict[int | str, dict[str, Any]] = {
    401: {"description": "wrong user or password"},
    429: {"description": "too many failed logins for this name or address; see Retry-After"},
}


@router.post("/login", openapi_extra=LOGIN_BODY, responses=LOGIN_ANSWERS)
async def login(request: Request, response: Response, settings: SettingsDep) -> Me:
    """Check a user name and password and set the session cookie: a new session, always; the one
    this browser brought (another participant's on a shared laptop) ends."""
    form = await _login_form(request)
    logins = shared(request, "logins", Logins)
    try:
        principal = await logins.check_password(form.user, form.password, caller_of(request))
    except LoginRefused as exc:
        raise too_many_logins(exc) from None
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user name or password")
    if carried := request.cookies.get(SESSION_COOKIE):  # a shared laptop: the last one's session ends
        await logins.close_session(carried)
    secure = settings.public_url.startswith("https://")
    cookies = {
        SESSION_COOKIE: (await logins.open_session(principal), logins.auth.session_seconds),
        DEVICE_COOKIE: (logins.auth.device_cookie(principal.user), DEVICE_SECONDS),
    }
    for name, (value, seconds) in cookies.items():
        response.set_cookie(name, value, max_age=seconds, httponly=True, samesite="strict", secure=secure)
    return Me(user=principal.user, admin=principal.admin)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(request: Request, response: Response) -> None:
    """End the session (its cookie no longer works anywhere) and forget the cookie."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        logins = shared(request, "logins", Logins)
        await logins.close_session(cookie)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")


@router.get("/me")
async def me(principal: CurrentPrincipal) -> Me:
    """Who the credentials or the session cookie belong to."""
    return Me(user=principal.user, admin=principal.admin)
