"""Needle guidance judged on the true critical structures, and critical-structure detection (issue #16)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tpnet.core.guidance import frame_paths
from tpnet.core.needle_path import GuidanceParams
from tpnet.core.postprocess import PostprocessParams, find_trigger_points
from tpnet.evaluation.cli import _guidance_params
from tpnet.evaluation.critical_detection import critical_detection_counts, structure_centroids_mm
from tpnet.evaluation.cross_validation import record_from_dict, record_to_dict
from tpnet.evaluation.evaluate import evaluation_report, frame_skin_row, metric_values, score_frame
from tpnet.evaluation.guidance_metrics import FIELDS
from tpnet.evaluation.metrics import aggregate, undefined_reasons

CLASSES = ("background", "active_trp", "latent_trp", "vessel", "nerve")
ACTIVE, VESSEL, NERVE = 1, 3, 4
SPACING_MM = 0.2
SKIN_ROW = 10
SHAPE = (120, 160)
TRP_CENTRE = (70, 80)  # (row, column)
GUIDANCE = GuidanceParams()  # 3 mm margin
POSTPROCESS = PostprocessParams(min_area_mm2=0.5)


def disk(labels: np.ndarray, centre_yx: tuple[float, float], radius_px: float, label: int) -> None:
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    labels[(yy - centre_yx[0]) ** 2 + (xx - centre_yx[1]) ** 2 <= radius_px**2] = label


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASSES), dtype=np.float32)[labels].transpose(2, 0, 1).copy()


def frame(sample_id: str = "f", subject_id: str = "s", **extra) -> dict:
    return {"sample_id": sample_id, "subject_id": subject_id, "skin_row": SKIN_ROW, **extra}


def trp_only() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    disk(labels, TRP_CENTRE, 5, ACTIVE)
    return labels


def planned_path(pred_labels: np.ndarray):
    """The path tpnet-infer shows for this prediction's one TrP."""
    (trp,) = find_trigger_points(pred_labels, SPACING_MM, CLASSES)
    return frame_paths(
        [trp], pred_labels, one_hot(pred_labels), CLASSES, None, SPACING_MM, SKIN_ROW, GUIDANCE
    )[0]


def score(
    pred_labels: np.ndarray, gt_labels: np.ndarray, guidance: GuidanceParams | None = GUIDANCE, **extra
):
    """The frame's record, scored as evaluation scores it (one-hot probabilities of ``pred_labels``)."""
    probs = one_hot(pred_labels)
    return score_frame(
        probs, gt_labels, None, SPACING_MM, frame(**extra), CLASSES, POSTPROCESS, guidance=guidance
    )[0]


def guidance_counts(pred_labels: np.ndarray, gt_labels: np.ndarray, **extra) -> dict[str, float]:
    return dict(zip(FIELDS, score(pred_labels, gt_labels, **extra).guidance, strict=True))


def test_a_missed_nerve_on_the_planned_path_is_called_safe_but_unsafe():
    pred = trp_only()  # the network sees the TrP and no nerve: every path looks clear
    path = planned_path(pred)
    assert path.safe and math.isinf(path.clearance_mm)
    gt = pred.copy()
    midpoint = ((path.entry_y_px + path.target_y_px) / 2, (path.entry_x_px + path.target_x_px) / 2)
    disk(gt, midpoint, 4, NERVE)  # the nerve it missed lies across that path
    counts = guidance_counts(pred, gt)
    assert counts["trps"] == counts["planned"] == counts["called_safe"] == 1
    assert counts["called_safe_truly_unsafe"] == 1
    assert counts["no_path"] == 0 and counts["clearance_error_count"] == 0  # infinite predicted clearance

    metrics = aggregate([score(pred, gt)], CLASSES)
    assert metrics["guidance/unsafe_called_safe_rate"] == 1.0 and metrics["guidance/safe_share"] == 1.0
    assert metrics["n_called_safe_truly_unsafe"] == 1


def test_a_correct_prediction_has_no_unsafe_path_and_no_clearance_error():
    gt = trp_only()
    disk(gt, (40, 45), 4, NERVE)  # above the TrP, left of it
    disk(gt, (45, 120), 5, VESSEL)  # above the TrP, right of it
    counts = guidance_counts(gt, gt)
    assert counts["planned"] == 1 and counts["called_safe"] == 1  # a way between them exists and is found
    assert counts["called_safe_truly_unsafe"] == 0
    assert counts["clearance_error_count"] == 1
    assert counts["clearance_error_sum_mm"] == pytest.approx(0.0, abs=1e-5)  # float32 distance map


def test_a_trp_boxed_in_is_called_unsafe_and_one_above_the_skin_has_no_path():
    boxed = trp_only()
    boxed[SKIN_ROW + 1 : TRP_CENTRE[0] - 8, :] = VESSEL  # a vessel band across the whole width above it
    counts = guidance_counts(boxed, boxed)
    assert counts["planned"] == 1 and counts["called_safe"] == 0 and counts["called_safe_truly_unsafe"] == 0

    above = np.zeros(SHAPE, np.uint8)
    disk(above, (5, 80), 4, ACTIVE)  # centroid above the skin row
    counts = guidance_counts(above, above)
    assert counts["trps"] == counts["no_path"] == 1 and counts["planned"] == 0
    metrics = aggregate([score(above, above)], CLASSES)
    assert metrics["guidance/no_path_share"] == 1.0
    assert math.isnan(metrics["guidance/unsafe_called_safe_rate"])
    assert undefined_reasons(metrics)["guidance/unsafe_called_safe_rate"] == "no needle path was called safe"


def test_frames_leaving_a_critical_class_unlabelled_are_left_out():
    pred = trp_only()
    path = planned_path(pred)
    gt = pred.copy()
    disk(gt, ((path.entry_y_px + 70) / 2, (path.entry_x_px + 80) / 2), 4, VESSEL)  # missed, on the path
    disk(gt, (100, 20), 4, NERVE)  # missed, far from it
    labelled = score(pred, gt)
    assert labelled.guidance[FIELDS.index("called_safe_truly_unsafe")] == 1
    assert labelled.critical_fn[NERVE] == labelled.critical_fn[VESSEL] == 1

    # A source that does not label nerves: its true critical mask is incomplete, so no guidance counts; its
    # nerve counts are 0 (a nerve it shows as background is unknown, not absent); its vessels still count.
    record = score(pred, gt, unlabelled_classes=[NERVE])
    assert not record.guidance.any()
    assert record.critical_fn[NERVE] == 0 and record.critical_fn[VESSEL] == 1
    metrics = aggregate([record], CLASSES)
    assert metrics["n_guidance_trps"] == 0 and math.isnan(metrics["guidance/safe_share"])
    assert math.isnan(metrics["det_f1/nerve"]) and metrics["det_recall/vessel"] == 0.0


def test_critical_structures_are_counted_one_by_one():
    gt = np.zeros((100, 100), np.uint8)
    disk(gt, (20, 20), 5, NERVE)
    disk(gt, (70, 70), 5, NERVE)
    disk(gt, (20, 70), 6, VESSEL)
    pred = np.zeros_like(gt)
    disk(pred, (25, 20), 5, NERVE)  # the first nerve, 1 mm off (within 5 mm)
    pred[90, 10] = NERVE  # a speck: 0.04 mm2, under the 0.5 mm2 minimum, not a structure
    disk(pred, (20, 70), 6, VESSEL)
    disk(pred, (80, 20), 4, VESSEL)  # a vessel that is not there
    # Centroids in mm (x, y) of the frame, specks left out.
    assert structure_centroids_mm(pred, NERVE, SPACING_MM).tolist() == [pytest.approx([4.0, 5.0])]
    tp, fp, fn = critical_detection_counts(pred, gt, [VESSEL, NERVE], len(CLASSES), SPACING_MM, 5.0)
    assert (tp[NERVE], fp[NERVE], fn[NERVE]) == (1, 0, 1)
    assert (tp[VESSEL], fp[VESSEL], fn[VESSEL]) == (1, 1, 0)
    assert tp[:VESSEL].sum() == fp[:VESSEL].sum() == fn[:VESSEL].sum() == 0

    record = score(pred, gt, guidance=None)
    assert record.guidance is None  # not asked for
    metrics = aggregate([record], CLASSES)
    assert metrics["det_f1/nerve"] == pytest.approx(2 / 3) and metrics["det_recall/nerve"] == 0.5
    assert metrics["det_precision/nerve"] == 1.0 and metrics["det_precision/vessel"] == 0.5
    assert (metrics["n_gt/nerve"], metrics["n_pred/nerve"], metrics["n_pred/vessel"]) == (2, 1, 2)
    assert "guidance/safe_share" not in metrics and math.isnan(metrics["det_f1"])  # no TrP to find

    no_nerve = gt.copy()
    no_nerve[no_nerve == NERVE] = 0
    metrics = aggregate([score(pred, no_nerve, guidance=None)], CLASSES)
    assert math.isnan(metrics["det_f1/nerve"]) and math.isnan(metrics["det_precision/nerve"])
    assert "no true nerve" in undefined_reasons(metrics)["det_f1/nerve"]


def test_report_carries_bootstrap_intervals_and_mlflow_gets_the_rates():
    pred = trp_only()
    path = planned_path(pred)
    missed = pred.copy()
    disk(missed, ((path.entry_y_px + 70) / 2, (path.entry_x_px + 80) / 2), 4, NERVE)
    seen = trp_only()
    disk(seen, (40, 45), 4, NERVE)
    pairs = [(pred, missed), (seen, seen), (seen, seen), (seen, seen)]
    records = [score(p, g, sample_id=f"f{i}", subject_id=f"s{i}") for i, (p, g) in enumerate(pairs)]
    report = evaluation_report(records, CLASSES, n_boot=60, seed=0)
    assert report["guidance/unsafe_called_safe_rate"] == pytest.approx(1 / 4)
    for key in (
        "guidance/unsafe_called_safe_rate",
        "guidance/safe_share",
        "det_f1/nerve",
        "det_recall/vessel",
    ):
        assert key in report["ci95"], key  # subject-bootstrap intervals
    low, high = report["ci95"]["guidance/unsafe_called_safe_rate"]
    assert low == 0.0 and 0.25 < high <= 1.0  # a subject bootstrap of 1 unsafe path in 4 subjects
    values = metric_values(report, "test/")
    assert values["test/guidance/unsafe_called_safe_rate"] == pytest.approx(0.25)
    assert "test/det_f1/nerve" in values and not any(k.startswith("test/n_") for k in values)


def test_skin_row_from_the_bmode_channel_raw_or_z_scored():
    bmode = np.full((60, 40), 0.05, np.float32)
    bmode[12:] = 0.6
    raw = {"image": torch.from_numpy(np.stack([bmode, np.zeros_like(bmode)]))}
    z_scored = {"image": torch.from_numpy(np.stack([(bmode - bmode.mean()) / bmode.std(), bmode]))}
    assert frame_skin_row(raw) == frame_skin_row(z_scored) == 12
    assert frame_skin_row({"skin_row": None}) is None


def test_tpnet_eval_guidance_settings_override_the_models():
    meta = {"guidance": {"min_clearance_mm": 2.0, "max_angle_deg": 60.0}}
    cfg = OmegaConf.create({"guidance": {"min_clearance_mm": 4.0, "critical_prob_threshold": None}})
    chosen = _guidance_params(cfg, meta)
    assert (chosen.min_clearance_mm, chosen.max_angle_deg) == (4.0, 60.0)
    assert chosen.critical_prob_threshold == GuidanceParams().critical_prob_threshold
    assert _guidance_params(OmegaConf.create({}), {}) == GuidanceParams()


def test_structure_and_guidance_counts_survive_the_out_of_fold_records_file():
    gt = trp_only()
    disk(gt, (40, 45), 4, NERVE)
    record = score(gt, gt)
    back = record_from_dict(json.loads(json.dumps(record_to_dict(record))))
    assert back.critical == (VESSEL, NERVE)
    assert np.array_equal(back.critical_tp, record.critical_tp) and np.array_equal(
        back.guidance, record.guidance
    )
    assert (
        aggregate([back], CLASSES)["guidance/safe_share"]
        == aggregate([record], CLASSES)["guidance/safe_share"]
    )
