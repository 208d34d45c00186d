"""The workspace page, its assets and the node catalogue published by workers."""

from __future__ import annotations

import re

import httpx
import pytest
from redis.asyncio import Redis

from devkit.doubles.comfyui_nodes import catalogue
from devkit.servers import wait_until
from services.queue_manager.store import Store
from services.queue_manager.workspaces.catalogue import CatalogueCache
from tests.support.queue_manager_app import (
    ADMIN,
    ADMIN_PASSWORD,
    POOL,
    WORKER_AUTH,
    catalogue_registration,
    login,
    register_worker,
)


def test_the_workspace_page_needs_a_login(app_factory) -> None:  # type: ignore[no-untyped-def]
    anonymous = app_factory()
    reply = anonymous.get("/w/alice/", follow_redirects=False)
    assert reply.status_code == 303
    assert reply.headers["location"].startswith("/w/login")
    assert "Log in" in anonymous.get("/w/login").text


def test_a_participant_gets_the_stock_frontend_and_its_assets(alice: httpx.Client) -> None:
    page = alice.get("/w/alice/")
    assert page.status_code == 200 and '<div id="vue-app">' in page.text
    script = re.search(r'src="\./(assets/index-[^"]+\.js)"', page.text)
    assert script is not None
    asset = alice.get(f"/w/alice/{script.group(1)}")
    assert asset.status_code == 200 and asset.headers["content-type"].startswith("text/javascript")


def test_w_redirects_to_your_own_workspace_and_not_someone_elses(alice: httpx.Client) -> None:
    assert alice.get("/w/", follow_redirects=False).headers["location"] == "/w/alice/"
    assert alice.get("/w/bob/", follow_redirects=False).headers["location"] == "/w/alice/"
    refused = alice.get("/w/bob/api/settings")
    assert refused.status_code == 403 and "/w/alice/" in refused.json()["detail"]


def test_assets_outside_the_package_are_not_served(alice: httpx.Client) -> None:
    assert alice.get("/w/alice/..%2F..%2F__init__.py").status_code == 404
    assert alice.get("/w/alice/assets/../../../../etc/passwd").status_code == 404
    assert alice.get("/assets/..%2F..%2F__init__.py").status_code == 404


def test_the_progress_favicon_the_frontend_names_from_the_site_root_is_served(alice: httpx.Client) -> None:
    """While a job runs the tab's icon steps through ``/assets/images/favicon_progress_16x16/``."""
    for frame in range(10):
        icon = alice.get(f"/assets/images/favicon_progress_16x16/frame_{frame}.png")
        assert icon.status_code == 200 and icon.content.startswith(b"\x89PNG")
    assert alice.get("/assets/images/fallback-gradient-avatar.svg").status_code == 200


def test_the_tab_icon_a_browser_asks_the_site_root_for_is_served(
    app_factory,  # type: ignore[no-untyped-def]
) -> None:
    """The login and admin pages, and the workspace until the frontend sets its own, name no icon:
    the browser asks for ``/favicon.ico`` and showed a blank tab (and logged a 404) on each."""
    icon = app_factory().get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] in (
        "image/x-icon",
        "image/vnd.microsoft.icon",
    )
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # the ICO header


def test_object_info_is_empty_until_a_worker_publishes_its_catalogue(alice: httpx.Client) -> None:
    assert alice.get("/w/alice/api/object_info").json() == {}


def test_the_catalogue_a_worker_published_is_served_to_everyone(
    alice: httpx.Client, bob: httpx.Client, worker: httpx.Client
) -> None:
    for client, user in ((alice, "alice"), (bob, "bob")):
        nodes = client.get(f"/w/{user}/api/object_info").json()
        assert {"EmptyImage", "ImageInvert", "SaveImage", "LoadImage"} <= set(nodes)
    one = alice.get("/w/alice/api/object_info/SaveImage").json()
    assert list(one) == ["SaveImage"] and one["SaveImage"]["output_node"] is True
    assert alice.get("/w/alice/api/object_info/NoSuchNode").json() == {}


def test_upload_lists_show_only_your_own_files_never_the_workers_input_folder(
    alice: httpx.Client, bob: httpx.Client, worker: httpx.Client
) -> None:
    alice.post("/w/alice/api/upload/image", files={"image": ("cat.png", b"\x89PNG cat", "image/png")})
    alice_choices = alice.get("/w/alice/api/object_info").json()["LoadImage"]["input"]["required"]["image"]
    bob_choices = bob.get("/w/bob/api/object_info").json()["LoadImage"]["input"]["required"]["image"]
    assert alice_choices[0] == ["cat.png"] and alice_choices[1]["image_upload"] is True
    assert bob_choices[0] == []


def test_a_newer_worker_catalogue_replaces_the_old_one(alice: httpx.Client, worker: httpx.Client) -> None:
    newer = catalogue([])
    newer["MyCustomNode"] = {**newer["ImageInvert"], "name": "MyCustomNode", "display_name": "My node"}
    register_worker(worker, newer, worker_id="w2", digest="cat-v2")
    wait_until(
        lambda: "MyCustomNode" in alice.get("/w/alice/api/object_info").json(),
        timeout=5,
        what="the newer catalogue to be served",
    )


def test_startup_facts_the_frontend_reads_answer_in_comfyui_shapes(alice: httpx.Client) -> None:
    stats = alice.get("/w/alice/api/system_stats").json()
    assert stats["system"]["required_frontend_version"] == "1.27.10" and stats["devices"] == []
    assert stats["system"]["installed_templates_version"] == "0.1.95"  # as ComfyUI 0.3.64 pins it
    assert stats["system"]["required_templates_version"] == "0.1.95"
    assert alice.get("/w/alice/api/users").json() == {"storage": "server", "migrated": True}
    assert alice.get("/w/alice/api/extensions").json() == ["/extensions/comfy-workshop/notice.js"]
    assert alice.get("/w/alice/api/workshop").json() == {"catalogue_version": "", "gpus_up": 0}
    assert alice.get("/w/alice/api/embeddings").json() == []
    library = alice.get("/w/alice/api/experiment/models").json()  # ComfyUI's model library folders
    assert library[:2] == [{"name": "checkpoints", "folders": []}, {"name": "loras", "folders": []}]
    assert alice.get("/w/alice/api/experiment/models/checkpoints").json() == []  # no GPU yet
    assert isinstance(alice.get("/w/alice/api/features").json(), dict)


def test_the_web_extensions_a_worker_publishes_with_its_catalogue_are_listed_and_served(
    alice: httpx.Client,
    app_factory,  # type: ignore[no-untyped-def]
) -> None:
    worker, admin = app_factory(), login(app_factory(), ADMIN, ADMIN_PASSWORD)
    register_worker(
        worker, catalogue([]), digest="cat-ext-1", extensions={"my-pack/widgets.js": "export const x = 1;"}
    )
    assert (
        admin.post("/api/admin/catalogues/cat-ext-1/approve").status_code == 204
    )  # JavaScript: the admin's call
    wait_until(
        lambda: "/extensions/my-pack/widgets.js" in alice.get("/w/alice/api/extensions").json(),
        timeout=5,
        what="the extension to be listed",
    )
    script = alice.get("/w/alice/extensions/my-pack/widgets.js")
    assert script.text == "export const x = 1;" and script.headers["content-type"].startswith(
        "text/javascript"
    )
    assert alice.get("/w/alice/extensions/other/nope.js").status_code == 404

    # A new version of the pack is a new catalogue version: once approved, the new file replaces the old.
    register_worker(worker, catalogue([]), "w2", "cat-ext-2", {"my-pack/widgets.js": "export const x = 2;"})
    assert admin.post("/api/admin/catalogues/cat-ext-2/approve").status_code == 204
    wait_until(
        lambda: alice.get("/w/alice/extensions/my-pack/widgets.js").text == "export const x = 2;",
        timeout=5,
        what="the new extension version to be served",
    )


@pytest.mark.parametrize("path", ["../../etc/passwd.js", "/abs/x.js", "pack/x.css", "nopack.js", "a//b.js"])
def test_a_web_extension_path_outside_the_extensions_folder_is_refused(
    app_factory,
    path: str,  # type: ignore[no-untyped-def]
) -> None:
    caps = {"pool": POOL, "provider": "local", "catalogue_hash": "cat-bad"}
    body = {"worker_id": "w1", "capabilities": caps, "catalogue": {}, "extensions": {path: "x"}}
    refused = app_factory().post("/api/workers/register", json=body, headers=WORKER_AUTH)
    assert refused.status_code == 422 and "<pack>/<file>.js" in refused.text


async def test_with_two_pools_up_the_newest_registration_is_served_and_stays(
    store: Store, redis_url: str
) -> None:
    newer = {**catalogue([]), "OnlyInV2": catalogue([])["ImageInvert"]}
    await store.register(catalogue_registration("w1", "cat-v1", catalogue([])))
    await store.register(catalogue_registration("w2", "cat-v2", newer))
    await store.worker_pool("w1")  # w1 polls after w2 registered: seen last, registered first
    cache = CatalogueCache(Redis.from_url(redis_url), store, refresh_seconds=0)
    assert (await cache.current()).digest == "cat-v2"
    assert "OnlyInV2" in (await cache.current()).nodes


async def test_after_a_restart_with_no_worker_left_the_last_catalogue_is_still_served(
    store: Store, redis_url: str
) -> None:
    await store.register(catalogue_registration("w1", "cat-v1", catalogue([])))
    first = CatalogueCache(Redis.from_url(redis_url), store, refresh_seconds=0)
    assert (await first.current()).digest == "cat-v1"
    await store.redis.delete(store.keys.worker("w1"), store.keys.workers)  # the registry forgot it
    restarted = CatalogueCache(Redis.from_url(redis_url), store, refresh_seconds=0)
    served = await restarted.current()
    assert served.digest == "cat-v1" and "SaveImage" in served.nodes


def test_system_stats_shows_the_gpu_workers_that_are_up(alice: httpx.Client, worker: httpx.Client) -> None:
    stats = alice.get("/w/alice/api/system_stats").json()
    assert [d["name"] for d in stats["devices"]] == ["test (gpu: w1)"]


def test_the_notice_knows_when_a_catalogue_exists_and_how_many_gpus_are_up(
    alice: httpx.Client, worker: httpx.Client
) -> None:
    assert alice.get("/w/alice/api/workshop").json() == {"catalogue_version": "cat-v1", "gpus_up": 1}
    script = alice.get("/w/alice/extensions/comfy-workshop/notice.js")
    assert "registerExtension" in script.text and script.headers["content-type"].startswith("text/javascript")
