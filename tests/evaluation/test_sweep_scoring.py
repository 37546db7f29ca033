"""Scoring sweeps as 3-D trigger points during evaluation (issue #17, tpnet.evaluation.sweeps)."""

from __future__ import annotations

import numpy as np
import pytest

from tpnet.core.contract import ManifestRow
from tpnet.evaluation.sweeps import SweepScorer, scorer_for_split, sweep_report

CLASSES = ("background", "active_trp", "vessel")


def _frames(volume_id: str, subject: str, labels: np.ndarray) -> list[dict]:
    return [
        {"volume_id": volume_id, "slice_index": z, "slice_spacing_mm": 0.5, "spacing_mm": 0.2,
         "subject_id": subject, "sample_id": f"{volume_id}_z{z}", "elasto_kpa": None, "labels": labels[z]}
        for z in range(labels.shape[0])
    ]  # fmt: skip


def _ball(shape=(12, 40, 40), centre=(6, 20, 20), radius=(3, 10, 10)) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), centre, radius, strict=True)) <= 1
    return inside.astype(np.uint8)


def test_a_perfect_prediction_scores_f1_one_and_a_missed_sweep_lowers_recall():
    scorer = SweepScorer(CLASSES, match_mm=5.0)
    for volume_id, subject, predicted in (("a", "s1", True), ("b", "s2", False)):
        truth = _ball()
        for frame in _frames(volume_id, subject, truth):
            scorer.add(
                frame, frame["labels"] if predicted else np.zeros_like(frame["labels"]), frame["labels"]
            )
        scorer.add(
            {"sample_id": "still", "volume_id": None}, np.zeros((4, 4)), np.zeros((4, 4))
        )  # a frame row
    scorer.finish()
    assert [r.sample_id for r in scorer.records] == ["a", "b"]
    report = sweep_report(scorer, n_boot=200, seed=0)
    assert report["det3d_recall"] == pytest.approx(0.5) and report["det3d_precision"] == pytest.approx(1.0)
    assert report["n_volumes"] == 2 and report["n_subjects"] == 2
    low, high = report["ci95"]["det3d_recall"]
    assert low <= 0.5 <= high


def test_slices_out_of_order_are_refused_naming_the_slice():
    scorer = SweepScorer(CLASSES, match_mm=5.0)
    frames = _frames("a", "s1", _ball())
    scorer.add(frames[0], frames[0]["labels"], frames[0]["labels"])
    with pytest.raises(ValueError, match=r"a_z2: slice 2 of sweep a arrives after 1 slice"):
        scorer.add(frames[2], frames[2]["labels"], frames[2]["labels"])


def test_specks_under_the_volume_threshold_are_not_counted():
    truth = _ball()
    predicted = truth.copy()
    predicted[0, 0, 0] = 1  # one voxel: 0.02 mm^3
    scorer = SweepScorer(CLASSES, match_mm=5.0, min_volume_mm3=1.0)
    for frame in _frames("a", "s1", truth):
        scorer.add(frame, predicted[frame["slice_index"]], frame["labels"])
    (record,) = scorer.finish()
    assert (record.tp, record.fp, record.fn) == (1, 0, 0)


def test_a_split_without_sweeps_gets_no_scorer():
    row = ManifestRow(2, "f", "s", "a.png", None, "m.png", 0.2, None)
    assert scorer_for_split([row], CLASSES, 5.0) is None
    assert scorer_for_split([ManifestRow(2, "v_z0000", "s", "v.npy", None, "m.npy", 0.2, None, slice_index=0)],
                            CLASSES, 5.0) is not None  # fmt: skip
