"""ComfyUI's workflow templates in every workspace, as ComfyUI 0.3.64 serves them from its pinned package."""

from __future__ import annotations

import json
from importlib.resources import files

import httpx
import pytest

PACKAGE = files("comfyui_workflow_templates").joinpath("templates")


def test_the_index_a_template_and_its_thumbnail_come_back_as_the_package_has_them(
    alice: httpx.Client,
) -> None:
    index = alice.get("/w/alice/templates/index.json")
    assert index.status_code == 200 and index.headers["content-type"] == "application/json"
    assert index.content == PACKAGE.joinpath("index.json").read_bytes()
    first = index.json()[0]["templates"][0]  # "default": the text-to-image of Getting Started
    workflow = alice.get(f"/w/alice/templates/{first['name']}.json")
    assert workflow.status_code == 200 and workflow.headers["content-type"] == "application/json"
    assert workflow.json() == json.loads(PACKAGE.joinpath(f"{first['name']}.json").read_text())
    assert workflow.json()["nodes"]
    thumbnail = alice.get(f"/w/alice/templates/{first['name']}-1.{first['mediaSubtype']}")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/webp"
    assert thumbnail.content == PACKAGE.joinpath(f"{first['name']}-1.webp").read_bytes()
    translated = alice.get("/w/alice/templates/index.fr.json")  # the browser in French asks for this
    assert translated.content == PACKAGE.joinpath("index.fr.json").read_bytes()


def test_templates_are_cached_privately_and_a_held_copy_is_not_sent_again(alice: httpx.Client) -> None:
    index = alice.get("/w/alice/templates/index.json")
    assert index.headers["cache-control"] == "private, no-cache"  # asked again on each visit
    again = alice.get("/w/alice/templates/index.json", headers={"If-None-Match": index.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    thumbnail = alice.get("/w/alice/templates/default-1.webp")
    assert thumbnail.headers["cache-control"] == "private, max-age=86400"


@pytest.mark.parametrize(
    "path",
    [
        "..%2F__init__.py",
        "%2E%2E/%2E%2E/comfyui_frontend_package/static/index.html",
        "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "nothing-here.json",
        "",
        "index.json%00.png",
        "%00",
        "..%5C..%5C__init__.py",
        "%C0%AE%C0%AE/%C0%AE%C0%AE/__init__.py",
        "%252E%252E/__init__.py",
        "a" * 5000,
        "\u00e9" * 200 + ".json",
        "~/.bashrc",
        "/proc/self/environ",
    ],
)
def test_no_path_leaves_the_templates_folder(alice: httpx.Client, path: str) -> None:
    reply = alice.get(f"/w/alice/templates/{path}")
    assert reply.status_code == 404 and "no workflow template file" in reply.json()["detail"]


def test_templates_are_behind_the_participants_login(app_factory, alice: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    anonymous = app_factory()
    assert anonymous.get("/w/alice/templates/index.json").status_code == 401
    refused = alice.get("/w/bob/templates/index.json")
    assert refused.status_code == 403 and "/w/alice/" in refused.json()["detail"]
