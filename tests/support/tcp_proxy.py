"""A TCP proxy on a loopback port in front of a real server (the S3 double), that can break the way
a network does: cut a connection once a response has passed some bytes, refuse every connection
(an outage) and come back, or drop a request's Range header as a cache on the way may."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class FlakyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.down = False  # an outage: every connection is closed as it opens
        self.cut_after: int | None = None  # cut the next connection whose answer passes this many bytes
        self.down_after_cut = False  # the cut starts an outage
        self.drop_range = False  # a cache or proxy on the way that ignores ranged reads (answers 200)
        self.cuts = 0
        self._server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bool) -> None:
        passed = 0
        while data := await reader.read(65536):
            passed += len(data)
            if answer and self.cut_after is not None and passed > self.cut_after:
                writer.write(data[: len(data) - (passed - self.cut_after)])
                self.cut_after, self.cuts = None, self.cuts + 1
                self.down = self.down or self.down_after_cut
                return
            if not answer and self.drop_range:
                data = data.replace(b"\r\nRange:", b"\r\nX-Gone:").replace(b"\r\nrange:", b"\r\nx-gone:")
            writer.write(data)
            await writer.drain()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.down:
            client_writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            pumps = [
                asyncio.create_task(self._pump(client_reader, upstream_writer, answer=False)),
                asyncio.create_task(self._pump(upstream_reader, client_writer, answer=True)),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                pump.cancel()
        finally:
            for writer in (client_writer, upstream_writer):
                with contextlib.suppress(OSError):
                    writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FlakyProxy]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
