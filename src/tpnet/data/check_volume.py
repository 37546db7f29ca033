"""``tpnet-data check`` for a volume row (contract version 2, issue #17): a sweep's B-mode, elastography and
mask volumes read whole, once, and validated together: readable, a spacing on every axis (a ``.npy`` gets it
from the manifest or dataset.yaml), one shape, one spacing and one orientation for the three files, labels
within the classes, plausible stiffness. Every problem names the sample, as for a frame row; the statistics
(SWE coverage, labels, TrPs counted as 3-D objects, stiffness) feed the same summary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tpnet.core import volume_io
from tpnet.core.contract import (
    ContractError,
    DatasetSpec,
    ManifestRow,
    resolve_path,
    volume_spacing_mm,
)
from tpnet.core.encoding import elasto_to_kpa
from tpnet.core.plausibility import spacing_warnings, stiffness_problem
from tpnet.core.volume_postprocess import label_components_26
from tpnet.data.check_content import fill_statistics, label_counts

# Spacing of the elastography or mask file vs the B-mode's (relative): rounding in a header, not a resampling.
SPACING_AGREEMENT = 0.01
ORIENTATION_AGREEMENT = 1e-3  # direction cosines of two files of one row


def check_volume_row(
    root: Path,
    raw: dict[str, str],
    row: ManifestRow | None,
    spec: DatasetSpec | None,
    error: Callable[[str], None],
    warning: Callable[[str], None],
    result: object,
) -> None:
    """Check one volume row, filling ``result`` (check.py's ``_FrameResult``) with its spacing and, when it
    has no error, its statistics. ``row`` is None when the row's fields did not parse (the files are still
    read, with the spacing the raw cells give, so one run lists everything wrong with the row)."""
    if spec is not None and spec.contract_version < 2:
        error(
            f"a volume row (kind: volume) needs contract_version: 2 in dataset.yaml (this dataset is version "
            f"{spec.contract_version})"
        )
    spacing = volume_spacing_mm(row, spec) if (spec is not None and row is not None) else None
    volumes: dict[str, volume_io.Volume] = {}
    for column in ("bmode", "elasto", "mask"):
        relative = raw.get(column, "")
        if not relative:
            continue
        try:
            path = resolve_path(root, relative)
        except ContractError as exc:
            error(f"{column} {exc}")
            continue
        if path.suffix.lower() == ".npy" and spacing is None:
            error(
                f"{column} {relative}: a .npy volume carries no spacing: give spacing_mm (pixel size) and "
                "slice_spacing_mm (mm between slices) in the manifest or dataset.yaml"
            )
            continue
        try:
            volumes[column] = _read(path, column, spacing)
        except volume_io.FrameReadError as exc:
            error(f"{column} {relative}: {_strip(str(exc), str(path))}")

    bmode = volumes.get("bmode")
    if bmode is not None:
        result.spacing_mm = float(bmode.spacing_mm[1])
        for note in bmode.notes:
            warning(f"bmode {raw['bmode']}: {note}")
        for reason in spacing_warnings(result.spacing_mm, shape=bmode.voxels.shape[1:]):
            warning(reason)
    shapes = {column: volume.voxels.shape for column, volume in volumes.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{column} {'x'.join(map(str, s))}" for column, s in shapes.items())
        error(
            f"shape mismatch: {listed} (bmode, elasto and mask of one volume row must have equal Z x H x W)"
        )
    elif bmode is not None:
        for column, volume in volumes.items():
            if column != "bmode":
                _check_same_geometry(column, raw[column], volume, bmode, error)

    elasto = volumes.get("elasto")
    elasto_kpa = None
    if elasto is not None and spec is not None:
        problem = stiffness_problem(elasto.voxels, spec.elasto_unit)
        if problem is not None:
            error(problem)
        elif not np.isfinite(elasto.voxels).any():
            warning("elastography is all NaN (no valid SWE voxel); the row is used as B-mode only")
        else:
            elasto_kpa = elasto_to_kpa(elasto.voxels, spec.elasto_unit)

    mask = volumes["mask"].voxels if "mask" in volumes else None
    counts = None
    if mask is not None and spec is not None:
        counts, problem = label_counts(mask, spec.classes)
        if problem is not None:
            error(problem)

    if any(p.level == "error" for p in result.problems) or spec is None or bmode is None:
        return
    # A sweep's trigger points are 3-D objects: one nodule across many slices counts once.
    fill_statistics(result, spec, mask, counts, elasto_kpa, lambda binary: label_components_26(binary)[0])


def _read(path: Path, column: str, spacing: tuple[float, float, float] | None) -> volume_io.Volume:
    if column == "bmode":
        return volume_io.read_volume_bmode(path, spacing_mm=spacing)
    if column == "mask":
        return volume_io.read_volume_mask(path, spacing_mm=spacing)
    # As stored (kPa "unit" = no conversion): the plausibility rule judges stored values in their own unit.
    return volume_io.read_volume_kpa(path, unit="kPa", spacing_mm=spacing)


def _check_same_geometry(
    column: str,
    relative: str,
    volume: volume_io.Volume,
    bmode: volume_io.Volume,
    error: Callable[[str], None],
) -> None:
    """The elastography and mask files lie on the B-mode's grid: same spacing and, where both files record
    one, the same orientation (a mask saved by a tool that flipped or permuted the axes would be misaligned
    voxel by voxel while its shape still matched)."""
    if not np.allclose(volume.spacing_mm, bmode.spacing_mm, rtol=SPACING_AGREEMENT, atol=0.0):
        error(
            f"{column} {relative}: spacing {_mm(volume.spacing_mm)} mm differs from the B-mode's "
            f"{_mm(bmode.spacing_mm)} mm (slice, row, column)"
        )
    mine, theirs = getattr(volume, "orientation", None), getattr(bmode, "orientation", None)
    if mine is not None and theirs is not None and not np.allclose(mine, theirs, atol=ORIENTATION_AGREEMENT):
        error(
            f"{column} {relative}: orientation differs from the B-mode's (axis directions "
            f"{np.round(mine, 3).tolist()} vs {np.round(theirs, 3).tolist()}); resave it on the B-mode's grid"
        )


def _mm(values: tuple[float, ...]) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


def _strip(message: str, where: str) -> str:
    prefix = f"{where}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
