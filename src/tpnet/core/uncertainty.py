"""How much a detection moves between test-time passes: its per-detection uncertainty (issue #14). numpy + OpenCV.

The network is run on the frame and on its lateral mirror image (``tpnet.core.predict.predict_passes``). Both
passes are equally valid readings of the same anatomy, so where they disagree the model hesitates. For each
detection (a connected component of the final TrP label map) and each pass p:

- ``m_p``: the mean summed TrP probability of pass p over the component's pixels;
- ``c_p``: the centroid of the component's pixels weighted by pass p's summed TrP probability (mm).

``confidence_sd`` = the sample SD of ``m_p`` over the passes (in probability units, before calibration: it says
how much the evidence the calibrated confidence rests on moves); ``centroid_sd_mm`` = the radial sample SD of
``c_p``: sqrt(sum_p |c_p - mean c|^2 / (P - 1)).

With the default two passes (identity + flip) each figure rests on ONE difference (for two passes the SD is
|a - b| / sqrt(2)): a coarse estimate that ranks detections by stability rather than a calibrated error bar.
With one pass (``--no-tta``) nothing spreads and both are NaN (empty in the CSV).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from tpnet.core.contract import ClassRoles, trp_class_indices
from tpnet.core.postprocess import TriggerPoint


@dataclass(frozen=True)
class DetectionSpread:
    confidence_sd: float
    centroid_sd_mm: float


def trp_components(
    label_map: np.ndarray,
    classes: Sequence[str],
    points: Sequence[TriggerPoint],
    roles: ClassRoles | None = None,
) -> tuple[np.ndarray, list[int]]:
    """(component label image, each point's component id): the 8-connected TrP components that
    ``find_trigger_points`` made the points from, matched by centroid."""
    mask = np.isin(label_map, trp_class_indices(classes, roles)).astype(np.uint8)
    n, components, _, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    ids = []
    for point in points:
        if n < 2:
            ids.append(0)
            continue
        distance = np.hypot(centroids[1:, 0] - point.x_px, centroids[1:, 1] - point.y_px)
        ids.append(int(np.argmin(distance)) + 1)
    return components, ids


def pass_spread(
    trp_passes: np.ndarray, components: np.ndarray, component_ids: Sequence[int], spacing_mm: float
) -> list[DetectionSpread]:
    """Per component id, the spread across passes. ``trp_passes``: (P, H, W) summed TrP probability of each
    pass at the label map's pixels; ``spacing_mm``: the frame's pixel size."""
    passes = np.asarray(trp_passes)
    if passes.ndim != 3 or passes.shape[1:] != components.shape:
        raise ValueError(
            f"trp_passes must be (P, {components.shape[0]}, {components.shape[1]}); got {passes.shape}"
        )
    count = passes.shape[0]
    if count < 2:
        return [DetectionSpread(math.nan, math.nan) for _ in component_ids]
    # Every component at once, over the component pixels only (one scan of the frame, not one per component).
    flat = components.ravel()
    where = np.flatnonzero(flat)
    labels = flat[where]
    n = int(labels.max()) + 1 if labels.size else 1
    rows, cols = np.divmod(where, components.shape[1])
    weights = passes.reshape(count, -1)[:, where].astype(np.float64)  # (P, component pixels)
    pixels = np.bincount(labels, minlength=n)
    sums = np.stack([np.bincount(labels, weights=w, minlength=n) for w in weights])  # (P, n)
    sum_x = np.stack([np.bincount(labels, weights=w * cols, minlength=n) for w in weights])
    sum_y = np.stack([np.bincount(labels, weights=w * rows, minlength=n) for w in weights])
    out = []
    for cid in component_ids:
        if not 0 < cid < n or pixels[cid] == 0:
            out.append(DetectionSpread(math.nan, math.nan))
            continue
        means = sums[:, cid] / pixels[cid]
        mass = np.clip(sums[:, cid], 1e-12, None)
        centroid_x, centroid_y = sum_x[:, cid] / mass, sum_y[:, cid] / mass
        squared = (centroid_x - centroid_x.mean()) ** 2 + (centroid_y - centroid_y.mean()) ** 2
        radial_px = math.sqrt(float(squared.sum()) / (count - 1))
        out.append(DetectionSpread(float(np.std(means, ddof=1)), radial_px * float(spacing_mm)))
    return out
