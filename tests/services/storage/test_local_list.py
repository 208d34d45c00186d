"""Listing one participant's files on local storage walks their folder only, not everyone's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.storage import KeyConflictError, aiter_chunks
from services.storage.local import PARTIAL, LocalStorage

KEYS = [
    "users/ada/input/b.png",
    "users/ada/output/a.png",
    "users/ada/outputs-old/z.png",
    "users/adam/output/c.png",
    "users/bob/output/d.png",
    "models/checkpoints/m.safetensors",
]
PREFIXES = [
    "",
    "users/",
    "users/ada/",
    "users/ada",
    "users/ad",
    "users/ada/out",
    "users/ada/output/a",
    "users/ada/output/a.png",
    "users/nobody/",
    "models/checkpoints/m.safetensors/",
    "../",
    "/users/",
    "users//ada/",
]


async def storage_with_files(root: Path) -> LocalStorage:
    storage = LocalStorage(root)
    for key in KEYS:
        await storage.put(key, aiter_chunks(b"x"))
    (root / f"users/ada/output/.a.png.{'0123' * 8}.part").write_bytes(b"half an upload")
    return storage


def whole_root_listing(root: Path, prefix: str) -> list[str]:
    """What ``list`` answered when it walked the whole root on every call."""
    keys = (
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not PARTIAL.fullmatch(p.name)
    )
    return sorted(key for key in keys if key.startswith(prefix))


async def test_listing_a_participants_files_never_opens_another_participants_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = await storage_with_files(tmp_path / "files")
    scanned: list[str] = []
    real_scandir = os.scandir

    def spy(path: str | os.PathLike[str] = ".") -> object:
        scanned.append(Path(path).relative_to(storage.root).as_posix())
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spy)
    assert await storage.list("users/ada/") == [
        "users/ada/input/b.png",
        "users/ada/output/a.png",
        "users/ada/outputs-old/z.png",
    ]
    assert scanned, "the listing read no folder at all"
    assert all(folder == "users/ada" or folder.startswith("users/ada/") for folder in scanned), scanned


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_every_prefix_lists_what_the_whole_root_walk_listed(tmp_path: Path, prefix: str) -> None:
    storage = await storage_with_files(tmp_path / "files")
    expected = whole_root_listing(storage.root, prefix)
    assert await storage.list(prefix) == expected


@pytest.mark.parametrize(("first", "second"), [("users/ada/input/a.png", "users/ada/input/a.png/b.png"),
                                               ("users/ada/input/a/b.png", "users/ada/input/a")])  # fmt: skip
async def test_a_key_that_needs_a_file_where_a_folder_is_or_the_reverse_is_refused(
    tmp_path: Path, first: str, second: str
) -> None:
    """A local folder cannot be a file too: such a key is a ``KeyConflictError`` (a bucket stores
    both), and what was stored stays as it was."""
    storage = LocalStorage(tmp_path)
    await storage.put(first, aiter_chunks(b"kept"))
    with pytest.raises(KeyConflictError, match="a file and a folder"):
        await storage.put(second, aiter_chunks(b"new"))
    assert await storage.list("users/ada/") == [first]


@pytest.mark.parametrize("name", ["notes.part", "x.part", ".hidden.part", f".a.png.{'0' * 31}.part"])
async def test_a_file_whose_name_ends_in_part_is_listed_like_any_other(tmp_path: Path, name: str) -> None:
    """Only a write still under way is left out of listings, not a participant's ``notes.part``:
    it vanished from her input list and a workflow naming it was refused."""
    storage = LocalStorage(tmp_path)
    await storage.put(f"users/ada/input/{name}", aiter_chunks(b"mine"))
    assert await storage.list("users/ada/input/") == [f"users/ada/input/{name}"]
