"""The queue's Lua scripts against a model, under random interleavings: ``tests/support/queue_model.py``
says what the model holds them to; here it runs in four profiles.

``QM_MODEL_EXAMPLES`` runs a longer exploration (``QM_MODEL_EXAMPLES=2000 pytest ... -k model``).
"""

from __future__ import annotations

import pytest
from hypothesis.stateful import run_state_machine_as_test

from services.queue_manager.settings import Scheduling
from tests.support.queue_model import exploration, machine

PROFILES = {
    "fair": {"scheduling": Scheduling.FAIR, "pins": False},
    "fair_pools_limits": {"scheduling": Scheduling.FAIR, "pins": True, "max_running": 1},
    "priority": {"scheduling": Scheduling.PRIORITY, "pins": True},
    "fifo": {"scheduling": Scheduling.FIFO, "pins": True, "max_running": 2},
}


@pytest.mark.timeout(900)  # a failure is shrunk to its shortest sequence (hypothesis stops after 5 minutes)
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_queue_agrees_with_its_model(profile: str, redis_url: str) -> None:
    run_state_machine_as_test(machine(redis_url=redis_url, **PROFILES[profile]), settings=exploration(40))
