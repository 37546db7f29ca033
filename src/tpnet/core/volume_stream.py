"""A sweep one slice at a time (issue #17): its trigger points and its label volume, in memory that does not
grow with the number of slices beyond small per-slice bookkeeping.

tpnet-infer segments a sweep of hundreds of slices slice by slice; holding the label map (1 byte per voxel),
the kPa map (4) and the probabilities (4 K) of the whole sweep would make its peak memory grow with the sweep.
``StreamingTriggerPoints3D`` takes each slice's outputs as they come and reports exactly what
``tpnet.core.volume_postprocess.find_trigger_points_3d`` reports on the stacked arrays (the same per-component
sums and report code); ``NiftiLabelWriter`` writes the label volume to disk as the slices come.

numpy + OpenCV + nibabel (for the NIfTI header) + standard library: core/ is imported by the torch-free
inference install. Axes and spacing as in volume_postprocess: (z, y, x), spacing_mm = (slice, row, column).
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import secrets
import shutil
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import cv2
import numpy as np

from tpnet.core.contract import ClassRoles, critical_class_indices, trp_class_indices
from tpnet.core.volume_postprocess import (
    DEFAULT_MIN_VOLUME_MM3,
    TriggerPoint3D,
    _bounding_box,
    _checked_spacing,
    _ComponentSums,
    _cross_slice_pairs,
    _kpa_sums,
    _nearest_critical_mm,
    _SliceVoxels,
    _trigger_points,
)

# Columns of the per-slice component table (one row per component of one slice), then one vote column per
# TrP class. float64 throughout: the counts and coordinate sums are whole numbers, exact below 2^53.
_SLICE, _VOXELS, _SUM_Y, _SUM_X, _KPA_COUNT, _KPA_SUM, _KPA_MAX, _PROBABILITY_SUM = range(8)
_VOTES = 8


class StreamingTriggerPoints3D:
    """``find_trigger_points_3d`` fed one slice at a time: ``add_slice`` for slices 0, 1, ... of the sweep, then
    ``finish()`` returns the same trigger points: same ids, order and figures, bit for bit but for the two
    that are sums of floats (stiffness_kpa_mean, confidence), added up in another order, which may differ in
    the last bits (1e-15 relative).

    Why it can: a 26-connected component is a union of 8-connected components of single slices, joined where
    two of neighbouring slices touch, so each slice is labelled alone (OpenCV, as the whole-volume code does),
    its components joined to the previous slice's by union-find, and every figure of a trigger point is a sum,
    min or max over its voxels, accumulated per slice component and reduced per union at the end (the
    shared ``_ComponentSums`` and report code). The exact 3-D distance to the nearest critical voxel pairs
    TrP slices with critical slices that may come before or after them: the TrP voxels and the critical masks
    are kept, compactly, and searched at ``finish()`` by the whole-volume code's search.

    Memory held after slice z, beyond a constant (the previous slice's component labels: 4 bytes per pixel):
    per slice with TrP voxels, 5-8 bytes per TrP rim voxel (one with a neighbour outside its component in the
    slice; the rest never decide a distance) (int32 pixel index + its slice-component label, the
    smallest integer type that holds it) and (8 + T) * 8 bytes per slice component (T TrP classes; the table
    doubles as it grows) + 8 for its union-find entry; per slice with critical voxels, the critical mask in
    whichever form is smaller, 4 bytes per critical pixel or H * W / 8 bytes (bits). A 512 x 512 sweep with
    1 % TrP pixels and a vessel in every slice holds about 45 kB per slice (13 kB TrP voxels, 32 kB critical
    bits); its label map alone is 262 kB per slice, its kPa map 1 MB and its probabilities 1 MB per class.
    ``held_bytes`` reports the total. ``finish()`` adds, while it runs, about 8 bytes per TrP voxel and one
    slice's mask and distance map.
    """

    def __init__(
        self,
        classes: Sequence[str],
        spacing_mm: Sequence[float],
        roles: ClassRoles | None = None,
        min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
    ) -> None:
        self._spacing = _checked_spacing(spacing_mm)
        if min_volume_mm3 < 0:
            raise ValueError(f"min_volume_mm3 must be >= 0; got {min_volume_mm3}")
        self._classes = tuple(classes)
        self._min_volume_mm3 = float(min_volume_mm3)
        self._trp = trp_class_indices(self._classes, roles)
        self._critical = critical_class_indices(self._classes, roles)
        # label value -> its vote column (only TrP labels are looked up)
        self._vote_column = np.zeros(max(self._trp, default=0) + 1, np.int64)
        self._vote_column[self._trp] = np.arange(len(self._trp))
        self._shape: tuple[int, int] | None = None
        self._with_kpa = self._with_probs = False
        self._slices = 0
        self._finished = False
        self._previous: np.ndarray | None = None  # last slice's component labels (global numbers), if any
        self._count = 0  # slice components so far, numbered 1.._count over the sweep
        self._parent = array("q", [0])  # union-find over the slice components; a root is its set's smallest
        self._table = _GrowingRows(_VOTES + len(self._trp))
        self._trp_voxels: dict[int, _Runs] = {}  # z -> its TrP voxels as runs
        self._critical_masks: dict[int, _PackedMask] = {}

    @property
    def slices(self) -> int:
        """Slices added so far."""
        return self._slices

    @property
    def held_bytes(self) -> int:
        """Bytes of numpy data held for the slices seen so far (what grows with the sweep; see the class)."""
        previous = 0 if self._previous is None else self._previous.nbytes
        voxels = sum(runs.nbytes for runs in self._trp_voxels.values())
        critical = sum(mask.nbytes for mask in self._critical_masks.values())
        return previous + self._table.nbytes + self._parent.itemsize * len(self._parent) + voxels + critical

    def add_slice(
        self, labels: np.ndarray, elasto_kpa: np.ndarray | None = None, probs: np.ndarray | None = None
    ) -> None:
        """The next slice: labels (H, W) class indices (uint8); elasto_kpa (H, W) kPa, NaN = no signal;
        probs (K, H, W) class probabilities. Every slice of a sweep has the same (H, W) and gives elasto_kpa
        and probs alike (all or none): the first slice decides."""
        self._check_slice(labels, elasto_kpa, probs)
        z = self._slices
        self._slices += 1
        if not self._trp:
            return  # no TrP class: nothing to find, as find_trigger_points_3d returns []
        critical = np.isin(labels, self._critical)
        if critical.any():
            self._critical_masks[z] = _PackedMask.of(critical)
        n, in_slice = cv2.connectedComponents(
            np.isin(labels, self._trp).astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
        )
        if n == 1:  # background only
            self._previous = None
            return
        offset = self._count
        flat = np.flatnonzero(in_slice)
        local = in_slice.ravel()[flat]  # 1..n-1, the slice's own numbering
        y, x = np.divmod(flat, labels.shape[1])
        self._table.append(self._component_rows(z, n, local, y, x, labels, elasto_kpa, probs))
        # Kept for the distance search, as runs of consecutive pixels of one component along the rows: a nodule
        # of h rows is about h runs, so this grows with the TrPs' height, not their area (12 bytes a run).
        self._trp_voxels[z] = _Runs.of(
            flat, local, offset, (int(y.min()), int(y.max()), int(x.min()), int(x.max()))
        )

        current = np.where(in_slice > 0, in_slice + offset, 0).astype(np.int32)
        self._parent.extend(range(offset + 1, offset + n))
        self._count += n - 1
        if self._previous is not None:
            for a, b in _cross_slice_pairs(self._previous, current).tolist():
                self._union(a, b)
        self._previous = current

    def finish(self) -> list[TriggerPoint3D]:
        """The trigger points of the slices added, as ``find_trigger_points_3d`` gives them for the stacked
        (Z, H, W) arrays. Call once; the finder takes no slice after it."""
        if self._finished:
            raise RuntimeError("finish() was already called; a StreamingTriggerPoints3D reports one sweep")
        self._finished = True
        self._previous = None
        if self._count == 0:
            return []
        roots = np.array([self._find(i) for i in range(self._count + 1)])
        # Roots are slice components 0..count (0 stays 0, the smallest), numbered 1, 2, ... by the inverse of
        # unique: the whole-volume code's numbering, which orders points of equal centroid.
        _, compact = np.unique(roots, return_inverse=True)
        size = int(compact.max()) + 1
        comp = compact[1:]
        table = self._table.rows
        self._table = _GrowingRows(table.shape[1])

        def total(column: int | np.ndarray) -> np.ndarray:
            weights = table[:, column] if isinstance(column, int) else column
            return np.bincount(comp, weights=weights, minlength=size)

        slice_index = table[:, _SLICE].astype(np.int64)
        first, last = np.full(size, self._slices), np.zeros(size, np.int64)
        np.minimum.at(first, comp, slice_index)
        np.maximum.at(last, comp, slice_index)
        kpa_count = kpa_sum = kpa_max = probability_sum = None
        if self._with_kpa:
            kpa_count, kpa_sum = total(_KPA_COUNT), total(_KPA_SUM)
            kpa_max = np.full(size, -np.inf)
            np.maximum.at(kpa_max, comp, table[:, _KPA_MAX])
        if self._with_probs:
            probability_sum = total(_PROBABILITY_SUM)

        # Each slice's voxels are expanded from its runs only while the search looks at that slice.
        voxels_by_slice = _ExpandedSlices(self._trp_voxels, compact.astype(np.int32), self._shape[1])
        slice_mm, row_mm, col_mm = self._spacing
        sums = _ComponentSums(
            voxels=total(_VOXELS),
            coordinate_sums=np.stack(
                [total(table[:, _SLICE] * table[:, _VOXELS]), total(_SUM_Y), total(_SUM_X)]
            ),
            first=first,
            last=last,
            votes=np.stack([total(_VOTES + t) for t in range(len(self._trp))], axis=1),
            kpa_count=kpa_count,
            kpa_sum=kpa_sum,
            kpa_max=kpa_max,
            probability_sum=probability_sum,
            nearest_critical_mm=_nearest_critical_mm(
                voxels_by_slice,
                size,
                {z: mask.box for z, mask in self._critical_masks.items()},
                lambda z: self._critical_masks[z].unpack(self._shape),
                (slice_mm, min(row_mm, col_mm)),
            ),
        )
        self._critical_masks.clear()
        self._trp_voxels = {}
        return _trigger_points(sums, self._classes, self._trp, self._spacing, self._min_volume_mm3)

    # ------------------------------------------------------------------------------------------ helpers

    def _check_slice(
        self, labels: np.ndarray, elasto_kpa: np.ndarray | None, probs: np.ndarray | None
    ) -> None:
        """Refuse a slice that does not fit the sweep, before any state changes."""
        if self._finished:
            raise RuntimeError("finish() was called; a StreamingTriggerPoints3D takes no more slices")
        z = self._slices
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"slice {z}: labels must be an (H, W) integer label map; got {labels.dtype} {labels.shape}"
            )
        shape = labels.shape if self._shape is None else self._shape
        if labels.shape != shape:
            raise ValueError(f"slice {z}: labels are {labels.shape}; the sweep's slices are {shape}")
        if z > 0 and (elasto_kpa is not None, probs is not None) != (self._with_kpa, self._with_probs):
            raise ValueError(
                f"slice {z}: elasto_kpa / probs given as {elasto_kpa is not None} / {probs is not None}, but the "
                f"sweep's first slice gave {self._with_kpa} / {self._with_probs}; every slice gives them alike"
            )
        if elasto_kpa is not None and elasto_kpa.shape != shape:
            raise ValueError(
                f"slice {z}: elasto_kpa shape {elasto_kpa.shape} differs from labels shape {shape}"
            )
        if probs is not None and probs.shape != (len(self._classes), *shape):
            raise ValueError(
                f"slice {z}: probs must be (K={len(self._classes)}, {', '.join(map(str, shape))}); got {probs.shape}"
            )
        if z == 0:
            self._shape = (int(shape[0]), int(shape[1]))
            self._with_kpa, self._with_probs = elasto_kpa is not None, probs is not None

    def _component_rows(
        self,
        z: int,
        n: int,
        local: np.ndarray,
        y: np.ndarray,
        x: np.ndarray,
        labels: np.ndarray,
        elasto_kpa: np.ndarray | None,
        probs: np.ndarray | None,
    ) -> np.ndarray:
        """One table row per component 1..n-1 of slice z (the same bincounts as the whole-volume code, over
        this slice's TrP voxels)."""
        trp_count = len(self._trp)
        rows = np.zeros((n, _VOTES + trp_count))
        rows[:, _SLICE] = z
        rows[:, _VOXELS] = np.bincount(local, minlength=n)
        rows[:, _SUM_Y] = np.bincount(local, weights=y, minlength=n)
        rows[:, _SUM_X] = np.bincount(local, weights=x, minlength=n)
        vote = local * trp_count + self._vote_column[labels[y, x]]
        rows[:, _VOTES:] = np.bincount(vote, minlength=n * trp_count).reshape(n, trp_count)
        if elasto_kpa is not None:
            rows[:, _KPA_COUNT], rows[:, _KPA_SUM], rows[:, _KPA_MAX] = _kpa_sums(local, n, elasto_kpa[y, x])
        if probs is not None:
            summed = probs[self._trp][:, y, x].sum(axis=0)
            rows[:, _PROBABILITY_SUM] = np.bincount(local, weights=summed, minlength=n)
        return rows[1:]  # row 0 is the slice's background

    def _find(self, i: int) -> int:
        parent = self._parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    def _union(self, a: int, b: int) -> None:
        root_a, root_b = self._find(a), self._find(b)
        if root_a != root_b:  # the smaller label roots the set, as in the whole-volume labelling
            self._parent[max(root_a, root_b)] = min(root_a, root_b)


@dataclass(frozen=True)
class _Runs:
    """One slice's TrP voxels as runs of consecutive flat pixel indices with one slice-component label each."""

    start: np.ndarray  # int32 flat index of each run's first pixel
    length: np.ndarray  # int32 pixels in the run
    label: np.ndarray  # the run's component, the slice's own numbering (1..n-1)
    offset: int  # the slice's first component number in the sweep's numbering, minus 1
    box: tuple[int, int, int, int]  # bounding box of the voxels (first/last row, first/last column)

    @classmethod
    def of(cls, flat: np.ndarray, local: np.ndarray, offset: int, box: tuple[int, int, int, int]) -> _Runs:
        """From the sorted flat indices of a slice's TrP voxels and their components."""
        breaks = np.flatnonzero((np.diff(flat) != 1) | (np.diff(local) != 0)) + 1
        first = np.concatenate([[0], breaks])
        length = np.diff(np.concatenate([first, [len(flat)]]))
        return cls(
            flat[first].astype(np.int32), length.astype(np.int32),
            local[first].astype(np.min_scalar_type(int(local.max()))), offset, box,
        )  # fmt: skip

    @property
    def nbytes(self) -> int:
        return self.start.nbytes + self.length.nbytes + self.label.nbytes

    def voxels(self) -> tuple[np.ndarray, np.ndarray]:
        """(flat indices, slice-component labels) of every voxel, in flat order."""
        total = int(self.length.sum())
        run_of = np.repeat(np.arange(len(self.length)), self.length)
        within = np.arange(total) - np.repeat(np.cumsum(self.length) - self.length, self.length)
        return self.start[run_of].astype(np.int64) + within, self.label[run_of]


class _ExpandedSlices(Mapping):
    """Slice -> ``_SliceVoxels`` for the nearest-critical search, expanded from the runs when asked and not kept
    (the search holds one slice's voxels at a time). Each item's components and box come from the runs alone."""

    def __init__(self, runs: dict[int, _Runs], compact: np.ndarray, width: int) -> None:
        self._runs, self._compact, self._width = runs, compact, width

    def __getitem__(self, z: int) -> _LazySliceVoxels:
        return _LazySliceVoxels(self._runs[z], self._compact, self._width)

    def __iter__(self):  # noqa: ANN204
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)


class _LazySliceVoxels:
    """``_SliceVoxels``' fields for one slice: ``comps`` and ``box`` at once, ``where`` / ``starts`` on first use."""

    def __init__(self, runs: _Runs, compact: np.ndarray, width: int) -> None:
        self._runs, self._compact, self._width = runs, compact, width
        self.box = runs.box
        self.comps = np.unique(compact[runs.label.astype(np.int64) + runs.offset])
        self._voxels: _SliceVoxels | None = None

    def _expanded(self) -> _SliceVoxels:
        if self._voxels is None:
            flat, local = self._runs.voxels()
            self._voxels = _SliceVoxels.of(
                flat, self._compact[local.astype(np.int64) + self._runs.offset], self._width
            )
        return self._voxels

    @property
    def where(self) -> np.ndarray:
        return self._expanded().where

    @property
    def starts(self) -> np.ndarray:
        return self._expanded().starts


class _GrowingRows:
    """A float64 table grown by appending rows (capacity doubles): slice components arrive a slice at a time,
    and a table holds them without a Python object per component."""

    def __init__(self, columns: int) -> None:
        self._data = np.empty((16, columns))
        self._used = 0

    def append(self, rows: np.ndarray) -> None:
        end = self._used + len(rows)
        if end > len(self._data):
            grown = np.empty((max(end, 2 * len(self._data)), self._data.shape[1]))
            grown[: self._used] = self._data[: self._used]
            self._data = grown
        self._data[self._used : end] = rows
        self._used = end

    @property
    def rows(self) -> np.ndarray:
        return self._data[: self._used]

    @property
    def nbytes(self) -> int:
        return self._data.nbytes


@dataclass(frozen=True)
class _PackedMask:
    """An (H, W) bool mask kept in whichever form is smaller: its flat pixel indices (int32: 4 bytes per set
    pixel, for sparse masks such as a thin vessel) or its bits (np.packbits: H * W / 8 bytes)."""

    flat: np.ndarray | None
    bits: np.ndarray | None
    box: tuple[int, int, int, int]  # its bounding box (volume_postprocess._bounding_box), for the search

    @classmethod
    def of(cls, mask: np.ndarray) -> _PackedMask:
        """A non-empty mask, packed."""
        box = _bounding_box(mask)
        if 4 * np.count_nonzero(mask) <= mask.size // 8:
            return cls(np.flatnonzero(mask).astype(np.int32), None, box)
        return cls(None, np.packbits(mask.ravel()), box)

    def unpack(self, shape: tuple[int, int]) -> np.ndarray:
        pixels = shape[0] * shape[1]
        if self.flat is not None:
            mask = np.zeros(pixels, bool)
            mask[self.flat] = True
            return mask.reshape(shape)
        return np.unpackbits(self.bits, count=pixels).view(bool).reshape(shape)

    @property
    def nbytes(self) -> int:
        return (self.flat if self.flat is not None else self.bits).nbytes


# NIfTI-1 single file: the 348-byte header, 4 bytes of "no extension", then the voxels.
NIFTI_VOX_OFFSET = 352
NIFTI_MAX_DIM = 32767  # NIfTI-1 dims are int16
# nibabel's own level for .nii.gz (nibabel.openers.Opener.default_compresslevel): label maps, mostly 0,
# compress well at the fastest level.
GZIP_LEVEL = 1
_COPY_CHUNK = 1 << 20


class NiftiLabelWriter:
    """A uint8 label volume written to ``.nii`` or ``.nii.gz`` one slice at a time, never held whole.

    ``with NiftiLabelWriter(path, height, width, spacing_mm) as out: out.write_slice(labels)`` per slice; the
    file appears under ``path`` complete at ``close()`` (the end of the block), or not at all: everything is
    written to a hidden temporary file beside it (``.<name>.<random>.tmp``, as tpnet.core.atomic does) and
    renamed over ``path`` after an fsync. An exception in the block, or ``abort()``, removes the temporary
    file and leaves ``path`` as it was; a killed process may leave the hidden temporary file, never a half
    file under ``path``.

    The file: a NIfTI-1 header (nibabel's Nifti1Header) with dims (W, H, Z) = (x, y, z), pixdim (col_mm,
    row_mm, slice_mm) in mm, uint8, vox_offset 352, qform and sform the diagonal of the spacing (index order
    only, no orientation: as tpnet.core.volume_io reads it); then slice after slice, since in NIfTI's order
    (x fastest) slice z of the (x, y, z) array is the C-order bytes of the (H, W) slice. Z, in the header
    before the voxels, is known only at the end: ``.nii`` is written with a placeholder header that
    ``close()`` overwrites; ``.nii.gz`` streams the slices, gzip-compressed, to the temporary file, and
    ``close()`` writes the final file (header, then those slices decompressed in 1 MiB chunks, all gzipped
    again): twice the compression work of a one-shot save, no more memory than a chunk.
    """

    def __init__(self, path: str | Path, height: int, width: int, spacing_mm: Sequence[float]) -> None:
        self.path = Path(path)
        name = self.path.name.lower()
        if not name.endswith((".nii", ".nii.gz")):
            raise ValueError(f"{self.path}: a NIfTI label volume is named .nii or .nii.gz")
        for what, size in (("height", height), ("width", width)):
            if not (isinstance(size, int | np.integer) and 1 <= size <= NIFTI_MAX_DIM):
                raise ValueError(
                    f"{self.path}: {what} must be a whole number 1..{NIFTI_MAX_DIM}; got {size!r}"
                )
        spacing = tuple(float(v) for v in spacing_mm)
        if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise ValueError(
                f"{self.path}: spacing_mm must be three positive numbers (slice, row, column) in mm; got {spacing_mm!r}"
            )
        self.height, self.width = int(height), int(width)
        self.spacing_mm: tuple[float, float, float] = spacing  # type: ignore[assignment]
        self._compressed = name.endswith(".gz")
        self._slices = 0
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _new_temporary(self.path)
        self._file = os.fdopen(os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")
        if self._compressed:
            self._out = gzip.GzipFile(fileobj=self._file, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
        else:
            self._out = self._file
            self._file.write(bytes(NIFTI_VOX_OFFSET))  # the header's place; written at close()

    @property
    def slices_written(self) -> int:
        return self._slices

    def write_slice(self, labels: np.ndarray) -> None:
        """Append slice ``slices_written``: (height, width) uint8 class indices."""
        if self._closed:
            raise ValueError(f"{self.path}: the writer is closed")
        if labels.shape != (self.height, self.width) or labels.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: slice {self._slices} must be ({self.height}, {self.width}) uint8; got "
                f"{labels.dtype} {labels.shape}"
            )
        if self._slices == NIFTI_MAX_DIM:
            raise ValueError(f"{self.path}: NIfTI-1 holds at most {NIFTI_MAX_DIM} slices")
        self._out.write(np.ascontiguousarray(labels).tobytes())
        self._slices += 1

    def close(self) -> None:
        """Publish the file under ``path``. A writer without a slice publishes nothing (a NIfTI volume needs
        one) and raises ValueError. Closing again does nothing."""
        if self._closed:
            return
        if self._slices == 0:
            self.abort()
            raise ValueError(f"{self.path}: no slice written; nothing saved")
        try:
            header = _nifti_header(self.width, self.height, self._slices, self.spacing_mm)
            if self._compressed:
                self._publish_compressed(header)
            else:
                self._file.seek(0)
                self._file.write(header)
                _sync_and_close(self._file)
                os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Drop what was written: the temporary files go, ``path`` stays as it was."""
        self._closed = True
        for stream in (self._out, self._file):
            with contextlib.suppress(OSError, ValueError):  # a gzip stream over a closed file: ValueError
                stream.close()
        self._tmp.unlink(missing_ok=True)

    def _publish_compressed(self, header: bytes) -> None:
        self._out.close()  # ends the gzip stream of the slices
        _sync_and_close(self._file)
        final_tmp = _new_temporary(self.path)
        try:
            with os.fdopen(os.open(final_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as final:
                with gzip.GzipFile(fileobj=final, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as out:
                    out.write(header)
                    with gzip.open(self._tmp, "rb") as slices:
                        shutil.copyfileobj(slices, out, _COPY_CHUNK)
                final.flush()
                os.fsync(final.fileno())
            os.replace(final_tmp, self.path)
        except BaseException:
            final_tmp.unlink(missing_ok=True)
            raise
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> NiftiLabelWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _nifti_header(width: int, height: int, slices: int, spacing_mm: tuple[float, float, float]) -> bytes:
    """The 352 bytes before the voxels of a (W, H, Z) uint8 volume: header and an empty extension flag."""
    import nibabel as nib  # imported on first use, as tpnet.core.volume_io does

    slice_mm, row_mm, col_mm = spacing_mm
    header = nib.Nifti1Header()
    header.set_data_shape((width, height, slices))
    header.set_data_dtype(np.uint8)
    affine = np.diag([col_mm, row_mm, slice_mm, 1.0])
    header.set_qform(affine, code="aligned")
    header.set_sform(affine, code="aligned")
    header.set_zooms((col_mm, row_mm, slice_mm))
    header.set_xyzt_units("mm")
    header["vox_offset"] = NIFTI_VOX_OFFSET
    return header.binaryblock + bytes(4)  # extension flag 0: no extensions


def _new_temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _sync_and_close(stream: BinaryIO) -> None:
    stream.flush()
    os.fsync(stream.fileno())
    stream.close()
