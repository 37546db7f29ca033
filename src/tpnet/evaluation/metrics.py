"""Metrics clinicians can trust: pooled pixel Dice/IoU, lesion-wise TrP detection in mm, frame AUC,
and subject-level bootstrap confidence intervals.

Pixel Dice hides missed small nodules, so detection is reported lesion-wise: predicted and true
TrPs (active and latent together) are matched one-to-one on centroid distance in mm.

Conventions: F1 = 2TP / (2TP + FP + FN). A metric with nothing to measure is NaN (null in metrics.json),
never a perfect score: detection F1, precision and recall of a split without a true TrP (nothing to find: a
model that predicts nothing would otherwise score 1.0 there, and best-checkpoint selection would reward it),
precision without a predicted TrP, Dice of a class absent from both truth and prediction, localisation error
without matches, AUC with one frame class. ``undefined_reasons`` says why for each. The subject bootstrap
leaves out the resamples in which a metric is undefined (e.g. drawn without any TrP subject): its interval is
conditional on there being something to measure.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from tpnet.core.postprocess import TriggerPoint
from tpnet.evaluation import calibration_metrics, guidance_metrics

DEFAULT_RADII_MM: tuple[float, ...] = (3.0, 5.0, 10.0)


@dataclass
class Matching:
    tp: int
    fp: int
    fn: int
    errors_mm: list[float]
    class_agree: int  # matches whose class (active vs latent) agrees
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (pred index, gt index)


def match_centroids(
    pred_xy_mm: np.ndarray, gt_xy_mm: np.ndarray, match_mm: float
) -> tuple[list[tuple[int, int]], list[float]]:
    """One-to-one matching of (N, D) and (M, D) centroids in mm (D = 2 for frames, 3 for volumes; Hungarian on
    their Euclidean distance); pairs farther than match_mm are rejected. Among matchings, the most pairs within
    the radius wins, then the smallest total distance. Returns the (pred index, gt index) pairs and their
    distances."""
    if len(pred_xy_mm) == 0 or len(gt_xy_mm) == 0:
        return [], []
    pred_xy, gt_xy = np.asarray(pred_xy_mm, np.float64), np.asarray(gt_xy_mm, np.float64)
    if pred_xy.ndim != 2 or pred_xy.shape[1:] != gt_xy.shape[1:]:
        raise ValueError(f"centroids must be (N, D) and (M, D); got {pred_xy.shape} and {gt_xy.shape}")
    # hypot folded over the axes: for D = 2 exactly the distance the 2-D matching has always used.
    dist = functools.reduce(np.hypot, np.moveaxis(pred_xy[:, None, :] - gt_xy[None, :, :], -1, 0))
    # An out-of-radius pair costs more than any set of in-radius pairs, so the assignment first
    # maximises the number of valid matches.
    too_far = dist > match_mm
    cost = np.where(too_far, (max(dist.shape) + 1) * match_mm + 1.0, dist)
    rows, cols = linear_sum_assignment(cost)
    pairs = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if not too_far[r, c]]
    return pairs, [float(dist[r, c]) for r, c in pairs]


def match_points(pred: Sequence[TriggerPoint], gt: Sequence[TriggerPoint], match_mm: float) -> Matching:
    """One-to-one matching of trigger points on centroid distance in mm (``match_centroids``)."""
    pairs, errors_mm = match_centroids(
        np.array([(p.x_mm, p.y_mm) for p in pred]).reshape(-1, 2),
        np.array([(g.x_mm, g.y_mm) for g in gt]).reshape(-1, 2),
        match_mm,
    )
    tp = len(pairs)
    return Matching(
        tp=tp,
        fp=len(pred) - tp,
        fn=len(gt) - tp,
        errors_mm=errors_mm,
        class_agree=sum(pred[r].class_name == gt[c].class_name for r, c in pairs),
        pairs=pairs,
    )


@dataclass
class FrameRecord:
    """Everything the aggregate needs from one frame; all counts are additive over frames."""

    sample_id: str
    subject_id: str
    tp_px: np.ndarray  # (K,) pixels per class
    fp_px: np.ndarray
    fn_px: np.ndarray
    radii_mm: tuple[float, ...]  # detection radii, includes match_mm
    det_tp: np.ndarray  # (R,) aligned with radii_mm
    det_fp: np.ndarray
    det_fn: np.ndarray
    match_mm: float
    loc_errors_mm: list[float]  # at match_mm
    class_agree: int  # at match_mm
    class_matched: int
    frame_score: float
    has_gt_trp: bool
    n_gt_trp: int
    n_pred_trp: int
    # Calibration counts (``calibration_metrics.frame_counts``); None where not measured (validation epochs).
    calibration: np.ndarray | None = None
    # Matches of a true active / latent TrP, and those given the same class (balanced active/latent accuracy).
    active_matched: int = 0
    active_agree: int = 0
    latent_matched: int = 0
    latent_agree: int = 0
    # Critical structures (nerves, vessels; issue #16): their class indices, and per class index (K,) structure
    # counts (``critical_detection``), 0 outside ``critical``; None: not measured (records written before).
    critical: tuple[int, ...] = ()
    critical_tp: np.ndarray | None = None
    critical_fp: np.ndarray | None = None
    critical_fn: np.ndarray | None = None
    # Needle-guidance counts (``guidance_metrics.FIELDS``); None where not measured.
    guidance: np.ndarray | None = None


def pixel_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, ...]:
    """Per-class (tp, fp, fn) pixel counts of two label maps."""
    confusion = np.bincount(
        gt.ravel().astype(np.int64) * num_classes + pred.ravel(), minlength=num_classes**2
    ).reshape(num_classes, num_classes)
    tp = np.diag(confusion)
    return tp, confusion.sum(axis=0) - tp, confusion.sum(axis=1) - tp


def frame_record(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    pred_points: Sequence[TriggerPoint],
    gt_points: Sequence[TriggerPoint],
    *,
    sample_id: str,
    subject_id: str,
    num_classes: int,
    match_radii: Sequence[float] = DEFAULT_RADII_MM,
    match_mm: float = 5.0,
    frame_score: float | None = None,
    calibration: np.ndarray | None = None,
    critical: Sequence[int] = (),
    critical_counts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    guidance: np.ndarray | None = None,
) -> FrameRecord:
    """``frame_score`` defaults to the largest confidence among predicted TrPs (0 without any);
    ``calibration``: the frame's calibration counts, if measured; ``critical``: the critical class indices and
    ``critical_counts`` their (K,) structure (tp, fp, fn) (``critical_detection.critical_detection_counts``);
    ``guidance``: the frame's needle-guidance counts (``guidance_metrics.frame_guidance_counts``)."""
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"{sample_id}: prediction shape {pred_labels.shape} != mask shape {gt_labels.shape}")
    for name, labels in (("mask", gt_labels), ("prediction", pred_labels)):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise ValueError(f"{sample_id}: {name} holds label {int(bad[0])} outside 0..{num_classes - 1}")
    tp_px, fp_px, fn_px = pixel_confusion(pred_labels, gt_labels, num_classes)
    radii = tuple(sorted({float(r) for r in match_radii} | {float(match_mm)}))
    matchings = {r: match_points(pred_points, gt_points, r) for r in radii}
    main = matchings[float(match_mm)]
    by_class = {"active_trp": [0, 0], "latent_trp": [0, 0]}  # true class -> [matched, same class predicted]
    for p, g in main.pairs:
        counts = by_class.get(gt_points[g].class_name)
        if counts is not None:
            counts[0] += 1
            counts[1] += int(pred_points[p].class_name == gt_points[g].class_name)
    if frame_score is None:
        frame_score = max((p.confidence for p in pred_points), default=0.0)
    return FrameRecord(
        sample_id=str(sample_id),
        subject_id=str(subject_id),
        tp_px=tp_px,
        fp_px=fp_px,
        fn_px=fn_px,
        radii_mm=radii,
        det_tp=np.array([matchings[r].tp for r in radii]),
        det_fp=np.array([matchings[r].fp for r in radii]),
        det_fn=np.array([matchings[r].fn for r in radii]),
        match_mm=float(match_mm),
        loc_errors_mm=main.errors_mm,
        class_agree=main.class_agree,
        class_matched=main.tp,
        frame_score=float(frame_score),
        has_gt_trp=len(gt_points) > 0,
        n_gt_trp=len(gt_points),
        n_pred_trp=len(pred_points),
        calibration=calibration,
        active_matched=by_class["active_trp"][0],
        active_agree=by_class["active_trp"][1],
        latent_matched=by_class["latent_trp"][0],
        latent_agree=by_class["latent_trp"][1],
        critical=tuple(int(k) for k in critical),
        critical_tp=None if critical_counts is None else np.asarray(critical_counts[0]),
        critical_fp=None if critical_counts is None else np.asarray(critical_counts[1]),
        critical_fn=None if critical_counts is None else np.asarray(critical_counts[2]),
        guidance=guidance,
    )


# ---- aggregation over additive totals (shared by the point estimate and the bootstrap) ----


@dataclass(frozen=True)
class _Layout:
    """Column layout of the per-frame count matrix."""

    num_classes: int
    radii_mm: tuple[float, ...]
    match_mm: float
    calibrated: bool = False  # every record carries calibration counts
    critical: tuple[int, ...] = ()  # the critical class indices every record shares
    guided: bool = False  # every record carries guidance counts

    def slices(self) -> dict[str, slice]:
        k, r = self.num_classes, len(self.radii_mm)
        sizes = {"tp_px": k, "fp_px": k, "fn_px": k, "det_tp": r, "det_fp": r, "det_fn": r}
        sizes |= {"loc_sum": 1, "loc_count": 1, "agree": 1, "matched": 1, "n_gt": 1, "frames": 1}
        sizes["by_class"] = 4  # active matched, active agree, latent matched, latent agree
        sizes |= {"critical_tp": k, "critical_fp": k, "critical_fn": k}
        if self.calibrated:
            sizes["calibration"] = calibration_metrics.SIZE
        if self.guided:
            sizes["guidance"] = guidance_metrics.SIZE
        out, start = {}, 0
        for name, size in sizes.items():
            out[name] = slice(start, start + size)
            start += size
        return out


def _layout(records: Sequence[FrameRecord], classes: Sequence[str]) -> _Layout:
    if not records:
        raise ValueError("no frames to aggregate")
    first = records[0]
    for rec in records:
        if len(rec.tp_px) != len(classes):
            raise ValueError(
                f"{rec.sample_id}: {len(rec.tp_px)} classes in the record, expected {len(classes)}"
            )
        if rec.radii_mm != first.radii_mm or rec.match_mm != first.match_mm:
            raise ValueError(f"{rec.sample_id}: detection radii differ from {first.sample_id}")
        if rec.critical != first.critical:
            raise ValueError(
                f"{rec.sample_id}: critical classes {list(rec.critical)} differ from {first.sample_id}'s "
                f"{list(first.critical)}"
            )
    calibrated = all(rec.calibration is not None for rec in records)
    guided = all(rec.guidance is not None for rec in records)
    return _Layout(len(classes), first.radii_mm, first.match_mm, calibrated, first.critical, guided)


def _per_class(counts: np.ndarray | None, num_classes: int) -> np.ndarray:
    return np.zeros(num_classes) if counts is None else counts


def _count_matrix(records: Sequence[FrameRecord], layout: _Layout) -> np.ndarray:
    rows = [
        np.concatenate(
            [
                r.tp_px,
                r.fp_px,
                r.fn_px,
                r.det_tp,
                r.det_fp,
                r.det_fn,
                [sum(r.loc_errors_mm), len(r.loc_errors_mm), r.class_agree, r.class_matched, r.n_gt_trp, 1],
                [r.active_matched, r.active_agree, r.latent_matched, r.latent_agree],
                _per_class(r.critical_tp, layout.num_classes),
                _per_class(r.critical_fp, layout.num_classes),
                _per_class(r.critical_fn, layout.num_classes),
                r.calibration if layout.calibrated else [],
                r.guidance if layout.guided else [],
            ]
        )
        for r in records
    ]
    return np.asarray(rows, dtype=np.float64)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def _metrics_from_totals(totals: np.ndarray, layout: _Layout, classes: Sequence[str]) -> dict[str, float]:
    s = {name: totals[sl] for name, sl in layout.slices().items()}
    out: dict[str, float] = {}
    tp, fp, fn = s["tp_px"], s["fp_px"], s["fn_px"]
    present = []
    for k, name in enumerate(classes):
        out[f"dice/{name}"] = _ratio(2 * tp[k], 2 * tp[k] + fp[k] + fn[k])
        out[f"iou/{name}"] = _ratio(tp[k], tp[k] + fp[k] + fn[k])
        if k > 0 and tp[k] + fp[k] + fn[k] > 0:
            present.append(out[f"dice/{name}"])
    out["dice_mean"] = float(np.mean(present)) if present else math.nan

    # Detection is undefined without a true TrP: whatever was predicted, there was nothing to find.
    anything_to_find = s["n_gt"][0] > 0
    for i, radius in enumerate(layout.radii_mm):
        d_tp, d_fp, d_fn = s["det_tp"][i], s["det_fp"][i], s["det_fn"][i]
        f1 = _ratio(2 * d_tp, 2 * d_tp + d_fp + d_fn) if anything_to_find else math.nan
        out[f"det_f1@{radius:g}mm"] = f1
        if radius == layout.match_mm:
            out["det_precision"] = _ratio(d_tp, d_tp + d_fp) if anything_to_find else math.nan
            out["det_recall"] = _ratio(d_tp, d_tp + d_fn)
            out["det_f1"] = f1
            out["fp_per_frame"] = _ratio(d_fp, s["frames"][0])
    out["loc_err_mm"] = _ratio(s["loc_sum"][0], s["loc_count"][0])
    out["class_acc"] = _ratio(s["agree"][0], s["matched"][0])
    # Balanced: the mean of the active and the latent recall among matches. Chance is 0.5 whatever the share of
    # active TrPs; plain class_acc rewards calling every TrP the commoner type.
    a_n, a_ok, l_n, l_ok = s["by_class"]
    out["class_balanced_acc"] = 0.5 * (a_ok / a_n + l_ok / l_n) if a_n > 0 and l_n > 0 else math.nan
    # Critical structures: as for TrPs, nothing to find (no true structure of the class) leaves them undefined.
    for k in layout.critical:
        name, c_tp, c_fp, c_fn = classes[k], s["critical_tp"][k], s["critical_fp"][k], s["critical_fn"][k]
        to_find = c_tp + c_fn > 0
        out[f"det_f1/{name}"] = _ratio(2 * c_tp, 2 * c_tp + c_fp + c_fn) if to_find else math.nan
        out[f"det_precision/{name}"] = _ratio(c_tp, c_tp + c_fp) if to_find else math.nan
        out[f"det_recall/{name}"] = _ratio(c_tp, c_tp + c_fn)
    if layout.calibrated:
        out.update(calibration_metrics.metrics_from_totals(s["calibration"]))
    if layout.guided:
        out.update(guidance_metrics.metrics_from_totals(s["guidance"]))
    return out


def calibration_totals(records: Sequence[FrameRecord], classes: Sequence[str]) -> np.ndarray | None:
    """The pooled calibration counts (``calibration_metrics``), or None when the records carry none."""
    layout = _layout(records, classes)
    if not layout.calibrated:
        return None
    return _count_matrix(records, layout).sum(axis=0)[layout.slices()["calibration"]]


class _AucRanks:
    """Frame AUC by the rank (Mann-Whitney) formula with tied scores counting 1/2, precomputed so
    bootstrap resamples only change per-frame weights."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray) -> None:
        finite = np.isfinite(scores)
        self.finite = finite
        self.positive = positive[finite].astype(np.float64)
        _, self.group = np.unique(scores[finite], return_inverse=True)  # tie groups in score order
        self.n_groups = int(self.group.max()) + 1 if self.group.size else 0

    def auc(self, weights: np.ndarray) -> float:
        w = weights[self.finite]
        pos = np.bincount(self.group, weights=w * self.positive, minlength=self.n_groups)
        neg = np.bincount(self.group, weights=w * (1.0 - self.positive), minlength=self.n_groups)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos <= 0 or n_neg <= 0:
            return math.nan
        neg_below = np.cumsum(neg) - neg
        return float(np.sum(pos * (neg_below + 0.5 * neg)) / (n_pos * n_neg))


def frame_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """ROC AUC of frame scores against frame labels (NaN if either label is absent)."""
    scores_arr = np.asarray(scores, dtype=np.float64)
    return _AucRanks(scores_arr, np.asarray(positive, dtype=bool)).auc(np.ones(len(scores_arr)))


def _auc_ranks(records: Sequence[FrameRecord]) -> _AucRanks:
    scores = np.array([r.frame_score for r in records], dtype=np.float64)
    return _AucRanks(scores, np.array([r.has_gt_trp for r in records]))


def aggregate(records: Sequence[FrameRecord], classes: Sequence[str]) -> dict[str, float]:
    """Pooled metrics over a set of frames (see the module docstring for conventions)."""
    layout = _layout(records, classes)
    totals = _count_matrix(records, layout).sum(axis=0)
    out = _metrics_from_totals(totals, layout, classes)
    out["frame_auc"] = _auc_ranks(records).auc(np.ones(len(records)))
    out["n_frames"] = len(records)
    out["n_subjects"] = len({r.subject_id for r in records})
    out["n_gt_trp"] = int(sum(r.n_gt_trp for r in records))
    out["n_pred_trp"] = int(sum(r.n_pred_trp for r in records))
    s = layout.slices()
    for k in layout.critical:
        tp, fp, fn = (float(totals[s[name]][k]) for name in ("critical_tp", "critical_fp", "critical_fn"))
        out[f"n_gt/{classes[k]}"], out[f"n_pred/{classes[k]}"] = int(tp + fn), int(tp + fp)
    if layout.guided:
        out.update(guidance_metrics.counts_from_totals(totals[s["guidance"]]))
    return out


_NOTHING_TO_FIND = "no true trigger point in these frames: nothing to find"


def undefined_reasons(metrics: dict[str, float]) -> dict[str, str]:
    """Why each NaN metric of an ``aggregate`` result is undefined (metrics.json writes it next to the nulls)."""
    nothing_to_find = metrics.get("n_gt_trp", 0) == 0
    reasons = {}
    for key, value in metrics.items():
        if not (isinstance(value, float) and math.isnan(value)):
            continue
        if key.startswith("det_") and "/" in key:  # a critical structure's detection: det_f1/nerve, ...
            name = key.split("/", 1)[1]
            if metrics.get(f"n_gt/{name}", 0) == 0:
                reasons[key] = f"no true {name} in these frames (or in none that label it): nothing to find"
            else:
                reasons[key] = f"no {name} predicted"
        elif key.startswith(guidance_metrics.PREFIX):
            reasons[key] = guidance_metrics.undefined_reason(key)
        elif key.startswith(("det_", "loc_err_mm", "class_acc", "class_balanced_acc")) and nothing_to_find:
            reasons[key] = _NOTHING_TO_FIND
        elif key == "det_precision" or key.startswith("detection_"):
            reasons[key] = "no trigger point predicted"
        elif key in ("loc_err_mm", "class_acc"):
            reasons[key] = "no predicted trigger point matched a true one"
        elif key == "class_balanced_acc":
            reasons[key] = "matches of both true active and true latent trigger points are needed"
        elif key == "frame_auc":
            reasons[key] = "frames of one kind only (all with, or all without, a true trigger point)"
        elif key.startswith(("dice/", "iou/")):
            reasons[key] = "class absent from both truth and prediction"
        elif key == "dice_mean":
            reasons[key] = "no foreground class in truth or prediction"
        else:
            reasons[key] = "nothing to measure"
    return reasons


def bootstrap_samples(
    records: Sequence[FrameRecord], classes: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Each metric over ``n_boot`` resamples of SUBJECTS with replacement (a subject's frames stay
    together, since frames of one subject are not independent)."""
    layout = _layout(records, classes)
    subjects, frame_subject = np.unique([r.subject_id for r in records], return_inverse=True)
    per_frame = _count_matrix(records, layout)
    per_subject = np.zeros((len(subjects), per_frame.shape[1]))
    np.add.at(per_subject, frame_subject, per_frame)
    auc = _auc_ranks(records)

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(subjects), size=(n_boot, len(subjects)))
    samples: dict[str, list[float]] = {}
    for draw in draws:
        subject_weight = np.bincount(draw, minlength=len(subjects)).astype(np.float64)
        metrics = _metrics_from_totals(subject_weight @ per_subject, layout, classes)
        metrics["frame_auc"] = auc.auc(subject_weight[frame_subject])
        for key, value in metrics.items():
            samples.setdefault(key, []).append(value)
    return {key: np.asarray(values) for key, values in samples.items()}


def bootstrap_ci(
    records: Sequence[FrameRecord],
    classes: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile interval of each metric (counts such as n_frames are left out); NaN resamples
    are ignored, and a metric NaN in every resample gets (NaN, NaN)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}")
    tail = (1.0 - level) / 2.0 * 100.0
    out = {}
    for key, values in bootstrap_samples(records, classes, n_boot, seed).items():
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            out[key] = (math.nan, math.nan)
            continue
        lo, hi = np.percentile(finite, [tail, 100.0 - tail])
        out[key] = (float(lo), float(hi))
    return out


def json_safe(value: Any) -> Any:
    """NaN/inf -> null, numpy -> Python, tuples -> lists, paths -> strings (metrics.json, the CV summary)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
