"""ComfyUI's binary preview frames become the ``b_preview`` data the workspace socket re-encodes."""

from __future__ import annotations

import base64
import struct

from services.protocol.comfyui import MAX_PREVIEW_BYTES, preview_data

JPEG = b"\xff\xd8\xff\xe0" + b"jpeg body"


def test_a_jpeg_preview_frame_keeps_its_format_and_bytes() -> None:
    data = preview_data(struct.pack(">II", 1, 1) + JPEG)
    assert data is not None and data["format"] == "jpeg"
    assert base64.b64decode(data["image"]) == JPEG


def test_other_binary_frames_and_oversized_previews_are_not_forwarded() -> None:
    assert preview_data(struct.pack(">II", 3, 2) + b"some text frame") is None  # not a preview image
    assert preview_data(struct.pack(">II", 1, 7) + JPEG) is None  # unknown image format
    assert preview_data(struct.pack(">I", 1)) is None  # truncated
    assert preview_data(struct.pack(">II", 1, 2) + bytes(MAX_PREVIEW_BYTES + 1)) is None
    assert preview_data(struct.pack(">II", 1, 2) + bytes(MAX_PREVIEW_BYTES)) is not None
