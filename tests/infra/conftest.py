"""The infra tests run the program under Pulumi mocks; provider credentials in the environment
would hide a missing-secret error, so they are removed for every test. Pulumi's mocks run on the
thread's current event loop, which async tests elsewhere in the session leave unset."""

from __future__ import annotations

import asyncio

import pytest

from devkit.harness import ENV_SECRETS


@pytest.fixture(autouse=True)
def _no_credentials_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_SECRETS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True, scope="module")
def _event_loop_for_pulumi() -> None:
    """Async tests elsewhere in the session leave the thread without a current loop; give it one."""
    asyncio.set_event_loop(asyncio.new_event_loop())
