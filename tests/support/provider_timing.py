"""Fast timing for the dynamic providers against their API doubles: short timeouts, quick retries."""

from __future__ import annotations

FAST = {
    "request_timeout_s": 0.5,
    "attempts": 3,
    "retry_wait_s": 0.01,
    "poll_interval_s": 0.0,
    "ready_timeout_s": 2.0,
    "delete_timeout_s": 2.0,
}
