"""Each participant's ComfyUI settings (``/settings``), one Redis hash field per setting.

ComfyUI keeps one ``comfy.settings.json`` per user; the frontend stores settings one by one and in
parallel, so a field per setting (``{p}:ws:settings:{user}``: id -> JSON value) avoids lost updates.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from services.queue_manager.keys import Keys

MAX_SETTING_BYTES = 1024 * 1024
# No workflow templates are installed on the queue manager, so ComfyUI's first-visit template
# gallery would open empty: a new participant starts on the default graph instead.
# Participants cannot update the workshop's ComfyUI: no release checks against api.comfy.org.
# Frontend 1.27.10 registers "Comfy.Canvas.NavigationMode" (new installs: "legacy") before the two
# settings its onChange then sets, and throws on a participant's first visit unless those already
# hold the values "legacy" gives them.
DEFAULTS: dict[str, Any] = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Notification.ShowVersionUpdates": False,
    "Comfy.Canvas.LeftMouseClickBehavior": "panning",
    "Comfy.Canvas.MouseWheelScroll": "zoom",
}


class SettingsError(ValueError):
    """A settings request that cannot be stored; the message says why."""


class UserSettings:
    def __init__(self, redis: Redis, user: str, prefix: str = "qm") -> None:
        self._redis = redis
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
        await self._redis.hset(self._key, mapping=encoded)  # type: ignore[arg-type]


def _encode(key: str, value: Any) -> str:
    text = json.dumps(value)
    if len(text) > MAX_SETTING_BYTES or len(key) > 256:
        raise SettingsError(f"setting {key[:80]!r} is too large (at most {MAX_SETTING_BYTES} bytes)")
    return text


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
