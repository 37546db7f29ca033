"""Calibration metrics (issue #14): expected calibration error (ECE), Brier score and reliability curves at the
pixel, detection and frame level, before ("_raw") and after calibration.

Everything is kept as additive per-frame counts (per confidence bin: how many, summed confidence, summed
outcome), so the same count matrix that gives the point estimate gives the subject bootstrap
(``tpnet.evaluation.metrics``). ECE = sum over bins |summed confidence - summed outcome| / N with
``N_BINS`` equal-width bins on [0, 1] (Guo et al. 2017); Brier = mean (confidence - outcome)^2.

- ``pixel``: top-label, i.e. the largest class probability against "argmax is the true class", every pixel;
- ``trp_pixel``: the summed TrP probability against "the pixel is a true TrP" (the number a TrP map shows);
- ``detection``: each predicted TrP's confidence against "it matched a true TrP" (centroid within match_mm);
- ``frame``: P(frame contains a TrP) against "the frame's mask holds a TrP".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

N_BINS = 15
LEVELS: tuple[str, ...] = ("pixel", "trp_pixel", "detection", "frame")
STAGES: tuple[str, ...] = ("raw", "calibrated")
_BLOCK = 3 * N_BINS  # count, summed confidence, summed outcome per bin
# Per level and stage one block of bins, then the detection Brier sums (raw, calibrated).
SIZE = len(LEVELS) * len(STAGES) * _BLOCK + len(STAGES)


def binned(confidence: np.ndarray, outcome: np.ndarray) -> np.ndarray:
    """(3 * N_BINS,) counts: per bin the number of items, their summed confidence and summed outcome."""
    confidence = np.clip(np.asarray(confidence, np.float64).ravel(), 0.0, 1.0)
    outcome = np.asarray(outcome, np.float64).ravel()
    bins = np.minimum((confidence * N_BINS).astype(np.int64), N_BINS - 1)
    return np.concatenate(
        [
            np.bincount(bins, minlength=N_BINS),
            np.bincount(bins, weights=confidence, minlength=N_BINS),
            np.bincount(bins, weights=outcome, minlength=N_BINS),
        ]
    ).astype(np.float64)


def _offset(level: str, stage: str) -> int:
    return (LEVELS.index(level) * len(STAGES) + STAGES.index(stage)) * _BLOCK


def frame_counts(
    probs_raw: np.ndarray,
    probs_calibrated: np.ndarray,
    gt_labels: np.ndarray,
    trp_indices: Sequence[int],
    detections: Sequence[tuple[float, float, bool]],
    frame_raw: float,
    frame_calibrated: float,
    frame_positive: bool,
) -> np.ndarray:
    """One frame's (SIZE,) counts. ``probs_*``: (K, H, W) before / after the pixel temperature; ``detections``:
    (raw confidence, calibrated confidence, matched) per predicted TrP; ``frame_*``: the frame probability."""
    out = np.zeros(SIZE)
    gt = np.asarray(gt_labels).ravel()
    is_trp = np.isin(gt, list(trp_indices))
    for stage, probs in zip(STAGES, (probs_raw, probs_calibrated), strict=True):
        flat = np.asarray(probs).reshape(probs.shape[0], -1)
        top = flat.argmax(axis=0)
        o = _offset("pixel", stage)
        out[o : o + _BLOCK] = binned(flat[top, np.arange(flat.shape[1])], top == gt)
        o = _offset("trp_pixel", stage)
        out[o : o + _BLOCK] = binned(flat[list(trp_indices)].sum(axis=0), is_trp)
    matched = np.array([m for _, _, m in detections], np.float64)
    for i, (stage, frame_p) in enumerate(zip(STAGES, (frame_raw, frame_calibrated), strict=True)):
        confidence = np.array([d[i] for d in detections], np.float64)
        o = _offset("detection", stage)
        out[o : o + _BLOCK] = binned(confidence, matched)
        out[len(LEVELS) * len(STAGES) * _BLOCK + i] = float(np.sum((confidence - matched) ** 2))
        o = _offset("frame", stage)
        out[o : o + _BLOCK] = binned([frame_p], [float(frame_positive)])
    return out


def reliability(totals: np.ndarray, level: str, stage: str) -> dict[str, list[float]]:
    """Per bin: count, mean confidence and observed frequency (NaN for empty bins): a reliability diagram."""
    o = _offset(level, stage)
    count, conf, outcome = (totals[o + i * N_BINS : o + (i + 1) * N_BINS] for i in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "count": count.tolist(),
            "confidence": np.where(count > 0, conf / count, math.nan).tolist(),
            "frequency": np.where(count > 0, outcome / count, math.nan).tolist(),
        }


def metrics_from_totals(totals: np.ndarray) -> dict[str, float]:
    """ECE per level and stage (``<level>_ece`` calibrated, ``<level>_ece_raw`` before) and the detection Brier
    score; NaN when there is nothing at that level (no predicted TrP: no detection ECE)."""
    out = {}
    n_detections = 0.0
    for level in LEVELS:
        for stage in STAGES:
            o = _offset(level, stage)
            count, conf, outcome = (totals[o + i * N_BINS : o + (i + 1) * N_BINS] for i in range(3))
            n = count.sum()
            key = f"{level}_ece" + ("_raw" if stage == "raw" else "")
            out[key] = float(np.abs(conf - outcome).sum() / n) if n > 0 else math.nan
            if level == "detection":
                n_detections = n
    base = len(LEVELS) * len(STAGES) * _BLOCK
    for i, stage in enumerate(STAGES):
        key = "detection_brier" + ("_raw" if stage == "raw" else "")
        out[key] = float(totals[base + i] / n_detections) if n_detections > 0 else math.nan
    return out


def ece_noise_floor(
    totals: np.ndarray, level: str, stage: str = "calibrated", draws: int = 2000, seed: int = 0
) -> float:
    """The ECE a PERFECTLY calibrated model would still show with these confidences and this few items: the mean
    ECE when each bin's outcomes are drawn as Binomial(count, mean confidence). ECE is biased upwards on small
    sets (tens of detections): a measured ECE near this floor is all the data can tell apart from perfect.
    Seeded, so the figure is reproducible; NaN without items."""
    o = _offset(level, stage)
    count, conf = totals[o : o + N_BINS], totals[o + N_BINS : o + 2 * N_BINS]
    n = count.sum()
    if n <= 0:
        return math.nan
    mean = np.divide(conf, count, out=np.zeros(N_BINS), where=count > 0)
    outcomes = np.random.default_rng(seed).binomial(count.astype(np.int64), mean, size=(draws, N_BINS))
    return float(np.abs(conf - outcomes).sum(axis=1).mean() / n)


def reliability_report(totals: np.ndarray) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Every level's reliability curves before and after, for metrics.json and the diagram."""
    return {level: {stage: reliability(totals, level, stage) for stage in STAGES} for level in LEVELS}
