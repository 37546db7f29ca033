"""The per-frame pixel limit, and what a PNG declares about itself (size, significant bits), read without
decoding pixels.

A PNG's IHDR chunk states width and height; a few hundred bytes of compressed data can declare a frame
of gigabytes (a decompression bomb), so the size is checked before the decoder allocates anything.
The ``sBIT`` chunk, when present, says how many bits of each 16-bit sample carry data (12 for a 12-bit
scanner export).

Standard library only: ``tpnet/__init__`` uses it to set OpenCV's limit before anything imports cv2.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Frame size limit (decompression bombs: an 875 KB PNG can declare 30000 x 30000 px and take 23 GB to
# decode). Scanners write 0.3-2 megapixel frames and panoramic (extended field of view) exports a few
# megapixels; 16 MP (4000 x 4000) leaves 8x headroom over the largest of them while keeping one frame's
# decode and float32 copies to a few hundred MB. Counted as width x height (x further planes for
# multi-page TIFF or >2-D arrays), checked from the file's header before any pixel is decoded.
DEFAULT_MAX_FRAME_PIXELS = 16_000_000
MAX_FRAME_PIXELS_ENV = "TPNET_MAX_FRAME_PIXELS"
OPENCV_MAX_PIXELS_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS_BY_COLOUR_TYPE = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # palette (3) decodes to RGB
_MAX_CHUNKS_BEFORE_IDAT = 10_000  # a real file has a handful; a crafted one must not keep us reading


class ImageHeaderError(ValueError):
    """The header is malformed; the message says how (the caller adds the file name)."""


def max_frame_pixels() -> int:
    """``TPNET_MAX_FRAME_PIXELS`` if set (read on every call; 64000000 and 6.4e7 both work), else the
    default. ValueError names the variable when it is not a positive number."""
    raw = os.environ.get(MAX_FRAME_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_FRAME_PIXELS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise ValueError(
            f"{MAX_FRAME_PIXELS_ENV}={raw!r} is not a positive number of pixels (default {DEFAULT_MAX_FRAME_PIXELS})"
        )
    return int(value)


def guard_opencv_pixel_limit() -> None:
    """Give OpenCV our limit as its own (``OPENCV_IO_MAX_IMAGE_PIXELS``, default 2^30 px), so a frame tpnet
    allows is never refused by OpenCV with a vaguer message and a header that lies is still caught by the
    decoder. OpenCV reads the variable once, when cv2 is imported: effective only before that import.
    A user's own setting wins."""
    try:
        limit = max_frame_pixels()
    except ValueError:
        return  # every frame read reports the bad variable
    os.environ.setdefault(OPENCV_MAX_PIXELS_ENV, str(limit))


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int  # bits per stored sample: 1, 2, 4, 8 or 16
    channels: int  # after decoding (palette images decode to RGB)
    significant_bits: int | None  # sBIT of the grey (or first) channel; None without an sBIT chunk


def read_png_header(path: Path) -> PngHeader:
    """IHDR and, if it comes before the image data, sBIT; reads only chunk headers, never pixel data."""
    with path.open("rb") as fh:
        if fh.read(8) != PNG_SIGNATURE:
            raise ImageHeaderError("not a PNG file (bad signature)")
        length, kind, data = _read_chunk(fh)
        if kind != b"IHDR" or length != 13:
            raise ImageHeaderError("PNG has no valid IHDR chunk")
        width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[:10])
        if colour_type not in _CHANNELS_BY_COLOUR_TYPE or bit_depth not in (1, 2, 4, 8, 16):
            raise ImageHeaderError(
                f"PNG declares an invalid bit depth {bit_depth} / colour type {colour_type}"
            )
        if width == 0 or height == 0:
            raise ImageHeaderError(f"PNG declares an empty image ({width}x{height} px)")
        significant_bits = None
        # sBIT must precede PLTE and IDAT (PNG spec 11.3.3.4); stop at the first image data.
        for _ in range(_MAX_CHUNKS_BEFORE_IDAT):
            length, kind, data = _read_chunk(fh)
            if kind in (b"IDAT", b"IEND", b""):
                break
            if kind == b"sBIT" and data:
                significant_bits = data[0]
        return PngHeader(width, height, bit_depth, _CHANNELS_BY_COLOUR_TYPE[colour_type], significant_bits)


def _read_chunk(fh: BinaryIO) -> tuple[int, bytes, bytes]:
    """(length, type, data) of the next chunk; data only for IHDR and sBIT (others, IDAT included, are
    skipped by seeking). Type ``b""`` means end of file."""
    head = fh.read(8)
    if len(head) < 8:
        return 0, b"", b""
    length, kind = struct.unpack(">I4s", head)
    if kind in (b"IHDR", b"sBIT"):
        data = fh.read(min(length, 64))  # both are at most 13 bytes
        fh.seek(length - len(data) + 4, 1)  # rest and CRC
        return length, kind, data
    fh.seek(length + 4, 1)
    return length, kind, b""
