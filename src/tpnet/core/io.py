"""Reading and writing frames: PNG, JPEG and BMP (OpenCV; sizes read by Pillow), TIFF (tifffile), ``.npy`` (NumPy).

Imports numpy, OpenCV, Pillow and tifffile only: the clinicians' inference tool uses this module.
Every error is a ``FrameReadError`` whose message starts with the file's path.

Plain images as people have them: an RGB(A) B-mode whose channels are equal (grey stored as colour, as most
exports are) is grey; one with a few coloured pixels (annotations) is read as luma and reported; one with more
colour is refused, naming the coloured share: it looks like colour Doppler/SWE, which needs a scanner profile.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from tpnet.core.atomic import atomic_open, atomic_write_bytes
from tpnet.core.image_header import DEFAULT_MAX_FRAME_PIXELS as DEFAULT_MAX_FRAME_PIXELS
from tpnet.core.image_header import (
    MAX_FRAME_PIXELS_ENV,
    OPENCV_MAX_PIXELS_ENV,
    ImageHeaderError,
    read_png_header,
)
from tpnet.core.image_header import max_frame_pixels as max_frame_pixels

PNG_SUFFIXES = (".png",)
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
JPEG_SUFFIXES = (".jpg", ".jpeg")
BMP_SUFFIXES = (".bmp",)
RGB_SUFFIXES = PNG_SUFFIXES + JPEG_SUFFIXES + BMP_SUFFIXES  # what read_rgb reads: screenshots
IMAGE_SUFFIXES = PNG_SUFFIXES + TIFF_SUFFIXES + NPY_SUFFIXES + JPEG_SUFFIXES + BMP_SUFFIXES

# Grey stored as colour: a pixel is coloured when its channels differ by more than this (8-bit levels; JPEG
# leaves grey within a few). Up to COLOURED_NOTE_FRACTION of coloured pixels (annotations, a coloured
# marker) are read as luma with a note; more is colour Doppler/SWE and refused.
GREY_CHANNEL_TOLERANCE = 8
COLOURED_NOTE_FRACTION = 0.01

# Integer B-mode is scaled by the bit depth its values fit (8, 12 or 16 bits): 8- or 12-bit data stored
# in 16-bit containers would otherwise read as a near-black image.
INTEGER_DEPTHS = (8, 12, 16)
FLOAT_UNIT_MAX = 2.0  # float B-mode up to this is taken as [0, 1] (overshoot from filtering is clipped)
NEGATIVE_TOLERANCE = (
    0.25  # of the full scale: more negative than this is signed data (dB, [-1, 1]), not B-mode
)
CLIP_WARN_FRACTION = 0.01  # float overshoot beyond 1 % of the scale is reported when clipped

# OpenCV spawns its own thread pool per process; DataLoader workers already parallelise.
cv2.setNumThreads(0)


class FrameReadError(ValueError):
    """A frame could not be used; ``str(err)`` names the file and the reason."""


class FrameRescaledWarning(UserWarning):
    """A B-mode frame's values were interpreted (bit depth guessed, values clipped); the message says how."""


def _check_frame_size(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse a frame whose declared shape exceeds the pixel limit; ``shape`` is (H, W[, planes...])
    with a trailing colour axis of at most 4 not counted."""
    dims = tuple(int(d) for d in shape)
    if len(dims) == 3 and dims[-1] <= 4:
        dims = dims[:-1]
    pixels = math.prod(dims)
    try:
        limit = max_frame_pixels()
    except ValueError as exc:
        raise FrameReadError(f"{path}: cannot check the frame size: {exc}") from exc
    if pixels > limit:
        size = f"{dims[1]}x{dims[0]} px" if len(dims) == 2 else f"shape {tuple(int(d) for d in shape)}"
        raise FrameReadError(
            f"{path}: declares {size} ({pixels / 1e6:.1f} megapixels), above the limit of "
            f"{limit / 1e6:g} megapixels per frame (ultrasound frames are 0.3-2 MP; a small file declaring "
            f"a huge image is a decompression bomb). If the frame is genuine, raise the limit with the "
            f"environment variable {MAX_FRAME_PIXELS_ENV}=<pixels>"
        )


def read_array(path: str | Path) -> np.ndarray:
    """Read a PNG/TIFF/.npy file as stored (dtype and channels untouched). The declared size is checked
    against ``max_frame_pixels()`` before any pixel is decoded."""
    return _read_stored(Path(path))[0]


def declared_shape(path: str | Path) -> tuple[int, int] | None:
    """(H, W) as the file's header declares it, without decoding pixels; None when the header cannot be read
    (reading the frame later says why)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in PNG_SUFFIXES:
            header = read_png_header(path)
            return header.height, header.width
        if suffix in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
        elif suffix in NPY_SUFFIXES:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        elif suffix in JPEG_SUFFIXES + BMP_SUFFIXES:
            width, height = _pillow_size(path)
            return height, width
        else:
            return None
    except Exception:  # any damage: the frame's own read names it
        return None
    return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None


def _read_stored(path: Path) -> tuple[np.ndarray, int | None]:
    """The stored array and, for PNG, its sBIT significant bits (None when not declared)."""
    if not path.is_file():
        raise FrameReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise FrameReadError(f"{path}: zero-byte file")
    suffix = path.suffix.lower()
    significant_bits = None
    try:
        if suffix in PNG_SUFFIXES:
            try:
                header = read_png_header(path)
            except ImageHeaderError as exc:
                raise FrameReadError(f"{path}: {exc}") from exc
            _check_frame_size(path, (header.height, header.width))
            significant_bits = header.significant_bits if header.bit_depth == 16 else None
            data = np.fromfile(path, dtype=np.uint8)
            # A truncated PNG makes imdecode return None (libpng reports a read error).
            try:
                arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
            except cv2.error as exc:
                if "CV_IO_MAX_IMAGE_PIXELS" not in str(exc):
                    raise
                raise FrameReadError(
                    f"{path}: {header.width}x{header.height} px is above OpenCV's own pixel limit "
                    f"({OPENCV_MAX_PIXELS_ENV}={os.environ.get(OPENCV_MAX_PIXELS_ENV, 'default 2^30')}, read when "
                    f"cv2 was first imported); raise it together with {MAX_FRAME_PIXELS_ENV}"
                ) from exc
            del data
            if arr is None:
                raise FrameReadError(f"{path}: unreadable or truncated PNG")
            if arr.ndim == 3 and arr.shape[-1] in (3, 4):
                arr = arr[..., [2, 1, 0, 3][: arr.shape[-1]]]  # BGR(A) -> RGB(A)
        elif suffix in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]  # what tifffile.imread reads
                _check_frame_size(path, series.shape)
                arr = series.asarray()
        elif suffix in NPY_SUFFIXES:
            # Memory-mapping parses only the header; pixels are copied in after the size check.
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            _check_frame_size(path, mapped.shape)
            arr = np.array(mapped)
            del mapped
        elif suffix in JPEG_SUFFIXES + BMP_SUFFIXES:
            arr = _read_jpeg_or_bmp(path, suffix)
        else:
            raise FrameReadError(
                f"{path}: unsupported file type {suffix!r}; use one of {list(IMAGE_SUFFIXES)}"
            )
    except FrameReadError:
        raise
    except Exception as exc:  # tifffile/numpy raise many types for damaged files
        raise FrameReadError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    return np.asarray(arr), significant_bits


def _pillow_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header; Pillow's open reads no pixel data."""
    with Image.open(path) as image:
        return image.size


def _read_jpeg_or_bmp(path: Path, suffix: str) -> np.ndarray:
    """Decoded by Pillow, which (unlike OpenCV) refuses a truncated JPEG instead of filling it with grey, and
    applies no EXIF rotation, so the pixels have the size the header declared."""
    kind = "JPEG" if suffix in JPEG_SUFFIXES else "BMP"
    try:
        with Image.open(path) as image:
            width, height = image.size
            _check_frame_size(path, (height, width))
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")  # palette, CMYK, RGBA, 16-bit grey BMP...
            image.load()
            return np.asarray(image).copy()
    except FrameReadError:
        raise
    except Image.DecompressionBombError as exc:  # past Pillow's own (higher) limit: ours is lower still
        raise FrameReadError(f"{path}: {exc}") from exc
    except Exception as exc:
        raise FrameReadError(f"{path}: unreadable or truncated {kind} ({type(exc).__name__}: {exc})") from exc


def read_rgb(path: str | Path) -> np.ndarray:
    """A screenshot as uint8 (H, W, 3) RGB: PNG (8 or 16 bit, grey, RGB or RGBA; alpha dropped), JPEG or BMP.
    The declared size is checked against ``max_frame_pixels()`` before any pixel is decoded."""
    path = Path(path)
    if path.suffix.lower() not in RGB_SUFFIXES:
        raise FrameReadError(
            f"{path}: unsupported screenshot type {path.suffix.lower()!r}; use one of {list(RGB_SUFFIXES)}"
        )
    arr, _ = _read_stored(path)
    if arr.ndim == 3 and arr.shape[-1] <= 2:
        arr = arr[..., 0]  # grey (+ alpha)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise FrameReadError(f"{path}: not an RGB image (shape {tuple(arr.shape)})")
    arr = arr[..., :3]
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) * 255 + 32767) // 65535  # 16-bit PNG -> 8 bit, rounded
    elif arr.dtype != np.uint8:
        raise FrameReadError(f"{path}: unsupported screenshot pixel type {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _grey_from_colour(arr: np.ndarray, path: Path, report: Callable[[str], None]) -> np.ndarray:
    """Grey stored as RGB(A) -> one channel (BT.601 luma, = the value where channels are equal), same dtype
    scale. Refuses genuine colour (see the module docstring)."""
    if not np.issubdtype(arr.dtype, np.integer):
        raise FrameReadError(
            f"{path}: B-mode must be a single-channel 2-D image, got shape {tuple(arr.shape)} of {arr.dtype} "
            "(RGB/colour image?)"
        )
    rgb = arr[..., :3].astype(np.int32)
    tolerance = GREY_CHANNEL_TOLERANCE * (257 if arr.dtype.itemsize > 1 else 1)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    coloured = int(np.count_nonzero(spread > tolerance))
    fraction = coloured / max(spread.size, 1)
    if fraction > COLOURED_NOTE_FRACTION:
        raise FrameReadError(
            f"{path}: colour (RGB) image, not a single-channel grey B-mode: {fraction:.1%} of its pixels are coloured "
            f"(channels differ by more than {GREY_CHANNEL_TOLERANCE} levels; at most "
            f"{COLOURED_NOTE_FRACTION:.0%} is taken as annotations). It looks like colour Doppler/SWE: read "
            "it as a screenshot with a scanner profile (--profile P.yaml)"
        )
    if coloured:
        report(
            f"{path}: {coloured} coloured pixel(s) ({fraction:.2%}; annotations?) in an RGB B-mode, read as luma"
        )
    grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.round(grey).astype(arr.dtype)


def _single_channel(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise FrameReadError(
            f"{path}: {what} must be a single-channel 2-D image, got shape {tuple(arr.shape)}"
            + (" (RGB/colour image?)" if arr.ndim == 3 else "")
        )
    return arr


def read_bmode(path: str | Path, on_rescale: Callable[[str], None] | None = None) -> np.ndarray:
    """B-mode as float32 in [0, 1].

    Integers (any dtype) are divided by the full scale of the bit depth they were written with: uint8 by
    255; otherwise a PNG's sBIT when its values fit it, else the smallest of 8, 12 and 16 bits that holds
    the largest value (a 12-bit frame stored in 16 bits is divided by 4095, not 65535). Floats up to 2.0
    are taken as [0, 1]; larger floats as 0..255, 0..4095 or 0..65535 the same way. Values a little
    outside the scale are clipped. Refused: NaN/Inf, negative integers, floats below -25 % of the
    scale (signed or log-compressed data), values above 16 bits. PNG, JPEG, BMP, TIFF and .npy; RGB(A)
    with equal channels is grey, a few coloured pixels (<= 1 %) are read as luma and reported, more colour is
    refused (colour Doppler/SWE: use a scanner profile). A guessed scale or a clip beyond 1 %
    is reported, naming the file: to ``on_rescale`` if given (thread-safe, for ``tpnet-data check``),
    else as a ``FrameRescaledWarning``.
    """
    path = Path(path)
    stored, significant_bits = _read_stored(path)
    report = on_rescale or _warn
    if stored.ndim == 3 and stored.shape[-1] in (3, 4):
        stored = _grey_from_colour(stored, path, report)
    arr = _single_channel(stored, path, "B-mode")
    if np.issubdtype(arr.dtype, np.integer):
        return _integer_bmode(arr, path, significant_bits, report)
    if np.issubdtype(arr.dtype, np.floating):
        return _float_bmode(arr, path, report)
    raise FrameReadError(f"{path}: unsupported B-mode dtype {arr.dtype}")


def _depth_for(value: float) -> int | None:
    """The smallest of INTEGER_DEPTHS whose full scale holds ``value``; None above 16 bits."""
    return next((bits for bits in INTEGER_DEPTHS if value <= 2**bits - 1), None)


def _integer_bmode(
    arr: np.ndarray, path: Path, significant_bits: int | None, report: Callable[[str], None]
) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    lowest, highest = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lowest < 0:
        raise FrameReadError(
            f"{path}: B-mode has negative values (min {lowest}, {arr.dtype}); B-mode is unsigned grey levels"
        )
    if significant_bits and 1 <= significant_bits <= 16 and highest <= 2**significant_bits - 1:
        bits, how = significant_bits, f"the PNG declares {significant_bits} significant bits (sBIT)"
    else:
        # An sBIT whose values do not fit was shifted to the top bits as the PNG spec asks: full 16 bits.
        bits = 16 if significant_bits else _depth_for(highest)
        how = f"its largest value is {highest}"
        if bits is None:
            raise FrameReadError(
                f"{path}: B-mode values up to {highest} ({arr.dtype}) exceed 16 bits; cannot tell its grey scale"
            )
    natural = arr.dtype.kind == "u" and arr.dtype.itemsize == 2 and bits == 16  # any byte order
    if not natural:
        report(f"{path}: {arr.dtype} B-mode read as {bits}-bit data (divided by {2**bits - 1}): {how}")
    return (arr.astype(np.float32) / float(2**bits - 1)).astype(np.float32)


def _float_bmode(arr: np.ndarray, path: Path, report: Callable[[str], None]) -> np.ndarray:
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise FrameReadError(f"{path}: B-mode contains NaN or Inf")
    lowest, highest = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if highest <= FLOAT_UNIT_MAX:
        full = 1.0
    else:
        bits = _depth_for(highest)
        if bits is None:
            raise FrameReadError(
                f"{path}: float B-mode values up to {highest:.6g} exceed 0..65535; cannot tell its grey scale"
            )
        full = float(2**bits - 1)
        report(f"{path}: float B-mode up to {highest:.6g} read as 0..{full:g} (divided by {full:g})")
    if lowest < -NEGATIVE_TOLERANCE * full:
        raise FrameReadError(
            f"{path}: B-mode has negative values (min {lowest:.6g}, scale 0..{full:g}): signed or "
            "log-compressed (dB) data cannot be read as grey levels; store 0..1 floats or 8/16-bit integers"
        )
    if lowest < -CLIP_WARN_FRACTION * full or highest > (1 + CLIP_WARN_FRACTION) * full:
        report(f"{path}: float B-mode values {lowest:.4g}..{highest:.4g} clipped to 0..{full:g}")
    if full != 1.0:
        arr /= full
    return np.clip(arr, 0.0, 1.0)


def _warn(message: str) -> None:
    warnings.warn(FrameRescaledWarning(message), stacklevel=4)


def read_elasto(path: str | Path, unit: str = "kPa") -> np.ndarray:
    """Elastography as float32 Young's modulus in kPa (NaN = no signal); ``m/s`` is converted."""
    from tpnet.core.encoding import elasto_to_kpa  # local: encoding imports nothing heavy either

    path = Path(path)
    arr = _single_channel(read_array(path), path, "elastography")
    if not np.issubdtype(arr.dtype, np.number):
        raise FrameReadError(f"{path}: unsupported elastography dtype {arr.dtype}")
    return elasto_to_kpa(arr.astype(np.float32), unit)


def read_mask(path: str | Path) -> np.ndarray:
    """Label map as uint8 (value = class index)."""
    path = Path(path)
    arr = _single_channel(read_array(path), path, "mask")
    if not np.issubdtype(arr.dtype, np.integer):
        raise FrameReadError(f"{path}: mask must be an integer label map, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise FrameReadError(f"{path}: mask values outside 0..255")
    return arr.astype(np.uint8)


# zlib level 1 with the run-length strategy and the SUB row filter: OpenCV 5's own defaults, pinned so that every
# OpenCV the package accepts (>= 4.9) writes alike. On a tpnet-infer overlay this is about twice as fast as level 1
# with zlib's default strategy and ~8x faster than level 6, for files ~20-35 % larger; a label map is a few runs
# per row, so it costs well under a millisecond at any level (docs/benchmarks.md, issue #15, has the figures).
PNG_WRITE_PARAMS: tuple[int, ...] = (
    cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
    *((cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB) if hasattr(cv2, "IMWRITE_PNG_FILTER") else ()),
)  # fmt: skip


def write_png(path: str | Path, arr: np.ndarray) -> None:
    """Write uint8/uint16 grey or RGB (last axis) PNG atomically (lossless, fast: ``PNG_WRITE_PARAMS``)."""
    path = Path(path)
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[..., ::-1])  # RGB -> BGR for OpenCV
    ok, buf = cv2.imencode(".png", arr, list(PNG_WRITE_PARAMS))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


def write_tiff(path: str | Path, arr: np.ndarray) -> None:
    path = Path(path)
    buffer = io.BytesIO()  # tifffile takes a file name from an fd-backed handle, so encode in memory first
    tifffile.imwrite(buffer, arr)
    atomic_write_bytes(path, buffer.getvalue())


def write_npy(path: str | Path, arr: np.ndarray) -> None:
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
