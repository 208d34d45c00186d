"""Input that crashed a request (a 500) now gets a 4xx whose message names the fix: the 16 cases an
outside tester found, each sent through the real HTTP stack."""

from __future__ import annotations

import contextlib
import io
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.queue_manager_app import LiveServer

JSON = {"Content-Type": "application/json"}
DEEP = b"[" * 100_000 + b"]" * 100_000


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def says(reply: httpx.Response, status: int, *words: str) -> None:
    assert reply.status_code == status, (reply.status_code, reply.text[:300])
    text = reply.text.lower()
    assert all(word.lower() in text for word in words), reply.text[:300]


@pytest.mark.parametrize(
    "path", ["/w/alice/api/prompt", "/w/alice/api/settings", "/w/alice/api/queue", "/w/alice/api/history",
             "/w/alice/api/interrupt", "/api/auth/login"],
)  # fmt: skip
def test_deeply_nested_json_is_refused_with_a_message(alice: httpx.Client, path: str) -> None:
    says(alice.post(path, content=DEEP, headers=JSON), 400, "nested too deeply")


@pytest.mark.parametrize("prompt_id", [["a", "b"], {"id": "x"}, 7])
def test_interrupt_with_a_prompt_id_that_is_no_string(alice: httpx.Client, prompt_id: object) -> None:
    says(
        alice.post("/w/alice/api/interrupt", json={"prompt_id": prompt_id}), 400, "prompt_id must be a string"
    )


@pytest.mark.parametrize("value", ["²", "--1", "-", "1-", "1e3", "٣x", "9" * 5000])
def test_history_with_a_count_that_is_no_whole_number(alice: httpx.Client, value: str) -> None:
    says(
        alice.get("/w/alice/api/history", params={"max_items": value}),
        400,
        "max_items must be a whole number",
    )
    says(alice.get("/w/alice/api/history", params={"offset": value}), 400, "offset must be a whole number")


@pytest.mark.parametrize(
    ("filename", "words"),
    [(".", ["'.'"]), ("a//b.png", ["empty parts"]), ("é" * 200, ["too long", "200 bytes"]),
     ("a\x00b.png", ["control character"])],
)  # fmt: skip
def test_view_with_an_unusable_file_name(alice: httpx.Client, filename: str, words: list[str]) -> None:
    says(alice.get("/w/alice/api/view", params={"filename": filename, "type": "input"}), 400, *words)


def upload(client: httpx.Client, name: str, data: bytes, **form: str) -> httpx.Response:
    return client.post("/w/alice/api/upload/image", files={"image": (name, data, "image/png")}, data=form)


def test_view_with_a_bad_preview_quality_or_an_image_too_wide_for_webp(alice: httpx.Client) -> None:
    assert upload(alice, "small.png", png(8, 8)).status_code == 200
    assert upload(alice, "wide.png", png(20_000, 1)).status_code == 200
    small = {"filename": "small.png", "type": "input"}
    says(alice.get("/w/alice/api/view", params={**small, "preview": "webp;²"}), 400, "webp;90")
    assert alice.get("/w/alice/api/view", params={**small, "preview": "webp;50"}).status_code == 200
    wide = {"filename": "wide.png", "type": "input", "preview": "webp;90"}
    says(alice.get("/w/alice/api/view", params=wide), 400, "too large", "without 'preview'")
    assert alice.get("/w/alice/api/view", params={**wide, "preview": "jpeg;80"}).status_code == 200


@pytest.mark.parametrize(
    ("name", "form", "words"),
    [("x" * 230 + ".png", {}, ["too long"]), ("ok.png", {"subfolder": "a\x00b"}, ["control character"]),
     (".", {}, ["'.'"]), ("a//b.png", {}, ["empty parts"])],
)  # fmt: skip
def test_uploads_with_an_unusable_name(
    alice: httpx.Client, name: str, form: dict[str, str], words: list[str]
) -> None:
    says(upload(alice, name, png(4, 4), **form), 400, *words)
    assert alice.get("/w/alice/api/object_info/LoadImage").status_code in (200, 404)  # still serving


@pytest.mark.parametrize("route", ["image", "mask"])
def test_an_upload_whose_file_has_no_name_gets_400_naming_the_fix(alice: httpx.Client, route: str) -> None:
    """A file part without a file name (a script's upload) reads as a text field: it got 422 and a
    validation dump ("Expected UploadFile, received: str"), as ComfyUI answers it 400."""
    form = {"original_ref": '{"filename": "x.png", "type": "input"}'} if route == "mask" else {}
    reply = alice.post(
        f"/w/alice/api/upload/{route}", files={"image": ("", png(4, 4), "image/png")}, data=form
    )
    says(reply, 400, "file name")


@pytest.mark.parametrize(
    ("first", "second"),
    [(("sub.png", {}), ("x.png", {"subfolder": "sub.png"})), (("x.png", {"subfolder": "sub"}), ("sub", {}))],
)
def test_an_upload_whose_name_clashes_with_a_folder_or_a_file_gets_409_and_loses_nothing(
    alice: httpx.Client, first: tuple[str, dict[str, str]], second: tuple[str, dict[str, str]]
) -> None:
    """A file where a folder of the same name is (``sub``), or a folder where a file is (``sub.png/``):
    the local file store cannot hold both, which crashed the upload (500)."""
    (name, form), (other, other_form) = first, second
    assert upload(alice, name, png(4, 4), **form).status_code == 200
    says(upload(alice, other, png(5, 5), **other_form), 409, "folder", "another name")
    kept = {"filename": name, "type": "input", **form}
    assert alice.get("/w/alice/api/view", params=kept).content == png(4, 4)


def test_a_body_that_is_no_utf8_is_a_400(alice: httpx.Client, server: LiveServer) -> None:
    for path in ("/w/alice/api/settings", "/w/alice/api/settings/Comfy.X"):
        says(
            alice.post(path, content=b"\xff\xfe{", headers={"Content-Type": "text/plain"}),
            400,
            "cannot store",
        )
    assert (
        alice.post("/w/alice/api/queue", content=b"\xff", headers=JSON).status_code == 200
    )  # ignored, as {}


@pytest.mark.parametrize("prompt_id", ["../../etc", "a/b", "x" * 129, "", "id with space", "é"])
def test_a_client_chosen_prompt_id_that_cannot_name_a_job_is_refused(
    alice: httpx.Client, prompt_id: str
) -> None:
    graph = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    says(alice.post("/w/alice/api/prompt", json={"prompt": graph, "prompt_id": prompt_id}), 400, "prompt_id")


def test_a_client_chosen_prompt_id_already_in_use_is_refused(alice: httpx.Client) -> None:
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    first = alice.post("/w/alice/api/prompt", json={"prompt": graph, "prompt_id": "my-run-1"})
    assert first.status_code == 200 and first.json()["prompt_id"] == "my-run-1", first.text
    says(alice.post("/w/alice/api/prompt", json={"prompt": graph, "prompt_id": "my-run-1"}), 409, "my-run-1")


def test_an_image_too_big_to_decode_safely_is_refused_for_conversion_and_masks(alice: httpx.Client) -> None:
    """A hostile participant's 7000x6000 blank PNG (a few kB) made every channel view or mask
    merge decode ~170 MB per copy, four copies at a time: a few requests at once took the queue
    manager's memory. Such images are served as stored; converting them gets 400 naming the limit."""
    big = Image.new("L", (7000, 6000), 0)
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    assert upload(alice, "huge.png", buffer.getvalue()).status_code == 200
    huge = {"filename": "huge.png", "type": "input"}
    says(alice.get("/w/alice/api/view", params={**huge, "channel": "rgb"}), 400, "pixels", "without")
    says(alice.get("/w/alice/api/view", params={**huge, "preview": "jpeg;80"}), 400, "pixels")
    assert alice.get("/w/alice/api/view", params=huge).status_code == 200  # as stored
    original = '{"filename": "huge.png", "type": "input"}'
    mask = alice.post(
        "/w/alice/api/upload/mask",
        files={"image": ("mask.png", buffer.getvalue(), "image/png")},
        data={"original_ref": original},
    )
    says(mask, 400, "pixels")
    assert upload(alice, "fine.png", png(64, 64)).status_code == 200
    fine = {"filename": "fine.png", "type": "input", "channel": "rgb"}
    assert alice.get("/w/alice/api/view", params=fine).status_code == 200


@contextlib.contextmanager
def full_disk(room: int) -> Iterator[None]:
    """No file this process writes may grow past ``room`` bytes, as on a disk that is full: the
    write fails with an OSError (Python ignores the SIGXFSZ the kernel sends first)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (room, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_an_upload_the_servers_disk_has_no_room_for_gets_507_naming_it_and_stores_nothing(
    alice: httpx.Client, server: LiveServer, tmp_path: Path
) -> None:
    """A full disk under the file store answered 500 (an unhandled OSError) to her upload."""
    with full_disk(64 * 1024):
        reply = upload(alice, "big.png", os.urandom(512 * 1024))
    says(reply, 507, "no room", "nothing was stored", "organizer")
    assert "/" + "tmp" not in reply.text, "the server's folders are not hers to know"
    listed = alice.get("/w/alice/api/internal/files/input").json()
    assert "big.png" not in listed
    assert not [path for path in (tmp_path / "files").rglob("*big.png*")], "a partial file was left"
    assert upload(alice, "small.png", png(8, 8)).status_code == 200  # with room again, uploads work
