"""Progress reaches the participant at most 10 times a second per job after a short burst, previews
twice a second; node events are never dropped and nothing is reordered."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.protocol.workers import MAX_EVENTS, JobEvent
from services.worker.forwarder import EventForwarder
from services.worker.throttle import BURST


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
    assert 2 <= len(progress) <= int(elapsed * 10) + BURST
    values = [event.data["value"] for event in progress]
    assert values == sorted(values) and values[:BURST] == list(range(1, BURST + 1))


async def test_node_events_pass_in_order_and_a_stale_held_progress_is_dropped() -> None:
    sink = Sink()
    forwarder = EventForwarder(sink, rate=10.0)
    forwarder.add("execution_start", {"prompt_id": "p"})
    forwarder.add("executing", {"node": "1", "prompt_id": "p"})
    for value in range(1, BURST + 2):  # the last one is held back
        forwarder.add("progress", {"value": value, "max": 9, "node": "1", "prompt_id": "p"})
    forwarder.add("executing", {"node": "2", "prompt_id": "p"})  # makes the held value stale
    await forwarder.close()
    assert [(e.type, e.data.get("node"), e.data.get("value")) for _, e in sink.sent] == [
        ("execution_start", None, None),
        ("executing", "1", None),
        *[("progress", "1", value) for value in range(1, BURST + 1)],
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


def node_states(prompt_id: str, step: int, steps: int) -> dict[str, Any]:
    state = "finished" if step == steps else "running"
    return {"prompt_id": prompt_id, "nodes": {"3": {"value": step, "max": steps, "state": state}}}


async def test_progress_state_is_throttled_but_the_last_one_is_always_delivered() -> None:
    sink = Sink()
    forwarder = EventForwarder(sink, rate=10.0)
    started = time.monotonic()
    for step in range(1, 101):  # a sampler's state after each of 100 steps in about half a second
        forwarder.add("progress_state", node_states("p", step, 100))
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - started
    await forwarder.close()  # the job ended: the final state was still held back
    states = [event.data for _, event in sink.sent if event.type == "progress_state"]
    assert 2 <= len(states) <= int(elapsed * 10) + BURST + 2  # and the node's start and end
    assert states[-1]["nodes"]["3"]["state"] == "finished"


async def test_a_held_progress_state_goes_out_before_the_next_node_event() -> None:
    sink = Sink()
    forwarder = EventForwarder(sink, rate=10.0)
    for step in range(1, BURST + 3):  # the node starts (at once), a burst of steps, one held back
        forwarder.add("progress_state", node_states("p", step, 9))
    forwarder.add("executed", {"node": "3", "output": {}, "prompt_id": "p"})
    await forwarder.close()
    assert [(e.type, e.data.get("nodes", {}).get("3", {}).get("value")) for _, e in sink.sent] == [
        *[("progress_state", step) for step in range(1, BURST + 3)],
        ("executed", None),
    ]


async def test_a_nodes_first_progress_is_kept_when_its_end_makes_it_stale() -> None:
    """ComfyUI's page learns from it that the node reports steps."""
    sink = Sink()
    forwarder = EventForwarder(sink, rate=10.0)
    for node in ("3", "4"):  # node 3 spends the burst; node 4's first progress is held back
        forwarder.add("progress_state", node_states("p", 1, 2) | {"nodes": {node: {"state": "running"}}})
        for value in range(1, BURST + 1):
            forwarder.add("progress", {"value": value, "max": 9, "node": node, "prompt_id": "p"})
    forwarder.add("progress_state", {"prompt_id": "p", "nodes": {"4": {"state": "finished"}}})
    await forwarder.close()
    progress = [(e.data["node"], e.data["value"]) for _, e in sink.sent if e.type == "progress"]
    assert progress == [("3", 1), ("3", 2), ("4", BURST)]


async def test_previews_reach_the_participant_at_most_twice_a_second_newest_first() -> None:
    sink = Sink()
    forwarder = EventForwarder(sink, rate=10.0, preview_rate=2.0)
    started = time.monotonic()
    for index in range(60):  # a sampler sending a preview image each step, 40 a second
        forwarder.add("b_preview", {"image": f"img{index}", "format": "jpeg", "prompt_id": "p"})
        forwarder.add("progress", {"value": index, "max": 60, "node": "3", "prompt_id": "p"})
        await asyncio.sleep(0.025)
    elapsed = time.monotonic() - started
    await forwarder.close()
    previews = [event.data["image"] for _, event in sink.sent if event.type == "b_preview"]
    assert 2 <= len(previews) <= int(elapsed * 2) + BURST
    numbers = [int(image.removeprefix("img")) for image in previews]
    assert numbers[:BURST] == list(range(BURST))  # the first at once, then the newest ones held back
    assert numbers[BURST] > BURST
    progress = [event for _, event in sink.sent if event.type == "progress"]
    assert len(progress) > len(previews)  # previews have their own, slower limit


def sampler_step(step: int) -> list[tuple[str, dict[str, Any]]]:
    """What ComfyUI sends for one sampler step with a live preview, in its order."""
    return [
        ("progress_state", node_states("p", step, 1000)),
        ("progress", {"value": step, "max": 1000, "node": "3", "prompt_id": "p"}),
        ("b_preview", {"image": f"img{step}", "format": "jpeg", "prompt_id": "p"}),
    ]


async def test_throttled_events_keep_comfyuis_order_a_preview_never_overtakes_its_steps_progress() -> None:
    sink = Sink()
    forwarder = EventForwarder(sink, rate=10.0, preview_rate=2.0)
    arrived: list[tuple[str, dict[str, Any]]] = []
    for step in range(1, 61):  # 40 steps a second, each with a preview
        for kind, data in sampler_step(step):
            arrived.append((kind, data))
            forwarder.add(kind, data)
        await asyncio.sleep(0.025)
    await forwarder.close()
    order = [arrived.index((e.type, e.data)) for _, e in sink.sent]
    assert order == sorted(order), "an event was sent before one that arrived ahead of it"
    kinds = [e.type for _, e in sink.sent]
    assert kinds.count("b_preview") >= 2 and kinds.count("progress") > kinds.count("b_preview")


async def test_a_short_nodes_steps_and_images_pass_as_comfyui_sent_them() -> None:
    sink = Sink()
    forwarder = EventForwarder(sink, rate=10.0, preview_rate=2.0)
    forwarder.add("progress_state", node_states("p", 0, 2))  # the node starts
    sent = [event for step in (1, 2) for event in sampler_step(step)]
    for kind, data in sent:
        forwarder.add(kind, data)
    await forwarder.close()
    assert [(e.type, e.data) for _, e in sink.sent][1:] == sent


def a_short_job() -> list[tuple[str, dict[str, Any]]]:
    """A node's steps (the last ones held back by the throttle), its state, then the held ``executed``."""
    return [
        ("execution_start", {"prompt_id": "p"}),
        ("executing", {"node": "3", "prompt_id": "p"}),
        *[("progress_state", node_states("p", step, 9)) for step in range(1, BURST + 3)],
        *[("progress", {"value": v, "max": 9, "node": "3", "prompt_id": "p"}) for v in range(1, BURST + 3)],
        ("executed", {"node": "3", "output": {"images": [{"filename": "a.png"}]}, "prompt_id": "p"}),
        ("progress_state", node_states("p", 9, 9)),
    ]


async def test_at_the_end_what_is_unsent_is_handed_over_exactly_as_close_would_have_sent_it() -> None:
    closed, handed_over = Sink(), Sink()
    closing, handing = EventForwarder(closed, rate=10.0), EventForwarder(handed_over, rate=10.0, linger=60)
    for kind, data in a_short_job():
        closing.add(kind, data)
        handing.add(kind, data)
    await closing.close()
    trailing = await handing.hand_over()
    assert handed_over.sent == [], "the end of the job cost a call of its own"
    assert [(e.type, e.data) for e in trailing] == [(e.type, e.data) for _, e in closed.sent]
    assert trailing[-1].type == "progress_state" and trailing[-1].data["nodes"]["3"]["state"] == "finished"


async def test_a_batch_on_its_way_is_sent_before_the_rest_is_handed_over() -> None:
    calling, go_on = asyncio.Event(), asyncio.Event()
    sent: list[JobEvent] = []

    async def slow(events: list[JobEvent]) -> None:
        calling.set()
        await go_on.wait()
        sent.extend(events)

    forwarder = EventForwarder(slow, linger=0)
    forwarder.add("executing", {"node": "1", "prompt_id": "p"})
    await asyncio.wait_for(calling.wait(), 10)
    forwarder.add("executing", {"node": "2", "prompt_id": "p"})
    handing = asyncio.create_task(forwarder.hand_over())
    await asyncio.sleep(0)  # the handover now waits for the call on its way
    assert not handing.done()
    go_on.set()
    trailing = await asyncio.wait_for(handing, 10)
    assert [e.data["node"] for e in sent] == ["1"] and [e.data["node"] for e in trailing] == ["2"]


async def test_more_events_than_one_call_carries_send_the_oldest_and_hand_over_the_last() -> None:
    sink = Sink()
    forwarder = EventForwarder(sink, linger=60)
    for node in range(MAX_EVENTS + 44):
        forwarder.add("executing", {"node": str(node), "prompt_id": "p"})
    trailing = await forwarder.hand_over()
    assert [e.data["node"] for _, e in sink.sent] == [str(n) for n in range(44)]
    assert [e.data["node"] for e in trailing] == [str(n) for n in range(44, MAX_EVENTS + 44)]


async def turns(count: int = 20) -> None:
    """Let the forwarder's sender run as often as it wants to (it has no linger in these tests)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_once_comfyui_is_done_the_last_events_wait_for_the_report_however_long_it_takes() -> None:
    sink = Sink()
    forwarder = EventForwarder(sink, linger=0)
    forwarder.add("executing", {"node": "1", "prompt_id": "p"})
    await turns()
    assert [e.data["node"] for _, e in sink.sent] == ["1"], "events during the job stream as before"
    forwarder.hold()  # ComfyUI is done; the report waits for the next job's submit and the upload
    forwarder.add("executed", {"node": "3", "output": {}, "prompt_id": "p"})
    forwarder.add("execution_success", {"prompt_id": "p"})
    await turns()
    assert len(sink.sent) == 1, "a held event went out on the timer: one more call for a short job"
    trailing = await forwarder.hand_over()
    assert [e.type for e in trailing] == ["executed", "execution_success"] and len(sink.sent) == 1


async def test_a_held_job_that_ends_without_a_report_still_sends_its_last_events() -> None:
    sink = Sink()
    forwarder = EventForwarder(sink, linger=0)
    forwarder.hold()
    forwarder.add("executing", {"node": "1", "prompt_id": "p"})
    await forwarder.close()  # released: ComfyUI was lost, or the worker is stopping
    assert [e.data["node"] for _, e in sink.sent] == ["1"]
