"""ComfyUI's binary preview frames as forwardable ``b_preview`` event data.

A frame is a 4-byte big-endian event type (1 = preview image), a 4-byte image format (1 = JPEG,
2 = PNG), then the image bytes. The frame names no job: the caller adds the ``prompt_id`` of the
job running when it arrived. The queue manager's workspace socket turns the event back into the
same binary frame for the participant's browser. Images over ``MAX_PREVIEW_BYTES`` are not
forwarded (sampler previews are small; a full-size image arrives as an output anyway).
"""

from __future__ import annotations

import base64
import struct
from typing import Any

PREVIEW_IMAGE = 1
FORMATS = {1: "jpeg", 2: "png"}
MAX_PREVIEW_BYTES = 256 * 1024


def preview_data(frame: bytes) -> dict[str, Any] | None:
    """``{"image": <base64>, "format": "png" | "jpeg"}``, or None for other or oversized frames."""
    if len(frame) < 8:
        return None
    event, kind = struct.unpack(">II", frame[:8])
    image = frame[8:]
    if event != PREVIEW_IMAGE or kind not in FORMATS or not image or len(image) > MAX_PREVIEW_BYTES:
        return None
    return {"image": base64.b64encode(image).decode("ascii"), "format": FORMATS[kind]}
