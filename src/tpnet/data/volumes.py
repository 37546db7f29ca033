"""Volume rows (contract version 2, issue #17) as the frames the training and evaluation loaders read.

A volume row names a sweep: a (Z, H, W) B-mode file with elastography and mask volumes of the same shape.
``slice_rows`` turns it into Z per-slice rows (sample ``<id>_z0007``, same subject, so a subject's sweeps stay
in one split) that every frame tool handles; ``load_volume_slice`` reads one of them, and with
``context_slices`` = k its k neighbours on each side, lazily through ``tpnet.core.volume_io.open_volume``
(a ``.npy`` is memory-mapped, an uncompressed NIfTI read slice by slice), so an item costs one slice's read,
not the sweep's.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tpnet.core.contract import (
    ContractError,
    DatasetSpec,
    ManifestRow,
    check_row_kind,
    resolve_path,
    volume_spacing_mm,
)
from tpnet.core.encoding import (
    blend_slices,
    context_planes,
    resample_frame,
    resample_scale,
    resampled_shape,
    resize,
)
from tpnet.data.transforms import Frame

if TYPE_CHECKING:
    from tpnet.core.volume_io import VolumeSlices

# Opened volumes kept per process (a training worker draws slices of a few sweeps over and over); each is a
# header and a memory map or file handle, not the voxels.
OPEN_VOLUMES = 16


def slice_id(sample_id: str, z: int) -> str:
    """The per-slice sample of slice ``z`` of volume row ``sample_id``."""
    return f"{sample_id}_z{z:04d}"


def open_row_volume(spec: DatasetSpec, row: ManifestRow, column: str = "bmode") -> VolumeSlices:
    """The row's ``column`` ("bmode", "elasto" or "mask") volume, opened lazily; ValueError naming the sample
    and the file when it cannot be read or its spacing is missing or disagrees with the manifest."""
    relative = getattr(row, column)
    try:
        path = resolve_path(spec.root, relative)
        values = {"bmode": "bmode", "elasto": "kpa", "mask": "mask"}[column]
        return _opened(str(path), values, volume_spacing_mm(row, spec), spec.elasto_unit, os.getpid())
    except (ContractError, ValueError) as exc:  # FrameReadError is a ValueError
        raise ValueError(
            f"{row.sample_id}: {column} {relative}: {_without_path(str(exc), relative)}"
        ) from None


@functools.lru_cache(maxsize=OPEN_VOLUMES)
def _opened(
    path: str, values: str, spacing_mm: tuple[float, float, float] | None, unit: str, pid: int
) -> VolumeSlices:
    """``pid``: a DataLoader worker forked from a process that had the file open reopens it (the inherited
    handle's file position is shared with the parent and its other workers)."""
    from tpnet.core.volume_io import open_volume  # nibabel, pynrrd and pydicom load only for volume rows

    return open_volume(path, spacing_mm=spacing_mm, values=values, elasto_unit=unit)


def _without_path(message: str, relative: str) -> str:
    """volume_io's messages start with the absolute path; the row's message names the manifest cell."""
    head, sep, rest = message.partition(": ")
    return rest if sep and (head.endswith(Path(relative).name)) else message


def slice_rows(spec: DatasetSpec, rows: Sequence[ManifestRow]) -> list[ManifestRow]:
    """Every frame row as it is, every volume row as one row per slice (in slice order, in place of the volume
    row). Raises ValueError naming the sample for a volume row in a version-1 dataset or an unreadable B-mode
    volume (``tpnet-data check`` lists every such problem at once)."""
    out: list[ManifestRow] = []
    for row in rows:
        if not row.is_volume:
            out.append(row)
            continue
        try:
            check_row_kind(row, spec)
        except ContractError as exc:
            raise ValueError(str(exc)) from None
        slices = len(open_row_volume(spec, row))
        out.extend(
            dataclasses.replace(
                row, sample_id=slice_id(row.sample_id, z), slice_index=z, volume_id=row.sample_id
            )
            for z in range(slices)
        )
    return out


def volume_pixel_spacing_mm(spec: DatasetSpec, row: ManifestRow) -> float:
    """A volume (or volume-slice) row's in-plane pixel size in mm (the file's, or the manifest's for .npy)."""
    return float(open_row_volume(spec, row).spacing_mm[1])


def load_volume_slice(
    spec: DatasetSpec,
    row: ManifestRow,
    target_spacing_mm: float,
    context_slices: int = 0,
    context_spacing_mm: float | None = None,
) -> Frame:
    """Slice ``row.slice_index`` of a volume row at ``target_spacing_mm`` per pixel, with the B-mode of its
    ``context_slices`` neighbours on each side (order -k..-1, +1..+k, ``context_spacing_mm`` apart, interpolated
    between slices; None = the sweep's own slice spacing; all 0 beyond the sweep's ends, "not imaged").
    Elastography and mask volumes must have the B-mode's shape (ValueError naming the sample)."""
    if row.slice_index is None:
        raise ValueError(f"{row.sample_id}: not a slice of a volume row (expand rows with slice_rows)")
    bmode = open_row_volume(spec, row, "bmode")
    z = row.slice_index
    if not 0 <= z < len(bmode):
        raise ValueError(f"{row.sample_id}: slice {z} outside the volume's {len(bmode)} slices")
    elasto = _slice_of(spec, row, "elasto", bmode, z) if row.elasto else None
    mask = _slice_of(spec, row, "mask", bmode, z) if row.mask else None
    grey = bmode.slice(z)
    if mask is None:
        mask = np.zeros(grey.shape, np.uint8)
    src_mm = float(bmode.spacing_mm[1])
    grey, elasto, mask = resample_frame(grey, elasto, mask, src_mm, target_spacing_mm)
    context = None
    if context_slices:
        shape = resampled_shape(bmode.shape[1:], resample_scale(src_mm, target_spacing_mm))
        planes = context_planes(z, len(bmode), context_slices, bmode.spacing_mm[0], context_spacing_mm)
        context = np.stack(
            [resize(blend_slices(bmode.slice, plane, bmode.shape[1:]), shape) for plane in planes]
        )
    return Frame(bmode=grey, elasto_kpa=elasto, mask=mask, context=context)


def _slice_of(spec: DatasetSpec, row: ManifestRow, column: str, bmode: VolumeSlices, z: int) -> np.ndarray:
    volume = open_row_volume(spec, row, column)
    if volume.shape != bmode.shape:
        raise ValueError(
            f"{row.sample_id}: {column} {getattr(row, column)} has shape {'x'.join(map(str, volume.shape))}, "
            f"the B-mode {'x'.join(map(str, bmode.shape))} (Z x H x W must be equal)"
        )
    return volume.slice(z)
