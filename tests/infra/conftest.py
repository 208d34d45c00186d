"""The infra tests run the program under Pulumi mocks; provider credentials in the environment
would hide a missing-secret error, so they are removed for every test."""

from __future__ import annotations

import pytest

from devkit.harness import ENV_SECRETS


@pytest.fixture(autouse=True)
def _no_credentials_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_SECRETS:
        monkeypatch.delenv(name, raising=False)
