"""An owner's placeholders: empty files named as her earlier outputs, kept between her jobs.

ComfyUI's ``SaveImage`` lists its output folder and numbers on from the highest counter it finds,
so a job must find there a file for each of its owner's earlier outputs, or it writes
``ComfyUI_00001_.png`` over one of them (``job_files``). Making and removing one empty file per
earlier output for every job costs the worker a few system calls per file the owner ever made.

Instead each owner's placeholders stay in a folder of the worker's spool between her jobs, with
their record (name -> inode and modification time as made). For a job they are brought up to date
(``sync``: only the names added since are created, only those gone are removed) and the folder is
moved in as ComfyUI's output folder, one rename. When the job ends and keeps its outputs, the
folder is moved aside and ``split``: a file that is not a placeholder, or a placeholder the job
wrote (not empty any more, another file or another time), is an output and goes to the job's kept
folder; the untouched placeholders are the owner's folder again, ready for her next job.

The folder is a cache, never the truth: whenever something is in doubt (a job that did not keep
its outputs, an entry that is neither file nor folder, a failed rename), it is ``forget``-ten and
made again from the names at the owner's next job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

# An empty stand-in for an earlier output, by its name in the output folder -> (inode, mtime)
Placeholders = dict[str, tuple[int, int]]

T = TypeVar("T")


def make_placeholders(folder: Path, names: Iterable[str]) -> Placeholders:
    """An empty file under ``folder`` for each name that is not there yet (three system calls each).
    A name another is in the way of (``sub`` as a file and ``sub/name``) is left out: ComfyUI
    could not write it either."""
    placeholders = {}
    for name in names:
        placeholder = folder / name
        try:
            handle = os.open(placeholder, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            try:
                placeholder.parent.mkdir(parents=True, exist_ok=True)
                handle = os.open(placeholder, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except (FileExistsError, NotADirectoryError):
                continue
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue
        try:
            status = os.fstat(handle)
        finally:
            os.close(handle)
        placeholders[name] = (status.st_ino, status.st_mtime_ns)
    return placeholders


def untouched(status: os.stat_result, staged: tuple[int, int]) -> bool:
    """Whether a placeholder is still as made (empty, same file, same time): no job wrote it."""
    return status.st_size == 0 and (status.st_ino, status.st_mtime_ns) == staged


def drop_untouched(output: Path, placeholders: Placeholders) -> None:
    """Remove each placeholder still as staged: the job did not write it."""
    for name in placeholders:
        path = output / name
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if untouched(path.stat(), placeholders[name]):
                path.unlink()


def file_names(folder: Path, base: str = "") -> Iterator[str]:
    """The files under ``folder``, as ``sub/name`` (symlinks are not followed)."""
    for entry in os.scandir(folder):
        name = f"{base}{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            yield from file_names(Path(entry.path), f"{name}/")
        elif entry.is_file(follow_symlinks=False):
            yield name


class UnexpectedEntryError(Exception):
    """An output folder holds something that is neither a file nor a folder."""


def sort_files(folder: Path, placeholders: Placeholders, still: list[str], base: str = "") -> Iterator[str]:
    """The files under ``folder`` that are not untouched placeholders (one ``stat`` per
    placeholder); the untouched ones are added to ``still``. ``UnexpectedEntryError`` for a link
    or any other kind of entry."""
    for entry in os.scandir(folder):
        name = f"{base}{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            yield from sort_files(Path(entry.path), placeholders, still, f"{name}/")
        elif not entry.is_file(follow_symlinks=False):
            raise UnexpectedEntryError(name)
        elif name in placeholders and untouched(entry.stat(follow_symlinks=False), placeholders[name]):
            still.append(name)
        else:
            yield name


def move_file(source: Path, target: Path, name: str) -> None:
    """Move ``source/name`` to ``target/name`` (a rename), making its folders."""
    destination = target / name
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source / name, destination)


def move_files(source: Path, target: Path) -> None:
    """Move every file under ``source`` to the same name under ``target``, then remove ``source``."""
    if source.is_dir():
        for name in list(file_names(source)):
            move_file(source, target, name)
        shutil.rmtree(source, ignore_errors=True)


def remove_empty_parents(root: Path, name: str) -> None:
    """Remove the folders of ``root/name`` that are left empty, up to ``root``."""
    parent = Path(name).parent
    while parent != Path("."):
        try:
            (root / parent).rmdir()
        except OSError:  # not empty: it holds placeholders still
            return
        parent = parent.parent


class OwnerPlaceholders:
    """One owner's placeholders: their folder in the spool between her jobs, and their record.

    ``lock`` is held while the folder changes and for the whole of her job's turn in ComfyUI's
    folders, until its outputs are split from the placeholders (the folder is not at ``folder``
    meanwhile). The blocking methods run in a worker thread, the lock held around them."""

    def __init__(self, root: Path) -> None:
        self.root = root  # where the owners' folders are made
        self.folder: Path | None = None  # None: no folder that can be trusted; made again at ``sync``
        self.record: Placeholders = {}
        self.lock = asyncio.Lock()

    def sync(self, wanted: set[str]) -> Path:
        """Make the folder hold a placeholder for exactly the ``wanted`` names: the missing ones are
        made and the others removed (all made afresh when there is no folder). Returns the folder."""
        if self.folder is None or not self.folder.is_dir():
            self.forget()
            self.folder = self.root / secrets.token_hex(8)
            self.folder.mkdir(parents=True)
            self.record = make_placeholders(self.folder, wanted)
            return self.folder
        for name in self.record.keys() - wanted:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(self.folder / name)
            del self.record[name]
        self.record.update(make_placeholders(self.folder, wanted.difference(self.record)))
        return self.folder

    def split(self, output: Path) -> list[str]:
        """``output`` is the folder her job ended with (her placeholders and its outputs): the
        untouched placeholders become her folder again and ``output`` keeps only the files the job
        wrote, which are returned. In doubt, ``output`` keeps every file except the untouched
        placeholders (as if nothing were kept) and the folder is forgotten."""
        still: list[str] = []
        try:
            written = list(sort_files(output, self.record, still)) if output.is_dir() else None
        except UnexpectedEntryError:
            written = None
        if written is None or self.folder is None or not self.vacant(self.folder):
            return self.give_up(output)
        try:
            os.replace(output, self.folder)
        except OSError:
            return self.give_up(output)
        try:
            for name in written:
                move_file(self.folder, output, name)
                remove_empty_parents(self.folder, name)
        except OSError:
            move_files(self.folder, output)
            return self.give_up(output)
        if len(still) != len(self.record):  # the job wrote or removed some: they are no placeholders now
            self.record = {name: self.record[name] for name in still}
        return written

    @staticmethod
    def vacant(folder: Path) -> bool:
        """Whether ``folder`` is free to be renamed onto: gone, or left empty (its placeholders were
        moved in one by one where ComfyUI's output folder could not be renamed, a mount point)."""
        try:
            folder.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def give_up(self, output: Path) -> list[str]:
        """Drop the untouched placeholders from ``output`` and forget the folder; the files left."""
        if not output.is_dir():
            self.forget()
            return []
        drop_untouched(output, self.record)
        self.forget()
        return list(file_names(output))

    def forget(self) -> None:
        """No folder to trust: it is removed (if it is in the spool still) and made again when next needed."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder, self.record = None, {}


async def to_the_end(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` in a worker thread, waited for to its end even when the caller is
    cancelled meanwhile (the cancel is raised once it ended): a lock held around it is never
    released while the thread still changes what it guards."""
    task = asyncio.ensure_future(asyncio.to_thread(function, *args))
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
