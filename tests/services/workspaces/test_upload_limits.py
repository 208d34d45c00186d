"""Uploads have their own size limit (``QM_MAX_UPLOAD_BYTES``); every other body keeps
``QM_MAX_BODY_BYTES``. Both small here, so the test sends kilobytes, not megabytes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import UploadFile
from fastapi.routing import APIRoute
from PIL import Image
from redis.asyncio import Redis

from services.queue_manager.scripts import Scripts
from services.queue_manager.workspaces import PREFIX, UPLOAD_PATH, routes_files
from services.queue_manager.workspaces.files import FileProblem, UserFiles, file_ref
from services.queue_manager.workspaces.settings import SettingsError, UserSettings
from services.queue_manager.workspaces.userdata import UserData, UserDataError
from services.storage.local import LocalStorage
from tests.support.queue_manager_app import live_server, login, settings_for

BODY_LIMIT = 4096
UPLOAD_LIMIT = 64 * 1024
UPLOAD = "/w/alice/api/upload/image"


@contextlib.contextmanager
def alice_with(redis_url: str, tmp_path: Path, **limits: int) -> Iterator[httpx.Client]:
    """Alice logged in to a queue manager with the body limit and these ``limits``."""
    settings = settings_for(redis_url, max_body_bytes=BODY_LIMIT, **limits)
    with (
        live_server(settings, tmp_path / "files") as server,
        httpx.Client(base_url=server.url, timeout=10) as c,
    ):
        yield login(c, "alice")


@pytest.fixture
def alice(redis_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    with alice_with(redis_url, tmp_path, max_upload_bytes=UPLOAD_LIMIT) as client:
        yield client


def image(size: int) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("big.png", b"\x89PNG" + b"x" * (size - 4), "image/png")}


def noise(name: str) -> dict[str, tuple[str, bytes, str]]:
    """A real 96x96 PNG of random pixels: about 36 KiB, past the body limit, within the upload's."""
    buffer = io.BytesIO()
    Image.frombytes("RGBA", (96, 96), os.urandom(96 * 96 * 4)).save(buffer, format="PNG")
    return {"image": (name, buffer.getvalue(), "image/png")}


def says_the_upload_limit(reply: httpx.Response) -> bool:
    return reply.status_code == 413 and "QM_MAX_UPLOAD_BYTES" in reply.text and "smaller file" in reply.text


def test_an_upload_above_the_body_limit_but_within_the_upload_limit_is_stored(alice: httpx.Client) -> None:
    reply = alice.post(UPLOAD, files=image(20 * 1024))
    assert reply.status_code == 200, reply.text
    assert alice.post(UPLOAD, files=noise("photo.png")).status_code == 200
    original = '{"filename": "photo.png", "type": "input"}'
    mask = alice.post("/w/alice/api/upload/mask", files=noise("mask.png"), data={"original_ref": original})
    assert mask.status_code == 200, mask.text
    assert (
        len(alice.get("/w/alice/api/view", params={"filename": "big.png", "type": "input"}).content)
        == 20 * 1024
    )


def test_a_file_one_byte_over_the_upload_limit_is_refused_naming_the_limit(alice: httpx.Client) -> None:
    reply = alice.post(UPLOAD, files=image(UPLOAD_LIMIT + 1))
    assert says_the_upload_limit(reply), reply.text
    assert f"larger than {UPLOAD_LIMIT} bytes" in reply.json()["error"]
    assert alice.post(UPLOAD, files=image(UPLOAD_LIMIT)).status_code == 200


def test_a_declared_oversize_upload_is_refused_before_it_is_read(alice: httpx.Client) -> None:
    reply = alice.post(UPLOAD, files=image(4 * UPLOAD_LIMIT))
    assert says_the_upload_limit(reply), reply.text
    assert f"larger than {UPLOAD_LIMIT} bytes" in reply.json()["detail"]


def test_a_streamed_oversize_upload_is_refused_too(alice: httpx.Client) -> None:
    request = httpx.Request("POST", "http://x", files=image(4 * UPLOAD_LIMIT))
    body, content_type = request.read(), request.headers["content-type"]

    def chunks() -> Iterator[bytes]:  # no content-length: the limit must count the stream
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    reply = alice.post(UPLOAD, content=chunks(), headers={"content-type": content_type})
    assert "content-length" not in reply.request.headers
    assert says_the_upload_limit(reply), reply.text


def test_other_workspace_routes_keep_the_body_limit(alice: httpx.Client) -> None:
    reply = alice.post("/w/alice/api/userdata/workflows%2Fbig.json", content=b"x" * (BODY_LIMIT + 1))
    assert reply.status_code == 413 and "QM_MAX_BODY_BYTES" in reply.text
    assert alice.post("/api/jobs", content=b"x" * (BODY_LIMIT + 1)).status_code == 413


def test_the_frontend_is_told_the_upload_limit(alice: httpx.Client) -> None:
    assert alice.get("/w/alice/api/features").json()["max_upload_size"] == UPLOAD_LIMIT


def test_every_upload_route_gets_the_upload_limit() -> None:
    posts = [
        r.path for r in routes_files.router.routes if isinstance(r, APIRoute) and "POST" in (r.methods or ())
    ]
    assert posts, "routes_files has upload routes"
    for path in posts:
        assert UPLOAD_PATH.match(PREFIX.replace("{user}", "alice") + path), path
    assert not UPLOAD_PATH.match("/w/alice/api/userdata/upload/x.json")
    assert not UPLOAD_PATH.match("/api/jobs")


@pytest.fixture
def budgeted(redis_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    """Alice, whose saved files and settings may take ``SAVED_LIMIT`` bytes each."""
    with alice_with(redis_url, tmp_path, max_saved_bytes=SAVED_LIMIT) as client:
        yield client


SAVED_LIMIT = 3 * BODY_LIMIT


def test_saved_workflows_past_the_participants_budget_are_refused_and_the_kept_ones_stay(
    budgeted: httpx.Client,
) -> None:
    """Each body is within the body limit, but one participant cannot pile them up in Redis (which
    every participant's queue lives in) without end: past ``QM_MAX_SAVED_BYTES`` a new file, or a
    larger copy of one, gets 413 saying so; replacing a file within the budget still works."""
    chunk = b"x" * (BODY_LIMIT - 100)
    for number in range(3):
        saved = budgeted.post(f"/w/alice/api/userdata/workflows%2F{number}.json", content=chunk)
        assert saved.status_code == 200, saved.text
    refused = budgeted.post("/w/alice/api/userdata/workflows%2F3.json", content=chunk)
    assert refused.status_code == 413 and "QM_MAX_SAVED_BYTES" in refused.text, refused.text
    assert budgeted.post("/w/alice/api/userdata/workflows%2F0.json", content=b"{}").status_code == 200
    assert budgeted.post("/w/alice/api/userdata/workflows%2F3.json", content=chunk).status_code == 200
    listed = budgeted.get("/w/alice/api/userdata", params={"dir": "workflows"}).json()
    assert listed == ["0.json", "1.json", "2.json", "3.json"]
    assert budgeted.get("/w/alice/api/userdata/workflows%2F1.json").content == chunk


def test_settings_past_the_participants_budget_are_refused_and_the_kept_ones_stay(
    budgeted: httpx.Client,
) -> None:
    value = "v" * (BODY_LIMIT - 100)
    for number in range(3):
        assert budgeted.post(f"/w/alice/api/settings/Big.{number}", json=value).status_code == 200
    refused = budgeted.post("/w/alice/api/settings", json={"Big.3": value, "Small": 1})
    assert refused.status_code == 400 and "QM_MAX_SAVED_BYTES" in refused.text, refused.text
    assert budgeted.post("/w/alice/api/settings/Big.0", json="short").status_code == 200
    assert budgeted.post("/w/alice/api/settings/Big.3", json=value).status_code == 200
    kept = budgeted.get("/w/alice/api/settings").json()
    assert kept["Big.0"] == "short" and kept["Big.1"] == value and kept["Big.3"] == value
    assert "Small" not in kept


def test_a_participant_near_her_budget_can_still_rename_a_workflow(budgeted: httpx.Client) -> None:
    """A rename (the frontend's Save As over a renamed tab, or Rename) takes no byte more: it is
    refused neither for the bytes of the file it moves nor as one file more."""
    chunk = b"x" * (BODY_LIMIT - 100)
    for number in range(3):
        saved = budgeted.post(f"/w/alice/api/userdata/workflows%2F{number}.json", content=chunk)
        assert saved.status_code == 200, saved.text

    moved = budgeted.post("/w/alice/api/userdata/workflows%2F1.json/move/workflows%2Frenamed.json")

    assert moved.status_code == 200, moved.text
    listed = budgeted.get("/w/alice/api/userdata", params={"dir": "workflows"}).json()
    assert listed == ["0.json", "2.json", "renamed.json"]
    assert budgeted.get("/w/alice/api/userdata/workflows%2Frenamed.json").content == chunk


async def test_saves_at_once_cannot_pass_the_budget_together(redis_url: str) -> None:
    """Each save looked for room before any of them wrote: saves sent at once were all let in, so
    one participant could still fill Redis by sending them in parallel. At most the budget is kept."""
    redis = Redis.from_url(redis_url)
    data = UserData(redis, "alice", "qm-budget", SAVED_LIMIT, Scripts(redis))
    chunk = b"x" * (BODY_LIMIT - 100)
    try:
        saves = [data.write(f"workflows/{n}.json", chunk) for n in range(12)]
        outcomes = await asyncio.gather(*saves, return_exceptions=True)

        refused = [o for o in outcomes if isinstance(o, UserDataError)]
        assert len(refused) == 9 and all(o.status == 413 for o in refused), outcomes
        assert len(await data.listing("workflows", recurse=True)) == 3
    finally:
        await redis.aclose()


async def test_settings_saved_at_once_cannot_pass_the_budget_together(redis_url: str) -> None:
    """The frontend stores settings one by one and in parallel: each looked for room before any
    was written, so settings sent at once were all let in past the budget."""
    redis = Redis.from_url(redis_url)
    settings = UserSettings(redis, "alice", "qm-budget", SAVED_LIMIT, Scripts(redis))
    value = "v" * (BODY_LIMIT - 100)
    try:
        updates = [settings.update({f"Big.{n}": value}) for n in range(12)]
        outcomes = await asyncio.gather(*updates, return_exceptions=True)

        refused = [o for o in outcomes if isinstance(o, SettingsError)]
        assert len(refused) == 9 and all("QM_MAX_SAVED_BYTES" in str(o) for o in refused), outcomes
        assert len([name for name in await settings.all() if name.startswith("Big.")]) == 3
    finally:
        await redis.aclose()


def spooled_upload(name: str, data_of: Callable[[int], bytes], parts: int) -> UploadFile:
    """An upload as the multipart parser hands it over: spooled to a temporary file past 1 MiB."""
    spool = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)  # noqa: SIM115 (the UploadFile owns it)
    for index in range(parts):
        spool.write(data_of(index))
    size = spool.tell()
    spool.seek(0)
    return UploadFile(spool, size=size, filename=name)


async def test_an_upload_is_stored_without_holding_the_file_in_memory(tmp_path: Path) -> None:
    """Twenty participants uploading their 100 MB videos at once held 2 GB in the queue manager,
    which serves every workspace; a file now goes from its spool to storage chunk by chunk,
    also when a file of that name is there and is compared."""
    storage = LocalStorage(tmp_path / "files")
    files = UserFiles(storage, "alice", max_upload_bytes=64 * 1024 * 1024)
    part = 1024 * 1024

    def same(index: int) -> bytes:
        return bytes([index % 251]) * part

    def other(index: int) -> bytes:
        return bytes([(index + 1) % 251]) * part

    ref = file_ref("film.mp4", "", "input")
    tracemalloc.start()
    try:
        first = await files.save_upload(spooled_upload("film.mp4", same, 24), ref, overwrite=False)
        again = await files.save_upload(spooled_upload("film.mp4", same, 24), ref, overwrite=False)
        second = await files.save_upload(spooled_upload("film.mp4", other, 24), ref, overwrite=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [first.filename, again.filename, second.filename] == ["film.mp4", "film.mp4", "film (1).mp4"]
    stored = b"".join([chunk async for chunk in storage.get("users/alice/input/film (1).mp4")])
    assert stored == b"".join(other(index) for index in range(24))
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes for 24 MiB uploads: the file was held in memory"


async def test_an_upload_over_the_limit_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files")
    files = UserFiles(storage, "alice", max_upload_bytes=2 * 1024 * 1024)
    upload = spooled_upload("big.png", lambda index: b"x" * 1024 * 1024, 3)
    with pytest.raises(FileProblem) as refused:
        await files.save_upload(upload, file_ref("big.png", "", "input"), overwrite=False)
    assert refused.value.status == 413 and "QM_MAX_UPLOAD_BYTES" in str(refused.value)
    assert await storage.list("users/alice/") == []


class Counted:
    """A store that counts the calls made of it, each a request to a bucket (calls the store makes
    of itself are not counted)."""

    def __init__(self, storage: LocalStorage) -> None:
        self.storage, self.calls = storage, 0

    def __getattr__(self, name: str) -> object:
        self.calls += 1
        return getattr(self.storage, name)


async def test_the_thirtieth_pasted_image_asks_the_store_no_more_than_the_first(tmp_path: Path) -> None:
    """The frontend names every pasted image ``image.png``; each upload looked at every earlier
    ``image (n).png`` one call at a time (two per name on R2: some 30 ms each), so the 30th paste
    of the day took 60 calls before it was stored."""
    storage = Counted(LocalStorage(tmp_path / "files"))
    files = UserFiles(storage, "alice", max_upload_bytes=1024 * 1024)  # type: ignore[arg-type]
    ref = file_ref("image.png", "pasted", "input")
    names, calls = [], []
    for paste in range(30):
        before = storage.calls
        saved = await files.save(b"\x89PNG" + bytes([paste]) * (paste + 1), ref, overwrite=False)
        names.append(saved.filename)
        calls.append(storage.calls - before)
    assert names == ["image.png"] + [f"image ({n}).png" for n in range(1, 30)]
    assert max(calls) <= 3, calls


async def test_two_uploads_of_one_name_at_once_keep_both_files(tmp_path: Path) -> None:
    """Two tabs pasting at the same moment both found ``image.png`` free and the second wrote over
    the first: the name is now taken in one step with the write, and the other upload moves on."""

    class LookTogether(LocalStorage):
        met = asyncio.Barrier(2)
        looked = 0

        async def _together(self) -> None:
            self.looked += 1
            if self.looked <= 2:  # each upload's first look is answered before either goes on
                await asyncio.wait_for(self.met.wait(), timeout=10)

        async def exists(self, key: str) -> bool:
            found = await super().exists(key)
            await self._together()
            return found

        async def sizes(self, prefix: str = "") -> dict[str, int]:
            found = await super().sizes(prefix)
            await self._together()
            return found

    storage = LookTogether(tmp_path / "files")
    files = UserFiles(storage, "alice", max_upload_bytes=1024 * 1024)
    ref = file_ref("image.png", "", "input")
    first, second = await asyncio.gather(
        files.save(b"\x89PNG first tab", ref, overwrite=False),
        files.save(b"\x89PNG second tab!", ref, overwrite=False),
    )
    assert {first.filename, second.filename} == {"image.png", "image (1).png"}
    stored = {
        key: b"".join([c async for c in storage.get(key)]) for key in await storage.list("users/alice/")
    }
    assert sorted(stored.values()) == [b"\x89PNG first tab", b"\x89PNG second tab!"]


def test_a_participant_cannot_fill_the_file_store_past_her_quota_and_others_still_upload(
    redis_url: str, tmp_path: Path
) -> None:
    """Alice uploads distinct files in a loop: past QM_MAX_USER_FILES_BYTES (what her folder may hold
    in all) the next upload gets 413 naming the quota and the fix, is not stored, and her earlier
    files stay; bob's uploads are not affected by hers."""
    settings = settings_for(redis_url, max_body_bytes=BODY_LIMIT, max_user_files_bytes=100 * 1024)
    with (
        live_server(settings, tmp_path / "files") as server,
        httpx.Client(base_url=server.url, timeout=10) as alice,
        httpx.Client(base_url=server.url, timeout=10) as bob,
    ):
        login(alice, "alice")
        login(bob, "bob")
        statuses = [
            alice.post(
                UPLOAD, files={"image": (f"f{n}.bin", bytes([n]) * 30 * 1024, "image/png")}
            ).status_code
            for n in range(5)
        ]
        assert statuses == [200, 200, 200, 413, 413]
        refused = alice.post(UPLOAD, files={"image": ("f9.bin", b"z" * 30 * 1024, "image/png")})
        assert "QM_MAX_USER_FILES_BYTES" in refused.json()["error"]
        assert "102400" in refused.json()["error"] or "100 KiB" in refused.json()["error"]
        view = alice.get("/w/alice/api/view", params={"filename": "f3.bin", "type": "input"})
        assert view.status_code == 404
        kept = alice.get("/w/alice/api/view", params={"filename": "f2.bin", "type": "input"})
        assert kept.content == bytes([2]) * 30 * 1024
        theirs = bob.post(
            "/w/bob/api/upload/image", files={"image": ("b.bin", b"b" * 30 * 1024, "image/png")}
        )
        assert theirs.status_code == 200, theirs.text
