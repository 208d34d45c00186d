"""Push pools (serverless containers: take, chain, bind, leave) against the queue model:
``tests/support/push_model.py`` says what the model holds them to; here it runs in two profiles."""

from __future__ import annotations

import pytest
from hypothesis.stateful import run_state_machine_as_test

from services.queue_manager.settings import Scheduling
from tests.support.push_model import CALLS, PushModel
from tests.support.queue_model import exploration

PROFILES = {
    "fair": {"scheduling": Scheduling.FAIR, "pins": True},
    "priority_limits": {"scheduling": Scheduling.PRIORITY, "pins": True, "max_running": 2},
}


@pytest.mark.timeout(900)  # a failure is shrunk to its shortest sequence
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_push_pools_agree_with_the_queue_model(profile: str, redis_url: str) -> None:
    model = type("Model", (PushModel,), {"redis_url": redis_url, **PROFILES[profile]})
    CALLS.clear()
    run_state_machine_as_test(model, settings=exploration(50))
    print(f"\n{profile}: {dict(sorted(CALLS.items()))}")  # how often each push rule ran (-s shows it)
