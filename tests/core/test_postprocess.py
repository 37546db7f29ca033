from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from tpnet.core.postprocess import (
    PostprocessParams,
    find_trigger_points,
    frame_trp_score,
    labels_from_probs,
    trp_class_indices,
    vessel_class_index,
)

CLASSES = ("background", "active_trp", "latent_trp", "vessel")
BG, ACTIVE, LATENT, VESSEL = range(4)
SPACING_MM = 0.1


def ellipse(shape: tuple[int, int], cx: int, cy: int, a: float, b: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0


@pytest.fixture
def scene() -> dict:
    """Active ellipse at (x=25, y=20), latent at (x=65, y=60), vessel block at x 80..85, y 55..65."""
    shape = (96, 96)
    active = ellipse(shape, 25, 20, 14, 7)
    latent = ellipse(shape, 65, 60, 11, 9)
    labels = np.zeros(shape, np.uint8)
    labels[active] = ACTIVE
    labels[latent] = LATENT
    labels[55:66, 80:86] = VESSEL
    return {"labels": labels, "active": active, "latent": latent}


def test_class_helpers():
    assert trp_class_indices(CLASSES) == [ACTIVE, LATENT]
    assert vessel_class_index(CLASSES) == VESSEL
    assert vessel_class_index(("background", "active_trp")) is None


def test_params_round_trip_and_validation():
    params = PostprocessParams(threshold=0.4, min_area_mm2=1.0, match_mm=3.0)
    assert PostprocessParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="threshold"):
        PostprocessParams(threshold=0.0)
    with pytest.raises(ValueError, match="unknown"):
        PostprocessParams.from_dict({"treshold": 0.5})


def test_centroids_and_areas_in_mm(scene):
    points = find_trigger_points(scene["labels"], SPACING_MM, CLASSES)
    assert [p.trp_id for p in points] == [1, 2]  # sorted by depth: active (y=20) first
    active, latent = points
    assert (active.class_name, active.label) == ("active_trp", ACTIVE)
    assert (latent.class_name, latent.label) == ("latent_trp", LATENT)
    assert active.x_mm == pytest.approx(2.5) and active.y_mm == pytest.approx(2.0)
    assert latent.x_mm == pytest.approx(6.5) and latent.y_mm == pytest.approx(6.0)
    assert active.x_px == pytest.approx(25.0) and active.y_px == pytest.approx(20.0)
    assert active.area_mm2 == pytest.approx(math.pi * 1.4 * 0.7, rel=0.02)
    assert latent.area_mm2 == pytest.approx(math.pi * 1.1 * 0.9, rel=0.02)
    assert active.confidence == 1.0  # ground truth: no probabilities


def test_nearest_vessel_distance(scene):
    active, latent = find_trigger_points(scene["labels"], SPACING_MM, CLASSES)
    assert latent.nearest_vessel_mm == pytest.approx(1.5)  # (65, 60) -> vessel pixel (80, 60)
    assert active.nearest_vessel_mm == pytest.approx(math.hypot(55, 35) * SPACING_MM)  # -> (80, 55)
    no_vessel = scene["labels"].copy()
    no_vessel[no_vessel == VESSEL] = BG
    assert all(math.isnan(p.nearest_vessel_mm) for p in find_trigger_points(no_vessel, SPACING_MM, CLASSES))


def test_stiffness_mean_only_over_valid_swe(scene):
    elasto = np.full(scene["labels"].shape, np.nan, np.float32)
    elasto[scene["active"]] = 20.0
    elasto[:, 25:][scene["active"][:, 25:]] = 50.0  # right half of the active nodule is stiffer
    elasto[18:23, 12:20] = np.nan  # a void with no signal inside the nodule
    expected = float(np.nanmean(elasto[scene["active"]]))
    active, latent = find_trigger_points(scene["labels"], SPACING_MM, CLASSES, elasto_kpa=elasto)
    assert 20.0 < expected < 50.0
    assert active.stiffness_kpa_mean == pytest.approx(expected, rel=1e-6)
    assert math.isnan(latent.stiffness_kpa_mean)  # no SWE under it
    assert all(
        math.isnan(p.stiffness_kpa_mean) for p in find_trigger_points(scene["labels"], SPACING_MM, CLASSES)
    )


def test_min_area_and_majority_class():
    labels = np.zeros((32, 32), np.uint8)
    labels[2:4, 2:4] = ACTIVE  # 4 px = 0.04 mm^2
    labels[10:20, 10:20] = LATENT  # 100 px = 1 mm^2
    labels[10:12, 10:20] = ACTIVE  # minority active strip inside the same nodule
    labels[20, 20] = LATENT  # diagonal neighbour: 8-connectivity keeps it in the nodule
    points = find_trigger_points(labels, SPACING_MM, CLASSES, min_area_mm2=0.5)
    assert len(points) == 1
    assert points[0].class_name == "latent_trp"
    assert points[0].area_mm2 == pytest.approx(1.01)
    assert len(find_trigger_points(labels, SPACING_MM, CLASSES)) == 2


def test_confidence_from_probs(scene):
    probs = np.zeros((4, 96, 96), np.float32)
    probs[BG] = 1.0
    probs[:, scene["active"]] = np.array([0.1, 0.6, 0.3, 0.0])[:, None]
    (active,) = [
        p for p in find_trigger_points(scene["labels"], SPACING_MM, CLASSES, probs=probs) if p.label == 1
    ]
    assert active.confidence == pytest.approx(0.9)
    assert frame_trp_score(probs, CLASSES) == pytest.approx(0.9)


def test_frame_that_is_all_trigger_point_gives_one_point_without_warnings():
    # An untrained model can call every pixel TrP: the background component is then empty.
    labels = np.full((32, 32), 1, np.uint8)
    probs = np.zeros((4, 32, 32), np.float32)
    probs[1] = 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (point,) = find_trigger_points(labels, SPACING_MM, CLASSES, probs=probs)
    assert point.confidence == pytest.approx(0.8)
    assert point.area_mm2 == pytest.approx(32 * 32 * SPACING_MM**2)


def test_labels_from_probs_keeps_nodule_single_class():
    probs = np.zeros((4, 32, 32), np.float32)
    probs[BG] = 1.0
    # Left part leans active, right part latent; pixel argmax would split the nodule.
    probs[:, 8:16, 4:14] = np.array([0.1, 0.6, 0.3, 0.0])[:, None, None]
    probs[:, 8:16, 14:20] = np.array([0.2, 0.3, 0.4, 0.1])[:, None, None]
    # Summed TrP 0.6 beats the threshold even though background is the single most likely class.
    probs[:, 8:16, 20:22] = np.array([0.4, 0.3, 0.3, 0.0])[:, None, None]
    # Small confident blob: dropped, and it takes the non-TrP argmax (vessel here), not blindly 0.
    probs[:, 26:28, 26:28] = np.array([0.05, 0.8, 0.0, 0.15])[:, None, None]
    labels = labels_from_probs(probs, CLASSES, PostprocessParams(threshold=0.5, min_area_mm2=0.5), SPACING_MM)
    assert labels.dtype == np.uint8
    assert np.all(labels[8:16, 4:22] == ACTIVE)
    assert np.all(labels[26:28, 26:28] == VESSEL)
    assert np.count_nonzero(labels == ACTIVE) == 8 * 18
    assert not np.any(labels == LATENT)
    # Same probabilities with min area 0 keep the small blob as a TrP.
    kept = labels_from_probs(probs, CLASSES, PostprocessParams(min_area_mm2=0.0), SPACING_MM)
    assert np.all(kept[26:28, 26:28] == ACTIVE)


def test_labels_from_probs_threshold_and_errors():
    probs = np.zeros((4, 8, 8), np.float32)
    probs[BG] = 0.55
    probs[LATENT] = 0.45
    params = PostprocessParams(min_area_mm2=0.0)
    assert np.all(labels_from_probs(probs, CLASSES, params, SPACING_MM) == BG)
    assert np.all(labels_from_probs(probs, CLASSES, PostprocessParams(0.4, 0.0), SPACING_MM) == LATENT)
    with pytest.raises(ValueError, match="K=4"):
        labels_from_probs(probs[:3], CLASSES, params, SPACING_MM)


def test_nearest_vessel_matches_brute_force_on_random_shapes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = np.where(rng.random((40, 40)) < 0.3, VESSEL, BG).astype(np.uint8)
        labels[rng.integers(0, 36) :][:4, 10:14] = ACTIVE
        labels[5:9, rng.integers(0, 36) :][:, :4] = LATENT
        vessel_yx = np.argwhere(labels == VESSEL)
        for p in find_trigger_points(labels, SPACING_MM, CLASSES, min_vessel_area_mm2=0.0):  # every speck counts
            brute = np.hypot(vessel_yx[:, 0] - p.y_px, vessel_yx[:, 1] - p.x_px).min() * SPACING_MM
            assert p.nearest_vessel_mm == pytest.approx(brute)


def test_ring_around_a_vessel_has_its_centroid_on_the_vessel():
    labels = np.zeros((32, 32), np.uint8)
    labels[ellipse((32, 32), 16, 16, 10, 10)] = ACTIVE
    labels[ellipse((32, 32), 16, 16, 6, 6)] = VESSEL
    (ring,) = find_trigger_points(labels, SPACING_MM, CLASSES)
    assert (ring.x_px, ring.y_px) == pytest.approx((16.0, 16.0))
    assert ring.nearest_vessel_mm == pytest.approx(0.0)


def test_min_mean_prob_drops_a_component_that_only_just_passes_the_threshold():
    """A nodule with a confident core and a texture patch just over the threshold, both larger than the minimum
    area: the minimum mean probability removes the patch (its pixels take the non-TrP argmax) and keeps the
    nodule whole, rim included; the found trigger points agree."""
    probs = np.zeros((4, 40, 40), np.float32)
    probs[BG] = 1.0
    probs[:, 4:16, 4:16] = np.array([0.45, 0.55, 0.0, 0.0])[:, None, None]  # nodule rim: summed TrP 0.55
    probs[:, 7:13, 7:13] = np.array([0.05, 0.95, 0.0, 0.0])[:, None, None]  # its core
    probs[:, 24:34, 20:34] = np.array([0.4, 0.3, 0.25, 0.05])[:, None, None]  # texture: summed TrP 0.55
    plain = PostprocessParams(threshold=0.5, min_area_mm2=0.5)
    strict = PostprocessParams(threshold=0.5, min_area_mm2=0.5, min_mean_prob=0.6)
    assert (
        len(find_trigger_points(labels_from_probs(probs, CLASSES, plain, SPACING_MM), SPACING_MM, CLASSES))
        == 2
    )
    labels = labels_from_probs(probs, CLASSES, strict, SPACING_MM)
    assert np.all(labels[4:16, 4:16] == ACTIVE)  # nodule mean (36*0.95 + 108*0.55) / 144 = 0.65: kept whole
    assert np.all(labels[24:34, 20:34] == BG)  # texture mean 0.55: dropped
    (point,) = find_trigger_points(labels, SPACING_MM, CLASSES, probs=probs)
    assert (point.x_px, point.y_px) == pytest.approx((9.5, 9.5))
    assert point.confidence == pytest.approx(0.65)


def test_params_without_min_mean_prob_load_as_zero():
    """Checkpoints and model files saved before min_mean_prob existed keep working, with nothing dropped."""
    old = {"threshold": 0.4, "min_area_mm2": 1.0, "match_mm": 3.0}
    assert PostprocessParams.from_dict(old).min_mean_prob == 0.0
    with pytest.raises(ValueError, match="min_mean_prob"):
        PostprocessParams(min_mean_prob=1.0)


def test_evidence_fields_peak_probability_and_active_share(scene):
    """Issue #14: the component's own evidence the detection calibration reads."""
    probs = np.zeros((4, 96, 96), np.float32)
    probs[BG] = 1.0
    probs[:, scene["active"]] = np.array([0.2, 0.6, 0.2, 0.0])[:, None]
    probs[:, 20, 25] = np.array([0.05, 0.9, 0.05, 0.0])  # one peak pixel
    active = next(
        p for p in find_trigger_points(scene["labels"], SPACING_MM, CLASSES, probs=probs) if p.label == 1
    )
    assert active.raw_confidence == active.confidence
    assert active.max_prob == pytest.approx(0.95)
    inside = probs[:, scene["active"]]
    assert active.active_fraction == pytest.approx(inside[1].sum() / inside[1:3].sum(), rel=1e-5)
    ground_truth = find_trigger_points(scene["labels"], SPACING_MM, CLASSES)[0]
    assert math.isnan(ground_truth.max_prob) and math.isnan(ground_truth.active_fraction)


def test_stiffness_median_sd_coverage_and_contrast_with_the_surrounding_ring(scene):
    elasto = np.full(scene["labels"].shape, 10.0, np.float32)  # muscle around: 10 kPa
    rows, cols = np.nonzero(scene["active"])
    values = np.where(cols < 25, 20.0, 40.0).astype(np.float32)
    elasto[rows, cols] = values
    elasto[rows[cols > 30], cols[cols > 30]] = np.nan  # part of the nodule without signal
    active, latent = find_trigger_points(scene["labels"], SPACING_MM, CLASSES, elasto_kpa=elasto)
    valid = elasto[scene["active"]]
    valid = valid[np.isfinite(valid)]
    assert active.stiffness_kpa_median == pytest.approx(float(np.median(valid)))
    assert active.stiffness_kpa_sd == pytest.approx(float(np.std(valid, ddof=1)), rel=1e-5)
    assert active.swe_coverage == pytest.approx(valid.size / scene["active"].sum())
    assert active.stiffness_contrast == pytest.approx(np.median(valid) / 10.0)
    assert latent.swe_coverage == 1.0 and latent.stiffness_contrast == pytest.approx(1.0)
    no_swe = find_trigger_points(scene["labels"], SPACING_MM, CLASSES)[0]
    assert math.isnan(no_swe.swe_coverage) and math.isnan(no_swe.stiffness_kpa_median)


def test_vessel_fragments_below_the_minimum_area_are_not_used_for_distances(scene):
    labels = scene["labels"].copy()
    labels[20, 45] = VESSEL  # one stray pixel (0.01 mm2) near the active nodule
    active, latent = find_trigger_points(labels, SPACING_MM, CLASSES)
    assert latent.nearest_vessel_mm == pytest.approx(1.5)  # the real vessel, as without the speck
    assert active.nearest_vessel_mm == pytest.approx(math.hypot(55, 35) * SPACING_MM)
    speck_counts = find_trigger_points(labels, SPACING_MM, CLASSES, min_vessel_area_mm2=0.0)[0]
    assert speck_counts.nearest_vessel_mm == pytest.approx(2.0)  # (25, 20) -> (45, 20)
