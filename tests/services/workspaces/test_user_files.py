"""Saved workflows, settings, uploads and outputs: each participant's own, with ComfyUI's semantics."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
from PIL import Image

from services.queue_manager.workspaces.settings import DEFAULTS
from services.storage import aiter_chunks
from services.storage.local import LocalStorage

WORKFLOW = b'{"nodes": [], "links": [], "version": 0.4}'


def save(client: httpx.Client, user: str, name: str, body: bytes, overwrite: bool = True) -> httpx.Response:
    path = name.replace("/", "%2F")
    return client.post(
        f"/w/{user}/api/userdata/{path}?overwrite={str(overwrite).lower()}&full_info=true", content=body
    )


def test_saved_workflows_are_listed_read_moved_and_deleted_like_comfyui(alice: httpx.Client) -> None:
    saved = save(alice, "alice", "workflows/portrait.json", WORKFLOW)
    assert saved.status_code == 200 and saved.json()["path"] == "workflows/portrait.json"
    listing = alice.get(
        "/w/alice/api/userdata", params={"dir": "workflows", "recurse": "true", "full_info": "true"}
    )
    assert [(f["path"], f["size"]) for f in listing.json()] == [("portrait.json", len(WORKFLOW))]
    assert alice.get("/w/alice/api/userdata/workflows%2Fportrait.json").content == WORKFLOW
    moved = alice.post("/w/alice/api/userdata/workflows%2Fportrait.json/move/workflows%2Fhero.json")
    assert moved.status_code == 200 and moved.json() == "workflows/hero.json"
    assert alice.get("/w/alice/api/userdata/workflows%2Fportrait.json").status_code == 404
    assert alice.delete("/w/alice/api/userdata/workflows%2Fhero.json").status_code == 204
    assert alice.get("/w/alice/api/userdata", params={"dir": "workflows"}).json() == []


def test_a_name_is_a_file_or_a_folder_never_both_as_in_comfyui(alice: httpx.Client) -> None:
    """ComfyUI's disk cannot hold a file ``workflows`` beside ``workflows/a.json``: such a save is
    refused naming the fix, and nothing of hers changes."""
    assert save(alice, "alice", "workflows/a.json", WORKFLOW).status_code == 200
    for name in ("workflows%2F", "workflows"):
        refused = save(alice, "alice", name, WORKFLOW)
        assert refused.status_code in (400, 409) and "folder" in refused.text, (name, refused.text)
    inside = save(alice, "alice", "workflows%2Fa.json%2Fb.json", WORKFLOW)
    assert inside.status_code == 409 and "folder" in inside.text
    listing = alice.get("/w/alice/api/userdata", params={"dir": "workflows", "recurse": "true"}).json()
    assert listing == ["a.json"]
    assert alice.get("/w/alice/api/userdata/workflows%2Fa.json").content == WORKFLOW


def test_saving_over_an_existing_workflow_needs_overwrite(alice: httpx.Client) -> None:
    save(alice, "alice", "workflows/a.json", WORKFLOW)
    refused = save(alice, "alice", "workflows/a.json", b"{}", overwrite=False)
    assert refused.status_code == 409
    assert save(alice, "alice", "workflows/a.json", b"{}", overwrite=True).status_code == 200
    assert alice.get("/w/alice/api/userdata/workflows%2Fa.json").content == b"{}"


def test_no_participant_sees_anothers_workflows_or_settings(alice: httpx.Client, bob: httpx.Client) -> None:
    save(alice, "alice", "workflows/secret.json", WORKFLOW)
    alice.post("/w/alice/api/settings/Comfy.ColorPalette", json="light")
    assert bob.get("/w/bob/api/userdata", params={"dir": "workflows"}).json() == []
    assert bob.get("/w/bob/api/userdata/workflows%2Fsecret.json").status_code == 404
    assert bob.get("/w/alice/api/userdata/workflows%2Fsecret.json").status_code == 403
    assert "Comfy.ColorPalette" not in bob.get("/w/bob/api/settings").json()
    assert alice.get("/w/alice/api/settings").json()["Comfy.ColorPalette"] == "light"


def test_userdata_paths_cannot_leave_the_participants_folder(alice: httpx.Client) -> None:
    reply = alice.post("/w/alice/api/userdata/..%2F..%2Fbob%2Fx.json", content=b"{}")
    assert reply.status_code == 403 and "'..'" in reply.json()["error"]


def test_settings_are_stored_one_by_one_and_in_bulk(alice: httpx.Client) -> None:
    alice.post("/w/alice/api/settings", json={"Comfy.Locale": "de", "Comfy.TutorialCompleted": True})
    alice.post("/w/alice/api/settings/Comfy.Locale", json="fr")
    assert alice.get("/w/alice/api/settings/Comfy.Locale").json() == "fr"
    stored = {"Comfy.Locale": "fr", "Comfy.TutorialCompleted": True}
    assert alice.get("/w/alice/api/settings").json() == {**DEFAULTS, **stored}
    assert alice.post("/w/alice/api/settings", content=b"[1, 2]").status_code == 400


def test_uploads_are_viewable_by_their_owner_only(alice: httpx.Client, bob: httpx.Client) -> None:
    reply = alice.post("/w/alice/api/upload/image", files={"image": ("cat.png", b"\x89PNG cat", "image/png")})
    assert reply.json() == {"name": "cat.png", "subfolder": "", "type": "input"}
    view = alice.get("/w/alice/api/view", params={"filename": "cat.png", "type": "input"})
    assert view.content == b"\x89PNG cat" and view.headers["content-type"] == "image/png"
    assert bob.get("/w/bob/api/view", params={"filename": "cat.png", "type": "input"}).status_code == 404
    assert bob.get("/w/alice/api/view", params={"filename": "cat.png", "type": "input"}).status_code == 403


def test_an_upload_with_a_taken_name_gets_a_new_one_unless_it_is_the_same_file(alice: httpx.Client) -> None:
    url = "/w/alice/api/upload/image"
    alice.post(url, files={"image": ("cat.png", b"one", "image/png")})
    assert alice.post(url, files={"image": ("cat.png", b"one", "image/png")}).json()["name"] == "cat.png"
    assert alice.post(url, files={"image": ("cat.png", b"two", "image/png")}).json()["name"] == "cat (1).png"
    replaced = alice.post(
        url, files={"image": ("cat.png", b"three", "image/png")}, data={"overwrite": "true"}
    )
    assert replaced.json()["name"] == "cat.png"


def test_view_refuses_traversal_and_answers_a_missing_file_as_comfyui(alice: httpx.Client) -> None:
    bad = alice.get("/w/alice/api/view", params={"filename": "../bob/input/cat.png", "type": "input"})
    assert bad.status_code == 400
    missing = alice.get("/w/alice/api/view", params={"filename": "nope.png"})
    assert missing.status_code == 404 and missing.content == b""  # ComfyUI's empty 404


async def test_outputs_a_worker_stored_are_served_to_their_owner(alice: httpx.Client, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files")
    await storage.put("users/alice/output/inverted_00001_.png", aiter_chunks(b"\x89PNG out"))
    view = alice.get("/w/alice/api/view", params={"filename": "inverted_00001_.png", "type": "output"})
    assert view.status_code == 200 and view.content == b"\x89PNG out"
    annotated = alice.get("/w/alice/api/view", params={"filename": "inverted_00001_.png [output]"})
    assert annotated.content == b"\x89PNG out"


def test_a_graph_naming_an_upload_carries_it_to_the_worker(alice: httpx.Client, worker: httpx.Client) -> None:
    alice.post("/w/alice/api/upload/image", files={"image": ("cat.png", b"\x89PNG cat", "image/png")})
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    job_id = alice.post("/w/alice/api/prompt", json={"prompt": graph, "client_id": "c"}).json()["prompt_id"]
    inputs = alice.get(f"/api/jobs/{job_id}").json()["inputs"]
    assert inputs == [{"filename": "cat.png", "subfolder": "", "type": "input"}]


def test_a_new_participant_gets_the_template_gallery_and_no_update_checks(bob: httpx.Client) -> None:
    settings = bob.get("/w/bob/api/settings").json()
    assert "Comfy.TutorialCompleted" not in settings  # the frontend opens the templates browser
    assert bob.get("/w/bob/api/settings/Comfy.TutorialCompleted").json() is None
    assert settings["Comfy.Notification.ShowVersionUpdates"] is False


def test_user_css_is_empty_until_the_participant_saves_one(alice: httpx.Client) -> None:
    assert alice.get("/w/alice/api/userdata/user.css").text == ""
    save(alice, "alice", "user.css", b"body { color: red }")
    styled = alice.get("/w/alice/api/userdata/user.css")
    assert styled.text == "body { color: red }" and styled.headers["content-type"].startswith("text/css")


def rgba_png() -> tuple[bytes, Image.Image]:
    """A 4x3 image whose alpha differs per pixel, as the mask editor saves it."""
    image = Image.new("RGBA", (4, 3))
    image.putdata([(10 * i, 20, 30, 255 - 20 * i) for i in range(12)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), image


def view(client: httpx.Client, **params: str) -> httpx.Response:
    return client.get("/w/alice/api/view", params={"filename": "masked.png", "type": "input", **params})


def test_the_mask_editor_gets_the_rgb_and_the_alpha_of_an_image_apart(alice: httpx.Client) -> None:
    data, original = rgba_png()
    alice.post("/w/alice/api/upload/image", files={"image": ("masked.png", data, "image/png")})
    assert view(alice).content == data, "without channel or preview the file comes as stored"

    rgb = Image.open(io.BytesIO(view(alice, channel="rgb").content))
    assert rgb.mode == "RGB" and rgb.tobytes() == original.convert("RGB").tobytes()

    mask = view(alice, channel="a")
    alpha = Image.open(io.BytesIO(mask.content))
    assert mask.headers["content-type"] == "image/png" and alpha.mode == "RGBA"
    assert alpha.getchannel("A").tobytes() == original.getchannel("A").tobytes()


def test_previews_come_in_the_format_and_quality_asked_for(alice: httpx.Client) -> None:
    data, _ = rgba_png()
    alice.post("/w/alice/api/upload/image", files={"image": ("masked.png", data, "image/png")})
    jpeg = view(alice, preview="jpeg;80")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (4, 3)
    assert view(alice, preview="webp;50").headers["content-type"] == "image/webp"
    # The alpha asked for keeps the preview in webp, which has one; an unknown format is webp too.
    assert view(alice, preview="jpeg;80", channel="a").headers["content-type"] == "image/webp"
    assert view(alice, preview="gif").headers["content-type"] == "image/webp"


def test_converting_a_file_that_is_no_image_says_so(alice: httpx.Client) -> None:
    alice.post("/w/alice/api/upload/image", files={"image": ("masked.png", b"not a png", "image/png")})
    refused = view(alice, channel="rgb")
    assert refused.status_code == 400 and "masked.png" in refused.json()["error"]
    assert view(alice).content == b"not a png"


def test_a_move_that_names_no_destination_is_refused_and_the_workflow_kept(alice: httpx.Client) -> None:
    save(alice, "alice", "workflows/keep.json", WORKFLOW)
    reply = alice.post("/w/alice/api/userdata/workflows%2Fkeep.json/move/", content=b"oops")
    assert reply.status_code == 400 and "destination" in reply.json()["error"]
    assert alice.get("/w/alice/api/userdata/workflows%2Fkeep.json").content == WORKFLOW


def png(size: tuple[int, int], color: tuple[int, int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def save_mask(client: httpx.Client, user: str, original: str, mask: bytes) -> httpx.Response:
    return client.post(
        f"/w/{user}/api/upload/mask",
        files={"image": ("clipspace-mask-1.png", mask, "image/png")},
        data={"type": "input", "subfolder": "clipspace", "original_ref": original},
    )


MASK = png((8, 8), (0, 0, 0, 255))  # the stock mask editor's: alpha only, no colours
ORIGINAL = '{"filename": "photo.png", "subfolder": "", "type": "input"}'


def test_a_saved_mask_keeps_the_colours_of_the_image_it_was_painted_on(alice: httpx.Client) -> None:
    alice.post("/w/alice/api/upload/image", files={"image": ("photo.png", png((8, 8), (200, 100, 50, 255)))})
    saved = save_mask(alice, "alice", ORIGINAL, png((8, 8), (0, 0, 0, 0)))
    assert saved.json() == {"name": "clipspace-mask-1.png", "subfolder": "clipspace", "type": "input"}
    stored = alice.get(
        "/w/alice/api/view",
        params={"filename": "clipspace-mask-1.png", "subfolder": "clipspace", "type": "input"},
    )
    assert Image.open(io.BytesIO(stored.content)).getpixel((3, 3)) == (200, 100, 50, 0)


def test_a_mask_for_an_image_she_does_not_have_is_refused_and_nothing_stored(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    bob.post("/w/bob/api/upload/image", files={"image": ("photo.png", png((8, 8), (1, 2, 3, 255)))})
    refused = save_mask(alice, "alice", ORIGINAL, MASK)  # bob's photo.png is not hers
    assert refused.status_code == 404 and "photo.png" in refused.json()["error"]
    assert (
        alice.get(
            "/w/alice/api/view", params={"filename": "clipspace-mask-1.png", "type": "input"}
        ).status_code
        == 404
    )


def test_a_mask_without_its_image_or_of_another_size_is_refused_saying_why(alice: httpx.Client) -> None:
    alice.post("/w/alice/api/upload/image", files={"image": ("photo.png", png((16, 16), (1, 2, 3, 255)))})
    for ref in ("", "not json", "{}", '{"filename": 5}'):
        refused = save_mask(alice, "alice", ref, MASK)
        assert refused.status_code == 400 and "original_ref must name the image" in refused.json()["error"]
    other_size = save_mask(alice, "alice", ORIGINAL, MASK)
    assert (
        other_size.status_code == 400
        and "the mask is 8x8 but photo.png is 16x16" in other_size.json()["error"]
    )
    climbing = save_mask(
        alice, "alice", '{"filename": "photo.png", "subfolder": "../bob", "type": "input"}', MASK
    )
    assert climbing.status_code == 400
