"""Detection of critical structures (nerves, vessels), structure by structure, in mm (issue #16).

Pixel Dice says how much of a nerve's area the network paints, not whether it saw the nerve: a needle plan is
steered by structures, so they are counted as structures. Per critical class, the 8-connected components of the
predicted and of the true label map, each of at least ``min_area_mm2`` (specks are not structures, on either
side), are matched one-to-one on centroid distance in mm (``metrics.match_centroids``, as trigger points are).

Known limit: a centroid stands for the whole component. A vessel seen along its length is a long band whose
centroid moves with the part of it that is painted; a band cut in two by the prediction is one match and one
false positive. Matching stays as strict as it is for trigger points, so the figure errs low, never high.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from tpnet.core.postprocess import MIN_VESSEL_AREA_MM2
from tpnet.evaluation.metrics import match_centroids


def structure_centroids_mm(
    label_map: np.ndarray, class_index: int, spacing_mm: float, min_area_mm2: float = MIN_VESSEL_AREA_MM2
) -> np.ndarray:
    """(N, 2) centroids (x_mm, y_mm) of the 8-connected components of ``class_index`` of at least
    ``min_area_mm2``, in the postprocess convention (pixel centres at integer coordinates)."""
    mask = label_map == class_index
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 2))
    cols = np.flatnonzero(mask.any(axis=0))
    # Labelled within the structures' bounding box: OpenCV's labelling with statistics costs ~0.5 ms on a whole
    # 256 x 256 frame, a few tens of microseconds on the box of a nerve (this runs every validation epoch).
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.uint8)
    _, _, stats, centroids = cv2.connectedComponentsWithStats(box, connectivity=8, ltype=cv2.CV_32S)
    big = stats[1:, cv2.CC_STAT_AREA] * float(spacing_mm) ** 2 >= min_area_mm2
    return (centroids[1:][big] + (cols[0], rows[0])) * float(spacing_mm)


def critical_detection_counts(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    critical: Sequence[int],
    num_classes: int,
    spacing_mm: float,
    match_mm: float,
    min_area_mm2: float = MIN_VESSEL_AREA_MM2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class index, (K,) structure counts (true positives, false positives, false negatives) of the critical
    classes ``critical``; 0 for every other class."""
    tp, fp, fn = (np.zeros(num_classes, np.int64) for _ in range(3))
    for k in critical:
        pred_xy = structure_centroids_mm(pred_labels, k, spacing_mm, min_area_mm2)
        gt_xy = structure_centroids_mm(gt_labels, k, spacing_mm, min_area_mm2)
        pairs, _ = match_centroids(pred_xy, gt_xy, match_mm)
        tp[k], fp[k], fn[k] = len(pairs), len(pred_xy) - len(pairs), len(gt_xy) - len(pairs)
    return tp, fp, fn
