"""The queue's one durability policy: Redis appends every write to its AOF and fsyncs it before
answering (``appendonly yes``, ``appendfsync always``).

Why ``always``: a participant's job that got a 201, and a worker's completion that got a 204, must
survive a crash of Redis or of the server; ``everysec`` can lose the last second of both. The cost
is one fsync per write, which the queue keeps few: one Lua script per state change, read-only
queue places, a worker's last-seen time written at most every few seconds.

The production Redis (``infra/platform.py``) and the test Redis (``devkit/servers.py``) are
configured from ``REDIS_DURABILITY``; the queue manager checks it at start (``shortfalls``).
"""

from __future__ import annotations

from collections.abc import Mapping

REDIS_DURABILITY: dict[str, str] = {"appendonly": "yes", "appendfsync": "always"}


def redis_conf_lines() -> str:
    """The policy as ``redis.conf`` lines."""
    return "".join(f"{name} {value}\n" for name, value in REDIS_DURABILITY.items())


def redis_args() -> list[str]:
    """The policy as ``redis-server`` command-line options."""
    return [arg for name, value in REDIS_DURABILITY.items() for arg in (f"--{name}", value)]


def shortfalls(config: Mapping[str, str]) -> dict[str, str | None]:
    """The settings of a running Redis (``CONFIG GET append*``) that break the policy: name -> value."""
    return {name: config.get(name) for name, value in REDIS_DURABILITY.items() if config.get(name) != value}
