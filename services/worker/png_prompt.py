"""The graph a participant's PNG carries is the graph she ran, not the worker's salted copy.

ComfyUI's image savers (``SaveImage``, ``PreviewImage``, ``SaveAnimatedPNG``) write the prompt
ComfyUI was given into a ``tEXt`` chunk named ``prompt``, before the image data. The worker gives
ComfyUI her graph with its salt on some nodes (``job_files.salted``: ``SALT_INPUT``, naming her user
name), so ComfyUI's file would tell whoever she shares it with who she is, and carry an input no
ComfyUI of her own would have. Before a saved PNG goes to her storage, ``unsalt_png`` rewrites that
one chunk to the graph as she submitted it (the salt taken out of each node's inputs, the rest as
ComfyUI wrote it); the image data is copied as it is. A file that is not such a PNG is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from services.worker.job_files import SALT_INPUT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPT_KEY = b"prompt\0"
IMAGE_DATA = {b"IDAT", b"IEND"}  # ComfyUI's text chunks all come before these


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
