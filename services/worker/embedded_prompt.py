"""The graph a participant's output carries is the graph she ran, not the worker's salted copy.

ComfyUI's savers write the prompt ComfyUI was given (``json.dumps``) into the file: image savers
(``SaveImage``, ``PreviewImage``, ``SaveAnimatedPNG``) into a PNG ``tEXt`` chunk named ``prompt``
before the image data, ``SaveAnimatedWEBP`` into its EXIF, ``SaveVideo`` and ``SaveAudio`` into the
container's metadata. The worker gives ComfyUI her graph with its salt on some nodes
(``job_files.salted``: ``SALT_INPUT``, naming her user name), so ComfyUI's file would tell whoever
she shares it with who she is, and carry an input no ComfyUI of her own would have. Before an
output goes to her storage, ``unsalt_file`` takes the salt out: a PNG's ``prompt`` chunk is
rewritten to the graph as she submitted it (the rest as ComfyUI wrote it, the image data copied as
it is); in any other file each ``"workshop_job": "..."`` entry of the JSON is blanked with spaces,
which leaves the JSON the same graph and every length and offset of the container as it was.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from services.worker.job_files import SALT_INPUT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPT_KEY = b"prompt\0"
IMAGE_DATA = {b"IDAT", b"IEND"}  # ComfyUI's text chunks all come before these
SALT_KEY = b'"' + SALT_INPUT.encode() + b'": "'
SALT_ENTRY = re.compile(re.escape(SALT_KEY) + rb'[^"\\]{0,256}"')
"""The salt as ``json.dumps`` writes it among a node's inputs (the last one: ``salted`` adds it),
after ``", "``."""


def unsalted_prompt(text: bytes) -> bytes:
    """The ``prompt`` chunk's JSON without the worker's salt, dumped as ComfyUI dumps it."""
    try:
        prompt = json.loads(text)
    except ValueError:
        return text
    if not isinstance(prompt, dict):
        return text
    nodes = [node for node in prompt.values() if isinstance(node, dict)]
    inputs = [node["inputs"] for node in nodes if isinstance(node.get("inputs"), dict)]
    if not any(SALT_INPUT in given for given in inputs):
        return text
    for given in inputs:
        given.pop(SALT_INPUT, None)
    return json.dumps(prompt).encode("latin-1")


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def text_chunks(source: BinaryIO) -> tuple[bytes, bool]:
    """The PNG's bytes up to its image data, its ``prompt`` chunk unsalted; and whether that changed
    anything. ``source`` is left at the first image data chunk."""
    head, changed = bytearray(PNG_MAGIC), False
    while len(header := source.read(8)) == 8:
        length, kind = struct.unpack(">I4s", header)
        if kind in IMAGE_DATA:
            source.seek(-8, os.SEEK_CUR)
            break
        body, crc = source.read(length), source.read(4)
        if kind == b"tEXt" and body.startswith(PROMPT_KEY):
            text = unsalted_prompt(body[len(PROMPT_KEY) :])
            if text != body[len(PROMPT_KEY) :]:
                head += chunk(kind, PROMPT_KEY + text)
                changed = True
                continue
        head += header + body + crc
    return bytes(head), changed


def unsalt_file(path: Path) -> None:
    """Take the worker's salt out of the graph the output at ``path`` carries (see the module)."""
    with path.open("rb") as source:
        png = source.read(len(PNG_MAGIC)) == PNG_MAGIC
    if png:
        unsalt_png(path)
    else:
        blank_salt(path)


def blank_salt(path: Path) -> None:
    """Overwrite each salt entry in the file with spaces, in place."""
    if path.stat().st_size == 0:
        return
    with path.open("r+b") as handle, mmap.mmap(handle.fileno(), 0) as data:
        # Found with mmap.find (memchr speed) and only then matched: a regex scan of a 50 MB video took
        # seconds of the worker's one thread, with the GIL held.
        start = data.find(SALT_KEY)
        while start != -1:
            entry = SALT_ENTRY.match(data, start)
            end = entry.end() if entry else start + len(SALT_KEY)
            if entry:
                begin = start - 2 if data[max(start - 2, 0) : start] == b", " else start
                data[begin:end] = b" " * (end - begin)
            start = data.find(SALT_KEY, end)


def unsalt_png(path: Path) -> None:
    """Rewrite the PNG at ``path`` so its ``prompt`` is the graph as submitted (see the module)."""
    with path.open("rb") as source:
        if source.read(len(PNG_MAGIC)) != PNG_MAGIC:
            return
        head, changed = text_chunks(source)
        if not changed:
            return
        rewritten = path.with_name(f".{path.name}.unsalted")
        with rewritten.open("wb") as target:
            target.write(head)
            shutil.copyfileobj(source, target, 1024 * 1024)
    os.replace(rewritten, path)
