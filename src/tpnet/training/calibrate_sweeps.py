"""The sweeps' volume threshold, chosen on validation as the 2-D post-processing is (issue #17).

A sweep's 3-D trigger points are the 26-connected components of its slices' TrP labels; components under
``min_volume_mm3`` are dropped as specks (``tpnet.core.volume_postprocess``). Its value is chosen here, after the
2-D post-processing (``tpnet.training.calibrate.choose_postprocess``), on the validation sweeps' probabilities
already computed for it: the candidate with the best 3-D detection F1 wins (ties: the one closest to
``DEFAULT_MIN_VOLUME_MM3``). Each candidate only filters the components found once with no threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import groupby

import numpy as np

from tpnet.core.contract import ClassRoles
from tpnet.core.postprocess import PostprocessParams, labels_from_probs
from tpnet.core.volume_postprocess import (
    DEFAULT_MIN_VOLUME_MM3,
    TriggerPoint3D,
    find_trigger_points_3d,
    sweep_slice_params,
)
from tpnet.evaluation.metrics_3d import aggregate_3d, volume_record

# mm^3 tried: from a few voxels to a small nodule (the smallest common TrP is ~6 mm^3, see volume_postprocess).
MIN_VOLUME_GRID_MM3: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def choose_min_volume(
    cached: Sequence[object],
    classes: Sequence[str],
    params: PostprocessParams,
    roles: ClassRoles | None = None,
    grid: Sequence[float] = MIN_VOLUME_GRID_MM3,
) -> tuple[float | None, list[dict]]:
    """(chosen min_volume_mm3, the grid's rows) over the validation frames that are slices of sweeps
    (``cached``: ``calibrate.ValidationFrame``s, in loader order); (None, []) when there are no sweeps or no
    true trigger point in them (every candidate would score an undefined F1)."""
    sweeps = []
    for volume_id, group in groupby(
        (c for c in cached if c.frame.get("volume_id") is not None), key=lambda c: c.frame["volume_id"]
    ):
        sweeps.append(_found(volume_id, list(group), classes, params, roles))
    if not sweeps or not any(gt for _, _, gt in sweeps):
        return None, []
    rows = []
    for minimum in grid:
        records = [
            volume_record(
                [p for p in pred if p.volume_mm3 >= minimum],
                gt,
                sample_id=volume_id,
                subject_id=subject,
                match_mm=params.match_mm,
            )  # fmt: skip
            for (volume_id, subject), pred, gt in sweeps
        ]
        figures = aggregate_3d(records)
        rows.append({"min_volume_mm3": float(minimum), "det3d_f1": figures["det3d_f1"],
                     "det3d_precision": figures["det3d_precision"], "det3d_recall": figures["det3d_recall"]})  # fmt: skip

    def rank(row: dict) -> tuple[float, float]:
        f1 = row["det3d_f1"]
        return (
            f1 if math.isfinite(f1) else -1.0,
            -abs(math.log2((row["min_volume_mm3"] + 0.25) / (DEFAULT_MIN_VOLUME_MM3 + 0.25))),
        )

    return max(rows, key=rank)["min_volume_mm3"], rows


def _found(
    volume_id: str, slices: list, classes: Sequence[str], params: PostprocessParams, roles: ClassRoles | None
) -> tuple[tuple[str, str], list[TriggerPoint3D], list[TriggerPoint3D]]:
    """One validation sweep's predicted (no volume threshold) and true 3-D trigger points."""
    slices.sort(key=lambda c: c.frame["slice_index"])
    first = slices[0].frame
    spacing = (float(first["slice_spacing_mm"]), float(first["spacing_mm"]), float(first["spacing_mm"]))
    per_slice = sweep_slice_params(params)
    pred = np.stack([labels_from_probs(c.probs, classes, per_slice, c.spacing_mm, roles) for c in slices])
    gt = np.stack([np.asarray(c.gt, np.uint8) for c in slices])
    found = [
        find_trigger_points_3d(labels, spacing, classes, roles, min_volume_mm3=0.0) for labels in (pred, gt)
    ]
    return (volume_id, str(first["subject_id"])), found[0], found[1]
