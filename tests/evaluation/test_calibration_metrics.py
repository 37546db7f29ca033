"""Calibration errors (issue #14): hand-checked ECE and Brier, and through evaluate() before and after a
temperature, with subject-bootstrap CIs and reliability curves in the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_evaluate import CLASSES, make_frame
from torch import nn

from tpnet.core.confidence import Calibration
from tpnet.core.postprocess import PostprocessParams
from tpnet.evaluation import calibration_metrics
from tpnet.evaluation.evaluate import evaluate, evaluation_report


def test_ece_and_brier_by_hand():
    # Four detections stated at 0.95, one of them true: ECE |3.8 - 1| / 4, Brier (0.05^2 + 3 * 0.95^2) / 4.
    counts = calibration_metrics.frame_counts(
        np.full((2, 1, 1), 0.5), np.full((2, 1, 1), 0.5), np.zeros((1, 1), np.int64), [1],
        [(0.95, 0.95, True), (0.95, 0.95, False), (0.95, 0.95, False), (0.95, 0.95, False)],
        0.9, 0.2, False,
    )  # fmt: skip
    metrics = calibration_metrics.metrics_from_totals(counts)
    assert metrics["detection_ece"] == pytest.approx(0.7)
    assert metrics["detection_brier"] == pytest.approx((0.05**2 + 3 * 0.95**2) / 4)
    assert metrics["frame_ece_raw"] == pytest.approx(0.9) and metrics["frame_ece"] == pytest.approx(0.2)
    assert metrics["pixel_ece"] == pytest.approx(0.5)  # top class 0 at 0.5, and it is the true class
    assert metrics["trp_pixel_ece"] == pytest.approx(0.5)  # 0.5 TrP probability on a background pixel
    curve = calibration_metrics.reliability(counts, "detection", "calibrated")
    bin_095 = int(0.95 * calibration_metrics.N_BINS)
    assert curve["count"][bin_095] == 4 and curve["frequency"][bin_095] == pytest.approx(0.25)


def test_no_detection_means_no_detection_ece():
    counts = calibration_metrics.frame_counts(
        np.full((2, 2, 2), 0.5), np.full((2, 2, 2), 0.5), np.zeros((2, 2), np.int64), [1], [], 0.1, 0.1, False
    )
    metrics = calibration_metrics.metrics_from_totals(counts)
    assert np.isnan(metrics["detection_ece"]) and np.isnan(metrics["detection_brier"])


class SoftOracle(nn.Module):
    """The true label map (hidden in channel 1) at a fixed, over-stated confidence: right on 80 % of the pixels
    (a seeded 20 % answer the next class), always stated as 0.99."""

    size_multiple = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = torch.round(x[:, 1] * 10).long()
        flip = torch.from_numpy(np.random.default_rng(0).random(labels.shape[-2:]) < 0.2)
        labels = torch.where(flip, (labels + 1) % len(CLASSES), labels)
        logits = torch.full((labels.shape[0], len(CLASSES), *labels.shape[-2:]), -1.0)
        return logits.scatter(1, labels[:, None], np.log(0.99 / 0.01 * (len(CLASSES) - 1)) - 1.0)


def test_evaluate_measures_errors_before_and_after_with_subject_cis():
    frames = [
        make_frame(f"{s}{i}", s, (48, 48), [(1, (5, 25, 5, 25))] if i % 2 == 0 else [])
        for s in "ABCD"
        for i in range(2)
    ]
    params = PostprocessParams(threshold=0.5, min_area_mm2=0.0)
    args = (SoftOracle(), frames, CLASSES, 8, params)
    plain, records = evaluate(*args)
    softened, _ = evaluate(*args, calibration=Calibration(temperature=3.0))
    assert plain["pixel_ece"] == pytest.approx(plain["pixel_ece_raw"])  # identity: after = before
    assert plain["pixel_ece"] == pytest.approx(0.19, abs=0.02)  # stated 0.99, right ~80 % of the time
    # Softening the over-confident map lowers its calibration error; "raw" is the same model both times.
    assert softened["pixel_ece_raw"] == pytest.approx(plain["pixel_ece_raw"])
    assert softened["pixel_ece"] < plain["pixel_ece"] - 0.1
    report = evaluation_report(records, CLASSES, n_boot=50)
    low, high = report["ci95"]["pixel_ece"]
    assert low <= report["pixel_ece"] <= high
    assert set(report["reliability"]) == {"n_bins", *calibration_metrics.LEVELS}


def _detection_totals(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.5, 1.0, n)
    matched = rng.random(n) < confidence  # perfectly calibrated by construction
    return calibration_metrics.frame_counts(
        np.full((2, 1, 1), 0.5), np.full((2, 1, 1), 0.5), np.zeros((1, 1), np.int64), [1],
        [(c, c, bool(m)) for c, m in zip(confidence, matched, strict=True)], 0.5, 0.5, False,
    )  # fmt: skip


def test_the_noise_floor_is_what_a_perfectly_calibrated_model_scores_on_so_few_items():
    few, many = _detection_totals(40, 0), _detection_totals(20000, 0)
    floor_few = calibration_metrics.ece_noise_floor(few, "detection")
    # Forty perfectly calibrated detections still show an ECE of several hundredths; twenty thousand do not.
    assert 0.04 < floor_few < 0.2 and calibration_metrics.ece_noise_floor(many, "detection") < 0.01
    measured = [
        calibration_metrics.metrics_from_totals(_detection_totals(40, s))["detection_ece"] for s in range(200)
    ]
    assert float(np.mean(measured)) == pytest.approx(floor_few, rel=0.25)
    assert np.isnan(calibration_metrics.ece_noise_floor(np.zeros(calibration_metrics.SIZE), "detection"))
