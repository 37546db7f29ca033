from __future__ import annotations

import math

import numpy as np
import pytest

from tpnet.core.contract import ClassRoles
from tpnet.core.volume_postprocess import (
    DEFAULT_MIN_VOLUME_MM3,
    find_trigger_points_3d,
    label_components_26,
)

CLASSES = ("background", "active_trp", "latent_trp", "vessel", "nerve")
BG, ACTIVE, LATENT, VESSEL, NERVE = range(5)
SPACING_MM = (0.5, 0.1, 0.1)  # (slice, row, column): slices five pixels apart, as in a real sweep


def ellipsoid(
    shape: tuple[int, int, int],
    centre_mm: tuple[float, float, float],
    semi_axes_mm: tuple[float, float, float],
    spacing_mm: tuple[float, float, float],
) -> np.ndarray:
    """Voxels whose centre lies inside the ellipsoid; centre and semi-axes as (z, y, x) in mm."""
    grid = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing_mm, strict=True)), indexing="ij")
    return sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre_mm, semi_axes_mm, strict=True)) <= 1.0


def test_ellipsoid_volume_centroid_and_extent_at_anisotropic_spacing() -> None:
    # Semi-axes 4 mm lateral (x), 2 mm deep (y), 3 mm along the sweep (z); the centre off the voxel grid so
    # that no slice or pixel sits exactly on the surface.
    semi_zyx = (3.0, 2.0, 4.0)
    centre_zyx = (4.25, 3.03, 5.07)
    shape = (18, 56, 96)
    labels = np.zeros(shape, np.uint8)
    labels[ellipsoid(shape, centre_zyx, semi_zyx, SPACING_MM)] = LATENT

    (point,) = find_trigger_points_3d(labels, SPACING_MM, CLASSES)

    true_volume = 4.0 / 3.0 * math.pi * 4.0 * 2.0 * 3.0
    assert point.volume_mm3 == pytest.approx(true_volume, rel=0.05)
    assert point.class_name == "latent_trp"
    x_mm, y_mm, z_mm = point.centroid_mm
    assert abs(x_mm - centre_zyx[2]) < SPACING_MM[2]
    assert abs(y_mm - centre_zyx[1]) < SPACING_MM[1]
    assert abs(z_mm - centre_zyx[0]) < SPACING_MM[0]
    # Slice centres at 1.5, 2.0, ..., 7.0 mm lie within 3 mm of 4.25: slices 3..14, twelve slabs of 0.5 mm.
    assert point.slices == (3, 14)
    assert point.extent_along_sweep_mm == pytest.approx(6.0)


def test_diagonal_touch_across_slices_is_one_component_and_a_gap_makes_two() -> None:
    touching = np.zeros((2, 6, 6), bool)
    touching[0, 1, 1] = touching[1, 2, 2] = True  # share only a corner: 26- but not 6- or 18-neighbours
    count, labels = label_components_26(touching)
    assert count == 1
    assert labels[0, 1, 1] == labels[1, 2, 2] == 1

    apart = np.zeros((2, 6, 6), bool)
    apart[0, 1, 1] = apart[1, 3, 3] = True  # two pixels apart in-plane
    assert label_components_26(apart)[0] == 2

    # The same through the trigger-point finder, with a speck limit of 0 so single voxels count.
    as_labels = np.where(touching, ACTIVE, BG).astype(np.uint8)
    assert len(find_trigger_points_3d(as_labels, SPACING_MM, CLASSES, min_volume_mm3=0.0)) == 1
    as_labels = np.where(apart, ACTIVE, BG).astype(np.uint8)
    assert len(find_trigger_points_3d(as_labels, SPACING_MM, CLASSES, min_volume_mm3=0.0)) == 2


def test_components_join_through_later_slices() -> None:
    # A U shape: two columns in slices 0-2 that meet only in slice 3, so the union has to merge labels that
    # were distinct for three slices (and the per-slice labels of slice 0 are 1 and 2).
    mask = np.zeros((4, 5, 9), bool)
    mask[:, 2, 1] = mask[:, 2, 7] = True
    mask[3, 2, 1:8] = True
    count, labels = label_components_26(mask)
    assert count == 1
    assert set(np.unique(labels[mask])) == {1}


def test_components_match_scipy_on_random_volumes() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(17)
    for _ in range(5):
        mask = rng.random((6, 20, 20)) < 0.2
        ours_count, ours = label_components_26(mask)
        theirs, theirs_count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        assert ours_count == theirs_count
        # Same partition: each of our labels maps to exactly one of theirs and back.
        pairs = set(zip(ours[mask].tolist(), theirs[mask].tolist(), strict=True))
        assert len(pairs) == ours_count


def test_speck_below_min_volume_is_dropped() -> None:
    labels = np.zeros((6, 40, 40), np.uint8)
    labels[1:5, 5:25, 5:25] = ACTIVE  # 4 x 20 x 20 voxels = 8 mm3: kept
    labels[2, 35, 35] = ACTIVE  # one voxel, 0.005 mm3: a speck
    points = find_trigger_points_3d(labels, SPACING_MM, CLASSES)
    assert len(points) == 1
    assert points[0].volume_mm3 == pytest.approx(8.0)
    assert points[0].volume_mm3 >= DEFAULT_MIN_VOLUME_MM3
    assert len(find_trigger_points_3d(labels, SPACING_MM, CLASSES, min_volume_mm3=0.0)) == 2


def test_nearest_critical_counts_the_slice_spacing() -> None:
    labels = np.zeros((8, 30, 30), np.uint8)
    labels[2, 10, 10] = ACTIVE
    labels[5, 13, 14] = VESSEL  # 3 slices, 3 rows, 4 columns away
    spacing = (0.5, 0.1, 0.1)
    (point,) = find_trigger_points_3d(labels, spacing, CLASSES, min_volume_mm3=0.0)
    assert point.nearest_critical_mm == pytest.approx(math.sqrt(1.5**2 + 0.3**2 + 0.4**2), rel=1e-5)

    # Anisotropy decides which one is nearest: one slice away (2 mm) loses to 15 pixels in-plane (1.5 mm),
    # though in voxel steps the neighbouring slice is far closer.
    labels = np.zeros((3, 30, 30), np.uint8)
    labels[1, 10, 10] = ACTIVE
    labels[2, 10, 10] = NERVE
    labels[1, 10, 25] = VESSEL
    (point,) = find_trigger_points_3d(labels, (2.0, 0.1, 0.1), CLASSES, min_volume_mm3=0.0)
    assert point.nearest_critical_mm == pytest.approx(1.5, rel=1e-5)


def test_nearest_critical_matches_a_brute_force_search() -> None:
    rng = np.random.default_rng(3)
    labels = np.zeros((7, 16, 16), np.uint8)
    labels[1:4, 3:7, 3:8] = LATENT
    labels[4:7, 10:14, 9:12] = ACTIVE
    labels[(rng.random(labels.shape) < 0.01) & (labels == BG)] = VESSEL
    spacing = np.array([1.3, 0.2, 0.2])
    points = find_trigger_points_3d(labels, tuple(spacing), CLASSES, min_volume_mm3=0.0)
    assert len(points) == 2
    vessel_mm = np.argwhere(labels == VESSEL) * spacing
    for point in points:
        trp_mm = np.argwhere(labels == point.label) * spacing
        brute = np.sqrt(((trp_mm[:, None, :] - vessel_mm[None, :, :]) ** 2).sum(axis=2)).min()
        assert point.nearest_critical_mm == pytest.approx(brute, rel=1e-5)


def test_nearest_critical_matches_scipy_distance_transform() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(5)
    labels = np.zeros((9, 24, 24), np.uint8)
    labels[2:6, 4:12, 4:10] = ACTIVE
    labels[(rng.random(labels.shape) < 0.003) & (labels == BG)] = NERVE
    spacing = (0.8, 0.12, 0.12)
    (point,) = find_trigger_points_3d(labels, spacing, CLASSES, min_volume_mm3=0.0)
    distance = ndimage.distance_transform_edt(labels != NERVE, sampling=spacing)
    assert point.nearest_critical_mm == pytest.approx(distance[labels == ACTIVE].min(), rel=1e-5)


def test_nearest_critical_is_nan_without_a_critical_voxel() -> None:
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[1, 4:6, 4:6] = ACTIVE
    (point,) = find_trigger_points_3d(labels, SPACING_MM, CLASSES, min_volume_mm3=0.0)
    assert math.isnan(point.nearest_critical_mm)
    assert math.isnan(point.confidence)
    assert math.isnan(point.swe_coverage)


def test_declared_roles_decide_what_is_a_trigger_point() -> None:
    classes = ("background", "nodule", "artery")
    labels = np.zeros((3, 20, 20), np.uint8)
    labels[0:3, 2:12, 2:12] = 1
    labels[1, 15, 15] = 2
    assert (
        find_trigger_points_3d(labels, SPACING_MM, classes, min_volume_mm3=0.0) == []
    )  # the naming rule knows no "nodule"

    roles = ClassRoles(trp=("nodule",), critical=("artery",))
    (point,) = find_trigger_points_3d(labels, SPACING_MM, classes, roles=roles, min_volume_mm3=0.0)
    assert point.class_name == "nodule"
    # The artery counts as critical only by the roles: nearest nodule voxel (1, 11, 11), 0.4 mm in each axis.
    assert point.nearest_critical_mm == pytest.approx(math.hypot(0.4, 0.4), rel=1e-5)


def test_class_is_the_majority_trp_label() -> None:
    labels = np.zeros((3, 20, 20), np.uint8)
    labels[0:3, 2:12, 2:12] = LATENT
    labels[0, 2:12, 2:12] = ACTIVE  # one slab of three: a minority
    (point,) = find_trigger_points_3d(labels, SPACING_MM, CLASSES, min_volume_mm3=0.0)
    assert point.class_name == "latent_trp"


def test_stiffness_ignores_no_signal_voxels() -> None:
    labels = np.zeros((2, 20, 20), np.uint8)
    labels[:, 0:10, 0:10] = ACTIVE  # 200 voxels
    elasto = np.full(labels.shape, np.nan, np.float32)
    elasto[0, 0:5, 0:10] = 20.0  # 50 voxels
    elasto[1, 0:5, 0:10] = 40.0  # 50 voxels
    elasto[:, 15:, 15:] = 500.0  # outside the TrP: must not count
    (point,) = find_trigger_points_3d(labels, SPACING_MM, CLASSES, elasto_kpa=elasto, min_volume_mm3=0.0)
    assert point.stiffness_kpa_mean == pytest.approx(30.0)
    assert point.stiffness_kpa_max == pytest.approx(40.0)
    assert point.swe_coverage == pytest.approx(0.5)

    no_signal = np.full(labels.shape, np.nan, np.float32)
    (point,) = find_trigger_points_3d(labels, SPACING_MM, CLASSES, elasto_kpa=no_signal, min_volume_mm3=0.0)
    assert math.isnan(point.stiffness_kpa_mean) and math.isnan(point.stiffness_kpa_max)
    assert point.swe_coverage == 0.0


def test_confidence_is_the_mean_trp_probability_inside() -> None:
    labels = np.zeros((2, 10, 10), np.uint8)
    labels[:, 0:5, 0:10] = ACTIVE  # 100 voxels, 0.5 mm3
    probs = np.zeros((len(CLASSES), *labels.shape), np.float32)
    probs[BG] = 1.0
    probs[ACTIVE, 0] = 0.6  # slice 0: summed TrP probability 0.6 + 0.3
    probs[LATENT, 0] = 0.3
    probs[ACTIVE, 1] = 0.5  # slice 1: 0.5
    probs[BG, :] -= probs[ACTIVE] + probs[LATENT]
    (point,) = find_trigger_points_3d(labels, SPACING_MM, CLASSES, probs=probs, min_volume_mm3=0.0)
    assert point.confidence == pytest.approx(0.7)


def test_points_are_numbered_along_the_sweep() -> None:
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[6:9, 2:8, 2:8] = ACTIVE  # later slices, shallower
    labels[0:3, 12:18, 12:18] = LATENT
    points = find_trigger_points_3d(labels, SPACING_MM, CLASSES, min_volume_mm3=0.0)
    assert [(p.trp_id, p.class_name, p.slices) for p in points] == [
        (1, "latent_trp", (0, 2)),
        (2, "active_trp", (6, 8)),
    ]


def test_bad_inputs_are_refused() -> None:
    labels = np.zeros((2, 5, 5), np.uint8)
    with pytest.raises(ValueError, match="three positive"):
        find_trigger_points_3d(labels, (0.5, 0.1), CLASSES)
    with pytest.raises(ValueError, match="three positive"):
        find_trigger_points_3d(labels, (0.0, 0.1, 0.1), CLASSES)
    with pytest.raises(ValueError, match="square pixels"):
        find_trigger_points_3d(labels, (0.5, 0.1, 0.2), CLASSES)
    with pytest.raises(ValueError, match="Z, H, W"):
        find_trigger_points_3d(labels[0], SPACING_MM, CLASSES)
    with pytest.raises(ValueError, match="elasto_kpa shape"):
        find_trigger_points_3d(labels, SPACING_MM, CLASSES, elasto_kpa=np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match="probs must be"):
        find_trigger_points_3d(labels, SPACING_MM, CLASSES, probs=np.zeros((2, 2, 5, 5)))
