"""Detection metrics of trigger points in 3-D ultrasound sweeps (issue #17), with subject-bootstrap intervals.

The volume counterpart of the lesion-wise detection in ``tpnet.evaluation.metrics``: predicted and true
``TriggerPoint3D`` (active and latent together) are matched one-to-one on the 3-D distance of their centroids
in mm (``metrics.match_centroids``), and each matched pair adds its localisation, volume and extent errors.

Conventions are those of ``metrics``: F1 = 2TP / (2TP + FP + FN); a figure with nothing to measure is NaN (null
in metrics.json), never a perfect score: F1, precision and recall of volumes without a true TrP, precision
without a predicted TrP, errors without a match. ``undefined_reasons_3d`` says why. As in 2-D, one count matrix
(a row per volume) feeds both the point estimate and the subject bootstrap, and the bootstrap leaves out the
resamples in which a figure is undefined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tpnet.core.volume_postprocess import TriggerPoint3D
from tpnet.evaluation.metrics import match_centroids

# Columns of the per-volume count matrix: every one is additive over volumes.
COLUMNS: tuple[str, ...] = (
    "tp",
    "fp",
    "fn",
    "loc_err_sum_mm",
    "volume_rel_abs_sum",
    "volume_rel_signed_sum",
    "extent_err_sum_mm",
    "volumes",
)
_COLUMN = {name: i for i, name in enumerate(COLUMNS)}


@dataclass(frozen=True)
class VolumeRecord:
    """Everything the aggregate needs from one sweep; the counts and error sums are additive over sweeps. The
    error sums run over the matched pairs (``n_matched`` = tp)."""

    sample_id: str
    subject_id: str
    match_mm: float
    tp: int
    fp: int
    fn: int
    loc_err_sum_mm: float  # 3-D centroid distance
    volume_rel_abs_sum: float  # |pred - true| / true
    volume_rel_signed_sum: float  # (pred - true) / true: > 0 over-segments
    extent_err_sum_mm: float  # |pred - true| extent along the sweep

    @property
    def n_matched(self) -> int:
        return self.tp

    @property
    def n_gt(self) -> int:
        return self.tp + self.fn

    @property
    def n_pred(self) -> int:
        return self.tp + self.fp

    def counts(self) -> np.ndarray:
        """This record's row of the count matrix (``COLUMNS``)."""
        return np.array(
            [
                self.tp,
                self.fp,
                self.fn,
                self.loc_err_sum_mm,
                self.volume_rel_abs_sum,
                self.volume_rel_signed_sum,
                self.extent_err_sum_mm,
                1,
            ],
            dtype=np.float64,
        )


def _centroids_mm(points: Sequence[TriggerPoint3D], sample_id: str, which: str) -> np.ndarray:
    centroids = np.array([p.centroid_mm for p in points], dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(centroids).all():
        raise ValueError(f"{sample_id}: a {which} trigger point has a non-finite centroid")
    return centroids


def volume_record(
    pred: Sequence[TriggerPoint3D],
    gt: Sequence[TriggerPoint3D],
    *,
    sample_id: str,
    subject_id: str,
    match_mm: float,
) -> VolumeRecord:
    """Match ``pred`` to ``gt`` on their (x, y, z) centroids within ``match_mm`` in 3-D and count the result."""
    if not (math.isfinite(match_mm) and match_mm > 0):
        raise ValueError(f"match_mm must be a positive number; got {match_mm!r}")
    for g in gt:
        # The relative volume error divides by it.
        if not (math.isfinite(g.volume_mm3) and g.volume_mm3 > 0):
            raise ValueError(f"{sample_id}: true trigger point {g.trp_id} has volume {g.volume_mm3} mm3")
    pairs, errors_mm = match_centroids(
        _centroids_mm(pred, sample_id, "predicted"), _centroids_mm(gt, sample_id, "true"), match_mm
    )
    volume_rel = [(pred[p].volume_mm3 - gt[g].volume_mm3) / gt[g].volume_mm3 for p, g in pairs]
    extent_err = [abs(pred[p].extent_along_sweep_mm - gt[g].extent_along_sweep_mm) for p, g in pairs]
    tp = len(pairs)
    return VolumeRecord(
        sample_id=str(sample_id),
        subject_id=str(subject_id),
        match_mm=float(match_mm),
        tp=tp,
        fp=len(pred) - tp,
        fn=len(gt) - tp,
        loc_err_sum_mm=float(sum(errors_mm)),
        volume_rel_abs_sum=float(sum(abs(v) for v in volume_rel)),
        volume_rel_signed_sum=float(sum(volume_rel)),
        extent_err_sum_mm=float(sum(extent_err)),
    )


# ---- aggregation over additive totals (shared by the point estimate and the bootstrap) ----


def _checked(records: Sequence[VolumeRecord]) -> Sequence[VolumeRecord]:
    if not records:
        raise ValueError("no volumes to aggregate")
    first = records[0]
    for rec in records:
        if rec.match_mm != first.match_mm:
            raise ValueError(
                f"{rec.sample_id}: matched within {rec.match_mm:g} mm, {first.sample_id} within "
                f"{first.match_mm:g} mm; pooled figures need one radius"
            )
    return records


def _count_matrix(records: Sequence[VolumeRecord]) -> np.ndarray:
    return np.stack([r.counts() for r in records])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den is 0."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _metrics_from_totals(totals: np.ndarray) -> dict[str, np.ndarray]:
    """The figures of (..., len(COLUMNS)) totals, vectorised over the leading axes (bootstrap resamples)."""
    c = {name: totals[..., i] for name, i in _COLUMN.items()}
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    # Nothing to find (no true TrP): detection is undefined whatever was predicted.
    nothing_to_find = tp + fn == 0
    return {
        "det3d_f1": np.where(nothing_to_find, np.nan, _ratio(2 * tp, 2 * tp + fp + fn)),
        "det3d_precision": np.where(nothing_to_find, np.nan, _ratio(tp, tp + fp)),
        "det3d_recall": _ratio(tp, tp + fn),
        "loc3d_err_mm": _ratio(c["loc_err_sum_mm"], tp),
        "volume_rel_err": _ratio(c["volume_rel_abs_sum"], tp),
        "volume_rel_bias": _ratio(c["volume_rel_signed_sum"], tp),
        "extent_err_mm": _ratio(c["extent_err_sum_mm"], tp),
    }


def aggregate_3d(records: Sequence[VolumeRecord]) -> dict[str, float]:
    """Pooled figures over a set of sweeps (see the module docstring for conventions)."""
    totals = _count_matrix(_checked(records)).sum(axis=0)
    out: dict[str, float] = {key: float(value) for key, value in _metrics_from_totals(totals).items()}
    out["n_gt_3d"] = int(sum(r.n_gt for r in records))
    out["n_pred_3d"] = int(sum(r.n_pred for r in records))
    out["n_volumes"] = len(records)
    out["n_subjects"] = len({r.subject_id for r in records})
    return out


def undefined_reasons_3d(metrics: dict[str, float]) -> dict[str, str]:
    """Why each NaN figure of an ``aggregate_3d`` result is undefined."""
    reasons = {}
    for key, value in metrics.items():
        if not (isinstance(value, float) and math.isnan(value)):
            continue
        if metrics.get("n_gt_3d", 0) == 0:
            reasons[key] = "no true trigger point in these volumes: nothing to find"
        elif key == "det3d_precision":
            reasons[key] = "no trigger point predicted"
        else:
            reasons[key] = "no predicted trigger point matched a true one"
    return reasons


def bootstrap_samples_3d(
    records: Sequence[VolumeRecord], n_boot: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Each figure over ``n_boot`` resamples of SUBJECTS with replacement (a subject's sweeps stay together),
    all resamples at once: (n_boot x subjects) draw counts times the (subjects x counts) matrix."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}")
    per_volume = _count_matrix(_checked(records))
    subjects, volume_subject = np.unique([r.subject_id for r in records], return_inverse=True)
    per_subject = np.zeros((len(subjects), per_volume.shape[1]))
    np.add.at(per_subject, volume_subject, per_volume)

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(subjects), size=(n_boot, len(subjects)))
    weights = np.zeros((n_boot, len(subjects)))
    np.add.at(weights, (np.arange(n_boot)[:, None], draws), 1.0)
    return _metrics_from_totals(weights @ per_subject)


def bootstrap_ci_3d(
    records: Sequence[VolumeRecord], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile interval of each figure (counts left out); NaN resamples are ignored, and a figure NaN in
    every resample gets (NaN, NaN)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    tail = (1.0 - level) / 2.0 * 100.0
    out = {}
    for key, values in bootstrap_samples_3d(records, n_boot, seed).items():
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            out[key] = (math.nan, math.nan)
            continue
        lo, hi = np.percentile(finite, [tail, 100.0 - tail])
        out[key] = (float(lo), float(hi))
    return out


def evaluation_report_3d(records: Sequence[VolumeRecord], n_boot: int = 1000, seed: int = 0) -> dict:
    """Point figures plus ``ci95`` (subject-bootstrap intervals as [low, high]), ``undefined`` (why a figure is
    NaN), ``bootstrap`` (its settings) and ``matching`` (the radius): the layout of the 2-D
    ``evaluate.evaluation_report``."""
    point = aggregate_3d(records)
    report: dict[str, Any] = dict(point)
    # Nested, not a top-level number: evaluate.metric_values would log it as a metric.
    report["matching"] = {"match_mm": records[0].match_mm, "distance": "3-D centroid distance"}
    ci = bootstrap_ci_3d(records, n_boot=n_boot, seed=seed, level=0.95)
    report["ci95"] = {key: [lo, hi] for key, (lo, hi) in ci.items()}
    report["undefined"] = undefined_reasons_3d(point)
    report["bootstrap"] = {"n_boot": n_boot, "seed": seed, "unit": "subject"}
    return report
