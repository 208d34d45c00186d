"""Chromium driven over the DevTools protocol with nothing switched on: a participant's browser.

Playwright enables the Network, Runtime and Page domains on every page it opens, so each of the
~470 requests of a workspace load is also serialised as DevTools events and shipped to its driver.
On a 2-core machine that costs ~10% of the load time, work a participant's browser never does. This
driver only creates a tab, navigates it and asks it (``Runtime.evaluate``, which needs no domain)
whether it is ready; the browser keeps a regular on-disk profile, as a participant's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import websockets

from devkit.servers import free_port

POLL_S = 0.01


class DevTools:
    """One browser-level DevTools connection; ``send`` with a ``session`` talks to a tab."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def read(self) -> None:
        async for message in self._socket:
            reply = json.loads(message)
            waiter = self._pending.pop(reply.get("id", -1), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(reply)

    async def send(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> Any:
        ident = next(self._ids)
        waiter = asyncio.get_running_loop().create_future()
        self._pending[ident] = waiter
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self._socket.send(json.dumps(message))
        reply = await waiter
        if "error" in reply:
            raise RuntimeError(f"DevTools {method}: {reply['error']}")
        return reply["result"]

    async def open_tab(self, width: int = 1280, height: int = 720) -> tuple[str, str]:
        """A new blank tab with a laptop's viewport (Playwright's default): (target id, session id)."""
        target = (await self.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session = (await self.send("Target.attachToTarget", {"targetId": target, "flatten": True}))[
            "sessionId"
        ]
        size = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        await self.send("Emulation.setDeviceMetricsOverride", size, session)
        return target, session

    async def time_until(self, session: str, url: str, predicate: str, timeout_s: float = 60) -> float:
        """Milliseconds from navigating the tab to ``url`` until ``predicate`` holds in it."""
        started = time.perf_counter()
        await self.send("Page.navigate", {"url": url}, session)
        while time.perf_counter() - started < timeout_s:
            answer = await self.send(
                "Runtime.evaluate", {"expression": predicate, "returnByValue": True}, session
            )
            if answer["result"].get("value") is True:
                return (time.perf_counter() - started) * 1000
            await asyncio.sleep(POLL_S)
        raise TimeoutError(f"{url} was not ready within {timeout_s} s ({predicate})")

    async def busy_ms(self, session: str) -> float:
        """The tab's main-thread busy time so far (Chromium's ``TaskDuration``)."""
        metrics = (await self.send("Performance.getMetrics", session=session))["metrics"]
        return float(next(m["value"] for m in metrics if m["name"] == "TaskDuration")) * 1000


@contextlib.asynccontextmanager
async def chromium(executable: str, flags: list[str], profile: Path) -> AsyncIterator[DevTools]:
    """Chromium with an on-disk profile, stopped on exit."""
    port = free_port()
    args = [
        executable,
        *flags,
        f"--remote-debugging-port={port}",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        endpoint = await _endpoint(port, process)
        async with websockets.connect(endpoint, max_size=None) as socket:
            devtools = DevTools(socket)
            reader = asyncio.create_task(devtools.read())
            try:
                yield devtools
            finally:
                reader.cancel()
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _endpoint(port: int, process: asyncio.subprocess.Process, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"Chromium exited with {process.returncode} before DevTools was up")
            with contextlib.suppress(httpx.TransportError):
                reply = await client.get(f"http://127.0.0.1:{port}/json/version")
                return str(reply.json()["webSocketDebuggerUrl"])
            await asyncio.sleep(0.05)
    raise TimeoutError(f"Chromium's DevTools did not answer on port {port} within {timeout_s} s")
