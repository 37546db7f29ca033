"""Post-processing calibration on validation frames picks the setting with the best TrP detection F1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tpnet.core.postprocess import PostprocessParams
from tpnet.training.calibrate import calibrate_postprocess

CLASSES = ("background", "active_trp", "latent_trp", "vessel")


class ProbabilityPassThrough(nn.Module):
    """Channel 0 of the input is the summed TrP probability the 'network' should output."""

    size_multiple = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x[:, :1].clamp(1e-4, 1 - 1e-4)
        return torch.cat(
            [torch.log(1 - p), torch.log(p / 2), torch.log(p / 2), torch.full_like(p, -20.0)], dim=1
        )


def _frame(index: int) -> dict:
    prob = torch.full((1, 60, 60), 0.01)
    mask = torch.zeros(60, 60, dtype=torch.long)
    prob[0, 10:25, 10:30] = 0.45  # a true TrP the model is unsure about
    mask[10:25, 10:30] = 1
    prob[0, 40:52, 35:55] = 0.35  # a look-alike with a little less probability
    return {"image": prob, "mask": mask, "elasto_kpa": None, "spacing_mm": 0.2,
            "sample_id": f"f{index}", "subject_id": f"s{index}"}  # fmt: skip


def test_calibration_picks_the_threshold_between_truth_and_look_alike():
    frames = [_frame(i) for i in range(3)]
    base = PostprocessParams(threshold=0.5, min_area_mm2=2.0, match_mm=5.0)
    best, grid = calibrate_postprocess(
        ProbabilityPassThrough(), frames, CLASSES, base, torch.device("cpu"), None,
        thresholds=[0.3, 0.4, 0.5], min_areas_mm2=[2.0],
    )  # fmt: skip
    by_threshold = {row["threshold"]: row for row in grid}
    assert by_threshold[0.5]["det_recall"] == 0.0  # the configured value misses every TrP
    assert by_threshold[0.3]["det_precision"] == 0.5  # too low: the look-alike is found too
    assert by_threshold[0.4]["det_f1"] == 1.0
    assert best.threshold == 0.4 and best.min_area_mm2 == 2.0 and best.match_mm == 5.0


def test_minimum_area_removes_small_false_blobs():
    frames = [_frame(i) for i in range(2)]
    for frame in frames:
        frame["image"][0, 40:52, 35:55] = 0.01
        frame["image"][0, 45:48, 5:8] = 0.9  # a 0.36 mm^2 speck
    base = PostprocessParams(threshold=0.4, min_area_mm2=0.0, match_mm=5.0)
    best, _ = calibrate_postprocess(
        ProbabilityPassThrough(), frames, CLASSES, base, torch.device("cpu"), None,
        thresholds=[0.4], min_areas_mm2=[0.0, 1.0],
    )  # fmt: skip
    assert best.min_area_mm2 == 1.0


def test_calibration_picks_a_minimum_mean_probability_where_no_threshold_separates_truth_from_texture():
    """A true TrP: a confident core (0.9) smaller than the minimum area in a 0.45 rim; a texture look-alike:
    flat 0.55, large. Threshold 0.4 finds both, 0.5 keeps the look-alike and only the TrP's core (too small),
    0.6 neither. Only a minimum mean probability of 0.6 at threshold 0.4 finds the TrP alone (its mean is
    (36 * 0.9 + 64 * 0.45) / 100 = 0.61)."""
    frames = []
    for index in range(3):
        prob = torch.full((1, 60, 60), 0.01)
        mask = torch.zeros(60, 60, dtype=torch.long)
        prob[0, 10:20, 10:20] = 0.45
        prob[0, 12:18, 12:18] = 0.9  # 1.44 mm^2 < min_area_mm2
        mask[10:20, 10:20] = 1
        prob[0, 40:52, 35:55] = 0.55
        frames.append({"image": prob, "mask": mask, "elasto_kpa": None, "spacing_mm": 0.2,
                       "sample_id": f"f{index}", "subject_id": f"s{index}"})  # fmt: skip
    base = PostprocessParams(threshold=0.5, min_area_mm2=2.0, match_mm=5.0)
    best, grid = calibrate_postprocess(
        ProbabilityPassThrough(), frames, CLASSES, base, torch.device("cpu"), None,
        thresholds=[0.4, 0.5, 0.6], min_areas_mm2=[2.0], min_mean_probs=[0.0, 0.3, 0.6],
    )  # fmt: skip
    rows = {(row["threshold"], row["min_mean_prob"]): row for row in grid}
    # A minimum mean at or under the threshold drops nothing: scored once, as 0.
    assert set(rows) == {(0.4, 0.0), (0.4, 0.6), (0.5, 0.0), (0.5, 0.6), (0.6, 0.0)}
    assert rows[(0.4, 0.0)]["det_precision"] == 0.5 and rows[(0.4, 0.0)]["det_recall"] == 1.0
    assert max(row["det_f1"] for key, row in rows.items() if key[1] == 0.0) < 1.0
    assert rows[(0.4, 0.6)]["det_f1"] == 1.0
    assert (best.threshold, best.min_area_mm2, best.min_mean_prob) == (0.4, 2.0, 0.6)


def test_calibration_keeps_the_configured_minimum_mean_probability_when_it_makes_no_difference():
    frames = [_frame(i) for i in range(2)]
    base = PostprocessParams(threshold=0.4, min_area_mm2=2.0, match_mm=5.0)
    best, grid = calibrate_postprocess(
        ProbabilityPassThrough(), frames, CLASSES, base, torch.device("cpu"), None,
        thresholds=[0.4], min_areas_mm2=[2.0], min_mean_probs=[0.42, 0.0],  # the simpler one last
    )  # fmt: skip
    assert [row["det_f1"] for row in grid] == [1.0, 1.0]  # the TrP (mean 0.45) survives 0.42 too
    assert best.min_mean_prob == 0.0


def test_frames_without_a_true_trigger_point_keep_the_configured_post_processing():
    """F1 is undefined with nothing to find: no setting can win, so calibration must not pick the first grid row."""
    frames = [_frame(i) for i in range(2)]
    for frame in frames:
        frame["mask"][:] = 0
        frame["image"][0] = 0.01  # nothing predicted either: every setting's F1 is NaN
    base = PostprocessParams(threshold=0.5, min_area_mm2=2.0, match_mm=5.0)
    best, grid = calibrate_postprocess(
        ProbabilityPassThrough(), frames, CLASSES, base, torch.device("cpu"), None,
        thresholds=[0.3, 0.5], min_areas_mm2=[1.0, 2.0],
    )  # fmt: skip
    assert all(row["det_f1"] != row["det_f1"] for row in grid)
    assert best == base


def test_active_latent_is_separable_only_when_the_balanced_accuracy_ci_lies_above_chance():
    from tpnet.training.calibrate import active_latent_test

    rng = np.random.default_rng(0)
    subjects = [f"s{i % 12}" for i in range(240)]
    truth = rng.random(240) < 0.35  # active TrPs are the minority
    all_latent = active_latent_test(subjects, truth, [0.2] * 240, n_boot=200, seed=0)
    # Plain accuracy would be the latent share (~0.65) and look like skill; balanced accuracy is chance.
    assert all_latent["value"] == pytest.approx(0.5) and not all_latent["separable"]
    coin = active_latent_test(subjects, truth, rng.random(240), n_boot=200, seed=0)
    assert coin["ci95"][0] <= 0.5 and not coin["separable"]
    told = active_latent_test(subjects, truth, np.where(truth, 0.8, 0.2), n_boot=200, seed=0)
    assert told["value"] == 1.0 and told["separable"]
    assert not active_latent_test([], [], [], n_boot=10, seed=0)["separable"]
