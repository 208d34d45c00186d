"""A loopback HTTP double of Verda's public API, shaped as the ``verda`` SDK reads it.

The SDK speaks ``requests`` to ``<base_url>/...``, so the providers under test run unchanged against
``VerdaDouble.url``. State is in memory; ``fail()`` scripts faults: an error answered before the API
acts, after it acted (the create went through, the caller hears 5xx), or a hang past the client's
timeout after acting. Instances boot one step per status read, so no test waits on a clock.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.infra.providers.loopback import Fault, QuietHandler, RateWindow, serving, take_fault

Answer = tuple[int, Any]
# What the double replies: status, body and extra headers (a 429's Retry-After).
Reply = tuple[int, Any, dict[str, str]]


@dataclass
class VerdaDouble:
    client_secret: str = "s3cret"
    boot: list[str] = field(default_factory=lambda: ["ordered", "provisioning", "running"])
    unavailable: set[str] = field(default_factory=set)
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    ssh_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    scripts: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    registry_credentials: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    log: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0
    gates: dict[tuple[str, str], threading.Barrier] = field(default_factory=dict)
    window: RateWindow = field(default_factory=RateWindow)

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail(self, method: str, path: str, **kwargs: Any) -> None:
        self.faults.append(Fault(method, path, **kwargs))

    def rendezvous(self, method: str, path: str, parties: int, timeout_s: float) -> None:
        """Hold each ``method path`` call until ``parties`` callers are there (or ``timeout_s`` passed):
        concurrent callers then all see the state before any of them acts, as a race would."""
        self.gates[(method, path)] = threading.Barrier(parties, timeout=timeout_s)

    def billable_instances(self) -> list[dict[str, Any]]:
        return [i for i in self.instances.values() if i["status"] != "deleted"]

    def live_volumes(self) -> list[dict[str, Any]]:
        return [v for v in self.volumes.values() if v["status"] != "deleted"]

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):04d}"

    # --- serving ---------------------------------------------------------------------------
    def answer(self, method: str, path: str, body: Any, query: dict[str, list[str]]) -> Reply:
        gate = self.gates.get((method, path))
        if gate is not None:
            # When the others never come (they were serialized), the wait times out: go on alone.
            with contextlib.suppress(threading.BrokenBarrierError):
                gate.wait()
        with self._lock:
            self.log.append((method, path))
            if limited := self.window.retry_after():
                return 429, {"code": None, "message": "Too Many Requests"}, {"Retry-After": limited}
            fault = take_fault(self.faults, method, path)
            if fault and fault.retry_after_s is not None:
                self.window.close_for(fault.retry_after_s)
                error = {"code": fault.code, "message": fault.message}
                return fault.status, error, {"Retry-After": f"{fault.retry_after_s:g}"}
            if fault and fault.when == "before":
                return fault.status, {"code": fault.code, "message": fault.message}, {}
            status, payload = self._route(method, path, body, query)
        if fault and fault.when == "after":
            return fault.status, {"code": fault.code, "message": fault.message}, {}
        if fault and fault.when == "hang":
            self._stopping.wait(10)
        return status, payload, {}

    def _route(self, method: str, path: str, body: Any, query: dict[str, list[str]]) -> Answer:
        from tests.infra.providers import verda_routes

        for verb, pattern, handler in verda_routes.ROUTES:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                return handler(self, body, query, *match.groups())
        return 404, {"code": "not_found", "message": f"no route {method} {path}"}

    @contextmanager
    def running(self) -> Iterator[VerdaDouble]:
        with serving(_handler_for(self.answer), self.port) as port:
            self.port = port
            try:
                yield self
            finally:
                self._stopping.set()  # a scripted hang ends before the server stops


def _handler_for(answer: Callable[..., Reply]) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            raw = self.read_body()
            body = json.loads(raw) if raw else None
            path = parts.path.removeprefix("/v1")
            status, payload, headers = answer(self.command, path, body, parse_qs(parts.query))
            if isinstance(payload, str):
                self.reply(status, "text/plain", payload.encode(), headers)
            else:
                self.reply(status, "application/json", json.dumps(payload).encode(), headers)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler
