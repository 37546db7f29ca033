"""Boundary distances between a predicted and a true binary mask, in mm: how far the outlines lie apart.

Dice says how much two masks overlap; for thin structures (an aponeurosis is a band a few pixels thick) a
band drawn 1 mm too deep overlaps nothing and scores Dice 0, although it is nearly right. The symmetric surface
distances below say how far off it is.

Definitions (as in medpy and MONAI):
- the surface of a mask is its pixels that have a 4-neighbour outside the mask; the image border counts as
  outside, so a band cut by the frame edge has a surface along that edge too;
- for every surface pixel of one mask, the distance (Euclidean, in mm) to the nearest surface pixel of the other;
- ASSD (average symmetric surface distance): the mean of those distances over both surfaces together;
- HD95: the larger of the two directed 95th percentiles (prediction -> truth, truth -> prediction), robust to a
  few stray pixels where the plain Hausdorff distance (the maximum) is not.

Empty masks, defined so that every frame gives a finite number a mean can use:
- both empty: 0 mm for both (nothing to find, nothing found: perfect agreement);
- one empty: the frame's diagonal in mm for both, the largest distance any two pixels of the frame can have
  (a missed or invented structure scores worse than any drawn one), and ``empty`` names the empty one.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

_FOUR_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)


def surface(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels: in the mask, with a 4-neighbour outside it (or outside the image)."""
    mask = np.asarray(mask, dtype=bool)
    interior = ndimage.binary_erosion(mask, structure=_FOUR_NEIGHBOURS, border_value=0)
    return mask & ~interior


def _directed_mm(from_surface: np.ndarray, to_surface: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Distance in mm from each pixel of ``from_surface`` to the nearest pixel of ``to_surface``."""
    to_nearest = ndimage.distance_transform_edt(~to_surface, sampling=(spacing_mm, spacing_mm))
    return to_nearest[from_surface]


def boundary_distances_mm(pred: np.ndarray, truth: np.ndarray, spacing_mm: float) -> dict:
    """ASSD and HD95 in mm between two binary (H, W) masks of the same shape with isotropic ``spacing_mm``.

    Returns ``{"assd_mm": float, "hd95_mm": float, "empty": None | "pred" | "truth" | "both"}``; see the
    module docstring for the definitions and the empty-mask cases."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must be 2-D masks of the same shape")
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0; got {spacing_mm}")
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return {"assd_mm": 0.0, "hd95_mm": 0.0, "empty": "both"}
    if not has_pred or not has_truth:
        diagonal_mm = math.hypot(*pred.shape) * spacing_mm
        return {"assd_mm": diagonal_mm, "hd95_mm": diagonal_mm, "empty": "pred" if not has_pred else "truth"}
    pred_surface, truth_surface = surface(pred), surface(truth)
    pred_to_truth = _directed_mm(pred_surface, truth_surface, spacing_mm)
    truth_to_pred = _directed_mm(truth_surface, pred_surface, spacing_mm)
    assd = (pred_to_truth.sum() + truth_to_pred.sum()) / (pred_to_truth.size + truth_to_pred.size)
    hd95 = max(np.percentile(pred_to_truth, 95), np.percentile(truth_to_pred, 95))
    return {"assd_mm": float(assd), "hd95_mm": float(hd95), "empty": None}
