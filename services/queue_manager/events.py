"""Participants' event streams, fed through Redis pub/sub so every process sees every event.

Publishers call ``EventBus.publish(user, event)``; it goes out on ``{p}:events``. One listener per
process (``EventBus.listen``) fans each message out to that user's local subscribers. A consumer,
such as the ``/api/events`` WebSocket or the workspace ``/ws``, reads one user's stream with::

    async with bus.subscribe(user) as stream:
        async for event in stream:   # UserEvent
            ...

A subscriber that falls more than ``QUEUE_SIZE`` events behind loses the oldest ones rather than
slowing the publisher; events are notifications, the job record is the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Iterable
from typing import Any

from services.protocol.events import UserEvent
from services.queue_manager.redis_api import StrRedis

log = logging.getLogger(__name__)
QUEUE_SIZE = 1000
MAX_RUNNING = 10_000  # jobs whose running node is remembered (one per GPU is running at a time)


class Subscription:
    """One user's events as an async iterator."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.queue: asyncio.Queue[UserEvent] = asyncio.Queue(QUEUE_SIZE)

    def put(self, event: UserEvent) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(event)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> UserEvent:
        return await self.queue.get()


class RunningNodes:
    """The node each running job's ComfyUI last said it runs (``executing {node}``): ComfyUI's
    ``last_node_id``, which it tells again to the tab that reconnects while its prompt runs. Every
    process hears every job's events, so each knows, also while the owner has no socket open; a job
    is forgotten when it ends, when its ComfyUI says it is done, and when a run of it starts (an
    attempt given back may have run nodes the new one has not), and only the newest ``MAX_RUNNING``
    are kept."""

    def __init__(self) -> None:
        self._nodes: OrderedDict[str, str] = OrderedDict()

    def note(self, event: dict[str, Any]) -> None:
        job_id = str(event.get("job_id"))
        comfy = event.get("comfy") or {}
        said = comfy.get("data") or {} if comfy.get("type") == "executing" else None
        begins = comfy.get("type") == "execution_start"  # a new attempt (one given back ran nodes)
        if event.get("type") == "finished" or begins or (said is not None and said.get("node") is None):
            self._nodes.pop(job_id, None)
        elif said is not None:
            self._nodes[job_id] = str(said.get("display_node") or said["node"])
            self._nodes.move_to_end(job_id)
            if len(self._nodes) > MAX_RUNNING:
                self._nodes.popitem(last=False)

    def of(self, job_id: str) -> str | None:
        return self._nodes.get(job_id)


class EventBus:
    def __init__(self, redis: StrRedis, channel: str) -> None:
        self._redis = redis
        self._channel = channel
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self.running_nodes = RunningNodes()

    async def publish(self, user: str, event: UserEvent) -> None:
        await self.publish_many([(user, event)])

    async def publish_many(self, items: Iterable[tuple[str, UserEvent]]) -> None:
        payloads = [
            json.dumps({"user": user, "event": event.model_dump(mode="json")}) for user, event in items
        ]
        if not payloads:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.publish(self._channel, payload)
            await pipe.execute()

    @contextlib.asynccontextmanager
    async def subscribe(self, user: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(user)
        self._subscribers[user].add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers[user].discard(subscription)
            if not self._subscribers[user]:
                del self._subscribers[user]

    def local_users(self) -> list[str]:
        """Users with a subscriber in this process."""
        return list(self._subscribers)

    def deliver_local(self, user: str, event: UserEvent) -> None:
        """Hand an event to this process's subscribers of ``user`` only (no pub/sub)."""
        for subscription in self._subscribers.get(user, ()):
            subscription.put(event)

    def deliver(self, payload: str | bytes) -> None:
        """Hand one published message to this process's subscribers of its user."""
        message = json.loads(payload)
        self.running_nodes.note(message["event"])
        if message["user"] in self._subscribers:
            self.deliver_local(message["user"], UserEvent.model_validate(message["event"]))

    async def listen(self, ready: asyncio.Event | None = None) -> None:
        async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(self._channel)
            if ready is not None:
                ready.set()
            async for message in pubsub.listen():
                if message["type"] == "message":
                    self.deliver(message["data"])
