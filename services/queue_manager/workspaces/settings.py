"""Each participant's ComfyUI settings (``/settings``), one Redis hash field per setting.

ComfyUI keeps one ``comfy.settings.json`` per user; the frontend stores settings one by one and in
parallel, so a field per setting (``{p}:ws:settings:{user}``: id -> JSON value) avoids lost updates.
Caps on each setting, on their number and on their bytes together (``QM_MAX_SAVED_BYTES``) keep one
participant from filling the Redis that holds everyone's queue.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from services.queue_manager.errors import WorkshopClosed
from services.queue_manager.keys import Keys
from services.queue_manager.scripts import SaveSettingsArgs, Scripts

MAX_SETTING_BYTES = 1024 * 1024
MAX_SETTINGS = 2000
# Nothing sets "Comfy.TutorialCompleted": as in ComfyUI, a new participant starts on a blank canvas
# with the templates browser open (the workspace serves ComfyUI's templates).
# Participants cannot update the workshop's ComfyUI: no release checks against api.comfy.org.
# Frontend 1.27.10 registers "Comfy.Canvas.NavigationMode" (new installs: "legacy") before the two
# settings its onChange then sets, and throws on a participant's first visit unless those already
# hold the values "legacy" gives them.
DEFAULTS: dict[str, Any] = {
    "Comfy.Notification.ShowVersionUpdates": False,
    "Comfy.Canvas.LeftMouseClickBehavior": "panning",
    "Comfy.Canvas.MouseWheelScroll": "zoom",
}


class SettingsError(ValueError):
    """A settings request that cannot be stored; the message says why."""


class UserSettings:
    def __init__(self, redis: Redis, user: str, prefix: str, max_bytes: int, scripts: Scripts) -> None:
        self._redis, self._max_bytes, self._scripts = redis, max_bytes, scripts
        self._user, self._prefix = user, prefix
        self._key = Keys(prefix).user_settings(user)

    async def all(self) -> dict[str, Any]:
        raw = await self._redis.hgetall(self._key)
        return {**DEFAULTS, **{_text(k): json.loads(v) for k, v in raw.items()}}

    async def get(self, setting: str) -> Any:
        raw = await self._redis.hget(self._key, setting)
        return json.loads(raw) if raw is not None else DEFAULTS.get(setting)

    async def update(self, values: dict[str, Any]) -> None:
        if not values:
            return
        encoded = {key: _encode(key, value) for key, value in values.items()}
        pairs = tuple(part for item in encoded.items() for part in item)
        args = SaveSettingsArgs(self._prefix, self._user, MAX_SETTINGS, self._max_bytes, pairs)
        outcome, *total = await self._scripts.run(args)  # checked and written in one step
        if outcome == "closed":
            raise WorkshopClosed()
        if outcome == "count":
            raise SettingsError(f"at most {MAX_SETTINGS} settings are kept per participant: reset some first")
        if outcome != "ok":
            raise SettingsError(
                f"your settings would take {total[0]} bytes, more than the {self._max_bytes} kept per "
                "participant (QM_MAX_SAVED_BYTES): reset the largest ones first"
            )


def _encode(key: str, value: Any) -> str:
    text = json.dumps(value)
    if len(text) > MAX_SETTING_BYTES or len(key) > 256:
        raise SettingsError(f"setting {key[:80]!r} is too large (at most {MAX_SETTING_BYTES} bytes)")
    return text


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
