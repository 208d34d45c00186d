"""Log in (HTTP form or JSON), log out, and who am I. The session cookie is signed with
``QM_SESSION_SECRET`` and carries only the user name and whether it is the admin."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field, ValidationError

from services.queue_manager.api.deps import AuthDep, CurrentPrincipal, SettingsDep
from services.queue_manager.auth import SESSION_COOKIE

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
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            "send 'user' and 'password' as a form or as a JSON object",
        ) from None


@router.post("/login", openapi_extra=LOGIN_BODY, responses={401: {"description": "wrong user or password"}})
async def login(request: Request, response: Response, auth: AuthDep, settings: SettingsDep) -> Me:
    """Check a user name and password and set the session cookie."""
    form = await _login_form(request)
    principal = auth.login(form.user, form.password)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user name or password")
    response.set_cookie(
        SESSION_COOKIE,
        auth.session_cookie(principal),
        max_age=auth.session_seconds,
        httponly=True,
        samesite="strict",
        secure=settings.public_url.startswith("https://"),
    )
    return Me(user=principal.user, admin=principal.admin)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(response: Response) -> None:
    """Forget the session cookie."""
    response.delete_cookie(SESSION_COOKIE)


@router.get("/me")
async def me(principal: CurrentPrincipal) -> Me:
    """Who the credentials or the session cookie belong to."""
    return Me(user=principal.user, admin=principal.admin)
