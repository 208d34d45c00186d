"""RunPod's REST API (``/v1``) as an in-memory ``httpx.MockTransport``, with scripted faults.

A fault (``loopback.Fault``) answers an error before acting, after acting (the object exists, the
caller hears an error), or, as ``hang``, raises a read timeout after acting, as a dropped connection
would.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.infra.providers.loopback import Fault, QuietHandler, RateWindow, serving, take_fault

COLLECTIONS = {"templates", "endpoints", "networkvolumes", "containerregistryauth"}
# RunPod refuses a second object of a name in these (its API reference: "The name must be unique").
UNIQUE_NAMES = {"templates": "template", "containerregistryauth": "container registry auth"}
# What RunPod answers for an object of these: a registry auth's username and password never come back.
SHOWN = {"containerregistryauth": ("id", "name")}
# What names an object of the key's collection, in the objects of another: RunPod refuses to delete
# one still named (a registry auth a template pulls with; dstack's RunPod backend relies on it to keep
# the auths in use when it deletes stale ones, and RunPod's console says so too).
USED_BY = {"containerregistryauth": ("templates", "containerRegistryAuthId")}


@dataclass
class RunPodDouble:
    api_key: str = "rp-key"
    store: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {c: {} for c in COLLECTIONS})
    faults: list[Fault] = field(default_factory=list)
    log: list[tuple[str, str]] = field(default_factory=list)
    window: RateWindow = field(default_factory=RateWindow)

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.transport = httpx.MockTransport(self.handle)
        self.url = ""

    @contextmanager
    def running(self) -> Iterator[RunPodDouble]:
        """The same double over loopback HTTP (``url``), for a provider that was pickled and cannot
        carry the in-memory transport along."""
        with serving(_handler_for(self)) as port:
            self.url = f"http://127.0.0.1:{port}/v1"
            yield self

    def fail(self, method: str, path: str, **kwargs: Any) -> None:
        self.faults.append(Fault(method, path, **kwargs))

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1")
        self.log.append((request.method, path))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return httpx.Response(401, json={"error": "invalid api key", "status": 401})
        if limited := self.window.retry_after():
            return _too_many(limited)
        fault = take_fault(self.faults, request.method, path)
        if fault and fault.retry_after_s is not None:
            self.window.close_for(fault.retry_after_s)
            return _too_many(f"{fault.retry_after_s:g}")
        if fault and fault.when == "before":
            return httpx.Response(fault.status, json={"error": fault.message, "status": fault.status})
        body = json.loads(request.content) if request.content else None
        response = self._route(request.method, path, body)
        if fault and fault.when == "hang":
            raise httpx.ReadTimeout("timed out", request=request)
        if fault:
            return httpx.Response(fault.status, json={"error": fault.message, "status": fault.status})
        return response

    def _route(self, method: str, path: str, body: Any) -> httpx.Response:
        match = re.fullmatch(r"/(\w+)(?:/([\w-]+))?", path)
        if not match or match.group(1) not in COLLECTIONS:
            return httpx.Response(404, json={"error": "not found", "status": 404})
        items = self.store[match.group(1)]
        id_ = match.group(2)
        if id_ is None:
            return self._on_collection(method, match.group(1), items, body)
        if id_ not in items:
            return httpx.Response(404, json={"error": f"{id_} not found", "status": 404})
        if method == "DELETE":
            if user := self._user_of(match.group(1), id_):
                message = f"{UNIQUE_NAMES[match.group(1)]} is in use by template {user}"
                return httpx.Response(400, json={"error": message, "status": 400})
            if items[id_].get("workersMax", 0) > 0:
                return httpx.Response(
                    400, json={"error": "scale workers to 0 before deleting", "status": 400}
                )
            del items[id_]
            return httpx.Response(204)
        if method == "PATCH":
            items[id_].update(body)
        return httpx.Response(200, json=shown(match.group(1), items[id_]))

    def _user_of(self, collection: str, id_: str) -> str | None:
        """The name of an object that names ``id_`` of ``collection`` (RunPod keeps it from deletion)."""
        if collection not in USED_BY:
            return None
        users, key = USED_BY[collection]
        return next((obj["name"] for obj in self.store[users].values() if obj.get(key) == id_), None)

    def _on_collection(self, method: str, name: str, items: dict[str, Any], body: Any) -> httpx.Response:
        if method == "GET":
            return httpx.Response(200, json=[shown(name, item) for item in items.values()])
        if name in UNIQUE_NAMES and any(item["name"] == body["name"] for item in items.values()):
            message = f"{UNIQUE_NAMES[name]} name must be unique"
            return httpx.Response(400, json={"error": message, "status": 400})
        id_ = f"{name[:2]}{next(self._ids):08d}"
        items[id_] = {"id": id_, **body}
        return httpx.Response(200, json=shown(name, items[id_]))


def _too_many(retry_after: str) -> httpx.Response:
    """RunPod's rate limiter refusing a call: 429 with the seconds to wait."""
    body = {"error": "too many requests", "status": 429}
    return httpx.Response(429, json=body, headers={"Retry-After": retry_after})


def shown(collection: str, item: dict[str, Any]) -> dict[str, Any]:
    """``item`` as RunPod answers it (the double keeps everything it was sent, for the tests)."""
    keys = SHOWN.get(collection)
    return item if keys is None else {key: item[key] for key in keys}


def _handler_for(double: RunPodDouble) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def _serve(self) -> None:
            request = httpx.Request(
                self.command,
                f"http://127.0.0.1{self.path}",
                headers={"Authorization": self.headers.get("Authorization", "")},
                content=self.read_body(),
            )
            try:
                with double._lock:
                    response = double.handle(request)
            except httpx.TimeoutException:
                self.close_connection = True
                return
            headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
            self.reply(response.status_code, "application/json", response.content, headers)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

    return Handler
