"""Does the needle guidance keep its word? Planned paths re-measured on the true critical structures (issue #16).

For each predicted trigger point the path is planned exactly as ``tpnet-infer`` plans it
(``tpnet.core.guidance.frame_paths``): on the predicted critical mask (arg-max nerves and vessels, or pixels
whose critical probability reaches the guidance threshold; ``tpnet.core.needle_path.critical_mask``), the
frame's predicted TrP pixels excluded (the needle is meant to be there). The same segment (entry to TrP
centroid) is then measured on the TRUE critical mask (the label map's nerves and vessels, specks under
``min_critical_area_mm2`` dropped). A path called safe whose true clearance is under ``min_clearance_mm`` is the
error that matters: the clinician was told the way is clear and it was not.

Per frame the counts below are additive, so they pool over frames and resample with the subject bootstrap like
every other count of ``metrics``. Metrics (NaN, with a reason, when there is nothing to measure):

- ``guidance/unsafe_called_safe_rate``: truly unsafe paths among the paths called safe;
- ``guidance/safe_share``: predicted TrPs given a path called safe, among all predicted TrPs;
- ``guidance/no_path_share``: predicted TrPs with no in-plane path at all (target above the skin line, or every
  entry outside the imaged width), among all predicted TrPs;
- ``guidance/true_clearance_error_mm``: mean of (predicted clearance - true clearance) over the planned paths
  with a critical structure in both the prediction and the truth (an infinite clearance has no error to
  average; a structure the prediction misses entirely shows in the unsafe-called-safe rate instead).
  Positive: the plan thinks it passes farther from the structures than it does.

Which TrPs: every predicted one, matched to a true TrP or not: a needle sent to a false alarm still crosses the
true tissue. A frame whose source leaves a critical class unlabelled has no true critical mask to measure on;
its counts are 0 (``evaluate._without_unlabelled``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tpnet.core.contract import ClassRoles
from tpnet.core.guidance import frame_paths
from tpnet.core.needle_path import GuidanceParams, critical_mask, distance_map_px, segment_clearance_mm
from tpnet.core.postprocess import TriggerPoint

PREFIX = "guidance/"
FIELDS: tuple[str, ...] = (
    "trps",  # predicted TrPs considered
    "planned",  # of which an in-plane path exists
    "called_safe",  # of which the plan says safe
    "called_safe_truly_unsafe",  # of which the true clearance is under min_clearance_mm
    "no_path",  # predicted TrPs without an in-plane path
    "clearance_error_sum_mm",  # sum of (predicted - true clearance) over paths finite on both masks
    "clearance_error_count",
)
SIZE = len(FIELDS)
_INDEX = {name: i for i, name in enumerate(FIELDS)}


def frame_guidance_counts(
    pred_labels: np.ndarray,
    probs: np.ndarray,
    gt_labels: np.ndarray,
    pred_points: Sequence[TriggerPoint],
    classes: Sequence[str],
    spacing_mm: float,
    skin_row: int | None,
    params: GuidanceParams,
    roles: ClassRoles | None = None,
) -> np.ndarray:
    """The frame's (SIZE,) guidance counts (``FIELDS``): each predicted TrP's path planned on the prediction
    (``tpnet.core.guidance.frame_paths``, tpnet-infer's rule) and re-measured on ``gt_labels``."""
    counts = np.zeros(SIZE)
    if not pred_points:
        return counts
    paths = frame_paths(pred_points, pred_labels, probs, classes, roles, spacing_mm, skin_row, params)
    true_distance = distance_map_px(critical_mask(gt_labels, None, classes, roles, params, spacing_mm))
    counts[_INDEX["trps"]] = len(paths)
    for path in paths:
        if path is None:
            counts[_INDEX["no_path"]] += 1
            continue
        counts[_INDEX["planned"]] += 1
        entry, target = (path.entry_x_px, path.entry_y_px), (path.target_x_px, path.target_y_px)
        true_clearance_mm = segment_clearance_mm(true_distance, entry, target, spacing_mm)
        if path.safe:
            counts[_INDEX["called_safe"]] += 1
            counts[_INDEX["called_safe_truly_unsafe"]] += true_clearance_mm < params.min_clearance_mm
        if math.isfinite(path.clearance_mm) and math.isfinite(true_clearance_mm):
            counts[_INDEX["clearance_error_sum_mm"]] += path.clearance_mm - true_clearance_mm
            counts[_INDEX["clearance_error_count"]] += 1
    return counts


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def metrics_from_totals(totals: np.ndarray) -> dict[str, float]:
    """The guidance metrics (module docstring) of pooled (or bootstrap-weighted) counts."""
    t = {name: float(totals[i]) for i, name in enumerate(FIELDS)}
    return {
        f"{PREFIX}unsafe_called_safe_rate": _ratio(t["called_safe_truly_unsafe"], t["called_safe"]),
        f"{PREFIX}safe_share": _ratio(t["called_safe"], t["trps"]),
        f"{PREFIX}no_path_share": _ratio(t["no_path"], t["trps"]),
        f"{PREFIX}true_clearance_error_mm": _ratio(t["clearance_error_sum_mm"], t["clearance_error_count"]),
    }


def counts_from_totals(totals: np.ndarray) -> dict[str, int]:
    """The pooled counts behind the rates (``n_`` keys: metrics.json shows them, MLflow leaves them out)."""
    t = {name: int(round(float(totals[i]))) for i, name in enumerate(FIELDS)}
    return {
        "n_guidance_trps": t["trps"],
        "n_paths_planned": t["planned"],
        "n_paths_called_safe": t["called_safe"],
        "n_called_safe_truly_unsafe": t["called_safe_truly_unsafe"],
    }


_UNDEFINED = {
    "unsafe_called_safe_rate": "no needle path was called safe",
    "safe_share": "no trigger point predicted on frames whose critical structures are all labelled",
    "no_path_share": "no trigger point predicted on frames whose critical structures are all labelled",
    "true_clearance_error_mm": "no planned path with a critical structure in both the prediction and the truth",
}


def undefined_reason(key: str) -> str:
    """Why the guidance metric ``key`` (``guidance/...``) is NaN."""
    return _UNDEFINED.get(key.removeprefix(PREFIX), "nothing to measure")
