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

from services.queue_manager.keys import Keys

MAX_SETTING_BYTES = 1024 * 1024
MAX_SETTINGS = 2000
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
    def __init__(self, redis: Redis, user: str, prefix: str, max_bytes: int) -> None:
        self._redis, self._max_bytes = redis, max_bytes
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
        await self._check_room(encoded)
        await self._redis.hset(self._key, mapping=encoded)  # type: ignore[arg-type]

    async def _check_room(self, encoded: dict[str, str]) -> None:
        """Refuse an update that would pass the participant's count or byte budget of settings."""
        others = sorted({_text(k) for k in await self._redis.hkeys(self._key)} - encoded.keys())
        if len(others) + len(encoded) > MAX_SETTINGS:
            raise SettingsError(f"at most {MAX_SETTINGS} settings are kept per participant: reset some first")
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in others:
                pipe.hstrlen(self._key, name)
            sizes: list[int] = await pipe.execute()
        total = sum(sizes) + sum(len(value.encode()) for value in encoded.values())
        if total > self._max_bytes:
            raise SettingsError(
                f"your settings would take {total} bytes, more than the {self._max_bytes} kept per "
                "participant (QM_MAX_SAVED_BYTES): reset the largest ones first"
            )


def _encode(key: str, value: Any) -> str:
    text = json.dumps(value)
    if len(text) > MAX_SETTING_BYTES or len(key) > 256:
        raise SettingsError(f"setting {key[:80]!r} is too large (at most {MAX_SETTING_BYTES} bytes)")
    return text


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
