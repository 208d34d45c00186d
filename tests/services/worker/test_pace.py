"""When a pull worker asks ``start`` for its prepared job (``Pace``): after the submit, so the call's
CPU never holds up the GPU, unless jobs end sooner than the answer comes back, when the answer
(naming the job after) is what the GPU waits for and goes at once."""

from __future__ import annotations

import time

import pytest

from services.worker.pull import Pace


def test_a_worker_that_has_run_nothing_yet_asks_after_the_submit() -> None:
    assert not Pace().at_once()


@pytest.mark.parametrize(
    ("run_seconds", "round_trip", "at_once"),
    [
        (0.004, 0.006, True),  # a no-op job: over before its start's answer could be back
        (0.011, 0.006, True),  # within two round trips: the answer still paces the GPU
        (0.013, 0.006, False),
        (2.0, 0.030, False),  # a real job over Tailscale: the answer is back long before its end
    ],
)
def test_start_goes_at_once_only_when_jobs_end_within_two_of_its_round_trips(
    run_seconds: float, round_trip: float, at_once: bool
) -> None:
    pace = Pace(round_trip=round_trip)
    pace.launched = time.monotonic() - run_seconds
    pace.freed()
    assert pace.last_run == pytest.approx(run_seconds, abs=0.001)
    assert pace.at_once() is at_once
