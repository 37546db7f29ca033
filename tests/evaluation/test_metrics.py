from __future__ import annotations

import math

import numpy as np
import pytest

from tpnet.core.postprocess import TriggerPoint
from tpnet.evaluation.metrics import (
    aggregate,
    bootstrap_ci,
    bootstrap_samples,
    frame_auc,
    frame_record,
    match_points,
    undefined_reasons,
)

CLASSES = ("background", "active_trp", "latent_trp", "vessel")


def point(x_mm: float, y_mm: float, class_name: str = "active_trp", confidence: float = 1.0) -> TriggerPoint:
    label = CLASSES.index(class_name)
    nan = math.nan
    return TriggerPoint(0, class_name, label, x_mm * 10, y_mm * 10, x_mm, y_mm, 1.0, nan, confidence, nan)


def record(pred_points, gt_points, subject="s1", sample="f", pred=None, gt=None, score=None):
    pred = np.zeros((4, 4), np.uint8) if pred is None else pred
    gt = np.zeros((4, 4), np.uint8) if gt is None else gt
    return frame_record(
        pred,
        gt,
        pred_points,
        gt_points,
        sample_id=sample,
        subject_id=subject,
        num_classes=4,
        frame_score=score,
    )


def test_two_predictions_near_one_truth_match_once():
    m = match_points([point(0, 0), point(1, 0)], [point(0.5, 0)], match_mm=5.0)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert m.errors_mm == [pytest.approx(0.5)]


def test_beyond_radius_is_not_matched():
    m = match_points([point(0, 0)], [point(5.01, 0)], match_mm=5.0)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    assert match_points([point(0, 0)], [point(3, 4)], match_mm=5.0).tp == 1  # exactly on the radius


def test_matching_maximises_pairs_where_greedy_fails():
    # Greedy nearest-first pairs p0-g0 (2.0 mm) and leaves p1-g1 at 6.5 mm > 5 mm.
    pred = [point(2.0, 0), point(-2.5, 0)]
    gt = [point(0, 0), point(4.0, 0)]
    m = match_points(pred, gt, match_mm=5.0)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert sorted(m.pairs) == [(0, 1), (1, 0)]
    assert sorted(m.errors_mm) == pytest.approx([2.0, 2.5])


def test_class_agreement_among_matches():
    pred = [point(0, 0, "active_trp"), point(10, 0, "latent_trp")]
    gt = [point(0, 0, "latent_trp"), point(10, 0, "latent_trp")]
    assert match_points(pred, gt, 5.0).class_agree == 1


def test_detection_precision_recall_f1_by_hand():
    records = [
        # 2 of 3 true TrPs found, 1 false alarm at 5 mm; the far pair counts at 10 mm.
        record([point(0, 0), point(20, 0), point(40, 7)], [point(0.5, 0), point(20, 1), point(40, 0)]),
        record([point(0, 0)], [], sample="g"),  # a false alarm in a frame without TrP
    ]
    m = aggregate(records, CLASSES)
    tp, fp, fn = 2, 2, 1
    assert m["det_precision"] == pytest.approx(tp / (tp + fp))
    assert m["det_recall"] == pytest.approx(tp / (tp + fn))
    assert m["det_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["det_f1@10mm"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 0))
    assert m["det_f1@3mm"] == m["det_f1"]
    assert m["fp_per_frame"] == pytest.approx(1.0)
    assert m["loc_err_mm"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["class_acc"] == 1.0
    assert (m["n_frames"], m["n_subjects"], m["n_gt_trp"]) == (2, 1, 3)


def test_detection_without_a_true_trigger_point_is_undefined_not_perfect():
    # Nothing to find and nothing found used to score F1 = 1.0: best-checkpoint selection then rewarded a model
    # that predicts nothing. Now every detection score of such frames is NaN, with the reason.
    m = aggregate([record([], [])], CLASSES)
    for key in ("det_precision", "det_recall", "det_f1", "det_f1@3mm", "det_f1@10mm"):
        assert math.isnan(m[key]), key
    assert math.isnan(m["loc_err_mm"]) and math.isnan(m["class_acc"]) and math.isnan(m["frame_auc"])
    assert math.isnan(m["dice/active_trp"]) and math.isnan(m["dice_mean"])
    assert m["fp_per_frame"] == 0.0 and (m["n_gt_trp"], m["n_pred_trp"]) == (0, 0)
    reasons = undefined_reasons(m)
    assert reasons["det_f1"] == reasons["det_precision"] == reasons["det_f1@3mm"]
    assert "no true trigger point" in reasons["det_f1"]
    assert "absent" in reasons["dice/active_trp"] and "one kind" in reasons["frame_auc"]
    assert "fp_per_frame" not in reasons and "n_gt_trp" not in reasons

    false_alarm = aggregate([record([point(0, 0)], [])], CLASSES)
    assert all(math.isnan(false_alarm[k]) for k in ("det_precision", "det_recall", "det_f1"))
    assert false_alarm["fp_per_frame"] == 1.0  # the false alarm still counts where it is defined


def test_predicting_nothing_where_there_is_something_scores_zero():
    m = aggregate([record([], [point(0, 0)]), record([], [])], CLASSES)
    assert m["det_recall"] == 0.0 and m["det_f1"] == 0.0
    assert math.isnan(m["det_precision"])  # 0 / 0: nothing predicted
    assert undefined_reasons(m)["det_precision"] == "no trigger point predicted"


def test_bootstrap_of_a_split_without_trigger_points_has_no_interval():
    records = [record([], [], subject=f"s{i}", sample=f"f{i}") for i in range(4)]
    ci = bootstrap_ci(records, CLASSES, n_boot=50, seed=0)
    assert all(math.isnan(v) for v in ci["det_f1"]) and all(math.isnan(v) for v in ci["det_recall"])
    assert ci["fp_per_frame"] == (0.0, 0.0)


def test_bootstrap_leaves_out_resamples_without_a_trigger_point():
    # Subject A holds the only TrP (found); B and C hold none and one false alarm each. Resamples that draw no A
    # have nothing to find: left out, where they used to add F1 values of 0 (or 1.0 without the false alarms).
    records = [
        record([point(0, 0)], [point(0, 0)], subject="A", sample="a"),
        record([point(9, 9)], [], subject="B", sample="b"),
        record([point(9, 9)], [], subject="C", sample="c"),
    ]
    f1 = bootstrap_samples(records, CLASSES, n_boot=300, seed=0)["det_f1"]
    defined = f1[np.isfinite(f1)]
    assert 0 < len(defined) < len(f1)
    # A drawn k times (k >= 1) with 3 - k false alarms: F1 = 2k / (2k + 3 - k).
    assert set(np.round(defined, 6)) == {0.5, 0.8, 1.0}
    lo, hi = bootstrap_ci(records, CLASSES, n_boot=300, seed=0)["det_f1"]
    assert (lo, hi) == (0.5, 1.0)


def test_dice_is_pooled_over_pixels_not_averaged_over_frames():
    gt1 = np.zeros((4, 4), np.uint8)
    gt1[:2] = 1  # 8 px of active
    pred1 = gt1.copy()  # perfect: frame Dice 1
    gt2 = np.zeros((4, 4), np.uint8)
    gt2[0, 0] = 1
    pred2 = np.zeros((4, 4), np.uint8)
    pred2[3, 3] = 1  # frame Dice 0
    m = aggregate([record([], [], pred=pred1, gt=gt1), record([], [], pred=pred2, gt=gt2)], CLASSES)
    assert m["dice/active_trp"] == pytest.approx(2 * 8 / (2 * 8 + 1 + 1))  # not the frame mean 0.5
    assert m["iou/active_trp"] == pytest.approx(8 / 10)
    assert m["dice/background"] == pytest.approx(2 * 22 / (2 * 22 + 1 + 1))
    assert math.isnan(m["dice/latent_trp"])
    assert m["dice_mean"] == pytest.approx(m["dice/active_trp"])  # latent and vessel absent everywhere


def test_frame_auc_known_values():
    assert frame_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert frame_auc([0.5, 0.5], [False, True]) == pytest.approx(0.5)  # ties count one half
    assert math.isnan(frame_auc([0.1, 0.9], [True, True]))
    records = [
        record([], [point(0, 0)], sample="a", score=0.35),
        record([], [point(0, 0)], sample="b", score=0.8),
        record([], [], sample="c", score=0.1),
        record([], [], sample="d", score=0.4),
    ]
    assert aggregate(records, CLASSES)["frame_auc"] == pytest.approx(0.75)


def test_frame_record_rejects_bad_labels():
    bad = np.full((4, 4), 7, np.uint8)
    with pytest.raises(ValueError, match="frame-42.*label 7"):
        frame_record(bad, bad, [], [], sample_id="frame-42", subject_id="s", num_classes=4)


def varied_records() -> list:
    """Six subjects of varying difficulty, two frames each."""
    rng = np.random.default_rng(1)
    records = []
    for s in range(6):
        for f in range(2):
            gt = [point(10 * i, 0) for i in range((s + f) % 3)]
            pred = [point(p.x_mm + rng.uniform(0, 6), 0) for p in gt[: 1 + s % 2]]
            pred += [point(50, 50)] * (s % 3 == 0)  # a false alarm
            records.append(record(pred, gt, subject=f"s{s}", sample=f"s{s}f{f}", score=float(rng.uniform())))
    return records


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    records = varied_records()
    point_estimate = aggregate(records, CLASSES)
    ci = bootstrap_ci(records, CLASSES, n_boot=300, seed=3)
    assert "n_frames" not in ci
    for key in ("det_f1", "det_recall", "det_precision", "loc_err_mm", "frame_auc"):
        lo, hi = ci[key]
        assert lo <= point_estimate[key] <= hi, key
        assert lo < hi, key
    assert bootstrap_ci(records, CLASSES, n_boot=300, seed=3) == ci
    assert bootstrap_ci(records, CLASSES, n_boot=300, seed=4) != ci


def test_bootstrap_resamples_subjects_as_units():
    # Subject A: two frames, each with a found TrP. Subject B: one frame with a missed TrP.
    records = [
        record([point(0, 0)], [point(0, 0)], subject="A", sample="a1"),
        record([point(0, 0)], [point(0, 0)], subject="A", sample="a2"),
        record([], [point(0, 0)], subject="B", sample="b1"),
    ]
    recall = bootstrap_samples(records, CLASSES, n_boot=200, seed=0)["det_recall"]
    # Drawing 2 subjects: AA -> 1, AB -> 2/3, BB -> 0. Frame-level resampling would also give 1/3, 1/2.
    assert set(np.round(recall, 6)) == {0.0, round(2 / 3, 6), 1.0}


def test_balanced_class_accuracy_does_not_reward_calling_every_trp_the_commoner_type():
    truth = [point(10.0 * i, 5.0, "active_trp") for i in range(3)] + [point(40.0, 5.0, "latent_trp")]
    all_active = [point(p.x_mm, p.y_mm, "active_trp") for p in truth]
    metrics = aggregate([record(all_active, truth)], CLASSES)
    assert metrics["class_acc"] == pytest.approx(0.75)  # looks like skill ...
    assert metrics["class_balanced_acc"] == pytest.approx(0.5)  # ... and is chance
    only_active = aggregate([record(all_active[:3], truth[:3])], CLASSES)
    assert math.isnan(only_active["class_balanced_acc"])  # no latent TrP to recall
    assert "both true active and true latent" in undefined_reasons(only_active)["class_balanced_acc"]
