"""The node catalogue: the workers' ComfyUI ``/object_info``, served to every workspace.

A worker sends its ``/object_info`` with its registration when the queue manager does not know its
``capabilities.catalogue_hash`` yet; the registry stores it under ``{p}:catalogue:{hash}`` (one key
per version, see ``services/queue_manager/keys.py``). The version served is the approved one,
``{p}:catalogue_current``: who approves which version, and why a leaked worker token cannot, is in
``services/queue_manager/catalogues.py``. It stays served while no GPU is up (overnight, or before
the first worker of the day).

Custom nodes' web extensions come with the catalogue: a worker sends the JavaScript files its
ComfyUI lists under ``/extensions`` (``<pack>/<file>.js``, the custom nodes' ``WEB_DIRECTORY``) in
the same registration, and the registry keeps them under ``{p}:catalogue_ext:{hash}``; they are
part of the version (the worker's hash covers them). ``/extensions`` then lists them for the
frontend to import and the workspace serves them; with none the frontend runs its core ones only.
The custom nodes' example workflows (ComfyUI's ``/workflow_templates``, the packs'
``example_workflows`` folders) travel and are approved the same way, kept in that hash under
``workflow_templates/<pack>/<name>.json``; the templates browser lists them under each pack's name.
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from redis.asyncio import Redis

from services.protocol.workers import template_of
from services.queue_manager.catalogues import description_as_text, held_names, only_held
from services.queue_manager.store import Store

REFRESH_SECONDS = 2.0


@dataclass(frozen=True)
class Catalogue:
    """One catalogue version as served; parsed once and shared by every workspace."""

    digest: str
    raw: bytes
    extensions: dict[str, bytes] = field(default_factory=dict)
    templates: dict[str, bytes] = field(default_factory=dict)
    """Custom nodes' example workflows, ``<pack>/<name>.json`` -> JSON (the templates browser's)."""
    held: frozenset[str] | None = None
    """The model files the GPUs hold (``catalogues.held_names``): no other is offered or accepted."""

    @cached_property
    def nodes(self) -> dict[str, Any]:
        """Node class -> its ``/object_info`` entry, descriptions shown as text
        (``description_as_text``)."""
        body = gzip.decompress(self.raw) if self.raw[:2] == b"\x1f\x8b" else self.raw
        parsed: dict[str, Any] = json.loads(body)
        for node in parsed.values():
            if isinstance(node, dict) and "description" in node:
                node["description"] = description_as_text(node["description"])
        return only_held(parsed, self.held)

    def node(self, name: str) -> dict[str, Any]:
        """``/object_info/<Class>``: that node only, or ``{}`` when unknown (as ComfyUI answers)."""
        return {name: self.nodes[name]} if name in self.nodes else {}


EMPTY = Catalogue(digest="", raw=b"{}")


class CatalogueCache:
    """The current catalogue, looked up at most every ``REFRESH_SECONDS`` and loaded once per version."""

    def __init__(self, redis: Redis, store: Store, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self._redis = redis
        self._store = store
        self._keys = store.keys
        self._refresh = refresh_seconds
        self._checked = -refresh_seconds
        self._loaded = EMPTY

    async def current(self) -> Catalogue:
        if time.monotonic() - self._checked >= self._refresh:
            self._checked = time.monotonic()
            digest = await self._current_digest()
            if digest and digest != self._loaded.digest:
                self._loaded = await self._load(digest) or self._loaded
        return self._loaded

    async def _current_digest(self) -> str:
        """The approved version (``services/queue_manager/catalogues.py``): a registration alone
        never changes what participants' browsers load."""
        return _text(await self._redis.get(self._keys.catalogue_current) or b"")

    async def _load(self, digest: str) -> Catalogue | None:
        body = await self._redis.get(self._keys.catalogue(digest))
        if body is None:
            return None
        stored = await self._redis.hgetall(self._keys.catalogue_extensions(digest))
        files = {_text(k): _bytes(v) for k, v in stored.items()}
        templates = {name: files.pop(path) for path in list(files) if (name := template_of(path))}
        return Catalogue(digest, _bytes(body), files, templates, held_names(self._store.settings.models))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
