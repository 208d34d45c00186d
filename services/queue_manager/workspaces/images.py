"""``/view``'s image conversions, as ComfyUI's ``view_image`` does them.

- ``channel=rgb``: the image without its alpha, as PNG (the mask editor's base image);
- ``channel=a``: only the alpha, as a transparent PNG carrying it (the mask editor's mask; opaque
  when the image has none);
- ``preview=webp;90`` / ``preview=jpeg;80``: a smaller copy for the queue and history panels
  (``Comfy.PreviewFormat``); webp whenever the alpha is asked for or the format is unknown.

Decoding runs in a worker thread, two at most at a time, and only for images of at most
``MAX_DECODE_PIXELS``: a conversion holds about four copies of the decoded image, and a blank PNG of
a few kB can declare tens of millions of pixels (Pillow's own decompression-bomb limit, 89 million,
let one request take 1.4 GB). Larger images are served as stored.
"""

from __future__ import annotations

import asyncio
import io
import threading
import warnings

from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

MAX_IMAGE_BYTES = 128 * 1024 * 1024
"""Larger files are only served as stored: a conversion holds the whole file in memory."""
MAX_DECODE_PIXELS = 40_000_000
"""Larger images (beyond 8K x 4.8K) are only served as stored: ~160 MB per RGBA copy."""
DECODING = threading.BoundedSemaphore(2)
"""Conversions decoding at once (in worker threads), whoever asks: memory stays ~1.3 GB at most."""


class ImageProblem(ValueError):
    """A conversion that cannot be made; the message says why."""


def wants_conversion(channel: str, preview: str) -> bool:
    return bool(preview) or channel in ("rgb", "a")


async def convert(data: bytes, filename: str, channel: str, preview: str) -> tuple[bytes, str]:
    """The converted image and its media type."""
    return await asyncio.to_thread(_convert, data, filename, channel, preview)


def _convert(data: bytes, filename: str, channel: str, preview: str) -> tuple[bytes, str]:
    with DECODING, _opened(data, filename) as image:
        if preview:
            return _preview(image, channel, preview)
        if channel == "rgb":
            return _png(image.convert("RGB")), "image/png"
        alpha = image.getchannel("A") if "A" in image.getbands() else Image.new("L", image.size, 255)
        mask = Image.new("RGBA", image.size)
        mask.putalpha(alpha)
        return _png(mask), "image/png"


MAX_SIDE = {"webp": 16383, "jpeg": 65535}
"""The largest width or height each preview format can encode."""


def _preview(image: Image.Image, channel: str, preview: str) -> tuple[bytes, str]:
    kind, _, rest = preview.partition(";")
    if rest and not (rest.isascii() and rest.isdigit()):
        raise ImageProblem(
            f"preview must be a format and a quality like 'webp;90' or 'jpeg;80', not {preview!r}"
        )
    quality = int(rest) if rest else 90
    if kind not in ("webp", "jpeg") or "a" in channel:
        kind = "webp"
    if max(image.size) > MAX_SIDE[kind]:
        raise ImageProblem(
            f"{image.width}x{image.height} is too large for a {kind} preview ({MAX_SIDE[kind]} pixels per "
            "side at most): ask for the image without 'preview'"
        )
    if kind == "jpeg" or channel == "rgb":
        image = image.convert("RGB")
    elif image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA")
    buffer = io.BytesIO()
    image.save(buffer, format=kind.upper(), quality=min(max(quality, 1), 100))
    return buffer.getvalue(), f"image/{kind}"


async def merge_mask(original: bytes, mask: bytes, filename: str) -> bytes:
    """ComfyUI's ``/upload/mask``: the original's colours and PNG text (the workflow it was made
    with) under the mask's alpha, as PNG. The stock mask editor sends the mask without colours."""
    return await asyncio.to_thread(_merge_mask, original, mask, filename)


def _merge_mask(original: bytes, mask: bytes, filename: str) -> bytes:
    with DECODING, _opened(original, filename) as image, _opened(mask, "the mask") as painted:
        if image.size != painted.size:
            raise ImageProblem(
                f"the mask is {painted.width}x{painted.height} but {filename} is "
                f"{image.width}x{image.height}: paint the mask on that image"
            )
        text = PngInfo()
        for key, value in getattr(image, "text", {}).items():
            text.add_text(key, value)
        merged = image.convert("RGBA")
        merged.putalpha(painted.convert("RGBA").getchannel("A"))
        buffer = io.BytesIO()
        merged.save(buffer, format="PNG", compress_level=4, pnginfo=text)
        return buffer.getvalue()


def _opened(data: bytes, filename: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image, filename)
            image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem(
            f"{filename} cannot be converted ({exc.__class__.__name__}): ask for it without "
            "'channel' or 'preview' to get the file as stored"
        ) from exc
    except OSError as exc:
        raise ImageProblem(f"{filename} is not a readable image: {exc}") from exc
    return image


def _check_pixels(image: Image.Image, filename: str) -> None:
    """Refuse, from its header alone, an image too large to decode here."""
    if image.width * image.height > MAX_DECODE_PIXELS:
        image.close()
        raise ImageProblem(
            f"{filename} is {image.width}x{image.height}, more than the {MAX_DECODE_PIXELS:,} pixels the "
            "workspace converts: ask for it without 'channel' or 'preview' to get the file as stored "
            "(or paint masks on a smaller image)"
        )


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
