"""Fixtures for the dynamic providers: API doubles on loopback and fast timing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.infra.providers.engine import new_provider_process
from tests.infra.providers.verda_double import VerdaDouble
from tests.support.provider_timing import FAST


@pytest.fixture
def verda() -> Iterator[VerdaDouble]:
    with VerdaDouble().running() as double:
        yield double


@pytest.fixture
def creds(verda: VerdaDouble) -> dict[str, Any]:
    """Connection inputs as the pools pass them (client secret as a Pulumi secret)."""
    return {"client_id": "cid", "client_secret": verda.client_secret, "api_url": verda.url, "timing": FAST}


@pytest.fixture(autouse=True)
def _a_new_provider_process() -> None:
    """Each test calls the providers as a new provider process would: without API clients."""
    new_provider_process()
