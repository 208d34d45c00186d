"""The double's saved images are real PNGs, so a browser shows a participant's output."""

from __future__ import annotations

import struct
import zlib

from devkit.doubles.comfyui_nodes import image_bytes, png_meta


def _chunks(data: bytes) -> dict[bytes, bytes]:
    found, at = {}, 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(kind + body)
        found[kind] = body
        at += 12 + length
        if kind == b"IEND":
            break
    return found


def test_a_saved_image_decodes_to_its_size_and_colour() -> None:
    png = image_bytes({"width": 40, "height": 30, "batch": 1, "color": 0x3366FF}, 0)
    chunks = _chunks(png)
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    pixels = zlib.decompress(chunks[b"IDAT"])
    assert (width, height) == (40, 30)
    assert len(pixels) == height * (1 + 3 * width)
    assert pixels[1:4] == bytes((0x33, 0x66, 0xFF))


def test_the_metadata_survives_a_round_trip_for_load_image() -> None:
    png = image_bytes({"width": 8, "height": 8, "batch": 1, "color": 7}, 2)
    assert png_meta(png + b"\0" * 64) == {"width": 8, "height": 8, "batch": 1, "color": 7, "index": 2}
