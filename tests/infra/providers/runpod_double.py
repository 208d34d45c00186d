"""RunPod's REST API (``/v1``) as an in-memory ``httpx.MockTransport``, with scripted faults.

A fault answers an error before acting, after acting (the object exists, the caller hears an
error), or raises a read timeout after acting, as a dropped connection would.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

COLLECTIONS = {"templates", "endpoints", "networkvolumes", "containerregistryauth"}


@dataclass
class Fault:
    method: str
    path: str
    status: int = 500
    message: str = "internal server error"
    when: str = "before"  # before | after | timeout
    times: int = 1


@dataclass
class RunPodDouble:
    api_key: str = "rp-key"
    store: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {c: {} for c in COLLECTIONS})
    faults: list[Fault] = field(default_factory=list)
    log: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.transport = httpx.MockTransport(self.handle)
        self.url = ""

    @contextmanager
    def running(self) -> Iterator[RunPodDouble]:
        """The same double over loopback HTTP (``url``), for a provider that was pickled and cannot
        carry the in-memory transport along."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def fail(self, method: str, path: str, **kwargs: Any) -> None:
        self.faults.append(Fault(method, path, **kwargs))

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1")
        self.log.append((request.method, path))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return httpx.Response(401, json={"error": "invalid api key", "status": 401})
        fault = self._take_fault(request.method, path)
        if fault and fault.when == "before":
            return httpx.Response(fault.status, json={"error": fault.message, "status": fault.status})
        body = json.loads(request.content) if request.content else None
        response = self._route(request.method, path, body)
        if fault and fault.when == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if fault:
            return httpx.Response(fault.status, json={"error": fault.message, "status": fault.status})
        return response

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.method == method and re.fullmatch(fault.path, path) and fault.times > 0:
                fault.times -= 1
                return fault
        return None

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
            if items[id_].get("workersMax", 0) > 0:
                return httpx.Response(
                    400, json={"error": "scale workers to 0 before deleting", "status": 400}
                )
            del items[id_]
            return httpx.Response(204)
        if method == "PATCH":
            items[id_].update(body)
        return httpx.Response(200, json=items[id_])

    def _on_collection(self, method: str, name: str, items: dict[str, Any], body: Any) -> httpx.Response:
        if method == "GET":
            return httpx.Response(200, json=list(items.values()))
        if name == "templates" and any(t["name"] == body["name"] for t in items.values()):
            return httpx.Response(400, json={"error": "template name must be unique", "status": 400})
        id_ = f"{name[:2]}{next(self._ids):08d}"
        items[id_] = {"id": id_, **body}
        return httpx.Response(200, json=items[id_])


def _handler_for(double: RunPodDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = httpx.Request(
                self.command,
                f"http://127.0.0.1{self.path}",
                headers={"Authorization": self.headers.get("Authorization", "")},
                content=self.rfile.read(length) if length else b"",
            )
            try:
                with double._lock:
                    response = double.handle(request)
            except httpx.TimeoutException:
                self.close_connection = True
                return
            self.send_response(response.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

    return Handler
