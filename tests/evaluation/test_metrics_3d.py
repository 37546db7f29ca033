from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tpnet.core.volume_postprocess import TriggerPoint3D, find_trigger_points_3d
from tpnet.evaluation.metrics import json_safe
from tpnet.evaluation.metrics_3d import (
    VolumeRecord,
    aggregate_3d,
    bootstrap_ci_3d,
    bootstrap_samples_3d,
    evaluation_report_3d,
    volume_record,
)

MATCH_MM = 5.0
CLASSES = ("background", "active_trp", "latent_trp", "vessel", "nerve")
SPACING_MM = (0.5, 0.1, 0.1)  # (slice, row, column)


def trp(
    x_mm: float, y_mm: float, z_mm: float, volume_mm3: float = 10.0, extent_mm: float = 3.0
) -> TriggerPoint3D:
    return TriggerPoint3D(
        trp_id=1,
        class_name="active_trp",
        label=1,
        centroid_mm=(x_mm, y_mm, z_mm),
        volume_mm3=volume_mm3,
        extent_along_sweep_mm=extent_mm,
        slices=(0, 5),
        voxel_count=100,
        stiffness_kpa_mean=math.nan,
        stiffness_kpa_max=math.nan,
        swe_coverage=math.nan,
        confidence=math.nan,
        nearest_critical_mm=math.nan,
    )


def record(
    pred: list[TriggerPoint3D], gt: list[TriggerPoint3D], subject: str = "s1", sample: str = "v1"
) -> VolumeRecord:
    return volume_record(pred, gt, sample_id=sample, subject_id=subject, match_mm=MATCH_MM)


def test_perfect_detection_from_label_maps_scores_f1_one_and_no_error() -> None:
    labels = np.zeros((8, 30, 40), np.uint8)
    labels[1:6, 5:20, 5:20] = 1  # active: 5 slices x 15 x 15 pixels = 5.6 mm3
    labels[3:8, 18:28, 25:38] = 2  # latent: 5 x 10 x 13 = 3.25 mm3, both above the 2 mm3 floor
    points = find_trigger_points_3d(labels, SPACING_MM, CLASSES)
    assert len(points) == 2

    rec = record(points, points)
    metrics = aggregate_3d([rec])

    assert (rec.tp, rec.fp, rec.fn) == (2, 0, 0)
    assert metrics["det3d_f1"] == metrics["det3d_precision"] == metrics["det3d_recall"] == 1.0
    assert metrics["loc3d_err_mm"] == metrics["volume_rel_err"] == metrics["volume_rel_bias"] == 0.0
    assert metrics["extent_err_mm"] == 0.0
    assert (metrics["n_gt_3d"], metrics["n_pred_3d"], metrics["n_volumes"], metrics["n_subjects"]) == (
        2,
        2,
        1,
        1,
    )


def test_one_miss_and_one_false_positive_give_exact_precision_recall_f1() -> None:
    gt = [trp(0, 0, 0), trp(20, 0, 0), trp(40, 0, 0)]
    # Two hits (1 mm and 2 mm off), the TrP at x = 40 missed, a false positive at x = 80.
    pred = [trp(1, 0, 0), trp(20, 0, 2), trp(80, 0, 0)]

    rec = record(pred, gt)
    metrics = aggregate_3d([rec])

    assert (rec.tp, rec.fp, rec.fn) == (2, 1, 1)
    assert metrics["det3d_precision"] == pytest.approx(2 / 3)
    assert metrics["det3d_recall"] == pytest.approx(2 / 3)
    assert metrics["det3d_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert metrics["loc3d_err_mm"] == pytest.approx(1.5)


def test_matching_is_three_dimensional_the_offset_along_the_sweep_decides() -> None:
    gt = [trp(0, 0, 0)]
    # Both are 3 mm off in (x, y), inside 5 mm in 2-D; along the sweep one is 3.9 mm off (4.92 mm in 3-D),
    # the other 4.1 mm (5.08 mm in 3-D).
    inside = record([trp(3, 0, 3.9)], gt)
    outside = record([trp(3, 0, 4.1)], gt)

    assert (inside.tp, inside.fp, inside.fn) == (1, 0, 0)
    assert inside.loc_err_sum_mm == pytest.approx(math.sqrt(3**2 + 3.9**2))
    assert (outside.tp, outside.fp, outside.fn) == (0, 1, 1)
    assert math.isnan(aggregate_3d([outside])["loc3d_err_mm"])


def test_volume_and_extent_errors_have_the_sign_and_size_of_the_pairs() -> None:
    gt = [trp(0, 0, 0, volume_mm3=10.0, extent_mm=3.0), trp(30, 0, 0, volume_mm3=10.0, extent_mm=3.0)]
    # One over-segmented by 20 % and 1 mm longer, one under-segmented by 40 % and 0.5 mm shorter.
    pred = [trp(0, 0, 0, volume_mm3=12.0, extent_mm=4.0), trp(30, 0, 0, volume_mm3=6.0, extent_mm=2.5)]

    metrics = aggregate_3d([record(pred, gt)])

    assert metrics["volume_rel_err"] == pytest.approx((0.2 + 0.4) / 2)
    assert metrics["volume_rel_bias"] == pytest.approx((0.2 - 0.4) / 2)
    assert metrics["extent_err_mm"] == pytest.approx((1.0 + 0.5) / 2)


def test_without_a_true_trigger_point_detection_is_undefined_not_perfect() -> None:
    nothing_predicted = record([], [])
    false_alarm = record([trp(0, 0, 0)], [], sample="v2")

    for records in ([nothing_predicted], [nothing_predicted, false_alarm]):
        metrics = aggregate_3d(records)
        for key in ("det3d_f1", "det3d_precision", "det3d_recall", "loc3d_err_mm", "volume_rel_err"):
            assert math.isnan(metrics[key]), key
    report = evaluation_report_3d([nothing_predicted, false_alarm], n_boot=50)
    assert all(math.isnan(bound) for bound in report["ci95"]["det3d_f1"])
    assert "nothing to find" in report["undefined"]["det3d_f1"]
    assert report["n_pred_3d"] == 1
    # NaN turns into null in metrics.json.
    assert json.loads(json.dumps(json_safe(report), allow_nan=False))["det3d_f1"] is None


def test_precision_without_predictions_is_undefined_while_recall_is_zero() -> None:
    metrics = aggregate_3d([record([], [trp(0, 0, 0)])])
    assert math.isnan(metrics["det3d_precision"])
    assert metrics["det3d_recall"] == 0.0
    assert metrics["det3d_f1"] == 0.0
    assert evaluation_report_3d([record([], [trp(0, 0, 0)])], n_boot=10)["undefined"]["det3d_precision"] == (
        "no trigger point predicted"
    )


def test_bootstrap_of_one_subject_collapses_to_the_point_estimate() -> None:
    records = [
        record([trp(0, 0, 0), trp(50, 0, 0)], [trp(1, 0, 1)], sample="v1"),
        record([], [trp(0, 0, 0), trp(9, 9, 9)], sample="v2"),
        record([trp(0, 0, 0.5, volume_mm3=13.0)], [trp(0, 0, 0)], sample="v3"),
    ]
    point = aggregate_3d(records)
    ci = bootstrap_ci_3d(records, n_boot=200, seed=3)

    assert 0 < point["det3d_f1"] < 1
    for key, (lo, hi) in ci.items():
        assert lo == pytest.approx(point[key]) and hi == pytest.approx(point[key]), key


def test_bootstrap_interval_spans_two_subjects_of_different_f1() -> None:
    good = record([trp(0, 0, 0)], [trp(0, 0, 0)], subject="good")  # F1 1
    poor = record([trp(0, 0, 0), trp(50, 0, 0)], [trp(0, 0, 0), trp(0, 0, 30), trp(0, 0, 60)], subject="poor")
    f1_poor = aggregate_3d([poor])["det3d_f1"]  # 2 / (2 + 1 + 2) = 0.4
    assert f1_poor == pytest.approx(0.4)

    lo, hi = bootstrap_ci_3d([good, poor], n_boot=1000, seed=0)["det3d_f1"]

    # Resamples: {poor, poor} a quarter of the time, {good, good} a quarter: the 2.5 and 97.5 percentiles.
    assert lo == pytest.approx(f1_poor)
    assert hi == pytest.approx(1.0)
    assert lo < aggregate_3d([good, poor])["det3d_f1"] < hi


def test_vectorised_bootstrap_equals_recomputing_each_resample() -> None:
    records = [
        record([trp(0, 0, 0)], [trp(0, 0, 1, volume_mm3=8.0)], subject="a", sample="a1"),
        record([trp(0, 0, 0), trp(40, 0, 0)], [trp(2, 0, 0)], subject="a", sample="a2"),
        record([], [trp(0, 0, 0)], subject="b", sample="b1"),
        record([trp(0, 3, 0, extent_mm=5.0)], [trp(0, 0, 0)], subject="c", sample="c1"),
    ]
    n_boot, seed = 25, 7
    samples = bootstrap_samples_3d(records, n_boot=n_boot, seed=seed)

    # The same draws as the module: subjects in sorted order, one row of subject indices per resample.
    subjects = sorted({r.subject_id for r in records})
    draws = np.random.default_rng(seed).integers(0, len(subjects), size=(n_boot, len(subjects)))
    for b, draw in enumerate(draws):
        resample = [r for i in draw for r in records if r.subject_id == subjects[i]]
        expected = aggregate_3d(resample)
        for key, values in samples.items():
            np.testing.assert_allclose(values[b], expected[key], err_msg=f"resample {b}, {key}")


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    records = [
        record([trp(0, 0, 0)], [trp(0, 0, 0)], subject="a"),
        record([trp(0, 0, 0)], [trp(0, 0, 9)], subject="b"),
        record([trp(0, 0, 0), trp(30, 0, 0)], [trp(0, 0, 1)], subject="c"),
        record([], [trp(0, 0, 0)], subject="d"),
    ]
    first = bootstrap_samples_3d(records, n_boot=100, seed=11)
    again = bootstrap_samples_3d(records, n_boot=100, seed=11)
    other = bootstrap_samples_3d(records, n_boot=100, seed=12)

    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["det3d_f1"], other["det3d_f1"])
    assert evaluation_report_3d(records, n_boot=100, seed=11) == evaluation_report_3d(
        records, n_boot=100, seed=11
    )


def test_report_has_the_layout_of_the_2d_metrics_json() -> None:
    records = [record([trp(0, 0, 0)], [trp(0, 0, 1)], subject="a"), record([], [trp(0, 0, 0)], subject="b")]
    report = evaluation_report_3d(records, n_boot=20, seed=5)

    assert report["bootstrap"] == {"n_boot": 20, "seed": 5, "unit": "subject"}
    assert report["matching"]["match_mm"] == MATCH_MM
    assert set(report["ci95"]) == {
        "det3d_f1",
        "det3d_precision",
        "det3d_recall",
        "loc3d_err_mm",
        "volume_rel_err",
        "volume_rel_bias",
        "extent_err_mm",
    }
    assert all(isinstance(bounds, list) and len(bounds) == 2 for bounds in report["ci95"].values())
    assert report["undefined"] == {}
    assert report["det3d_recall"] == 0.5


def test_records_matched_at_different_radii_are_not_pooled() -> None:
    at_5 = record([trp(0, 0, 0)], [trp(0, 0, 0)])
    at_3 = volume_record([trp(0, 0, 0)], [trp(0, 0, 0)], sample_id="v2", subject_id="s2", match_mm=3.0)
    with pytest.raises(ValueError, match="one radius"):
        aggregate_3d([at_5, at_3])
    with pytest.raises(ValueError, match="volume"):
        record([trp(0, 0, 0)], [trp(0, 0, 0, volume_mm3=0.0)])
    with pytest.raises(ValueError, match="non-finite"):
        record([trp(math.nan, 0, 0)], [trp(0, 0, 0)])
