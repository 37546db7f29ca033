"""Test helper: PNG files written byte by byte, for what OpenCV will not write (decompression bombs,
16-bit PNGs with an sBIT chunk)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A valid 8-bit grey PNG of ``width`` x ``height`` black pixels: about 1 MB on disk for 900 MB decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(1)
    rows_per_block = max(1, (8 << 20) // (width + 1))
    block = bytes(rows_per_block * (width + 1))  # filter byte 0 + zero pixels per row
    parts = []
    for start in range(0, height, rows_per_block):
        rows = min(rows_per_block, height - start)
        parts.append(compressor.compress(block[: rows * (width + 1)]))
    parts.append(compressor.flush())
    path.write_bytes(
        _SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )
    return path


def write_png16(path: Path, image: np.ndarray, significant_bits: int | None = None) -> Path:
    """A 16-bit grey PNG holding ``image`` as stored (no shifting), with an sBIT chunk if asked."""
    height, width = image.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    rows = np.zeros((height, 1 + 2 * width), np.uint8)
    rows[:, 1:] = image.astype(">u2").view(np.uint8).reshape(height, 2 * width)
    chunks = _chunk(b"IHDR", ihdr)
    if significant_bits is not None:
        chunks += _chunk(b"sBIT", bytes([significant_bits]))
    chunks += _chunk(b"IDAT", zlib.compress(rows.tobytes())) + _chunk(b"IEND", b"")
    path.write_bytes(_SIGNATURE + chunks)
    return path
