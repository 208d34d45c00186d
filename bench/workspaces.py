"""Workspaces at workshop scale: ``python -m bench.workspaces [--users 100] [--loads 7]``.

Prints one JSON object:

- ``rss_mb_100_users``: resident memory of the queue manager process (uvicorn, its own process) with
  ``--users`` logged-in participants who each loaded their node catalogue and hold the workspace
  WebSocket open (target <= 250 MB);
- ``ready_ms_p50``: median time, in real headless Chromium on loopback, from opening ``/w/<user>/``
  to the ComfyUI frontend being usable (its graph is up and the workers' nodes are registered), over
  ``--loads`` openings in one on-disk browser profile, as a participant opens and reopens the page
  during a day (target <= 2000 ms). The browser is driven as a participant's is: no DevTools domain
  switched on (see ``bench/cdp.py``);
- ``ready_ms_first_load``: the first of those openings, with an empty browser cache;
- ``ready_cpu_ms_p50``: the page's main-thread busy time until ready (Chromium's ``TaskDuration``);
- ``ready_ms_p50_playwright``: the same median under Playwright in an incognito context, as the
  browser tests drive the page: its instrumentation of every request costs ~10% on 2 cores;
- ``ready_ms_p50_static_floor``: the same median with no server work at all, nginx serving the
  package and the queue manager's start-up answers as files (``bench/floor.py``): the stock
  frontend's own start-up on this machine, which no server can go below.

Chromium's BackgroundResourceFetch (on by default) never consumes V8's code cache for module
scripts, so every load compiles the frontend's ~450 modules afresh; the frontend's own start-up, not
the queue manager (every answer < 30 ms), is nearly all of the time.

The catalogue is a realistic ~500-node ``/object_info`` (ComfyUI v0.3.64 sends ~0.5 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import websockets
from playwright.async_api import async_playwright

from bench.cdp import chromium
from bench.floor import can_answers, static_workspace
from devkit.doubles.comfyui_nodes import catalogue, node
from devkit.qm_server import QueueManagerProcess, qm_env
from devkit.servers import redis_server
from services.protocol.workers import WorkerCapabilities, WorkerRegistration

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TOKEN = "bench-token"
# Usable: the graph is up, the workers' nodes are registered and the start-up overlay that blocks
# the page while the frontend loads is gone (or on its way out).
READY = (
    "!!(window.app && window.app.graph && window.LiteGraph.registered_node_types['EmptyImage'])"
    " && !document.querySelector('.p-blockui-mask-document:not(.p-overlay-mask-leave)')"
)


def default_graph_nodes() -> dict[str, dict[str, Any]]:
    """The nodes of the frontend's default graph, with ComfyUI's own inputs and outputs: every real
    ComfyUI has them, and the page builds that graph on a participant's first visit."""
    image_size = ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}]
    nodes = [
        node(
            "CheckpointLoaderSimple",
            {"ckpt_name": [["v1-5-pruned-emaonly-fp16.safetensors", "sdxl.safetensors"]]},
            ["MODEL", "CLIP", "VAE"],
            "loaders",
            display="Load Checkpoint",
        ),
        node(
            "CLIPTextEncode",
            {"text": ["STRING", {"multiline": True, "dynamicPrompts": True}], "clip": ["CLIP"]},
            ["CONDITIONING"],
            "conditioning",
            display="CLIP Text Encode (Prompt)",
        ),
        node(
            "KSampler",
            {
                "model": ["MODEL"],
                "seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1}],
                "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
                "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1}],
                "sampler_name": [["euler", "euler_ancestral", "dpmpp_2m"]],
                "scheduler": [["normal", "karras", "simple"]],
                "positive": ["CONDITIONING"],
                "negative": ["CONDITIONING"],
                "latent_image": ["LATENT"],
                "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
            },
            ["LATENT"],
            "sampling",
        ),
        node(
            "EmptyLatentImage",
            {
                "width": image_size,
                "height": image_size,
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            },
            ["LATENT"],
            "latent",
            display="Empty Latent Image",
        ),
        node("VAEDecode", {"samples": ["LATENT"], "vae": ["VAE"]}, ["IMAGE"], "latent", display="VAE Decode"),
    ]
    return {n["name"]: n for n in nodes}


def big_catalogue(size: int = 500) -> dict[str, Any]:
    """The double's nodes, the default graph's, then look-alikes up to ``size`` nodes, as many as a
    real ComfyUI has."""
    nodes = {**catalogue([f"input_{i}.png" for i in range(20)]), **default_graph_nodes()}
    originals = list(nodes.values())
    for i in range(size - len(nodes)):
        node = json.loads(json.dumps(originals[i % len(originals)]))
        node["name"] = node["display_name"] = f"{node['name']}Variant{i}"
        node["description"] = "A node of a custom node pack, described at some length. " * 3
        nodes[node["name"]] = node
    return nodes


@contextlib.contextmanager
def queue_manager(redis_url: str, users: list[str], files: Path) -> Iterator[tuple[str, int]]:
    """The queue manager as its own process (its RSS is what is measured), one uvicorn worker."""
    env = qm_env(
        redis_url, {user: f"{user}-pw" for user in users}, {"gpu": TOKEN}, QM_FILES_URL=files.as_uri()
    )
    server = QueueManagerProcess(env, extra_args=("--ws", "websockets-sansio")).start()
    try:
        assert server.process is not None
        yield server.url, server.process.pid
    finally:
        server.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


def register(url: str) -> None:
    caps = WorkerCapabilities(pool="gpu", provider="bench", catalogue_hash="bench-catalogue")
    body = WorkerRegistration(worker_id="bench-worker", capabilities=caps, catalogue=big_catalogue())
    reply = httpx.post(
        f"{url}/api/workers/register",
        content=body.model_dump_json(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        timeout=30,
    )
    reply.raise_for_status()


async def login_cookie(client: httpx.AsyncClient, url: str, user: str) -> str:
    """Log in through the real route; the session cookie's value."""
    reply = await client.post(f"{url}/api/auth/login", json={"user": user, "password": f"{user}-pw"})
    reply.raise_for_status()
    return str(reply.cookies["qm_session"])


async def participant(client: httpx.AsyncClient, url: str, user: str) -> websockets.ClientConnection:
    """Log in, load the catalogue as the page does, and open the workspace socket."""
    cookie = await login_cookie(client, url, user)
    headers = {"Cookie": f"qm_session={cookie}"}
    (await client.get(f"{url}/w/{user}/api/object_info", headers=headers)).raise_for_status()
    socket = await websockets.connect(f"ws{url[4:]}/w/{user}/ws", additional_headers=headers)
    await socket.recv()  # the greeting status
    return socket


async def hold_sockets(url: str, users: list[str], pid: int) -> float:
    async with httpx.AsyncClient(timeout=60) as client:
        sockets = []
        for start in range(0, len(users), 10):  # ten at a time, as a room of people would log in
            batch = users[start : start + 10]
            sockets += await asyncio.gather(*(participant(client, url, user) for user in batch))
        measured = rss_mb(pid)
        await asyncio.gather(*(socket.close() for socket in sockets))
    return measured


async def session_cookie(url: str, user: str) -> str:
    """A returning participant's session: the tutorial done, so each opening builds the default graph
    (a first visit would open the templates browser on a blank canvas instead)."""
    async with httpx.AsyncClient(timeout=30) as client:
        cookie = await login_cookie(client, url, user)
        done = {"Comfy.TutorialCompleted": True}
        reply = await client.post(f"{url}/w/{user}/api/settings", json=done, cookies={"qm_session": cookie})
        reply.raise_for_status()
        return cookie


async def ready_times(
    url: str, user: str, loads: int, profile: Path, cookie: str = ""
) -> list[tuple[float, float]]:
    """Open the workspace ``loads`` times in one on-disk browser profile (logged in once), each in a
    new tab, as a participant's own browser would; each time (wall ms, main-thread busy ms)."""
    times = []
    async with chromium(CHROMIUM, FLAGS, profile) as browser:
        if cookie:
            session = {"name": "qm_session", "value": cookie, "url": url, "httpOnly": True}
            await browser.send("Storage.setCookies", {"cookies": [session]})
        for _ in range(loads):
            target, tab = await browser.open_tab()
            await browser.send("Performance.enable", session=tab)
            wall = await browser.time_until(tab, f"{url}/w/{user}/", READY)
            times.append((wall, await browser.busy_ms(tab)))
            await browser.send("Target.closeTarget", {"targetId": target})
    return times


async def ready_times_playwright(url: str, user: str, loads: int) -> list[float]:
    """The same openings under Playwright (a fresh incognito context, its DevTools domains on), as
    the browser tests see the page: the wall ms of each."""
    times = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = await browser.new_context()
        login = {"user": user, "password": f"{user}-pw"}
        reply = await context.request.post(f"{url}/api/auth/login", data=login)
        assert reply.ok, await reply.text()
        for _ in range(loads):
            page = await context.new_page()
            started = time.perf_counter()
            await page.goto(f"{url}/w/{user}/")
            await page.wait_for_function(f"() => ({READY})", timeout=60_000)  # a function: no eval under CSP
            times.append((time.perf_counter() - started) * 1000)
            await page.close()
        await browser.close()
    return times


def run(users: int, loads: int) -> dict[str, float]:
    names = [f"p{i:03d}" for i in range(users)]
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        with (
            redis_server(scratch / "redis") as redis,
            queue_manager(redis.url, names, scratch / "files") as (url, pid),
        ):
            register(url)
            rss = asyncio.run(hold_sockets(url, names, pid))
            cookie = asyncio.run(session_cookie(url, names[0]))
            times = asyncio.run(ready_times(url, names[0], loads, scratch / "profile", cookie))
            instrumented = asyncio.run(ready_times_playwright(url, names[0], loads))
            can_answers(url, names[0], cookie, scratch / "canned")
        with static_workspace(names[0], scratch / "canned", scratch / "nginx") as static_url:
            floor = asyncio.run(ready_times(static_url, names[0], loads, scratch / "profile-floor"))
    return {
        "rss_mb_100_users": rss,
        "ready_ms_p50": round(statistics.median(wall for wall, _ in times), 1),
        "ready_ms_first_load": round(times[0][0], 1),
        "ready_cpu_ms_p50": round(statistics.median(busy for _, busy in times), 1),
        "ready_ms_p50_playwright": round(statistics.median(instrumented), 1),
        "ready_ms_p50_static_floor": round(statistics.median(wall for wall, _ in floor), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100, help="participants holding a workspace socket")
    parser.add_argument("--loads", type=int, default=7, help="workspace page loads timed in Chromium")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.users, args.loads)))


if __name__ == "__main__":
    main()
