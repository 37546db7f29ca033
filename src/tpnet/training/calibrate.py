"""Fit everything decided on the validation split after training, in this order (docs/confidence.md):

1. the pixel temperature (``fit_temperature``: one T minimising the validation NLL of the TTA-averaged
   probabilities, as tpnet-infer computes them);
2. the post-processing: detection threshold, minimum trigger-point area and minimum mean TrP probability, on the
   tempered probabilities. nnU-Net likewise decides its post-processing on validation data. The winner maximises
   validation TrP detection F1 (ties: the setting closest to the configured one);
3. the detection, frame and active/latent confidence models (``tpnet.core.confidence``) on the detections of
   the chosen post-processing.

The probabilities are computed once; each setting only re-runs the cheap post-processing. The results are stored
in the checkpoint's metadata and so travel into metrics.json, exported models and tpnet-infer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from tpnet.core.confidence import (
    ACTIVE,
    ACTIVE_FEATURES,
    DETECTION_FEATURES,
    FRAME_FEATURES,
    Calibration,
    active_features,
    detection_features,
    fit_logistic,
    fit_temperature,
    frame_features,
)
from tpnet.core.contract import ClassRoles
from tpnet.core.postprocess import PostprocessParams, TriggerPoint, find_trigger_points, frame_trp_score
from tpnet.core.predict import predict_probs, temper_probs
from tpnet.evaluation.evaluate import score_frame
from tpnet.evaluation.metrics import aggregate, match_points

# Pixels drawn (uniformly, seeded) from all validation frames for the temperature: plenty for one parameter,
# and it keeps the fit to about a second.
TEMPERATURE_PIXELS = 200_000


@dataclass
class ValidationFrame:
    raw_probs: np.ndarray  # (K, H, W) before the temperature
    probs: np.ndarray  # (K, H, W) after it (the same array while T = 1)
    gt: np.ndarray
    spacing_mm: float
    gt_points: list[TriggerPoint]
    frame: dict


@torch.no_grad()
def predict_validation(
    model: torch.nn.Module,
    frames: Iterable[dict],
    classes: Sequence[str],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    tta: bool = False,
    roles: ClassRoles | None = None,
) -> list[ValidationFrame]:
    """Every validation frame's probabilities (TTA-averaged with ``tta``), its label map and true TrPs
    (``roles``: which classes are trigger points; None: the naming rule)."""
    model.eval()
    cached = []
    for frame in frames:
        image = frame["image"][None].to(device)
        probs = predict_probs(model, image, int(model.size_multiple), tta=tta, amp_dtype=amp_dtype)
        probs = probs[0].float().cpu().numpy()
        gt = frame["mask"].numpy()
        spacing = float(frame["spacing_mm"])
        gt_points = find_trigger_points(gt, spacing, classes, elasto_kpa=frame["elasto_kpa"], roles=roles)
        cached.append(ValidationFrame(probs, probs, gt, spacing, gt_points, frame))
    return cached


def fit_pixel_temperature(cached: list[ValidationFrame], seed: int = 0) -> float:
    """One temperature for every class, fitted on a seeded uniform sample of validation pixels; sets each
    frame's tempered ``probs``. One parameter rather than one per class: it keeps each pixel's class ranking
    (the segmentation does not change), cannot overfit the few validation subjects, and Guo et al. (2017) found
    it as good as vector scaling on held-out data."""
    if not cached:
        return 1.0
    rng = np.random.default_rng(seed)
    total = sum(c.gt.size for c in cached)
    share = min(1.0, TEMPERATURE_PIXELS / total)
    probs, labels = [], []
    for c in cached:
        flat = c.raw_probs.reshape(c.raw_probs.shape[0], -1)
        take = rng.random(flat.shape[1]) < share
        probs.append(flat[:, take].T)
        labels.append(c.gt.ravel()[take])
    temperature = fit_temperature(np.concatenate(probs), np.concatenate(labels))
    for c in cached:
        c.probs = temper_probs(c.raw_probs[None], temperature)[0]
    return temperature


def choose_postprocess(
    cached: list[ValidationFrame],
    classes: Sequence[str],
    base: PostprocessParams,
    thresholds: Sequence[float],
    min_areas_mm2: Sequence[float],
    min_mean_probs: Sequence[float] = (0.0,),
    roles: ClassRoles | None = None,
) -> tuple[PostprocessParams, list[dict]]:
    """The best parameters and the whole grid (one dict per setting) for the record."""
    if not cached:
        return base, []
    # Every pixel of a component reaches the threshold, so a minimum mean at or under it drops nothing: such a
    # setting is the same as 0 and is scored (and recorded) once, as 0.
    settings = dict.fromkeys(
        (float(t), float(a), float(m) if float(m) > float(t) else 0.0)
        for t in thresholds
        for a in min_areas_mm2
        for m in min_mean_probs
    )
    grid = []
    for threshold, min_area, min_mean_prob in settings:
        params = replace(base, threshold=threshold, min_area_mm2=min_area, min_mean_prob=min_mean_prob)
        records = [
            score_frame(
                c.probs, c.gt, c.frame["elasto_kpa"], c.spacing_mm, c.frame, classes, params, c.gt_points,
                roles=roles,
            )[0]
            for c in cached
        ]
        metrics = aggregate(records, classes)
        grid.append(
            {
                "threshold": params.threshold,
                "min_area_mm2": params.min_area_mm2,
                "min_mean_prob": params.min_mean_prob,
                **{k: metrics[k] for k in ("det_f1", "det_precision", "det_recall", "dice_mean")},
            }
        )

    def rank(row: dict) -> tuple[float, float]:
        distance = (
            abs(row["threshold"] - base.threshold)
            + abs(row["min_area_mm2"] - base.min_area_mm2) / 10
            + abs(row["min_mean_prob"] - base.min_mean_prob)
        )
        f1 = row["det_f1"]
        return (f1 if f1 == f1 else -1.0, -distance)  # NaN (nothing to find) ranks below every F1

    if all(row["det_f1"] != row["det_f1"] for row in grid):
        return base, grid  # no setting can be judged: keep the configured post-processing
    best = max(grid, key=rank)
    chosen = {k: best[k] for k in ("threshold", "min_area_mm2", "min_mean_prob")}
    return replace(base, **chosen), grid


def fit_confidence(
    cached: list[ValidationFrame],
    classes: Sequence[str],
    params: PostprocessParams,
    temperature: float,
    tta: bool,
    detection: bool = True,
    active_band: float = 0.1,
    n_boot: int = 1000,
    seed: int = 0,
    roles: ClassRoles | None = None,
) -> tuple[Calibration, dict]:
    """The detection, frame and p_active models on the validation detections of ``params`` (a detection is a
    true TrP when it matches one within ``params.match_mm``), and whether active vs latent is told apart
    (``active_latent_test``). Returns the calibration and that test's record."""
    det_x, det_y, frame_rows, act_x, act_y, act_subject = [], [], [], [], [], []
    for c in cached:
        _, _, points = score_frame(
            c.probs, c.gt, c.frame["elasto_kpa"], c.spacing_mm, c.frame, classes, params, c.gt_points,
            roles=roles,
        )
        pairs = match_points(points, c.gt_points, params.match_mm).pairs
        matched = {p: g for p, g in pairs}
        for i, point in enumerate(points):
            det_x.append(detection_features(point))
            det_y.append(i in matched)
            if i in matched and point.active_fraction == point.active_fraction:
                act_x.append(active_features(point))
                act_y.append(c.gt_points[matched[i]].class_name == ACTIVE)
                act_subject.append(str(c.frame["subject_id"]))
        frame_rows.append((frame_trp_score(c.probs, classes, roles), points, bool(c.gt_points)))

    notes = []
    detection_model = None
    if detection:
        detection_model = fit_logistic(np.asarray(det_x), np.asarray(det_y), DETECTION_FEATURES)
        if detection_model is None:
            notes.append(f"detection confidence not fitted: {len(det_y)} validation detections, "
                         f"{int(sum(det_y))} true (too few): confidence is the mean TrP probability")  # fmt: skip
    calibration = Calibration(temperature=float(temperature), detection=detection_model, tta=bool(tta))

    # The frame model sees the calibrated detection confidences, as tpnet-infer computes them.
    frame_x = [
        frame_features(score, max((calibration.detection_confidence(p) for p in points), default=0.0))
        for score, points, _ in frame_rows
    ]
    frame_y = [positive for _, _, positive in frame_rows]
    frame_model = fit_logistic(np.asarray(frame_x), np.asarray(frame_y), FRAME_FEATURES)
    if frame_model is None:
        notes.append(f"frame probability not fitted: {len(frame_y)} validation frames, {int(sum(frame_y))} "
                     "with a trigger point: it is the largest TrP probability")  # fmt: skip
    active_model = fit_logistic(np.asarray(act_x), np.asarray(act_y), ACTIVE_FEATURES)
    if active_model is None:
        notes.append(f"p_active not fitted: {len(act_y)} matched validation detections (too few): every "
                     "trigger point is reported 'indeterminate'")  # fmt: skip
    calibration = replace(calibration, frame=frame_model, active=active_model, active_band=float(active_band))
    p_active = [calibration.p_active_of(f[0]) for f in act_x] if active_model is not None else []
    test = active_latent_test(act_subject, act_y, p_active, n_boot, seed)
    if active_model is not None and not test["separable"]:
        notes.append(f"active vs latent not told apart on validation (balanced accuracy {test['value']:.2f}, "
                     f"95 % CI {test['ci95'][0]:.2f}-{test['ci95'][1]:.2f} does not lie above chance, 0.5): every "
                     "trigger point is reported 'indeterminate'")  # fmt: skip
    return replace(calibration, active_separable=test["separable"], notes=tuple(notes)), test


def active_latent_test(
    subjects: Sequence[str], true_active: Sequence[bool], p_active: Sequence[float], n_boot: int, seed: int
) -> dict:
    """Balanced accuracy (mean of the active and the latent recall) of "p_active > 0.5" on matched validation
    detections, with a subject-bootstrap 95 % CI; separable when the CI lies above 0.5.

    Balanced, not plain accuracy: chance is 0.5 whatever the share of active TrPs, so a model that calls every
    TrP latent scores 0.5 and is not mistaken for one that can tell (its plain accuracy is the latent share)."""
    nan = float("nan")
    record = {"value": nan, "ci95": [nan, nan], "n_detections": len(true_active), "separable": False}
    if len(p_active) == 0:
        return record
    truth = np.asarray(true_active, bool)
    said = np.asarray(p_active) > 0.5
    names, subject = np.unique(np.asarray(subjects), return_inverse=True)
    # Per subject: active correct, active total, latent correct, latent total.
    counts = np.zeros((len(names), 4))
    np.add.at(counts, subject, np.stack([truth & said, truth, ~truth & ~said, ~truth], axis=1).astype(float))

    def balanced(totals: np.ndarray) -> float:
        if totals[1] == 0 or totals[3] == 0:
            return nan
        return 0.5 * (totals[0] / totals[1] + totals[2] / totals[3])

    value = balanced(counts.sum(axis=0))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(n_boot, len(names)))
    samples = np.array([balanced(counts[d].sum(axis=0)) for d in draws])
    samples = samples[np.isfinite(samples)]
    if value != value or samples.size == 0:
        return record | {"value": value}
    low, high = (float(v) for v in np.percentile(samples, [2.5, 97.5]))
    return record | {"value": value, "ci95": [low, high], "separable": bool(low > 0.5)}


@torch.no_grad()
def calibrate_postprocess(
    model: torch.nn.Module,
    frames: Iterable[dict],
    classes: Sequence[str],
    base: PostprocessParams,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    thresholds: Sequence[float],
    min_areas_mm2: Sequence[float],
    min_mean_probs: Sequence[float] = (0.0,),
    roles: ClassRoles | None = None,
) -> tuple[PostprocessParams, list[dict]]:
    """Post-processing alone, on untempered single-pass probabilities (``choose_postprocess``)."""
    cached = predict_validation(model, frames, classes, device, amp_dtype, roles=roles)
    return choose_postprocess(cached, classes, base, thresholds, min_areas_mm2, min_mean_probs, roles)
