"""The needle-path planner on hand-built label maps whose right answer is known from geometry."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from tpnet.core.needle_path import (
    SIDES,
    GuidanceParams,
    boundary_distance_mm,
    critical_mask,
    distance_map_px,
    plan_needle_path,
    segment_clearance_mm,
    structure_mask,
)

CLASSES = ("background", "active_trp", "latent_trp", "vessel", "nerve")
BG, ACTIVE, LATENT, VESSEL, NERVE = range(5)
SPACING_MM = 0.2
SKIN_ROW = 10
PARAMS = GuidanceParams()


def disk(shape: tuple[int, int], cy: int, cx: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def scene(shape=(200, 200), target=(100, 100)) -> np.ndarray:
    """A TrP disk (centroid exactly on ``target``) in an otherwise empty frame."""
    labels = np.zeros(shape, np.uint8)
    labels[disk(shape, *target, 6)] = ACTIVE
    return labels


def critical_of(labels: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    return critical_mask(labels, probs, CLASSES, None, PARAMS, SPACING_MM)


def segment_clearance_px(path, critical: np.ndarray) -> float:
    """Exact smallest distance from the path's segment to a critical pixel centre (brute force)."""
    yx = np.argwhere(critical).astype(np.float64)
    a = np.array([path.entry_y_px, path.entry_x_px])
    b = np.array([path.target_y_px, path.target_x_px])
    t = np.clip(((yx - a) @ (b - a)) / np.dot(b - a, b - a), 0.0, 1.0)
    nearest = a + t[:, None] * (b - a)
    return float(np.sqrt(((yx - nearest) ** 2).sum(axis=1)).min())


@pytest.mark.parametrize("mirrored", [False, True])
def test_vessel_on_one_side_means_entering_from_the_other(mirrored):
    labels = scene()
    labels[80:121, 60:76] = VESSEL  # left of the TrP; its nearest pixel centre (100, 75) is 25 px away
    if mirrored:
        labels = labels[:, ::-1].copy()  # target column 100 -> 99, vessel now right of it
    target_x = 99 if mirrored else 100
    path = plan_needle_path((100, target_x), critical_of(labels), SKIN_ROW, SPACING_MM, PARAMS)

    assert path.side == ("left" if mirrored else "right")
    # Every path on the far side moves away from the vessel, so its closest point is the target itself: the
    # clearance is the target's 25 px for every angle, and the tie goes to the shortest path (steepest angle).
    assert path.clearance_mm == pytest.approx(25 * SPACING_MM, abs=1e-6)
    assert path.safe
    assert path.angle_deg == PARAMS.max_angle_deg
    depth_px = 100 - SKIN_ROW
    assert path.depth_mm == pytest.approx(depth_px / math.sin(math.radians(70)) * SPACING_MM)
    run_px = depth_px / math.tan(math.radians(70))
    assert path.entry_x_px == pytest.approx(target_x - run_px if mirrored else target_x + run_px)
    assert (path.entry_y_px, path.target_y_px, path.target_x_px) == (SKIN_ROW, 100, target_x)


def test_trp_boxed_in_by_vessels_is_unsafe_but_still_planned():
    labels = scene()
    labels[86:89, 60:141] = VESSEL  # a lid 12 px above the target
    labels[86:121, 60:63] = VESSEL  # walls 38 px to either side, down past the target
    labels[86:121, 138:141] = VESSEL
    critical = critical_of(labels)
    path = plan_needle_path((100, 100), critical, SKIN_ROW, SPACING_MM, PARAMS)

    assert path is not None and not path.safe
    assert path.clearance_mm < PARAMS.min_clearance_mm
    # Every straight path from the skin crosses the lid or a wall.
    assert path.clearance_mm <= 0.5 * SPACING_MM
    assert segment_clearance_px(path, critical) * SPACING_MM <= 0.5 * SPACING_MM


def test_a_faint_critical_probability_on_the_path_counts_as_touching():
    labels = scene()
    probs = np.zeros((len(CLASSES), *labels.shape), np.float32)
    probs[BG] = 1.0
    probs[BG, 40:46, :] = 0.85  # a band across the frame between skin and target ...
    probs[VESSEL, 40:46, :] = 0.15  # ... that the network thinks may be vessel (arg-max: background)
    assert not (labels == VESSEL).any()

    without = plan_needle_path((100, 100), critical_of(labels), SKIN_ROW, SPACING_MM, PARAMS)
    assert without.clearance_mm == math.inf and without.safe  # nothing in view to hit

    critical = critical_of(labels, probs)
    assert critical[40:46].all() and critical.sum() == 6 * labels.shape[1]
    touching = plan_needle_path((100, 100), critical, SKIN_ROW, SPACING_MM, PARAMS)
    assert touching.clearance_mm == 0.0 and not touching.safe

    probs[VESSEL, 40:46, :] = 0.05  # below critical_prob_threshold (0.1): not a structure
    assert not critical_of(labels, probs).any()


def test_summed_critical_probability_and_the_excluded_target():
    labels = scene()
    probs = np.zeros((len(CLASSES), *labels.shape), np.float32)
    probs[BG] = 1.0
    trp = labels == ACTIVE
    probs[BG, trp], probs[ACTIVE, trp] = 0.0, 0.86
    probs[VESSEL, trp] = probs[NERVE, trp] = 0.07  # each under the threshold, their sum (0.14) over it
    critical = critical_of(labels, probs)
    assert np.array_equal(critical, trp)

    assert plan_needle_path((100, 100), critical, SKIN_ROW, SPACING_MM, PARAMS).clearance_mm == 0.0
    # Excluding the TrP's own pixels (where the needle is meant to go) leaves nothing to avoid.
    path = plan_needle_path((100, 100), critical, SKIN_ROW, SPACING_MM, PARAMS, exclude=trp)
    assert path.clearance_mm == math.inf and path.safe


def test_no_critical_structure_is_safe_along_the_shortest_path():
    path = plan_needle_path((100, 100), critical_of(scene()), SKIN_ROW, SPACING_MM, PARAMS)
    assert path.safe and path.clearance_mm == math.inf
    assert path.side in SIDES and path.angle_deg == PARAMS.max_angle_deg


def test_speck_filter_applies_to_argmax_components_only():
    labels = scene()
    labels[30:32, 30:32] = VESSEL  # 4 px = 0.16 mm2: speckle
    labels[150:160, 150:160] = NERVE  # 100 px = 4 mm2: a structure
    mask = critical_of(labels)
    assert not mask[30:32, 30:32].any() and mask[150:160, 150:160].all()
    assert np.array_equal(structure_mask(labels, [NERVE], SPACING_MM, 0.5), labels == NERVE)

    probs = np.zeros((len(CLASSES), *labels.shape), np.float32)
    probs[BG] = 1.0
    probs[VESSEL, 30:32, 30:32] = 0.6  # the same speck, seen in the probabilities: kept (conservative)
    assert critical_of(labels, probs)[30:32, 30:32].all()


def test_skin_row_fallback_is_the_top_of_the_image():
    path = plan_needle_path((100, 100), critical_of(scene()), None, SPACING_MM, PARAMS)
    assert path.entry_y_px == 0.0
    assert path.depth_mm == pytest.approx(100 / math.sin(math.radians(70)) * SPACING_MM)


def test_no_path_above_the_skin_or_without_an_entry_in_view():
    critical = critical_of(scene())
    assert plan_needle_path((5, 100), critical, SKIN_ROW, SPACING_MM, PARAMS) is None
    assert plan_needle_path((SKIN_ROW, 100), critical, SKIN_ROW, SPACING_MM, PARAMS) is None
    # A 20 px wide strip: a target 190 px deep needs at least 190 / tan(70) = 69 px of run.
    narrow = np.zeros((200, 20), bool)
    assert plan_needle_path((199, 10), narrow, 9, SPACING_MM, PARAMS) is None
    with pytest.raises(ValueError, match="outside"):
        plan_needle_path((250, 100), critical, SKIN_ROW, SPACING_MM, PARAMS)


def test_angle_limits_are_respected():
    labels = scene((200, 800), (100, 400))  # wide: at 15 degrees the entry is 336 px to the side
    labels[30:60, 390:411] = VESSEL  # straight above the target: the flatter the path, the clearer
    critical = critical_of(labels)
    default = plan_needle_path((100, 400), critical, SKIN_ROW, SPACING_MM, PARAMS)
    assert default.angle_deg == PARAMS.min_angle_deg

    narrow = GuidanceParams(min_angle_deg=30, max_angle_deg=50, angle_step_deg=7)
    assert narrow.angles_deg().tolist() == [30, 37, 44, 50]  # both limits tried
    path = plan_needle_path((100, 400), critical, SKIN_ROW, SPACING_MM, narrow)
    assert path.angle_deg == 30.0
    depth_px, run_px = 100 - SKIN_ROW, abs(path.entry_x_px - 400)
    assert math.degrees(math.atan2(depth_px, run_px)) == pytest.approx(30.0)
    assert path.clearance_mm < default.clearance_mm


def test_clearance_never_overstates_the_exact_distance():
    rng = np.random.default_rng(3)
    for trial in range(6):
        shape = (160, 160)
        labels = scene(shape, (110, 80))
        for _ in range(4):
            cy, cx = rng.integers(20, 150, size=2)
            if abs(cy - 110) + abs(cx - 80) > 20:
                labels[disk(shape, cy, cx, rng.uniform(3, 9)) & (labels == BG)] = VESSEL
        critical = critical_of(labels)
        path = plan_needle_path((110.0, 80.0), critical, SKIN_ROW, SPACING_MM, PARAMS)
        exact_mm = segment_clearance_px(path, critical) * SPACING_MM
        assert path.clearance_mm <= exact_mm + 1e-6, trial  # float32 distance map
        assert path.clearance_mm > exact_mm - math.sqrt(2) * SPACING_MM, trial
        assert path.safe == (path.clearance_mm >= PARAMS.min_clearance_mm)


def test_distance_map_is_exact_euclidean():
    rng = np.random.default_rng(0)
    structure = rng.random((40, 50)) > 0.97
    yx = np.argwhere(structure)
    yy, xx = np.mgrid[:40, :50]
    brute = np.sqrt(((yy[..., None] - yx[:, 0]) ** 2 + (xx[..., None] - yx[:, 1]) ** 2).min(axis=-1))
    assert np.allclose(distance_map_px(structure), brute, atol=1e-4)
    assert distance_map_px(np.zeros((4, 4), bool)) is None


def test_boundary_distance_between_masks():
    trp = np.zeros((30, 40), bool)
    trp[10:20, 10:20] = True
    vessel = np.zeros_like(trp)
    vessel[12:15, 25:31] = True  # nearest centres: column 19 and 25, same rows
    assert boundary_distance_mm(trp, vessel, 0.5) == pytest.approx(3.0)
    vessel[21, 19] = True  # 2 rows below the TrP's corner pixel (19, 19)
    assert boundary_distance_mm(trp, vessel, 0.5) == pytest.approx(1.0)
    vessel[15, 15] = True
    assert boundary_distance_mm(trp, vessel, 0.5) == 0.0
    assert math.isnan(boundary_distance_mm(trp, np.zeros_like(trp), 0.5))


def test_params_round_trip_and_validation():
    params = GuidanceParams(min_clearance_mm=2.0, angle_step_deg=0.5)
    assert GuidanceParams.from_dict(params.to_dict()) == params
    assert len(GuidanceParams().angles_deg()) == 56  # 15..70 by 1
    with pytest.raises(ValueError, match="unknown"):
        GuidanceParams.from_dict({"min_clearence_mm": 3})
    for bad in (
        {"min_clearance_mm": -1},
        {"min_angle_deg": 0},
        {"min_angle_deg": 50, "max_angle_deg": 40},
        {"max_angle_deg": 90},
        {"angle_step_deg": 0},
        {"critical_prob_threshold": 0},
        {"min_critical_area_mm2": -0.1},
    ):
        with pytest.raises(ValueError):
            GuidanceParams(**bad)


def test_plan_time_on_a_512_frame_is_reported(capsys):
    """Measured, not asserted (a loaded CI machine is slow): printed with -s."""
    labels = scene((512, 512), (300, 256))
    for cy, cx in ((150, 150), (200, 380), (320, 120), (420, 300)):
        labels[disk(labels.shape, cy, cx, 15)] = VESSEL
    critical = critical_of(labels)
    plan_needle_path((300.0, 256.0), critical, SKIN_ROW, SPACING_MM, PARAMS)  # warm-up
    runs = 20
    start = time.perf_counter()
    for _ in range(runs):
        path = plan_needle_path((300.0, 256.0), critical, SKIN_ROW, SPACING_MM, PARAMS)
    ms = (time.perf_counter() - start) / runs * 1e3
    with capsys.disabled():
        print(
            f"\nplan_needle_path on 512x512, 4 vessels: {ms:.2f} ms per plan ({path.side}, {path.angle_deg})"
        )
    assert path is not None


def test_segment_clearance_re_measures_a_planned_path_by_the_same_rule():
    labels = scene()
    labels[80:121, 60:76] = VESSEL
    critical = critical_of(labels)
    path = plan_needle_path((100, 100), critical, SKIN_ROW, SPACING_MM, PARAMS)
    distance = distance_map_px(critical)
    entry, target = (path.entry_x_px, path.entry_y_px), (path.target_x_px, path.target_y_px)
    assert segment_clearance_mm(distance, entry, target, SPACING_MM) == path.clearance_mm
    assert segment_clearance_mm(distance, target, entry, SPACING_MM) == path.clearance_mm  # either direction
    # On another mask (a vessel across the path's upper half) the same segment measures that mask.
    other = np.zeros_like(critical)
    other[40:44, 100:140] = True
    assert segment_clearance_mm(distance_map_px(other), entry, target, SPACING_MM) == 0.0
    assert segment_clearance_mm(None, entry, target, SPACING_MM) == math.inf
    # A level segment 10 rows above a one-pixel structure, spanning its column.
    dot = np.zeros((50, 50), bool)
    dot[30, 25] = True
    assert segment_clearance_mm(distance_map_px(dot), (5, 20), (45, 20), 1.0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="outside"):
        segment_clearance_mm(distance, (-1, 5), target, SPACING_MM)
