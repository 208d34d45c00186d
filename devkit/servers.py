"""Real servers for tests: each picks a free loopback port, waits until it answers, and stops."""

from __future__ import annotations

import contextlib
import functools
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from services.queue_manager.durability import redis_args

# Where queue managers started by tests and benches keep user files unless a test chooses a folder:
# never the production default under /var/lib.
TEST_FILES_URL = (Path(tempfile.gettempdir()) / "comfy-workshop-test-files").as_uri()


# Ports for test servers come from below the kernel's ephemeral range. A port the kernel picks for
# ``bind(0)`` comes from the range it also gives every outgoing connection its local port from, so
# between the pick and the server's own bind a test's many client connections could take it
# ("address already in use" under load). Nothing takes a port below that range by itself.
LISTEN_PORTS_FLOOR = 20000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_low() -> int:
    """The lowest port the kernel gives an outgoing connection (32768 where it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nothing listens on, which no outgoing connection will take meanwhile."""
    ceiling = ephemeral_low()
    for _ in range(200):
        port = random.randrange(LISTEN_PORTS_FLOOR, max(ceiling, LISTEN_PORTS_FLOOR + 1000))  # noqa: S311  # a spread
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError(f"no free loopback port between {LISTEN_PORTS_FLOOR} and {ceiling}")


# One client for every poll of a starting server: ``httpx.get`` builds a client, and with it a TLS
# context loading the CA bundle (~25 ms of CPU), on every call, so a 20 ms poll loop took a core from
# the server it waited for (0.16 ms a call on this shared one). Made at the first poll, not when this
# module is imported: most importers never poll, and making it costs that TLS context once.
@functools.cache
def polling_client() -> httpx.Client:
    return httpx.Client(timeout=2)


def http_get(url: str, timeout: float = 2) -> httpx.Response:
    """GET ``url`` on the shared polling client (for checks that a local server answers)."""
    return polling_client().get(url, timeout=timeout)


def wait_until(check, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    """Poll ``check`` until it returns truthy; raise with ``what`` when ``timeout`` runs out. The
    default bound is generous: it only matters when something is wrong, and on a loaded two-core
    machine a process starting (imports alone take seconds of CPU) can take well over 15 s."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.02)
    raise TimeoutError(f"{what} not reached within {timeout}s (last error: {last!r})")


@dataclass
class ManagedProcess:
    """A server child process that a test can stop politely or SIGKILL like a crash."""

    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, kw_only=True)

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers run, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self, grace: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.process is not None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
            self.kill()


@dataclass
class RedisServer(ManagedProcess):
    """A real ``redis-server`` with the queue's durability policy, as production runs it."""

    directory: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `apt-get install redis-server`")
        self.port = self.port or free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                *redis_args(),
                "--save",
                "",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_until(lambda: client.ping(), what=f"redis-server on port {self.port}")
        client.close()
        return self


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory).start()
    try:
        yield server
    finally:
        server.stop()
