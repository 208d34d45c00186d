"""Which node catalogue and web extensions reach participants' browsers: the admin decides, not a token.

A worker publishes what its ComfyUI runs with its registration: the node catalogue
(``/object_info``) and its custom nodes' web extensions (JavaScript every participant's page
imports). A pool token is a bearer secret that sits on GPU machines; whoever holds a leaked one
can register. So a registration only *offers* a catalogue version; the workspaces serve the
*approved* one (``{p}:catalogue_current``), and a version becomes approved:

* by itself, when it only adds to the approved one: the same web extension files byte for byte,
  and every approved node class still there with the same definition, except that a combo may
  offer more options (new models) and upload inputs may list any files (the workspace lists each
  participant's own). A worker with more custom nodes, or more models, goes live at once; nothing a
  participant's prompt uses can vanish or change under it;
* by itself, when nothing is approved yet and it carries no web extension (nor example workflow:
  those travel among the web extension files as ``workflow_templates/<pack>/<name>.json``, and a
  new or changed one waits for the admin alike);
* never by itself when a node class it adds carries markup (a tag: ``<b``, ``</``, ``<!``) in its
  name, display name or category, or a combo gains an option with markup (``markup``): the stock
  frontend builds those into its node search, canvas menu and combo lists as HTML, so they would
  put elements (a fake login link) on every participant's page;
* by itself, when what it removes is only combo options naming weights files (``WEIGHTS``) the stack
  config's models (``QM_MODELS``) do not list: the organizer took those models out, and the
  workspaces no longer offered them anyway (below);
* otherwise only when the admin approves it on the admin page, which shows what it adds, removes
  and changes (``PendingCatalogue``). A version with markup cannot be approved at all
  (``CatalogueCarriesMarkup``, 409): the CSP stops scripts, not elements, so an approved fake login
  form or link would still reach every page; its custom node pack must rename what it names.
  Until then participants keep the approved version and the GPUs keep running their prompts.

Whatever version is approved, the workspaces offer and accept only the model files the GPUs hold:
with ``QM_MODELS`` set (the program writes the stack config's manifest there, and every GPU holds
exactly those files, verified, before it takes a job), a combo option naming a weights file that is
not one of them (``only_held``) is taken out of every version served and compared: a model taken out
of the config overnight leaves the workspaces with the morning's queue manager, before any worker
registers, and one a worker's ComfyUI lists but the config does not (a file put on one GPU by hand, or
a leaked token's made-up name) is never offered.

A leaked token can therefore add node classes to the menus (they fail on the real GPUs), but it
cannot put JavaScript into anyone's page, remove or change a node participants use, or fill Redis:
a registration is bounded by ``QM_MAX_CATALOGUE_BYTES`` (catalogue and extensions together), at
most ``MAX_PENDING`` versions wait for approval (the oldest goes), and every stored version that
is neither approved nor waiting is deleted, those stored before this rule existed too.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from services.queue_manager.errors import QueueError, WorkshopClosed
from services.queue_manager.records import ms_to_datetime, now_ms
from services.queue_manager.scripts import ApproveArgs
from services.queue_manager.store_base import StoreBase

MAX_PENDING = 4
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload", "upload")
SHOWN = 20  # class and file names listed per change in the admin's summary
# What starts a tag (an element, an end tag, a comment or declaration) where HTML is parsed: ``<``
# then a letter, ``/``, ``!`` or ``?``. A lone ``<`` or ``>`` is text there, as in a comparison
# node's combo ("<", ">=": ComfyUI's own test pack has one), and must not hold a catalogue back.
MARKUP = re.compile(r"<[A-Za-z/!?]")
WEIGHTS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf")
"""Model files: those ComfyUI's model folders list (its ``folder_paths.supported_pt_extensions``, the
first eight) and the quantized weights the ComfyUI-GGUF loaders list (``.gguf``). Compared in lower
case, as a file named ``X.GGUF`` is the same kind of file."""
# What ComfyUI's markdown (marked, GFM) makes a link or an element of: a tag, a link or image
# (``[`` opens one), a bare URL or e-mail address (autolinked).
LINKS_OR_MARKUP = re.compile(r"<[A-Za-z/!?]|\[|://|www\.|@", re.IGNORECASE)
BACKTICKS = re.compile(r"`+")


class CatalogueNotFound(QueueError):
    status = 404

    def __init__(self, digest: str) -> None:
        super().__init__(
            f"no catalogue version {digest[:80]!r} is waiting: the list on the admin page is current "
            "(a version no worker offers any more was dropped)"
        )


class CatalogueCarriesMarkup(QueueError):
    status = 409

    def __init__(self, digest: str, classes: list[str]) -> None:
        super().__init__(
            f"version {digest[:80]!r} cannot be approved: node classes {', '.join(classes)} carry markup "
            "(a tag such as '<a' or '<img') in a name, display name, category or combo option, which the "
            "stock frontend shows as HTML on every participant's page (a fake link or login form). "
            "Remove or fix that custom node pack (or model file name) on the GPUs; their next "
            "registration offers a version without it"
        )


class PendingCatalogue(BaseModel):
    """A catalogue version a worker offered that waits for the admin, and how it differs from the
    version approved when it was offered."""

    digest: str
    worker_id: str
    pool: str
    offered_at: datetime | None = None
    nodes: int
    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list)
    extensions_added: list[str] = Field(default_factory=list)
    extensions_changed: list[str] = Field(default_factory=list)
    extensions_removed: list[str] = Field(default_factory=list)
    markup: list[str] = Field(
        default_factory=list,
        description="node classes whose new name, display name, category, slot type or combo option holds "
        "a tag: the frontend shows those as HTML on every participant's page",
    )


class CatalogueState(BaseModel):
    approved: str
    pending: list[PendingCatalogue]


def spec_options(spec: Any) -> dict[str, Any]:
    """The options of an input spec ``[type, options]`` (``{}`` when it has none)."""
    has_options = isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict)
    return spec[1] if has_options else {}


def upload_kind(options: dict[str, Any]) -> str | None:
    """Which upload flag an input's options carry (``image_upload``, ...), or None."""
    return next((flag for flag in UPLOAD_FLAGS if options.get(flag)), None)


def is_upload_input(spec: Any) -> bool:
    """An input ComfyUI fills from its input folder (``image_upload`` and the like)."""
    return upload_kind(spec_options(spec)) is not None


def _split_spec(spec: Any) -> tuple[Any, set[str] | None]:
    """An input spec without its combo options, and those options (None: not a combo)."""
    if is_upload_input(spec):
        return ["UPLOAD", spec[1]], None
    if isinstance(spec, list) and spec and isinstance(spec[0], list):
        return ["COMBO", *spec[1:]], {str(option) for option in spec[0]}
    if isinstance(spec, list) and len(spec) > 1 and spec[0] == "COMBO" and isinstance(spec[1], dict):
        rest = {key: value for key, value in spec[1].items() if key != "options"}
        return ["COMBO", rest], {str(option) for option in spec[1].get("options") or []}
    return spec, None


def _shape(node: Any) -> tuple[Any, dict[str, set[str]]]:
    """A node definition with its combos' options taken out, and the options by input."""
    if not isinstance(node, dict) or not isinstance(node.get("input"), dict):
        return node, {}
    inputs: dict[str, Any] = {}
    options: dict[str, set[str]] = {}
    for section, specs in node["input"].items():
        if not isinstance(specs, dict):
            inputs[section] = specs
            continue
        inputs[section] = {}
        for name, spec in specs.items():
            inputs[section][name], found = _split_spec(spec)
            if found is not None:
                options[f"{section}/{name}"] = found
    return {**node, "input": inputs}, options


def keeps(old: Any, new: Any) -> bool:
    """Whether ``new`` runs every prompt ``old`` accepts: the same definition, combos may grow."""
    old_shape, old_options = _shape(old)
    new_shape, new_options = _shape(new)
    return old_shape == new_shape and all(
        choices <= new_options.get(name, set()) for name, choices in old_options.items()
    )


def held_names(models: list[str] | None) -> frozenset[str] | None:
    """What ComfyUI's loaders list for the manifest's files (each path within its model folder:
    ``checkpoints/sd3/m.safetensors`` is ``sd3/m.safetensors``); None when no manifest is known."""
    if models is None:
        return None
    return frozenset(path.split("/", 1)[1] for path in models if "/" in path)


def _held_options(options: list[Any], held: frozenset[str]) -> list[Any]:
    return [o for o in options if not (isinstance(o, str) and o.lower().endswith(WEIGHTS)) or o in held]


def _held_spec(spec: Any, held: frozenset[str]) -> Any:
    """An input spec whose combo lists only the weights files in ``held`` (the same object when it
    lists no other)."""
    if is_upload_input(spec) or not isinstance(spec, list) or not spec:
        return spec
    if isinstance(spec[0], list):
        options = _held_options(spec[0], held)
        return spec if len(options) == len(spec[0]) else [options, *spec[1:]]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        listed = spec[1].get("options")
        if isinstance(listed, list) and len(kept := _held_options(listed, held)) != len(listed):
            return ["COMBO", {**spec[1], "options": kept}, *spec[2:]]
    return spec


def only_held(nodes: dict[str, Any], held: frozenset[str] | None) -> dict[str, Any]:
    """The catalogue with no combo option naming a weights file the GPUs do not hold (``held``, from
    ``held_names``; None: every option kept). Nodes with nothing taken out are shared, not copied."""
    if held is None:
        return nodes
    result = dict(nodes)
    for name, node in nodes.items():
        if not isinstance(node, dict) or not isinstance(node.get("input"), dict):
            continue
        inputs = dict(node["input"])
        for section, specs in node["input"].items():
            if isinstance(specs, dict):
                kept = {key: _held_spec(spec, held) for key, spec in specs.items()}
                if any(kept[key] is not spec for key, spec in specs.items()):
                    inputs[section] = kept
        if inputs != node["input"]:
            result[name] = {**node, "input": inputs}
    return result


def slot_types(node: dict[str, Any]) -> list[Any]:
    """A node's input and output types (``IMAGE``, ...): LiteGraph titles a slot's menu with its type
    as HTML, and lists the types so in its search box's filter."""
    outputs = node.get("output")
    types = list(outputs) if isinstance(outputs, list) else []
    for specs in (node.get("input") or {}).values() if isinstance(node.get("input"), dict) else ():
        if isinstance(specs, dict):
            types.extend(spec[0] for spec in specs.values() if isinstance(spec, list) and spec)
    return types


def carries_markup(name: str, node: Any, approved: Any = None) -> bool:
    """Whether a node class's name, display name, category or slot types, or a combo option it
    offers that the approved version of it did not (``approved``: None for a new class), holds a tag
    (``MARKUP``): the stock frontend builds those into its node search, canvas and slot menus and
    combo lists as HTML."""
    texts = (
        [name, *(node.get(key) for key in ("name", "display_name", "category")), *slot_types(node)]
        if isinstance(node, dict)
        else [name]
    )
    old_options = _shape(approved)[1] if approved is not None else {}
    for spec, options in _shape(node)[1].items():
        texts.extend(options - old_options.get(spec, set()))
    return any(isinstance(text, str) and MARKUP.search(text) for text in texts)


def description_as_text(description: Any) -> Any:
    """A node's description as every workspace is served it: the frontend renders descriptions as
    markdown in its node previews, keeping links and forms, and a version that only adds a node goes
    live without the admin, so a leaked pool token could put a fake 'log in again' link there. One
    that would make a link or an element is served as a fenced code block (longer than any run of
    backticks in it, so nothing closes it early): its text, shown as text."""
    if not isinstance(description, str) or not LINKS_OR_MARKUP.search(description):
        return description
    fence = "`" * max([3, *(len(run) + 1 for run in BACKTICKS.findall(description))])
    return f"{fence}\n{description}\n{fence}"


def summary(
    approved: dict[str, Any], approved_ext: dict[str, bytes], nodes: dict[str, Any], ext: dict[str, bytes]
) -> dict[str, list[str]]:
    """What a version adds, removes and changes against the approved one."""
    added = sorted(set(nodes) - set(approved))
    return {
        "added": added,
        "markup": sorted(name for name in nodes if carries_markup(name, nodes[name], approved.get(name))),
        "removed": sorted(set(approved) - set(nodes)),
        "changed": sorted(n for n in set(approved) & set(nodes) if not keeps(approved[n], nodes[n])),
        "extensions_added": sorted(set(ext) - set(approved_ext)),
        "extensions_changed": sorted(p for p in set(ext) & set(approved_ext) if ext[p] != approved_ext[p]),
        "extensions_removed": sorted(set(approved_ext) - set(ext)),
    }


def only_adds(difference: dict[str, list[str]], first: bool) -> bool:
    """Whether a version may go live without the admin (see the module docstring)."""
    if first:
        return not (difference["extensions_added"] or difference["markup"])
    return not any(names for kind, names in difference.items() if kind != "added")


class CatalogueOps(StoreBase):
    async def approved_catalogue(self) -> str:
        return str(await self.redis.get(self.keys.catalogue_current) or "")

    async def offer_catalogue(
        self, digest: str, nodes: dict[str, Any], extensions: dict[str, str], worker_id: str, pool: str
    ) -> None:
        """Store a version a worker sent; it goes live at once only when it just adds."""
        ext = {path: source.encode() for path, source in extensions.items()}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.catalogue(digest), json.dumps(nodes))
            pipe.delete(self.keys.catalogue_extensions(digest))
            if ext:
                pipe.hset(self.keys.catalogue_extensions(digest), mapping=ext)
            await pipe.execute()
        approved = await self.approved_catalogue()
        if digest != approved:
            old_nodes, old_ext = await self._version(approved)
            held = held_names(self.settings.models)
            difference = summary(only_held(old_nodes, held), old_ext, only_held(nodes, held), ext)
            if only_adds(difference, first=not approved):
                await self._approve(digest, by_admin=False)
            else:
                shown = {kind: names[:SHOWN] for kind, names in difference.items()}
                offer = {"worker_id": worker_id, "pool": pool, "offered_at": now_ms(), "nodes": len(nodes)}
                await self.redis.hset(self.keys.catalogue_pending, digest, json.dumps({**offer, **shown}))
        await self.collect_catalogues()

    async def _version(self, digest: str) -> tuple[dict[str, Any], dict[str, bytes]]:
        if not digest:
            return {}, {}
        raw = await self.redis.get(self.keys.catalogue(digest))
        ext = await self.redis.hgetall(self.keys.catalogue_extensions(digest))
        nodes = json.loads(raw) if raw else {}
        return nodes, {k: v.encode() if isinstance(v, str) else v for k, v in ext.items()}

    async def approve_catalogue(self, digest: str) -> None:
        """The admin's approval of a waiting version: the workspaces serve it from now on; one with
        markup is refused (``CatalogueCarriesMarkup``)."""
        offer = await self.redis.hget(self.keys.catalogue_pending, digest)
        markup = json.loads(offer).get("markup", []) if offer else []
        if markup:
            raise CatalogueCarriesMarkup(digest, markup)
        await self._approve(digest, by_admin=True)
        await self.collect_catalogues()

    async def _approve(self, digest: str, by_admin: bool) -> None:
        """Make ``digest`` the approved version (``lua/approve.lua``). After the evening's snapshot
        the admin's approval is refused (503: it would be lost); a worker's additive offer is not
        taken then either, without error: its morning registration offers it again."""
        reply = await self.scripts.run(ApproveArgs(self.prefix, digest, "1" if by_admin else "0"))
        if reply[0] == "missing":
            raise CatalogueNotFound(digest)
        if reply[0] == "closed" and by_admin:
            raise WorkshopClosed()

    async def catalogue_state(self) -> CatalogueState:
        waiting = await self.redis.hgetall(self.keys.catalogue_pending)
        pending = []
        for digest, text in waiting.items():
            offer = json.loads(text)
            offer["offered_at"] = ms_to_datetime(offer["offered_at"])
            pending.append(PendingCatalogue(digest=digest, **offer))
        pending.sort(key=lambda offer: offer.offered_at or datetime.min, reverse=True)
        return CatalogueState(approved=await self.approved_catalogue(), pending=pending)

    async def collect_catalogues(self) -> None:
        """Keep the approved version and the ``MAX_PENDING`` newest waiting ones; delete the rest."""
        waiting = await self.redis.hgetall(self.keys.catalogue_pending)
        newest = sorted(waiting, key=lambda d: json.loads(waiting[d])["offered_at"], reverse=True)
        keep = {await self.approved_catalogue(), *newest[:MAX_PENDING]}
        stored = self.keys.catalogue("")
        found = [
            key.removeprefix(stored) async for key in self.redis.scan_iter(match=f"{stored}*", count=1000)
        ]
        doomed = [digest for digest in found if digest not in keep]
        if not doomed:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for digest in doomed:
                pipe.delete(self.keys.catalogue(digest), self.keys.catalogue_extensions(digest))
                pipe.hdel(self.keys.catalogue_pending, digest)
            await pipe.execute()
