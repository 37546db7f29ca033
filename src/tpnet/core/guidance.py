"""Needle guidance for a frame's trigger points: each TrP's planned path and its distances to nerves and vessels
written into its ``TriggerPoint`` record (issue #16). numpy + OpenCV + standard library only.

One rule for every tool: ``frame_paths`` plans the paths the way ``tpnet-infer`` reports them, so evaluation
re-measuring those paths on the true structures measures what the clinician was shown. What is avoided: the
frame's critical mask (``needle_path.critical_mask``: arg-max nerves and vessels, or a faint critical
probability), with every TrP pixel of the label map left out (the label map already called those pixels trigger
point, and the needle is meant to go into one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from tpnet.core.contract import ClassRoles, critical_class_indices, trp_class_indices
from tpnet.core.needle_path import (
    GuidanceParams,
    NeedlePath,
    critical_mask,
    distance_map_px,
    plan_needle_path,
    structure_mask,
)
from tpnet.core.postprocess import TriggerPoint
from tpnet.core.uncertainty import trp_components

NERVE_CLASS = "nerve"  # nearest_nerve_mm measures this class (when the classes have it)


def frame_paths(
    points: Sequence[TriggerPoint],
    label_map: np.ndarray,
    probs: np.ndarray | None,
    classes: Sequence[str],
    roles: ClassRoles | None,
    spacing_mm: float,
    skin_row: int | None,
    params: GuidanceParams,
    image_box: tuple[int, int, int, int] | None = None,
) -> list[NeedlePath | None]:
    """Each point's planned path (None: no in-plane path), in the order of ``points``, in frame pixels.
    ``probs`` None: the label map alone (ground truth). ``image_box`` (x0, y0, x1, y1): where the image lies in
    a screenshot or a DICOM frame; paths then enter inside it (the rest is the scanner's text and rulers, not
    skin), and without a skin line at its top row."""
    if not points:
        return []
    trp_pixels, _, critical = _frame_masks(label_map, probs, classes, roles, spacing_mm, params)
    return _plan(points, trp_pixels, critical, skin_row, spacing_mm, params, image_box)


def plan_guidance(
    points: Sequence[TriggerPoint],
    label_map: np.ndarray,
    probs: np.ndarray | None,
    classes: Sequence[str],
    roles: ClassRoles | None,
    spacing_mm: float,
    skin_row: int | None,
    params: GuidanceParams,
    image_box: tuple[int, int, int, int] | None = None,
) -> list[NeedlePath | None]:
    """Fill each point's guidance fields in place and return its path (as ``frame_paths`` plans it).

    nearest_nerve_mm / nearest_critical_mm: from the TrP's own pixels (its 8-connected component of the label
    map, as ``find_trigger_points`` made it) to the nearest pixel of the ``nerve`` class / of any critical class,
    arg-max components under ``params.min_critical_area_mm2`` left out (speckle); NaN when there is none. A TrP
    without an in-plane path keeps side "" and NaN figures, and path_safe False: flagged, never dropped."""
    if not points:
        return []
    trp_pixels, labelled, critical = _frame_masks(label_map, probs, classes, roles, spacing_mm, params)
    paths = _plan(points, trp_pixels, critical, skin_row, spacing_mm, params, image_box)
    components, ids = trp_components(label_map, classes, points, roles)
    # One distance map per structure for all the frame's TrPs (``boundary_distance_mm`` makes one per call).
    to_critical = distance_map_px(labelled)
    nerve = [i for i in critical_class_indices(classes, roles) if classes[i] == NERVE_CLASS]
    to_nerve = distance_map_px(structure_mask(label_map, nerve, spacing_mm, params.min_critical_area_mm2))
    for point, path, component in zip(points, paths, ids, strict=True):
        own = components == component
        point.nearest_critical_mm = _nearest_mm(to_critical, own, spacing_mm)
        point.nearest_nerve_mm = _nearest_mm(to_nerve, own, spacing_mm)
        if path is None:
            point.needle_side, point.path_safe = "", False
            continue
        point.needle_side = path.side
        point.needle_angle_deg = path.angle_deg
        point.needle_depth_mm = path.depth_mm
        point.needle_clearance_mm = path.clearance_mm
        point.path_safe = path.safe
        point.entry_x_px, point.entry_y_px = path.entry_x_px, path.entry_y_px
    return paths


def _frame_masks(
    label_map: np.ndarray,
    probs: np.ndarray | None,
    classes: Sequence[str],
    roles: ClassRoles | None,
    spacing_mm: float,
    params: GuidanceParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TrP pixels, the arg-max critical structures without speckle, the critical mask to avoid)."""
    trp_pixels = np.isin(label_map, trp_class_indices(classes, roles))
    critical_classes = critical_class_indices(classes, roles)
    labelled = structure_mask(label_map, critical_classes, spacing_mm, params.min_critical_area_mm2)
    critical = critical_mask(label_map, probs, classes, roles, params, spacing_mm, labelled=labelled)
    return trp_pixels, labelled, critical


def _plan(
    points: Sequence[TriggerPoint],
    trp_pixels: np.ndarray,
    critical: np.ndarray,
    skin_row: int | None,
    spacing_mm: float,
    params: GuidanceParams,
    image_box: tuple[int, int, int, int] | None,
) -> list[NeedlePath | None]:
    """The paths inside ``image_box`` (the whole frame when None), in frame pixels."""
    height, width = critical.shape
    x0, y0, x1, y1 = image_box if image_box is not None else (0, 0, width, height)
    view_critical, view_trp = critical[y0:y1, x0:x1], trp_pixels[y0:y1, x0:x1]
    view_skin = None if skin_row is None else skin_row - y0
    distance = distance_map_px(view_critical & ~view_trp)  # one map for all the frame's TrPs
    paths: list[NeedlePath | None] = []
    for p in points:
        path = plan_needle_path(
            (p.y_px - y0, p.x_px - x0), view_critical, view_skin, spacing_mm, params,
            exclude=view_trp, distance_px=distance,
        )  # fmt: skip
        if path is not None and (x0, y0) != (0, 0):
            path = replace(
                path, entry_x_px=path.entry_x_px + x0, entry_y_px=path.entry_y_px + y0,
                target_x_px=path.target_x_px + x0, target_y_px=path.target_y_px + y0,
            )  # fmt: skip
        paths.append(path)
    return paths


def _nearest_mm(distance_px: np.ndarray | None, own: np.ndarray, spacing_mm: float) -> float:
    """``needle_path.boundary_distance_mm`` on a distance map made once per frame: NaN without the structure."""
    if distance_px is None or not own.any():
        return math.nan
    return float(distance_px[own].min()) * float(spacing_mm)
