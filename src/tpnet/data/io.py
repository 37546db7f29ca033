"""Reading and writing frames: PNG (OpenCV), TIFF (tifffile) and ``.npy`` (NumPy).

Imports numpy, OpenCV and tifffile only: the clinicians' inference tool uses this module.
Every error is a ``FrameReadError`` whose message starts with the file's path.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import tifffile

from tpnet.atomic import atomic_open, atomic_write_bytes

PNG_SUFFIXES = (".png",)
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
IMAGE_SUFFIXES = PNG_SUFFIXES + TIFF_SUFFIXES + NPY_SUFFIXES

# OpenCV spawns its own thread pool per process; DataLoader workers already parallelise.
cv2.setNumThreads(0)


class FrameReadError(ValueError):
    """A frame could not be used; ``str(err)`` names the file and the reason."""


def read_array(path: str | Path) -> np.ndarray:
    """Read a PNG/TIFF/.npy file as stored (dtype and channels untouched)."""
    path = Path(path)
    if not path.is_file():
        raise FrameReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise FrameReadError(f"{path}: zero-byte file")
    suffix = path.suffix.lower()
    try:
        if suffix in PNG_SUFFIXES:
            data = np.fromfile(path, dtype=np.uint8)
            if data[:8].tobytes() != b"\x89PNG\r\n\x1a\n":
                raise FrameReadError(f"{path}: not a PNG file (bad signature)")
            # A truncated PNG makes imdecode return None (libpng reports a read error).
            arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise FrameReadError(f"{path}: unreadable or truncated PNG")
            if arr.ndim == 3:
                arr = arr[..., ::-1]  # BGR(A) -> RGB(A); only matters for the error message path
        elif suffix in TIFF_SUFFIXES:
            arr = tifffile.imread(path)
        elif suffix in NPY_SUFFIXES:
            arr = np.load(path, allow_pickle=False)
        else:
            raise FrameReadError(
                f"{path}: unsupported file type {suffix!r}; use one of {list(IMAGE_SUFFIXES)}"
            )
    except FrameReadError:
        raise
    except Exception as exc:  # tifffile/numpy raise many types for damaged files
        raise FrameReadError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    return np.asarray(arr)


def _single_channel(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise FrameReadError(
            f"{path}: {what} must be a single-channel 2-D image, got shape {tuple(arr.shape)}"
            + (" (RGB/colour image?)" if arr.ndim == 3 else "")
        )
    return arr


def read_bmode(path: str | Path) -> np.ndarray:
    """B-mode as float32 in [0, 1]: integers are divided by their dtype's maximum (8- and 16-bit alike);
    float arrays are taken as already in [0, 1] and clipped."""
    path = Path(path)
    arr = _single_channel(read_array(path), path, "B-mode")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise FrameReadError(f"{path}: B-mode contains NaN or Inf")
        return np.clip(arr, 0.0, 1.0)
    raise FrameReadError(f"{path}: unsupported B-mode dtype {arr.dtype}")


def read_elasto(path: str | Path, unit: str = "kPa") -> np.ndarray:
    """Elastography as float32 Young's modulus in kPa (NaN = no signal); ``m/s`` is converted."""
    from tpnet.data.encoding import elasto_to_kpa  # local: encoding imports nothing heavy either

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


def write_png(path: str | Path, arr: np.ndarray) -> None:
    """Write uint8/uint16 grey or RGB (last axis) PNG atomically."""
    path = Path(path)
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[..., ::-1])  # RGB -> BGR for OpenCV
    ok, buf = cv2.imencode(".png", arr)
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
