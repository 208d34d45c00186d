"""What the cloud doubles share: faults a test scripted, taken in order, and a handler served over
loopback HTTP in its own thread (for providers that were pickled and cannot carry a transport)."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    """An error the double answers ``times`` times to ``method`` on a path matching ``path`` (a regular
    expression): ``before`` it acts, ``after`` it acted (the object exists, the caller hears an error),
    or ``hang``: it acts and the caller hears nothing before its timeout, as on a dropped connection.
    ``code``: the error code in the body, for APIs that send one (Verda). ``retry_after_s``: a rate
    limiter's 429: its answer carries Retry-After, and every call until then is refused too."""

    method: str
    path: str
    status: int = 500
    code: str | None = "server_error"
    message: str = "internal error"
    when: str = "before"  # before | after | hang
    times: int = 1
    retry_after_s: float | None = None


def take_fault(faults: list[Fault], method: str, path: str) -> Fault | None:
    """The first scripted fault for ``method path`` that has times left, spending one of them."""
    for fault in faults:
        if fault.method == method and re.fullmatch(fault.path, path) and fault.times > 0:
            fault.times -= 1
            return fault
    return None


@dataclass
class RateWindow:
    """A rate limiter as an API runs one: once it answered 429 with Retry-After, it refuses every call
    until that time has passed, whoever asks again sooner."""

    until: float = 0.0

    def close_for(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    def retry_after(self) -> str | None:
        """The Retry-After header (whole seconds, rounded up) while the window is closed, else None."""
        left = self.until - time.monotonic()
        return str(max(1, math.ceil(left))) if left > 0 else None


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing, reads the body whole and answers one body."""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(
        self, status: int, content_type: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client gave up (a scripted hang outlasted its timeout)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], port: int = 0) -> Iterator[int]:
    """``handler`` on 127.0.0.1:``port`` (0: a free one) until the block ends; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
