"""A lean HTTP/1.1 keep-alive client for benchmarks that share the machine with the server.

httpx spends about as much CPU per request as the queue manager does to answer it; on two cores
a benchmark built on it measures its own client. This one speaks plain HTTP/1.1 over pooled
keep-alive connections (JSON bodies, ``Content-Length`` answers), which is all the queue
manager's API needs, so the figures describe the server::

    async with Client("http://127.0.0.1:8000", connections=40) as http:
        reply = await http.post("/api/jobs", {"prompt": ...}, headers={"Authorization": ...})
        reply.status_code, reply.json()
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit


@dataclass
class Reply:
    status_code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise RuntimeError(f"HTTP {self.status_code}: {self.body[:500]!r}")


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, head: bytes, body: bytes) -> tuple[Reply, bool]:
        """Send one request; the reply and whether the server keeps the connection open."""
        self.writer.write(head + body)
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length, keep = 0, True
        for line in (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked replies are not supported by the bench client")
        payload = await self.reader.readexactly(length) if length else b""
        return Reply(status, payload), keep

    def close(self) -> None:
        self.writer.close()


class Client:
    def __init__(self, base_url: str, connections: int = 40) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._host_header = f"Host: {parts.netloc}\r\n".encode()
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(connections)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    async def post(
        self,
        path: str,
        payload: Any = None,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Reply:
        body = json.dumps(payload).encode() if payload is not None else b""
        target = f"{path}?{urlencode(params)}" if params else path
        lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        kind = "Content-Type: application/json\r\n" if payload is not None else ""
        head = f"POST {target} HTTP/1.1\r\n{lines}{kind}Content-Length: {len(body)}\r\n"
        return await self._send(head.encode() + self._host_header + b"\r\n", body)

    async def _send(self, head: bytes, body: bytes) -> Reply:
        async with self._slots:
            connection = self._idle.pop() if self._idle else await self._open()
            try:
                reply, keep = await connection.request(head, body)
            except BaseException:
                connection.close()
                raise
            if keep:
                self._idle.append(connection)
            else:
                connection.close()
            return reply

    async def _open(self) -> Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return Connection(reader, writer)
