"""Progress reaches the participant at most 10 times a second per job; node events are never dropped."""

from __future__ import annotations

import asyncio
import time

from services.protocol.workers import JobEvent
from services.worker.forwarder import EventForwarder


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[float, JobEvent]] = []

    async def __call__(self, events: list[JobEvent]) -> None:
        self.sent.extend((time.monotonic(), event) for event in events)


async def test_a_flood_of_progress_is_throttled_to_ten_per_second() -> None:
    sink = Sink()
    forwarder = EventForwarder(sink, rate=10.0)
    started = time.monotonic()
    for step in range(1, 201):  # a sampler reporting 200 steps in about one second
        forwarder.add("progress", {"value": step, "max": 200, "node": "3", "prompt_id": "p"})
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - started
    await forwarder.close()
    progress = [event for _, event in sink.sent if event.type == "progress"]
    assert 2 <= len(progress) <= int(elapsed * 10) + 1
    values = [event.data["value"] for event in progress]
    assert values == sorted(values) and values[0] == 1


async def test_node_events_pass_in_order_and_a_stale_held_progress_is_dropped() -> None:
    sink = Sink()
    forwarder = EventForwarder(sink, rate=10.0)
    forwarder.add("execution_start", {"prompt_id": "p"})
    forwarder.add("executing", {"node": "1", "prompt_id": "p"})
    forwarder.add("progress", {"value": 1, "max": 2, "node": "1", "prompt_id": "p"})
    forwarder.add("progress", {"value": 2, "max": 2, "node": "1", "prompt_id": "p"})  # held back
    forwarder.add("executing", {"node": "2", "prompt_id": "p"})  # makes the held value stale
    await forwarder.close()
    assert [(e.type, e.data.get("node"), e.data.get("value")) for _, e in sink.sent] == [
        ("execution_start", None, None),
        ("executing", "1", None),
        ("progress", "1", 1),
        ("executing", "2", None),
    ]


async def test_a_failing_sink_does_not_break_the_job() -> None:
    calls = 0

    async def broken(events: list[JobEvent]) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("queue manager away")

    forwarder = EventForwarder(broken)
    forwarder.add("executing", {"node": "1", "prompt_id": "p"})
    await forwarder.close()
    assert calls == 1
