"""Sweeps as the frames tpnet-infer analyses (issue #17): a 3-D file (NIfTI, NRRD, a multi-frame DICOM that
states its slice spacing, or a contract volume row) becomes one ``FrameInput`` per slice, kind "sweep", that
the predictor reads, predicts and post-processes like any frame; the run then joins the slices of each sweep
into 3-D trigger points (``tpnet.inference.sweep_run``).

Discovery reads headers only. Slices are read lazily through ``tpnet.core.volume_io.open_volume``, kept open
per process (a header and a memory map or file handle each, not the voxels), so a long sweep costs one slice
at a time where the format allows it (``.npy``, uncompressed NIfTI; NRRD, DICOM and gzipped NIfTI are decoded
whole by their readers: see ``open_volume``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tpnet.core.encoding import blend_slices, context_planes, elasto_to_kpa
from tpnet.core.io import FrameReadError
from tpnet.core.plausibility import stiffness_problem

if TYPE_CHECKING:
    from tpnet.core.volume_io import VolumeSlices
    from tpnet.inference.inputs import FrameInput

# File names read as sweeps when found in an input folder (a 3-D .npy carries no spacing: datasets only).
VOLUME_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr")
OPEN_VOLUMES = 8  # sweeps kept open at once: the one in hand, its elastography and the next few read ahead
CACHED_SLICES = 8  # per opened sweep: a context window (2k + 1 with k <= 2) plus the slices read ahead


def is_volume_file(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def volume_stem(path: Path) -> str:
    """The name without its (possibly double, ``.nii.gz``) suffix."""
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def dicom_states_slice_spacing(path: Path) -> bool:
    """Whether a multi-frame DICOM file says how far apart its frames are (SpacingBetweenSlices, or per-frame
    positions): then it is a sweep; otherwise a cine loop, as most multi-frame ultrasound files are."""
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception:  # the frame reader reports an unreadable file with its reason
        return False
    if int(ds.get("NumberOfFrames", 1) or 1) < 2:
        return False
    if ds.get("SpacingBetweenSlices") is not None:
        return True
    for group in ds.get("SharedFunctionalGroupsSequence") or ():
        for measures in group.get("PixelMeasuresSequence") or ():
            if measures.get("SpacingBetweenSlices") is not None:
                return True
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or ()
    return bool(per_frame) and all("PlanePositionSequence" in item for item in per_frame)


def sweep_frames(
    bmode_path: Path,
    elasto_path: Path | None,
    stem: str,
    name: str,
    *,
    spacing_mm: tuple[float, float, float] | None = None,
    spacing_source: str = "file",
    elasto_unit: str = "kPa",
    subject_id: str | None = None,
) -> list[FrameInput]:
    """One FrameInput per slice of the sweep (stems ``<stem>_z0000``...). ``spacing_mm`` (slice, row, column):
    required for a ``.npy`` (a manifest's), checked against the file's own otherwise. FrameReadError names
    the file: unreadable, no spacing, or an elastography volume of another shape."""
    from tpnet.inference.inputs import FrameInput

    volume = _opened(str(bmode_path), "bmode", spacing_mm)
    if elasto_path is not None:
        elasto = _opened(str(elasto_path), "kpa", spacing_mm)
        if elasto.shape != volume.shape:
            raise FrameReadError(
                f"{elasto_path}: elastography volume is {_zhw(elasto.shape)} but its B-mode {bmode_path.name} "
                f"is {_zhw(volume.shape)} (Z x H x W)"
            )
    slice_mm, row_mm, _ = volume.spacing_mm
    count = len(volume)
    return [
        FrameInput(
            stem=f"{stem}_z{z:04d}",
            name=f"{name} slice {z}",
            bmode_path=bmode_path,
            elasto_path=elasto_path,
            spacing_mm=float(row_mm),
            spacing_source=spacing_source,
            elasto_unit=elasto_unit,
            kind="sweep",
            shape=tuple(volume.shape[1:]),
            subject_id=subject_id,
            sweep=stem,
            slice_index=z,
            slice_count=count,
            slice_spacing_mm=float(slice_mm),
        )
        for z in range(count)
    ]


def load_sweep_slice(frame: FrameInput) -> tuple[np.ndarray, np.ndarray | None]:
    """(B-mode float32 [0, 1], elastography kPa or None) of one slice; FrameReadError names the file."""
    bmode = _slice(frame, frame.bmode_path, "bmode", frame.slice_index)
    if frame.elasto_path is None:
        return bmode, None
    stored = _slice(frame, frame.elasto_path, "kpa", frame.slice_index)  # as stored: the sign comes first
    problem = stiffness_problem(stored, frame.elasto_unit)
    if problem is not None:
        raise FrameReadError(f"{frame.elasto_path}: slice {frame.slice_index}: {problem}")
    return bmode, elasto_to_kpa(stored, frame.elasto_unit)


def load_sweep_context(
    frame: FrameInput, context_slices: int, context_spacing_mm: float | None = None
) -> np.ndarray:
    """The B-mode of the slice's ``context_slices`` neighbours on each side, (2k, H, W) in the order -k..-1,
    +1..+k, ``context_spacing_mm`` apart (interpolated between slices; None: the sweep's own spacing); all 0
    ("not imaged") beyond the sweep's ends, exactly as the training loader makes them
    (``tpnet.core.encoding.context_planes``)."""
    if frame.kind != "sweep" or frame.slice_index is None or frame.slice_count is None:
        raise FrameReadError(
            f"{frame.bmode_path}: this model reads {context_slices} neighbouring slice(s) on each side (2.5-D); "
            "it analyses sweeps (NIfTI, NRRD, multi-frame DICOM with a slice spacing), not single frames"
        )
    planes = context_planes(
        frame.slice_index, frame.slice_count, context_slices, frame.slice_spacing_mm, context_spacing_mm
    )
    return np.stack(
        [
            blend_slices(lambda z: _slice(frame, frame.bmode_path, "bmode", z), plane, frame.shape)
            for plane in planes
        ]
    )


def _slice(frame: FrameInput, path: Path, values: str, z: int | None) -> np.ndarray:
    volume = _opened(str(path), values, _frame_spacing(frame))
    if z is None or not 0 <= z < len(volume):
        raise FrameReadError(f"{path}: slice {z} outside the sweep's {len(volume)} slices")
    return volume.slice(z)


def _frame_spacing(frame: FrameInput) -> tuple[float, float, float] | None:
    """The spacing a ``.npy`` sweep needs (its manifest's, kept on each slice); None for files with their own."""
    if (
        frame.bmode_path.suffix.lower() != ".npy"
        or frame.spacing_mm is None
        or frame.slice_spacing_mm is None
    ):
        return None
    return (frame.slice_spacing_mm, frame.spacing_mm, frame.spacing_mm)


@functools.lru_cache(maxsize=OPEN_VOLUMES)
def _opened(path: str, values: str, spacing_mm: tuple[float, float, float] | None) -> VolumeSlices:
    from tpnet.core.volume_io import open_volume

    # Elastography as stored ("kPa" = no conversion): the plausibility rule judges the stored values first.
    # A few slices cached: the reader threads and a 2.5-D model's window read slightly out of order, which a
    # gzipped NIfTI would pay for with a decompression from the file's start.
    return open_volume(
        path, spacing_mm=spacing_mm, values=values, elasto_unit="kPa", cache_slices=CACHED_SLICES
    )


def _zhw(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)
