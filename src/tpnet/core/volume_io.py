"""Ultrasound volumes (sweeps: parallel frames stacked along the probe's path) read from NIfTI (``.nii``,
``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), multi-frame DICOM and 3-D ``.npy``, as (Z, H, W) voxels with their
spacing in mm.

Axis convention: ``voxels[z, row, column]``, Z the slices along the sweep, row 0 the top of each frame (as
the 2-D readers give frames); ``spacing_mm`` is (slice, row, column) in the same order. NIfTI and NRRD store
the fastest-varying index first, (x, y, z) = (columns, rows, slices): their arrays are transposed to (Z, H, W)
and their per-axis spacings reversed. Index order only: the file's orientation (NIfTI affine, NRRD space
directions) is not applied, no axis is flipped or resampled.

Spacing comes from the file (NIfTI ``pixdim`` in its ``xyzt_units``, NRRD ``space directions`` or
``spacings`` in their units, DICOM slice spacing and pixel size) and is converted to mm; a file without a
positive spacing on every axis is refused, never given 1 mm. ``.npy`` carries none: the caller passes
``spacing_mm``; passed for a file that has its own, it must agree with it (a manifest checked against the file).

Values: ``read_volume`` gives them as stored; ``read_volume_bmode`` scales grey levels to float32 [0, 1] by the
2-D reader's rules (tpnet.core.io), ``read_volume_mask`` gives uint8 labels, ``read_volume_kpa`` float32 kPa
with NaN (no signal) kept. Separate functions, as io.py has read_bmode / read_mask / read_elasto: each
returns one dtype, and only elastography has a unit to convert. Every error is a ``FrameReadError`` whose
message starts with the file's path. nibabel, pynrrd and pydicom are imported on first use.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tpnet.core.dicom import DEFLATED_UID, DicomHeader, is_dicom_file, read_dicom_frame, read_dicom_header
from tpnet.core.encoding import elasto_to_kpa
from tpnet.core.io import FrameReadError, _check_frame_size, _float_bmode, _integer_bmode

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
NPY_SUFFIXES = (".npy",)
NIFTI, NRRD, DICOM, NPY = "NIfTI", "NRRD", "DICOM", "npy"  # Volume.source

# Consecutive DICOM frame positions may differ this much (relative to their mean gap) and still be one
# uniform sweep; a freehand sweep that sped up and slowed down is refused rather than given a mean spacing.
SLICE_GAP_TOLERANCE = 0.05
SPACING_MATCH_TOLERANCE = 0.01  # caller's spacing_mm vs the file's (rounding in a manifest)
# Spatial units to mm. NIfTI's xyzt_units as nibabel names them; NRRD's free-text units as tools write them.
MM_PER_UNIT = {
    "mm": 1.0, "millimeter": 1.0, "millimetre": 1.0, "cm": 10.0, "m": 1000.0, "meter": 1000.0,
    "metre": 1000.0, "um": 1e-3, "µm": 1e-3, "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3,
}  # fmt: skip
# NIfTI's code 0 and NRRD's missing field: taken as mm (both formats' custom), and noted.
UNKNOWN_UNITS = ("", "unknown")


@dataclass(frozen=True)
class Volume:
    path: Path
    voxels: np.ndarray  # (Z, H, W): slices along the sweep, rows, columns
    spacing_mm: tuple[float, float, float]  # (slice_spacing_mm, row_mm, col_mm)
    source: str  # the file's format: "NIfTI", "NRRD", "DICOM" or "npy"
    notes: tuple[str, ...]  # what was assumed (units, slice spacing from SliceThickness, a guessed bit depth)
    # Unit direction of each array axis (slice, row, column) in the file's world space, one row each: NIfTI's
    # affine, NRRD's space directions; None where the file records none (.npy, DICOM as read here). Not
    # applied to the voxels (see the module doc): tpnet-data check compares a row's files by it.
    orientation: tuple[tuple[float, float, float], ...] | None = None


def read_volume(path: str | Path, *, spacing_mm: tuple[float, float, float] | None = None) -> Volume:
    """The volume's values as stored (after the file's own scaling, e.g. NIfTI scl_slope), and its spacing.
    ``spacing_mm`` (slice, row, column): required for ``.npy``; for other files, checked against theirs."""
    return _read(Path(path), spacing_mm, dicom_bmode=False)


def read_volume_bmode(path: str | Path, *, spacing_mm: tuple[float, float, float] | None = None) -> Volume:
    """B-mode voxels as float32 in [0, 1]: integers divided by the full scale of their bit depth and floats
    taken as [0, 1] (or 0..255 / 4095 / 65535), as ``tpnet.core.io.read_bmode`` does for a frame; a guessed
    scale is written to ``notes``. DICOM frames are decoded by ``tpnet.core.dicom`` (BitsStored, MONOCHROME1
    inverted, colour as BT.601 luma)."""
    path = Path(path)
    volume = _read(path, spacing_mm, dicom_bmode=True)
    if volume.source == DICOM:
        return volume
    notes = list(volume.notes)
    stored = volume.voxels
    if np.issubdtype(stored.dtype, np.integer):
        voxels = _integer_bmode(stored, path, None, notes.append)
    elif np.issubdtype(stored.dtype, np.floating):
        voxels = _float_bmode(stored, path, notes.append)
    else:
        raise FrameReadError(f"{path}: unsupported B-mode dtype {stored.dtype}")
    return replace(volume, voxels=np.ascontiguousarray(voxels, np.float32), notes=tuple(notes))


def read_volume_mask(path: str | Path, *, spacing_mm: tuple[float, float, float] | None = None) -> Volume:
    """Label voxels as uint8 (value = class index), unscaled. Floats holding whole numbers (as some
    segmentation tools save labels) are accepted and noted; other floats and values outside 0..255 are
    refused."""
    path = Path(path)
    volume = _read(path, spacing_mm, dicom_bmode=False)
    stored, notes = volume.voxels, list(volume.notes)
    if np.issubdtype(stored.dtype, np.floating):
        if not (np.isfinite(stored).all() and np.array_equal(stored, np.round(stored))):
            raise FrameReadError(
                f"{path}: mask must hold whole-number labels, got {stored.dtype} with fractions"
            )
        notes.append(f"labels stored as {stored.dtype} (whole numbers): read as integers")
    elif not np.issubdtype(stored.dtype, np.integer):
        raise FrameReadError(f"{path}: mask must be an integer label map, got {stored.dtype}")
    if stored.size and (stored.min() < 0 or stored.max() > 255):
        raise FrameReadError(f"{path}: mask values outside 0..255 (min {stored.min()}, max {stored.max()})")
    return replace(volume, voxels=np.ascontiguousarray(stored, np.uint8), notes=tuple(notes))


def read_volume_kpa(
    path: str | Path, *, unit: str = "kPa", spacing_mm: tuple[float, float, float] | None = None
) -> Volume:
    """Elastography voxels as float32 Young's modulus in kPa, NaN (no signal) kept; ``unit="m/s"`` converts
    shear-wave speed (``tpnet.core.encoding.elasto_to_kpa``). DICOM is refused: it stores grey levels, and
    tpnet reads no real-world value mapping that would turn them into kPa."""
    path = Path(path)
    if _format_of(path) == DICOM:
        raise FrameReadError(
            f"{path}: a DICOM volume holds grey levels, not kPa; store the elastography volume as NIfTI, NRRD "
            "or .npy in kPa (or m/s)"
        )
    volume = _read(path, spacing_mm, dicom_bmode=False)
    if not np.issubdtype(volume.voxels.dtype, np.number):
        raise FrameReadError(f"{path}: unsupported elastography dtype {volume.voxels.dtype}")
    return replace(volume, voxels=np.ascontiguousarray(elasto_to_kpa(volume.voxels.astype(np.float32), unit)))


# ---------------------------------------------------------------------------------- slice by slice

VOLUME_VALUES = ("bmode", "kpa", "mask")  # open_volume's values: as read_volume_bmode / _kpa / _mask


class VolumeSlices:
    """A volume opened for reading one slice at a time (``open_volume``): ``slice(z)`` is exactly
    ``read_volume_<values>(path).voxels[z]``, and ``path``, ``shape`` (Z, H, W), ``spacing_mm``, ``source``
    and ``notes`` are the whole reader's. ``len()`` is Z; iterating gives the slices in order; ``close()`` (or
    a ``with`` block) releases the file. A slice is a new array: changing it changes nothing else.
    ``cache_slices`` = n keeps the last n slices read (least recently used out first), so that a window of
    neighbours sliding along the sweep reads each slice once (see open_volume for why .nii.gz needs it)."""

    def __init__(
        self,
        path: Path,
        shape: tuple[int, int, int],
        spacing_mm: tuple[float, float, float],
        source: str,
        notes: tuple[str, ...],
        read_slice: Callable[[int], np.ndarray],
        release: Callable[[], None] = lambda: None,
        cache_slices: int = 0,
    ) -> None:
        self.path, self.shape, self.spacing_mm = path, shape, spacing_mm
        self.source, self.notes = source, notes
        self._read_slice: Callable[[int], np.ndarray] | None = read_slice
        self._release = release
        self._cache_slices = cache_slices
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def slice(self, z: int) -> np.ndarray:
        """Slice z (negative: from the end, as numpy indexes), (H, W)."""
        if self._read_slice is None:
            raise ValueError(f"{self.path}: the volume is closed")
        if not (isinstance(z, int | np.integer) and -self.shape[0] <= z < self.shape[0]):
            raise IndexError(
                f"{self.path}: slice {z!r} is out of range: the volume has {self.shape[0]} slices"
            )
        z = int(z) % self.shape[0]
        # One reader at a time: a slice read is a seek and a read on one file handle (tpnet-infer's reader
        # threads share an opened sweep), and the cache is an ordered dict.
        with self._lock:
            if not self._cache_slices:
                return self._read_slice(z)
            if z in self._cache:
                self._cache.move_to_end(z)
            else:
                self._cache[z] = self._read_slice(z)
                if len(self._cache) > self._cache_slices:
                    self._cache.popitem(last=False)
            return self._cache[z].copy()

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.slice(z) for z in range(self.shape[0]))

    def close(self) -> None:
        if self._read_slice is not None:
            self._read_slice = None
            self._cache.clear()
            self._release()

    def __enter__(self) -> VolumeSlices:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_volume(
    path: str | Path,
    *,
    spacing_mm: tuple[float, float, float] | None = None,
    values: str = "bmode",
    elasto_unit: str = "kPa",
    cache_slices: int = 0,
) -> VolumeSlices:
    """The volume at ``path`` for reading slice by slice, so that a sweep of hundreds of slices is never held
    whole (tpnet-infer): values "bmode", "kpa" (``elasto_unit`` "kPa" or "m/s") or "mask" give the slices of
    ``read_volume_bmode``, ``read_volume_kpa`` or ``read_volume_mask``, with the same checks, notes and errors
    (FrameReadError starting with the path), ``spacing_mm`` as there.

    What a slice costs, by format:
    - ``.npy``: the header through np.load(mmap_mode="r"), then a slice reads its own bytes (a plain file
      read; a memory map's pages would stay resident); a Fortran-order file through the memory map.
    - ``.nii``: nibabel's array proxy (``dataobj[..., z]``, one file handle kept open): a slice reads its own
      bytes (slice z of NIfTI's (x, y, z) order is contiguous).
    - ``.nii.gz``: the same proxy over the gzip stream, which cannot seek: reading forward decompresses only
      up to the slice asked for, so slices in order cost one decompression of the file in all; a slice before
      the last one read decompresses the file again from its start (0.4 s per slice for a 400-slice 512 x 512
      uint8 sweep; indexed_gzip, when installed, makes that seek cheap; tpnet does not require it). A window
      of 2k + 1 neighbours sliding along the sweep (context slices) reads backwards at every step: open it
      with ``cache_slices`` >= 2k + 1 and read each window in order, and every slice is decoded once.
    - multi-frame DICOM, B-mode: frame by frame (``tpnet.core.dicom.read_dicom_frame`` reads one frame's
      bytes), but for a deflated file, inflated whole once; mask or raw values: pydicom decodes every frame at
      once (its pixel_array), so the volume is read whole on opening.
    - NRRD (``.nrrd``, ``.nhdr``): read whole on opening: pynrrd decodes all the data at once.

    Values that depend on the whole volume are found on opening by reading every slice once: the grey scale of
    B-mode that is neither uint8 nor from DICOM (the volume's min and max decide it, as in read_volume_bmode)
    and the check of a mask that is not uint8 (whole numbers, 0..255); that pass costs one read of the file.
    Slices are then scaled exactly as the whole volume is: the scaling functions are elementwise once the
    scale is chosen."""
    path = Path(path)
    if values not in VOLUME_VALUES:
        raise ValueError(f"values must be one of {', '.join(VOLUME_VALUES)}; got {values!r}")
    if not (isinstance(cache_slices, int) and cache_slices >= 0):
        raise ValueError(f"cache_slices must be a whole number >= 0; got {cache_slices!r}")
    if values == "kpa":
        if _format_of(path) == DICOM:  # the same refusal, in the same order, as read_volume_kpa
            raise FrameReadError(
                f"{path}: a DICOM volume holds grey levels, not kPa; store the elastography volume as NIfTI, "
                "NRRD or .npy in kPa (or m/s)"
            )
        elasto_to_kpa(np.zeros(0, np.float32), elasto_unit)  # an unknown unit: ValueError before any read
    stored = _open_stored(path, spacing_mm, dicom_bmode=values == "bmode")
    try:
        notes = list(stored.notes)
        if values == "bmode":
            convert = _bmode_converter(stored, notes)
        elif values == "mask":
            convert = _mask_converter(stored, notes)
        else:
            if not np.issubdtype(stored.dtype, np.number):
                raise FrameReadError(f"{path}: unsupported elastography dtype {stored.dtype}")

            def convert(voxels: np.ndarray) -> np.ndarray:
                return np.ascontiguousarray(elasto_to_kpa(voxels.astype(np.float32), elasto_unit))
    except BaseException:
        stored.release()
        raise

    def read_slice(z: int) -> np.ndarray:
        return convert(stored.read(z))

    return VolumeSlices(
        path,
        stored.shape,
        stored.spacing_mm,
        stored.source,
        tuple(notes),
        read_slice,
        stored.release,
        cache_slices,
    )


@dataclass(frozen=True)
class _StoredSlices:
    """A volume's slices as stored (as ``read_volume`` gives them), read one at a time."""

    path: Path
    shape: tuple[int, int, int]  # (Z, H, W)
    dtype: np.dtype
    spacing_mm: tuple[float, float, float]
    source: str
    notes: tuple[str, ...]
    read: Callable[[int], np.ndarray]  # slice z, a new (H, W) array
    release: Callable[[], None]
    bmode_decoded: bool = False  # DICOM B-mode: frames already grey in [0, 1], as read_volume_bmode gives


def _open_stored(
    path: Path, spacing_mm: tuple[float, float, float] | None, *, dicom_bmode: bool
) -> _StoredSlices:
    """``_read`` slice by slice where the format allows it (see open_volume)."""
    fmt, given = _preflight(path, spacing_mm)
    if fmt == NPY:
        return _open_npy(path, given)
    if fmt == NIFTI:
        stored = _open_nifti_slices(path)
    elif fmt == DICOM and dicom_bmode:
        stored = _open_dicom_bmode(path)
    else:  # NRRD, DICOM mask or raw values: their readers decode everything at once
        volume = _read_nrrd(path) if fmt == NRRD else _read_dicom(path, bmode=dicom_bmode)
        stored = _in_memory(volume, bmode_decoded=fmt == DICOM and dicom_bmode)
    if given is not None:
        try:
            _check_matches(path, given, stored.spacing_mm)
        except FrameReadError:
            stored.release()
            raise
    return stored


def _in_memory(volume: Volume, *, bmode_decoded: bool = False) -> _StoredSlices:
    voxels = volume.voxels
    return _StoredSlices(
        volume.path, voxels.shape, voxels.dtype, volume.spacing_mm, volume.source, volume.notes,
        lambda z: np.array(voxels[z]), lambda: None, bmode_decoded,
    )  # fmt: skip


def _open_npy(path: Path, spacing: tuple[float, float, float] | None) -> _StoredSlices:
    """Slices read with ordinary file reads at their offset: a memory map would read as fast, but every page
    it touched stays in the process's resident memory (a 400-slice sweep read through one grew the peak RSS
    by the file's size), which is what a memory benchmark measures. A Fortran-order file, whose slices are
    not contiguous, is read through the memory map."""
    if spacing is None:
        raise FrameReadError(
            f"{path}: a .npy volume carries no voxel spacing: pass spacing_mm=(slice_mm, row_mm, col_mm)"
        )
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only, until a slice is read
        _check_shape(path, mapped.shape, "(Z, H, W)")
        _check_frame_size(path, mapped.shape[1:])
    except FrameReadError:
        raise
    except Exception as exc:
        raise FrameReadError(f"{path}: unreadable .npy ({type(exc).__name__}: {exc})") from exc
    depth, height, width = (int(n) for n in mapped.shape)
    dtype, offset = mapped.dtype, int(mapped.offset)
    slice_bytes = height * width * dtype.itemsize
    if mapped.flags.c_contiguous:
        del mapped
        stream = path.open("rb")

        def read(z: int) -> np.ndarray:
            stream.seek(offset + z * slice_bytes)
            buffer = bytearray(slice_bytes)
            if stream.readinto(buffer) != slice_bytes:  # the file was cut after it was opened
                raise FrameReadError(f"{path}: unreadable .npy (slice {z}: the file ends before it)")
            return np.frombuffer(buffer, dtype).reshape(height, width)  # writable: it owns the bytearray

        return _StoredSlices(path, (depth, height, width), dtype, spacing, NPY, (), read, stream.close)
    holder = [mapped]  # dropped on release, which unmaps the file

    def read_mapped(z: int) -> np.ndarray:
        return np.array(holder[0][z])

    return _StoredSlices(path, (depth, height, width), dtype, spacing, NPY, (), read_mapped, holder.clear)


def _open_nifti_slices(path: Path) -> _StoredSlices:
    image, shape, spacing, notes = _open_nifti(path, keep_file_open=True)
    extra_axes = (0,) * (len(image.shape) - 3)  # the trailing axes of length 1
    holder = [image]  # dropped on release: nibabel's proxy closes its file handle then
    dtype = _nifti_slice(path, image, 0, extra_axes).dtype  # after scaling (scl_slope), as read_volume has it

    def read(z: int) -> np.ndarray:
        return _nifti_slice(path, holder[0], z, extra_axes)

    return _StoredSlices(
        path, (shape[2], shape[1], shape[0]), dtype, spacing, NIFTI, tuple(notes), read, holder.clear
    )


def _nifti_slice(path: Path, image: Any, z: int, extra_axes: tuple[int, ...]) -> np.ndarray:
    try:
        plane = np.asanyarray(image.dataobj[(slice(None), slice(None), z, *extra_axes)])
    except Exception as exc:  # nibabel raises many types for damaged or cut files
        raise FrameReadError(f"{path}: unreadable NIfTI (slice {z}: {type(exc).__name__}: {exc})") from exc
    return np.ascontiguousarray(plane.T)  # (x, y) -> (H, W)


def _open_dicom_bmode(path: Path) -> _StoredSlices:
    header, spacing, notes = _dicom_sweep(path)
    if header.transfer_syntax_uid == DEFLATED_UID:  # one zlib stream: each frame would inflate the file
        return _in_memory(_read_dicom(path, bmode=True), bmode_decoded=True)
    shape = (header.n_frames, header.rows, header.columns)
    return _StoredSlices(
        path, shape, np.dtype(np.float32), spacing, DICOM, tuple(notes),
        lambda z: read_dicom_frame(path, z, header).grey, lambda: None, bmode_decoded=True,
    )  # fmt: skip


def _bmode_converter(stored: _StoredSlices, notes: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    """Stored slice -> float32 [0, 1] as read_volume_bmode scales the whole volume; the scale's notes (and
    errors: negative values, NaN, more than 16 bits) come now, from the volume's min and max."""
    path, dtype = stored.path, stored.dtype
    if stored.bmode_decoded:
        return lambda voxels: voxels
    if dtype == np.uint8:  # 0..255 whatever the values: no pass needed
        return lambda voxels: np.ascontiguousarray(_integer_bmode(voxels, path, None, _ignore), np.float32)
    if np.issubdtype(dtype, np.integer):
        scale: Callable[..., np.ndarray] = lambda arr, report: _integer_bmode(arr, path, None, report)  # noqa: E731
    elif np.issubdtype(dtype, np.floating):
        scale = lambda arr, report: _float_bmode(arr, path, report)  # noqa: E731
    else:
        raise FrameReadError(f"{path}: unsupported B-mode dtype {dtype}")
    extremes = _volume_extremes(stored)
    scale(extremes, notes.append)  # the volume's checks and notes, from its min and max alone

    def convert(voxels: np.ndarray) -> np.ndarray:
        # io.py's scalers choose the grey scale from their array's min and max; with the volume's appended,
        # a slice is scaled as the whole volume is (the values themselves are then mapped one by one).
        scaled = scale(np.concatenate([voxels.ravel(), extremes]), _ignore)[: voxels.size]
        return np.ascontiguousarray(scaled.reshape(voxels.shape), np.float32)

    return convert


def _mask_converter(stored: _StoredSlices, notes: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    """Stored slice -> uint8 labels, after read_volume_mask's checks of the whole volume (whole-number floats,
    values 0..255), made now by one pass over the slices unless the labels are uint8."""
    path, dtype = stored.path, stored.dtype
    floating = np.issubdtype(dtype, np.floating)
    if not (floating or np.issubdtype(dtype, np.integer)):
        raise FrameReadError(f"{path}: mask must be an integer label map, got {dtype}")
    if dtype != np.uint8:
        lowest, highest = [], []
        for z in range(stored.shape[0]):
            voxels = stored.read(z)
            if floating and not (np.isfinite(voxels).all() and np.array_equal(voxels, np.round(voxels))):
                raise FrameReadError(
                    f"{path}: mask must hold whole-number labels, got {dtype} with fractions"
                )
            lowest.append(voxels.min())
            highest.append(voxels.max())
        if floating:
            notes.append(f"labels stored as {dtype} (whole numbers): read as integers")
        low, high = np.array(lowest, dtype).min(), np.array(highest, dtype).max()
        if low < 0 or high > 255:
            raise FrameReadError(f"{path}: mask values outside 0..255 (min {low}, max {high})")
    return lambda voxels: np.ascontiguousarray(voxels, np.uint8)


def _volume_extremes(stored: _StoredSlices) -> np.ndarray:
    """[min, max] over every slice, in the stored dtype; NaN when any voxel is NaN (as numpy's min gives)."""
    lowest, highest = [], []
    for z in range(stored.shape[0]):
        voxels = stored.read(z)
        lowest.append(voxels.min())
        highest.append(voxels.max())
    return np.array(
        [np.array(lowest, stored.dtype).min(), np.array(highest, stored.dtype).max()], stored.dtype
    )


def _ignore(_: str) -> None:
    """A note already made for the whole volume."""


# ------------------------------------------------------------------------------------------ dispatch


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return NIFTI
    if name.endswith(NRRD_SUFFIXES):
        return NRRD
    if name.endswith(NPY_SUFFIXES):
        return NPY
    if is_dicom_file(path):
        return DICOM
    raise FrameReadError(
        f"{path}: unsupported volume file type; use NIfTI ({', '.join(NIFTI_SUFFIXES)}), NRRD "
        f"({', '.join(NRRD_SUFFIXES)}), multi-frame DICOM or a 3-D .npy"
    )


def _read(path: Path, spacing_mm: tuple[float, float, float] | None, *, dicom_bmode: bool) -> Volume:
    fmt, given = _preflight(path, spacing_mm)
    if fmt == NPY:
        return _read_npy(path, given)
    if fmt == DICOM:
        volume = _read_dicom(path, dicom_bmode)
    else:
        volume = _read_nifti(path) if fmt == NIFTI else _read_nrrd(path)
    if given is not None:
        _check_matches(path, given, volume.spacing_mm)
    return volume


def _preflight(
    path: Path, spacing_mm: tuple[float, float, float] | None
) -> tuple[str, tuple[float, float, float] | None]:
    """The checks before any voxel is read: (format, the caller's spacing checked, or None)."""
    if not path.is_file():
        raise FrameReadError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    if path.stat().st_size == 0:
        raise FrameReadError(f"{path}: zero-byte file")
    fmt = _format_of(path)
    return fmt, (_checked_spacing(path, spacing_mm) if spacing_mm is not None else None)


def _checked_spacing(path: Path, spacing_mm: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in spacing_mm)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise FrameReadError(
            f"{path}: spacing_mm must be three positive numbers (slice, row, column) in mm, got {spacing_mm!r}"
        )
    return values  # type: ignore[return-value]


def _check_matches(path: Path, given: tuple[float, ...], declared: tuple[float, ...]) -> None:
    if not all(
        math.isclose(g, d, rel_tol=SPACING_MATCH_TOLERANCE) for g, d in zip(given, declared, strict=True)
    ):
        raise FrameReadError(
            f"{path}: spacing_mm {_fmt(given)} passed, but the file declares {_fmt(declared)} (slice, row, column)"
        )


def _fmt(spacing: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in spacing) + ") mm"


def _check_shape(path: Path, shape: tuple[int, ...], axes: str) -> None:
    """A volume has three axes, each of at least one voxel; called on the header's shape, before any voxel
    is decoded."""
    if len(shape) != 3:
        kind = " (a single frame, not a volume)" if len(shape) == 2 else ""
        raise FrameReadError(f"{path}: a volume needs 3 axes {axes}, got shape {tuple(shape)}{kind}")
    if min(shape) < 1:
        raise FrameReadError(f"{path}: empty volume (shape {tuple(shape)})")


def _spacing_or_refuse(path: Path, values_mm: list[float], where: str) -> tuple[float, float, float]:
    """(slice, row, column) from per-axis values already in (Z, H, W) order."""
    if len(values_mm) != 3 or not all(math.isfinite(v) and v > 0 for v in values_mm):
        shown = ", ".join(f"{v:g}" for v in values_mm)
        raise FrameReadError(
            f"{path}: no usable voxel spacing: {where} gives ({shown}) (slice, row, column); every axis needs a "
            "positive size in mm (tpnet does not guess 1 mm)"
        )
    return values_mm[0], values_mm[1], values_mm[2]


def _mm_per(path: Path, unit: str, notes: list[str], field: str) -> float:
    key = unit.strip().lower()
    if key in UNKNOWN_UNITS:
        note = f"{field} does not state the unit: spacing taken as mm"
        if note not in notes:  # once, not once per axis
            notes.append(note)
        return 1.0
    if key not in MM_PER_UNIT:
        raise FrameReadError(f"{path}: unknown spatial unit {unit!r} in {field} (known: mm, cm, m, um)")
    return MM_PER_UNIT[key]


# ---------------------------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path) -> Volume:
    try:
        image, shape, spacing, notes = _open_nifti(path)
        stored = np.asanyarray(image.dataobj).reshape(shape)
    except FrameReadError:
        raise
    except Exception as exc:  # nibabel raises many types for damaged or cut files
        raise FrameReadError(f"{path}: unreadable NIfTI ({type(exc).__name__}: {exc})") from exc
    voxels = np.ascontiguousarray(stored.transpose(2, 1, 0))  # (x, y, z) -> (Z, H, W)
    # The affine's columns are the directions of the file's (x, y, z) axes: reversed to (slice, row, column).
    orientation = _unit_directions(np.asarray(image.affine, np.float64)[:3, :3].T[::-1])
    return Volume(path, voxels, spacing, NIFTI, tuple(notes), orientation)


def _unit_directions(directions: np.ndarray) -> tuple[tuple[float, float, float], ...] | None:
    """Each row scaled to unit length; None when a direction is zero or not finite (no usable orientation)."""
    directions = np.asarray(directions, np.float64)
    if directions.shape != (3, 3) or not np.isfinite(directions).all():
        return None
    lengths = np.linalg.norm(directions, axis=1)
    if not (lengths > 0).all():
        return None
    return tuple(tuple(float(v) for v in row) for row in directions / lengths[:, None])


def _open_nifti(
    path: Path, *, keep_file_open: bool | None = None
) -> tuple[Any, tuple[int, int, int], tuple[float, float, float], list[str]]:
    """(nibabel image, its (x, y, z) shape, spacing, notes), the voxels not read. keep_file_open: one file
    handle for every later read of the image's voxels (slice by slice), not one per read."""
    import nibabel as nib
    from nibabel.imageglobals import LoggingOutputSuppressor
    from nibabel.openers import ImageOpener

    try:
        with LoggingOutputSuppressor():  # nibabel logs the zero pixdim it repairs; the raw header refuses it
            image = nib.load(path, keep_file_open=keep_file_open)
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise FrameReadError(f"{path}: not a NIfTI image (nibabel reads it as {type(image).__name__})")
        # nibabel's loaded header has zero pixdim replaced by 1 mm; the file's own is read without that fix.
        with ImageOpener(path) as stream:
            raw_header = type(image.header).from_fileobj(stream, check=False)
        shape = tuple(int(d) for d in image.shape)
        while len(shape) > 3 and shape[-1] == 1:  # (x, y, z, 1): a volume saved as a one-time-point series
            shape = shape[:-1]
        _check_shape(path, shape, "(x, y, z)")
        _check_frame_size(path, (shape[1], shape[0]))
        notes: list[str] = []
        unit = raw_header.get_xyzt_units()[0]
        mm = _mm_per(path, unit, notes, "xyzt_units")
        pixdim = [float(v) * mm for v in raw_header["pixdim"][1:4]]
        spacing = _spacing_or_refuse(path, pixdim[::-1], f"pixdim[1:4] ({unit})")
    except FrameReadError:
        raise
    except Exception as exc:  # nibabel raises many types for damaged or cut files
        raise FrameReadError(f"{path}: unreadable NIfTI ({type(exc).__name__}: {exc})") from exc
    if image.get_data_dtype().fields is not None:
        raise FrameReadError(
            f"{path}: NIfTI of {image.get_data_dtype()} voxels (RGB?); a volume holds one value per voxel"
        )
    return image, shape, spacing, notes  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- NRRD


def _read_nrrd(path: Path) -> Volume:
    import nrrd

    try:
        header = nrrd.read_header(str(path))
        sizes = tuple(int(s) for s in header.get("sizes", ()))
        _check_shape(path, sizes, "(x, y, z)")
        _check_frame_size(path, (sizes[1], sizes[0]))
        notes: list[str] = []
        spacing = _nrrd_spacing(path, header, notes)
        voxels, _ = nrrd.read(str(path), index_order="C")  # C order: (z, y, x) = (Z, H, W) already
    except FrameReadError:
        raise
    except Exception as exc:  # pynrrd raises NRRDError, OSError, ValueError... for damaged files
        raise FrameReadError(f"{path}: unreadable NRRD ({type(exc).__name__}: {exc})") from exc
    orientation = None
    if header.get("space directions") is not None:
        try:  # rows per file axis (x, y, z); reversed to (slice, row, column)
            orientation = _unit_directions(np.asarray(header["space directions"], np.float64)[::-1])
        except (TypeError, ValueError):  # 'none' entries for non-spatial axes
            orientation = None
    return Volume(path, np.ascontiguousarray(voxels), spacing, NRRD, tuple(notes), orientation)


def _nrrd_spacing(path: Path, header: dict[str, Any], notes: list[str]) -> tuple[float, float, float]:
    """Per-axis size: the length of each axis's space direction (in the space's units), else its ``spacings``
    entry (in that axis's ``units``)."""
    directions = header.get("space directions")
    if directions is not None:
        lengths = [float(np.linalg.norm(np.asarray(d, np.float64))) for d in directions]  # 'none' is NaN
        space_units = {str(u) for u in header.get("space units") or [""]}
        if len(space_units) > 1:
            raise FrameReadError(
                f"{path}: mixed space units {sorted(space_units)}; one unit for all axes needed"
            )
        mm = _mm_per(path, space_units.pop(), notes, "space units")
        return _spacing_or_refuse(path, [length * mm for length in lengths][::-1], "space directions")
    if header.get("spacings") is not None:
        lengths = [float(v) for v in header["spacings"]]
        axis_units = header.get("units") or [""] * len(lengths)
        mm_per_axis = [_mm_per(path, str(unit), notes, "units") for unit in axis_units]
        sizes = [length * mm for length, mm in zip(lengths, mm_per_axis, strict=False)]
        return _spacing_or_refuse(path, sizes[::-1], "spacings")
    raise FrameReadError(
        f"{path}: no usable voxel spacing: the NRRD header has neither 'space directions' nor 'spacings' "
        "(tpnet does not guess 1 mm)"
    )


# ----------------------------------------------------------------------------------------------- DICOM


def _read_dicom(path: Path, bmode: bool) -> Volume:
    """A multi-frame file with a slice spacing. Pixel size and the checks of a scanner file (decoder, pixel
    format, frame size, square pixels) are tpnet.core.dicom's."""
    header, spacing, notes = _dicom_sweep(path)
    if bmode:
        frames = [read_dicom_frame(path, i, header).grey for i in range(header.n_frames)]
        voxels = np.stack(frames)
    else:
        voxels = _stored_frames(path, header.photometric, header.samples_per_pixel)
    return Volume(path, voxels, spacing, DICOM, tuple(notes))


def _dicom_sweep(path: Path) -> tuple[DicomHeader, tuple[float, float, float], list[str]]:
    """(header, spacing, notes) of a multi-frame file that is a sweep; no pixel decoded."""
    from pydicom import dcmread

    header = read_dicom_header(path)
    if header.n_frames < 2:
        raise FrameReadError(f"{path}: a single DICOM frame, not a volume (a sweep needs several frames)")
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # read_dicom_header parsed it already: only a file changed meanwhile gets here
        raise FrameReadError(f"{path}: cannot be read again ({type(exc).__name__}: {exc})") from exc
    notes = list(header.notes)
    slice_mm = _slice_spacing(path, ds, header.n_frames, notes)
    if header.spacing_mm is not None:
        row_mm = col_mm = header.spacing_mm
    else:
        row_mm, col_mm = _shared_pixel_spacing(path, ds)
    return header, (slice_mm, row_mm, col_mm), notes


def _slice_spacing(path: Path, ds: Dataset, n_frames: int, notes: list[str]) -> float:
    """SpacingBetweenSlices, else the gap between per-frame positions, else SliceThickness (noted)."""
    measures = _shared_pixel_measures(ds)
    declared = _positive(ds.get("SpacingBetweenSlices")) or _positive(measures.get("SpacingBetweenSlices"))
    gaps = _position_gaps(path, ds, n_frames, notes)
    if declared is not None:
        if gaps is not None and not math.isclose(float(gaps.mean()), declared, rel_tol=SLICE_GAP_TOLERANCE):
            notes.append(
                f"SpacingBetweenSlices {declared:g} mm used; the per-frame positions are {gaps.mean():.4g} mm apart"
            )
        return declared
    if gaps is not None:
        mean, low, high = float(gaps.mean()), float(gaps.min()), float(gaps.max())
        if low <= 0 or (high - low) > SLICE_GAP_TOLERANCE * mean:
            raise FrameReadError(
                f"{path}: per-frame positions are not evenly spaced: consecutive frames {low:.4g} to {high:.4g} mm "
                f"apart (mean {mean:.4g}; tolerance {SLICE_GAP_TOLERANCE:.0%}); tpnet reads uniform sweeps only: "
                "resample the sweep to even slices"
            )
        return mean
    thickness = _positive(ds.get("SliceThickness")) or _positive(measures.get("SliceThickness"))
    if thickness is not None:
        notes.append(
            f"slice spacing taken from SliceThickness ({thickness:g} mm): the file has no SpacingBetweenSlices "
            "or per-frame positions; this assumes contiguous slices"
        )
        return thickness
    raise FrameReadError(
        f"{path}: no slice spacing (SpacingBetweenSlices / per-frame positions): a cine loop, not a sweep? "
        f"({n_frames} frames; multi-frame DICOM is read as a volume only when it states how far apart its frames are)"
    )


def _shared_pixel_measures(ds: Dataset) -> Dataset:
    """SharedFunctionalGroupsSequence > PixelMeasuresSequence (enhanced multi-frame files), else empty."""
    from pydicom.dataset import Dataset

    for group in ds.get("SharedFunctionalGroupsSequence") or ():
        for measures in group.get("PixelMeasuresSequence") or ():
            return measures
    return Dataset()


def _position_gaps(path: Path, ds: Dataset, n_frames: int, notes: list[str]) -> np.ndarray | None:
    """Distances (mm) between consecutive ImagePositionPatient of PerFrameFunctionalGroupsSequence; None when
    the file has no complete set (noted when it has a partial one)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return None
    positions = []
    for item in per_frame:
        try:
            position = item.PlanePositionSequence[0].ImagePositionPatient
            positions.append([float(v) for v in position])
        except (AttributeError, IndexError, TypeError, ValueError):
            break
    if len(positions) != n_frames or any(len(p) != 3 for p in positions):
        notes.append(
            f"per-frame positions ignored: {len(positions)} usable ImagePositionPatient for {n_frames} frames"
        )
        return None
    return np.linalg.norm(np.diff(np.asarray(positions, np.float64), axis=0), axis=1)


def _shared_pixel_spacing(path: Path, ds: Dataset) -> tuple[float, float]:
    spacing = _shared_pixel_measures(ds).get("PixelSpacing")
    try:
        row_mm, col_mm = (float(v) for v in spacing)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        row_mm = col_mm = math.nan
    if not (row_mm > 0 and col_mm > 0 and math.isfinite(row_mm + col_mm)):
        raise FrameReadError(
            f"{path}: no pixel size (SequenceOfUltrasoundRegions in cm, PixelSpacing): a volume needs its voxel "
            "size in mm"
        )
    return row_mm, col_mm


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 and math.isfinite(number) else None


def _stored_frames(path: Path, photometric: str, samples: int) -> np.ndarray:
    """Every frame's stored grey values, (Z, H, W); colour holds no labels or raw values."""
    from pydicom.pixels import pixel_array

    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise FrameReadError(
            f"{path}: {photometric} DICOM holds colour, not stored values or labels; read it as B-mode "
            "(read_volume_bmode)"
        )
    try:
        return np.ascontiguousarray(pixel_array(path))
    except Exception as exc:  # decoders raise anything from ValueError to OSError on damaged data
        raise FrameReadError(f"{path}: frames cannot be decoded ({type(exc).__name__}: {exc})") from exc


# ------------------------------------------------------------------------------------------------- npy


def _read_npy(path: Path, spacing: tuple[float, float, float] | None) -> Volume:
    if spacing is None:
        raise FrameReadError(
            f"{path}: a .npy volume carries no voxel spacing: pass spacing_mm=(slice_mm, row_mm, col_mm)"
        )
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only, until copied
        _check_shape(path, mapped.shape, "(Z, H, W)")
        _check_frame_size(path, mapped.shape[1:])
        voxels = np.array(mapped)
        del mapped
    except FrameReadError:
        raise
    except Exception as exc:
        raise FrameReadError(f"{path}: unreadable .npy ({type(exc).__name__}: {exc})") from exc
    return Volume(path, voxels, spacing, NPY, ())
