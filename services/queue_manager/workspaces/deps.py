"""Dependencies of the workspace routes: who is asking, and the per-process workspace context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException
from redis.asyncio import Redis
from starlette.requests import HTTPConnection

from services.queue_manager.api.deps import logged_in
from services.queue_manager.store import Store
from services.queue_manager.workspaces.catalogue import CatalogueCache
from services.queue_manager.workspaces.files import UserFiles
from services.queue_manager.workspaces.settings import UserSettings
from services.queue_manager.workspaces.userdata import UserData
from services.storage import Storage


@dataclass
class WorkspaceContext:
    """One per process: the job store, a bytes Redis client, the catalogue cache, user-file storage."""

    store: Store
    redis: Redis
    catalogue: CatalogueCache
    storage: Storage

    @property
    def prefix(self) -> str:
        return self.store.keys.prefix


def build_context(connection: HTTPConnection) -> WorkspaceContext:
    """Made on first use from the core's ``app.state``: ``store`` and the app's one ``storage``."""
    state = connection.app.state
    context: WorkspaceContext | None = getattr(state, "workspace_context", None)
    if context is None:
        store: Store = state.store
        storage: Storage | None = getattr(state, "storage", None)
        if storage is None:
            raise HTTPException(
                503,
                f"user-file storage {store.settings.files_url!r} could not be opened (see the queue "
                "manager's log): the organizer must fix QM_FILES_URL",
            )
        redis = Redis.from_url(store.settings.redis_url)  # bytes: catalogues and saved files
        context = WorkspaceContext(store, redis, CatalogueCache(redis, store), storage)
        state.workspace_context = context
    return context


Context = Annotated[WorkspaceContext, Depends(build_context)]


async def session_user(connection: HTTPConnection) -> str | None:
    """Who is logged in on this request or socket (session cookie or HTTP Basic), or None."""
    principal = await logged_in(connection)
    return principal.user if principal is not None else None


async def workspace_owner(connection: HTTPConnection, groups: dict[str, str]) -> str:
    """``participant`` for a workspace path (``WORKSPACE_PATH``), checked before its body is read."""
    return await participant(connection, groups["user"])


async def participant(connection: HTTPConnection, user: str) -> str:
    """The logged-in participant, who must own the ``/w/<user>/`` path."""
    who = await session_user(connection)
    if who is None:
        raise HTTPException(401, "log in first: open /w/login")
    if who != user:
        raise HTTPException(403, f"this is {user}'s workspace; yours is /w/{who}/")
    return who


Participant = Annotated[str, Depends(participant)]


def user_data(ctx: Context, user: Participant) -> UserData:
    return UserData(ctx.redis, user, ctx.prefix, ctx.store.settings.max_saved_bytes, ctx.store.scripts)


def user_settings(ctx: Context, user: Participant) -> UserSettings:
    return UserSettings(ctx.redis, user, ctx.prefix, ctx.store.settings.max_saved_bytes, ctx.store.scripts)


def user_files(ctx: Context, user: Participant) -> UserFiles:
    settings = ctx.store.settings
    return UserFiles(ctx.storage, user, settings.max_upload_bytes, settings.max_user_files_bytes)


UserDataDep = Annotated[UserData, Depends(user_data)]
UserSettingsDep = Annotated[UserSettings, Depends(user_settings)]
UserFilesDep = Annotated[UserFiles, Depends(user_files)]
