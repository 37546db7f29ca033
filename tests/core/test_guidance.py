"""plan_guidance: each trigger point of a hand-built label map gets its path and distances, none is dropped."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tpnet.core.guidance import frame_paths, plan_guidance
from tpnet.core.needle_path import GuidanceParams
from tpnet.core.postprocess import find_trigger_points

CLASSES = ("background", "active_trp", "latent_trp", "vessel", "nerve")
BG, ACTIVE, LATENT, VESSEL, NERVE = range(5)
SPACING_MM = 0.2
PARAMS = GuidanceParams()


def disk(shape, cy, cx, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def guided(labels, probs=None, skin_row=10, classes=CLASSES):
    points = find_trigger_points(labels, SPACING_MM, classes, probs=probs)
    paths = plan_guidance(points, labels, probs, classes, None, SPACING_MM, skin_row, PARAMS)
    return points, paths


def test_each_trp_gets_its_path_and_boundary_distances():
    labels = np.zeros((200, 300), np.uint8)
    labels[disk(labels.shape, 100, 100, 6)] = ACTIVE  # TrP 1: a vessel on its left, a nerve below
    # The vessel's nearest pixel centre (100, 75) is 25 px from the centroid, 19 from the rim.
    labels[80:121, 60:76] = VESSEL
    labels[124:134, 95:106] = NERVE  # top row 124: 24 px below the centroid, 18 below the rim
    labels[disk(labels.shape, 100, 230, 6)] = LATENT  # TrP 2: boxed in by vessels
    labels[86:89, 190:271] = VESSEL
    labels[86:121, 190:193] = VESSEL
    labels[86:121, 268:271] = VESSEL
    points, paths = guided(labels)

    free, boxed = points
    assert (free.x_px, boxed.x_px) == (100.0, 230.0)
    assert free.needle_side == "right" and free.path_safe
    assert free.needle_clearance_mm == pytest.approx(paths[0].clearance_mm)
    assert free.needle_clearance_mm == pytest.approx(24 * SPACING_MM)  # at the centroid, from the nerve
    assert free.needle_angle_deg == paths[0].angle_deg and free.needle_depth_mm == paths[0].depth_mm
    assert (free.entry_x_px, free.entry_y_px) == (paths[0].entry_x_px, 10.0)
    assert free.nearest_nerve_mm == pytest.approx(18 * SPACING_MM)
    assert free.nearest_critical_mm == pytest.approx(18 * SPACING_MM)  # the nerve is nearer than the vessel
    assert not boxed.path_safe and boxed.needle_side in ("left", "right")
    assert boxed.needle_clearance_mm < PARAMS.min_clearance_mm
    assert boxed.nearest_critical_mm == pytest.approx(6 * SPACING_MM)  # lid row 88 to the rim's top row 94
    again = frame_paths(points, labels, None, CLASSES, None, SPACING_MM, 10, PARAMS)
    assert [p.clearance_mm for p in again] == [p.clearance_mm for p in paths]


def test_a_trp_without_an_in_plane_path_is_flagged_not_dropped():
    labels = np.zeros((100, 100), np.uint8)
    labels[disk(labels.shape, 5, 50, 3)] = ACTIVE  # above the skin line at row 10
    labels[disk(labels.shape, 60, 50, 4)] = ACTIVE
    points, paths = guided(labels)
    assert len(points) == 2 and paths[0] is None and paths[1] is not None
    shallow = points[0]
    assert shallow.needle_side == "" and not shallow.path_safe
    assert math.isnan(shallow.needle_clearance_mm) and math.isnan(shallow.entry_x_px)
    # No critical structure: distances NaN, the other TrP's path clear (infinite clearance).
    assert math.isnan(points[1].nearest_critical_mm) and math.isnan(points[1].nearest_nerve_mm)
    assert points[1].path_safe and points[1].needle_clearance_mm == math.inf


def test_trp_pixels_never_count_as_critical_and_old_class_lists_have_no_nerve():
    classes = CLASSES[:4]  # the four classes of earlier datasets: no nerve class at all
    labels = np.zeros((120, 120), np.uint8)
    labels[disk(labels.shape, 60, 40, 5)] = ACTIVE
    labels[disk(labels.shape, 60, 80, 5)] = ACTIVE
    probs = np.zeros((4, *labels.shape), np.float32)
    probs[BG] = 1.0
    trp = labels == ACTIVE
    probs[BG, trp], probs[ACTIVE, trp], probs[VESSEL, trp] = 0.0, 0.8, 0.2  # faintly vessel-like nodules
    probs[BG, 30:33, :], probs[VESSEL, 30:33, :] = 0.8, 0.2  # and a faint band above both
    points, _ = guided(labels, probs, classes=classes)
    for point in points:
        assert math.isnan(point.nearest_nerve_mm)
        assert math.isnan(point.nearest_critical_mm)  # the arg-max label map has no vessel
        assert point.needle_clearance_mm == 0.0 and not point.path_safe  # the band crosses every path
    probs[BG, 30:33, :], probs[VESSEL, 30:33, :] = 1.0, 0.0
    points, _ = guided(labels, probs, classes=classes)
    assert all(p.path_safe and p.needle_clearance_mm == math.inf for p in points)  # the nodules' own pixels


def test_paths_enter_inside_the_image_region_of_a_screenshot():
    labels = np.zeros((140, 160), np.uint8)
    labels[disk(labels.shape, 90, 40, 4)] = ACTIVE
    labels[60:100, 50:80] = VESSEL  # on its right: the clear way is from the left
    points = find_trigger_points(labels, SPACING_MM, CLASSES)
    whole = frame_paths(points, labels, None, CLASSES, None, SPACING_MM, None, PARAMS)[0]
    assert whole.side == "left" and whole.entry_y_px == 0.0
    box = (25, 12, 150, 130)  # the image region: x 25..149, y 12..129
    inside = frame_paths(points, labels, None, CLASSES, None, SPACING_MM, None, PARAMS, image_box=box)[0]
    assert inside.entry_y_px == 12.0  # no skin line: the region's top row
    assert (inside.target_x_px, inside.target_y_px) == (40.0, 90.0)  # frame pixels, as the TrP's
    assert whole.entry_x_px < 25.0  # the clear way enters beside the image ...
    assert inside.side == "right" and not inside.safe  # ... so inside it only the way past the vessel is left
