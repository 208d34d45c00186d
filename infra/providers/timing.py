"""How patient the providers are with a cloud API: one small value type, overridable per resource.

Defaults suit real clouds (an H100 can take ten minutes to boot); tests pass tiny values through
the resource's ``timing`` input so that failure paths run in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Timing:
    request_timeout_s: float = 60.0
    attempts: int = 5
    retry_wait_s: float = 2.0
    poll_interval_s: float = 5.0
    ready_timeout_s: float = 1200.0
    delete_timeout_s: float = 600.0
    # The longest rate-limit wait (a 429's Retry-After) one `pulumi up` sits out before it gives up.
    max_retry_after_s: float = 120.0

    @classmethod
    def of(cls, props: dict[str, Any]) -> Timing:
        given = props.get("timing") or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"unknown timing keys {unknown}; known: {sorted(known)}")
        return cls(**given)
