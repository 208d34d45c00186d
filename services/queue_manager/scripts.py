"""The Lua scripts that make every queue state change atomic, loaded once per Redis client."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

LUA_DIR = Path(__file__).with_name("lua")
LIB = (LUA_DIR / "lib.lua").read_text()


def _load(redis: Redis, name: str) -> AsyncScript:
    return redis.register_script(LIB + "\n" + (LUA_DIR / f"{name}.lua").read_text())


@dataclass(frozen=True)
class Scripts:
    submit: AsyncScript
    claim: AsyncScript
    touch: AsyncScript
    finish: AsyncScript
    reap: AsyncScript
    cancel: AsyncScript
    requeue_dead: AsyncScript
    rescore: AsyncScript
    positions: AsyncScript
    end_sessions: AsyncScript

    @classmethod
    def load(cls, redis: Redis) -> Scripts:
        """Register every script named by a field (``lua/<field>.lua``) with this client."""
        names = [spec.name for spec in fields(cls)]
        return cls(**{name: _load(redis, name) for name in names})
