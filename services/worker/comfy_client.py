"""HTTP calls to one ComfyUI server, as ``docs/comfyui-protocol.md`` describes them.

No ``Origin`` header is ever sent (ComfyUI answers 403 to a foreign Origin on loopback).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, unquote

import httpx

from services.protocol.own_checks import OWN_CHECKS_ROUTE
from services.protocol.workers import is_extension_path, is_template_path

log = logging.getLogger(__name__)
VIEW_CHUNK = 1024 * 1024


class ComfyUnavailableError(Exception):
    """ComfyUI did not answer (down, restarting, or crashed)."""


def client_of(row: list[Any]) -> str:
    """The client id a ``/queue`` row's prompt was submitted with ('' when none)."""
    extra = row[3] if len(row) > 3 else None
    return str(extra.get("client_id") or "") if isinstance(extra, dict) else ""


class ComfyBusyError(ComfyUnavailableError):
    """ComfyUI answers, but still runs a prompt the worker left (cancelled, its lease lost) long
    after it was interrupted: a node that never checks for an interrupt."""


class PromptRejectedError(Exception):
    """``POST /prompt`` answered 400: ``body`` holds ComfyUI's ``error`` and ``node_errors``."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        error = body.get("error", {})
        super().__init__(f"{error.get('type', 'invalid_prompt')}: {error.get('message', 'rejected')}")


def prompt_body(
    prompt: dict[str, Any], prompt_id: str, client_id: str, extra_data: dict[str, Any] | None
) -> dict[str, Any]:
    """``POST /prompt``'s body: "Run selected nodes" (``partial_execution_targets``, which the job
    carries in ``extra_data``) goes to the top level, where ComfyUI reads it."""
    extra = dict(extra_data or {})
    body: dict[str, Any] = {"prompt": prompt, "prompt_id": prompt_id, "client_id": client_id}
    targets = extra.pop("partial_execution_targets", None)
    if targets is not None:
        body["partial_execution_targets"] = targets
    return {**body, "extra_data": extra}


class ComfyClient:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            reply = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ComfyUnavailableError(f"ComfyUI at {self.base_url} does not answer: {exc!r}") from exc
        if reply.status_code >= 500:
            raise ComfyUnavailableError(f"ComfyUI at {self.base_url} answered {reply.status_code} to {path}")
        return reply

    async def system_stats(self) -> dict[str, Any]:
        reply = await self._call("GET", "/system_stats", timeout=min(5.0, self.timeout))
        reply.raise_for_status()
        return dict(reply.json())

    async def object_info(self) -> dict[str, Any]:
        reply = await self._call("GET", "/object_info", timeout=120.0)
        reply.raise_for_status()
        return dict(reply.json())

    async def web_extensions(self) -> dict[str, str]:
        """Custom nodes' web extension files: ``<pack>/<file>.js`` -> source. ComfyUI lists them under
        ``/extensions`` with the frontend's own ``core/`` shims, which every workspace has already.
        A file ComfyUI cannot serve is left out with a warning: the GPU still works without it."""
        reply = await self._call("GET", "/extensions", timeout=30.0)
        if reply.status_code != 200:
            log.warning("ComfyUI answered %s to /extensions: no web extensions published", reply.status_code)
            return {}
        files: dict[str, str] = {}
        for url in reply.json():
            path = unquote(str(url).removeprefix("/extensions/"))
            if path.startswith("core/") or not is_extension_path(path):
                continue
            source = await self._call("GET", f"/extensions/{quote(path)}", timeout=30.0)
            if source.status_code != 200:
                log.warning("ComfyUI answered %s to /extensions/%s: left out", source.status_code, path)
                continue
            files[path] = source.text
        return files

    async def own_checks(self) -> dict[str, Any] | None:
        """Which node classes check their own inputs, from the workshop's extension in ComfyUI
        (``services/worker/comfyui_extension``); None when that ComfyUI does not have it."""
        reply = await self._call("GET", OWN_CHECKS_ROUTE, timeout=30.0)
        found = reply.json() if reply.status_code == 200 else None
        if not isinstance(found, dict):
            log.warning(
                "ComfyUI answered %s to %s: the workspaces leave custom nodes' input checks to it",
                reply.status_code,
                OWN_CHECKS_ROUTE,
            )
            return None
        return found

    async def workflow_templates(self) -> dict[str, str]:
        """Custom nodes' example workflows: ``<pack>/<name>.json`` -> JSON text, as ComfyUI lists them
        at ``/workflow_templates`` and serves them under ``/api/workflow_templates/``. One ComfyUI
        cannot serve is left out with a warning, like a web extension."""
        reply = await self._call("GET", "/workflow_templates", timeout=30.0)
        listed = reply.json() if reply.status_code == 200 else None
        if not isinstance(listed, dict):
            log.warning("ComfyUI answered %s to /workflow_templates: no example workflows", reply.status_code)
            return {}
        paths = [f"{pack}/{name}.json" for pack, names in listed.items() for name in names]
        files: dict[str, str] = {}
        for path in filter(is_template_path, paths):
            source = await self._call("GET", f"/api/workflow_templates/{quote(path)}", timeout=30.0)
            if source.status_code != 200:
                log.warning(
                    "ComfyUI answered %s to /api/workflow_templates/%s: left out", source.status_code, path
                )
                continue
            files[path] = source.text
        return files

    async def submit(
        self, prompt: dict[str, Any], prompt_id: str, client_id: str, extra_data: dict[str, Any] | None = None
    ) -> None:
        reply = await self._call(
            "POST", "/prompt", json=prompt_body(prompt, prompt_id, client_id, extra_data)
        )
        if reply.status_code == 400:
            raise PromptRejectedError(reply.json())
        reply.raise_for_status()

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The job's history entry, or None while it is queued, running or unknown."""
        reply = await self._call("GET", f"/history/{prompt_id}")
        reply.raise_for_status()
        entry = reply.json().get(prompt_id)
        return dict(entry) if entry else None

    async def queue(self) -> tuple[list[str], list[str]]:
        """Prompt ids running and pending."""
        return await self.queued_by(lambda _: True)

    async def queued_by(self, clients: Callable[[str], bool]) -> tuple[list[str], list[str]]:
        """Prompt ids running and pending that a client id ``clients`` picks submitted (ComfyUI
        keeps it in each queue row's extra_data; '' when none)."""
        reply = await self._call("GET", "/queue")
        reply.raise_for_status()
        body = reply.json()

        def picked(rows: list[Any]) -> list[str]:
            return [str(row[1]) for row in rows if clients(client_of(row))]

        return picked(body.get("queue_running", [])), picked(body.get("queue_pending", []))

    async def interrupt(self, prompt_id: str) -> None:
        (await self._call("POST", "/interrupt", json={"prompt_id": prompt_id})).raise_for_status()

    async def delete_queued(self, prompt_id: str) -> None:
        (await self._call("POST", "/queue", json={"delete": [prompt_id]})).raise_for_status()

    async def forget(self, prompt_id: str) -> None:
        """Drop an earlier attempt's history entry, so an old ending is never mistaken for this run's."""
        (await self._call("POST", "/history", json={"delete": [prompt_id]})).raise_for_status()

    @contextlib.asynccontextmanager
    async def view(self, filename: str, subfolder: str, kind: str) -> AsyncIterator[httpx.Response]:
        """Stream one file from ``/view``; the caller reads ``aiter_bytes`` chunk by chunk."""
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        try:
            async with self.http.stream("GET", "/view", params=params, timeout=300.0) as reply:
                reply.raise_for_status()
                yield reply
        except httpx.TransportError as exc:
            raise ComfyUnavailableError(f"ComfyUI at {self.base_url} dropped /view of {filename}") from exc
