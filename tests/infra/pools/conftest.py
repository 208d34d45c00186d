"""Pool tests run the program under Pulumi mocks, which run on the thread's current event loop."""

from __future__ import annotations

import asyncio

import pytest


@pytest.fixture(autouse=True, scope="module")
def _event_loop_for_pulumi() -> None:
    """Async tests elsewhere in the session leave the thread without a current loop; give it one."""
    asyncio.set_event_loop(asyncio.new_event_loop())
