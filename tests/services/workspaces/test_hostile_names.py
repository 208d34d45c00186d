"""What a participant names is never markup on a page: the stock frontend lists her uploads in its
combo menus as HTML (LiteGraph's context menu sets each entry's innerHTML; no entry is put inside an
attribute, so a quote does not matter, a tag does). A name with a tag is refused at the upload,
saying why, and nothing is stored; a name stored before the rule is not listed."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from PIL import Image

from tests.support.queue_manager_app import LiveServer

pytestmark = pytest.mark.usefixtures("worker")  # its catalogue has LoadImage
TAGS = ['<img src=x onerror="alert(1)">.png', "a<b>bold</b>.png", "</x>.png", "<!-- c -->.png"]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def listed(alice: httpx.Client) -> list[str]:
    spec = alice.get("/w/alice/api/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"]
    names: list[str] = spec[0]
    return names


@pytest.mark.parametrize("name", TAGS)
def test_an_upload_whose_name_holds_a_tag_is_refused_and_nothing_stored(
    alice: httpx.Client, name: str
) -> None:
    reply = alice.post("/w/alice/api/upload/image", files={"image": (name, png(), "image/png")})
    assert reply.status_code == 400, reply.text
    assert "markup" in reply.json()["error"] and "rename" in reply.json()["error"]
    assert listed(alice) == []


def test_a_subfolder_or_a_mask_name_with_a_tag_is_refused_too(alice: httpx.Client) -> None:
    image = {"image": ("a.png", png(), "image/png")}
    marked = alice.post("/w/alice/api/upload/image", files=image, data={"subfolder": "<b>x"})
    assert marked.status_code == 400, marked.text
    assert alice.post("/w/alice/api/upload/image", files={"image": ("a.png", png(), "image/png")}).is_success
    original = json.dumps({"filename": "a.png", "type": "input"})
    mask = alice.post(
        "/w/alice/api/upload/mask",
        files={"image": ("<i>mask</i>.png", png(), "image/png")},
        data={"original_ref": original},
    )
    assert mask.status_code == 400, mask.text
    assert listed(alice) == ["a.png"]


def test_a_name_with_lone_angle_brackets_or_quotes_is_kept(alice: httpx.Client) -> None:
    """'a < b' and quotes are text where the frontend puts names: such a file is stored and listed."""
    for name in ("a < b.png", "x>y.png", "it's.png"):
        reply = alice.post("/w/alice/api/upload/image", files={"image": (name, png(), "image/png")})
        assert reply.is_success, reply.text
    assert sorted(listed(alice)) == ["a < b.png", "it's.png", "x>y.png"]


def test_a_file_with_a_tag_stored_before_the_rule_is_not_listed(
    alice: httpx.Client, server: LiveServer
) -> None:
    storage = server.app.state.storage
    root = storage.root / "users" / "alice" / "input"
    root.mkdir(parents=True)
    (root / "<img src=x>.png").write_bytes(png())
    (root / "plain.png").write_bytes(png())
    assert listed(alice) == ["plain.png"]


def test_a_saved_file_name_that_is_no_utf8_is_refused_not_merged_with_another(alice: httpx.Client) -> None:
    """'%FF' and '%FE' both decoded to U+FFFD, so saving the second overwrote the first: two names,
    one file, one of them lost. A name that is no UTF-8 is refused (400) naming the fix."""
    first = alice.post("/w/alice/api/userdata/workflows%2Fa%FF.json", content=b'{"first": 1}')
    assert first.status_code == 400, first.text
    assert "UTF-8" in first.json()["error"]
    assert alice.post("/w/alice/api/userdata/workflows%2Fok.json/move/b%FE.json").status_code in (400, 404)
    assert alice.get("/w/alice/api/userdata/workflows%2Fa%FE.json").status_code == 400
    assert alice.delete("/w/alice/api/userdata/workflows%2Fa%FE.json").status_code == 400
