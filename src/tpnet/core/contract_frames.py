"""What a contract row's files hold, read one way for training, ``tpnet-data check`` and inference.

A ``bmode`` cell names a single-channel image (PNG/TIFF/.npy) or a DICOM file (``.dcm``/``.dicom``, or any file
with the DICM preamble, as DICOMDIR exports have no suffix). For DICOM:

- ``frame`` picks one frame of a multi-frame (cine) file; empty = frame 0. Only that frame is decoded.
- When the header names the ultrasound region holding the image (``DicomHeader.image_box``), the network sees
  that region only: the B-mode is cropped to it. A row's mask and elastography may then have the full frame's
  size (cropped the same way) or the region's size (used as is); any other size is refused.
- Pixel size, first found wins: the manifest's ``spacing_mm`` cell, then the file's calibration (ultrasound
  region deltas, else PixelSpacing), then ``dataset.yaml``'s ``spacing_mm``. The manifest cell is a person's
  statement about this very row (it can correct a mis-calibrated export); the file's calibration is the
  scanner's, per file; dataset.yaml is a default for the whole dataset, the least specific.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tpnet.core.contract import ContractError, DatasetSpec, ManifestRow, resolve_path
from tpnet.core.dicom import DicomHeader, is_dicom_file, read_dicom_frame, read_dicom_header
from tpnet.core.io import FrameReadError, read_bmode
from tpnet.core.plausibility import parse_spacing_mm

SOURCE_MANIFEST = "manifest"
SOURCE_DATASET_YAML = "dataset.yaml"
# + the header's spacing_source: "DICOM ultrasound region", "DICOM PixelSpacing"
SOURCE_FILE_PREFIX = "DICOM "


@dataclass(frozen=True)
class RowBmode:
    """A row's B-mode as the network sees it, and where it sits in the stored frame."""

    grey: np.ndarray  # float32 [0, 1], cropped to ``box`` when there is one
    full_shape: tuple[int, int]  # (H, W) of the stored frame
    box: tuple[int, int, int, int] | None  # (x0, y0, x1, y1), x1/y1 exclusive; None = the whole frame
    header: DicomHeader | None  # None for a non-DICOM image


def read_row_header(path: Path) -> DicomHeader | None:
    """The DICOM header of a B-mode file (no pixel decoding); None when the file is not DICOM."""
    return read_dicom_header(path) if is_dicom_file(path) else None


def read_row_bmode(
    path: Path,
    frame: int | None,
    header: DicomHeader | None = None,
    on_rescale: Callable[[str], None] | None = None,
) -> RowBmode:
    """Read a row's B-mode: an image, or frame ``frame`` (None = 0) of a DICOM file, cropped to its image
    region. ``FrameReadError`` naming the file: unreadable file, frame out of range, a frame on a non-DICOM."""
    if header is None and is_dicom_file(path):
        header = read_dicom_header(path)
    if header is None:
        if frame is not None:
            raise FrameReadError(
                f"{path}: not a DICOM file, so the manifest's frame {frame} cannot pick a frame of it "
                "(leave the frame cell empty for image rows)"
            )
        grey = read_bmode(path, on_rescale=on_rescale)
        return RowBmode(grey, (int(grey.shape[0]), int(grey.shape[1])), None, None)
    index = 0 if frame is None else frame
    if not 0 <= index < header.n_frames:
        raise FrameReadError(
            f"{path}: frame {index} is out of range; the file has {header.n_frames} frame(s) "
            f"(0..{header.n_frames - 1})"
        )
    grey = read_dicom_frame(path, index, header).grey
    full = (int(grey.shape[0]), int(grey.shape[1]))
    box = header.image_box
    if box is not None:
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= full[1] and 0 <= y0 < y1 <= full[0]):  # a reader bug, never a silent crop
            raise FrameReadError(
                f"{path}: image region {box} does not lie inside the {full[0]}x{full[1]} frame"
            )
        if (x1 - x0, y1 - y0) == (full[1], full[0]):
            box = None  # the region is the whole frame: nothing to crop
        else:
            grey = np.ascontiguousarray(grey[y0:y1, x0:x1])
    return RowBmode(grey, full, box, header)


def fit_to_bmode(arr: np.ndarray, what: str, bmode: RowBmode) -> np.ndarray:
    """A mask or elastography map brought to the B-mode the network sees: the region's size is used as is,
    the full frame's size is cropped to the region; any other size is ``ContractError`` (message: what + sizes;
    the caller prefixes the sample)."""
    shape = (int(arr.shape[0]), int(arr.shape[1]))
    region = (int(bmode.grey.shape[0]), int(bmode.grey.shape[1]))
    if shape == region:
        return arr
    if bmode.box is not None and shape == bmode.full_shape:
        x0, y0, x1, y1 = bmode.box
        return np.ascontiguousarray(arr[y0:y1, x0:x1])
    if bmode.box is None:
        raise ContractError(
            f"shape mismatch: {what} {_hw(shape)} differs from bmode {_hw(region)} "
            "(bmode, elasto and mask of one row must have equal H x W)"
        )
    raise ContractError(
        f"shape mismatch: {what} {_hw(shape)} is neither the DICOM frame's {_hw(bmode.full_shape)} nor its "
        f"image region's {_hw(region)} (x0, y0, x1, y1 = {bmode.box}); give it one of those sizes"
    )


def spacing_by_precedence(
    manifest_mm: float | None, header: DicomHeader | None, dataset_yaml_mm: float | None
) -> tuple[float | None, str]:
    """(pixel size in mm, where it came from): the manifest cell, else the DICOM file's calibration, else
    dataset.yaml; (None, "") when none gives one. A file spacing outside the plausible range is
    ``FrameReadError`` naming the file."""
    if manifest_mm is not None:
        return manifest_mm, SOURCE_MANIFEST
    if header is not None and header.spacing_mm is not None:
        where = header.spacing_source or "calibration"
        try:
            return parse_spacing_mm(header.spacing_mm), SOURCE_FILE_PREFIX + where
        except ValueError as exc:
            raise FrameReadError(f"{header.path}: pixel size from its {where}: {exc}") from None
    if dataset_yaml_mm is not None:
        return dataset_yaml_mm, SOURCE_DATASET_YAML
    return None, ""


def row_spacing(
    root: str | Path, row: ManifestRow, spec: DatasetSpec | None, header: DicomHeader | None = None
) -> tuple[float | None, str]:
    """The row's pixel size and its source by the contract's precedence. Reads the B-mode's DICOM header
    (never pixels) only when the manifest cell is empty and no ``header`` is given; a non-DICOM row is not
    opened at all. Raises ``ContractError`` (bad path) or ``FrameReadError`` (unreadable DICOM header)."""
    yaml_mm = spec.spacing_mm if spec is not None else None
    if row.spacing_mm is not None:
        return row.spacing_mm, SOURCE_MANIFEST
    if header is None:
        header = read_row_header(resolve_path(root, row.bmode))
    return spacing_by_precedence(None, header, yaml_mm)


def _hw(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"
