"""Longitudinal tracking against truth (issue #18): are a subject's trigger points linked across visits, and is
each one's change in stiffness and size right? With subject-bootstrap CIs, as ``metrics.py`` does.

Inputs. Predicted: ``tpnet.core.longitudinal.TrackRow`` rows (``build_tracks``; the tool's tracks.csv holds the
same), with the visit frame's positions ``x_mm``/``y_mm``. Truth: ``TruthTrackRow`` rows, one per true TrP per
visit, read from the generator's truth/tracks.csv by ``read_truth_tracks``. A prediction's ``visit_id`` names the
same visit as the truth's ``visit``.

The rule, per subject and visit: the predicted detections (rows not ``resolved``) are matched one-to-one to the
true TrPs present there (not ``resolved``) on their positions in that visit's own frame (``match_centroids``,
``match_mm``), which does not depend on any registration. Then
- a true pair is a true track's first visit and one later visit where it is present; it is correct when the
  detections matched to it at both visits carry the same predicted track id. ``track_accuracy`` = correct /
  true pairs (a pair whose TrP was missed at either visit counts as wrong). It is the product of two shares
  reported beside it: ``pair_detection_rate`` (true pairs detected at both visits) and ``linking_accuracy``
  (of those, the share the tracker linked correctly: the tracker's own figure);
- for each correct pair, the predicted change (later - first, of the matched detections) is compared with the
  true change: ``mae_*`` are median absolute errors (stiffness mean and max in kPa, area in mm2). The change error
  is conditional on a correct link; the accuracy measures the linking;
- a true resolution (a ``resolved`` truth row) is recognised when the predicted track linked to that TrP at its
  first visit has no detection at the resolving visit: ``resolved_accuracy``.
A metric with nothing to measure is NaN. The bootstrap resamples subjects (a subject's visits stay together);
resamples where a metric is undefined are left out of its interval.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from tpnet.core.longitudinal import STATUSES, TrackRow, visit_order
from tpnet.evaluation.metrics import match_centroids

REQUIRED_COLUMNS = ("subject_id", "visit", "track_id", "status")
# CSV column -> field, for the columns whose names differ from the field's.
COLUMN_ALIASES = {
    "class": "class_name",
    "x_baseline_mm": "x_base_mm",
    "y_baseline_mm": "y_base_mm",
    "dx_mm": "probe_dx_mm",
    "dz_mm": "probe_dz_mm",
    "tilt_deg": "probe_tilt_deg",
    "gain_db": "probe_gain_db",
}
CHANGES = ("stiffness_kpa_mean", "stiffness_kpa_max", "area_mm2")
ERROR_METRICS = {
    "stiffness_kpa_mean": "mae_stiffness_mean_kpa",
    "stiffness_kpa_max": "mae_stiffness_max_kpa",
    "area_mm2": "mae_area_mm2",
}


@dataclass
class TruthTrackRow:
    """One true TrP at one visit. ``x_mm``/``y_mm``: the visit frame; ``x_base_mm``/``y_base_mm``: the baseline
    frame; ``probe_*``: how the probe was put back at this visit (tpnet.data.synth_longitudinal: ``dz`` is the
    elevational shift, ``tilt`` the in-plane rocking); ``softening``/``shrinkage``: the response drawn for the
    TrP. NaN / "" where the file has no value."""

    subject_id: str
    visit: str
    track_id: str
    status: str
    sample_id: str = ""
    x_mm: float = math.nan
    y_mm: float = math.nan
    x_base_mm: float = math.nan
    y_base_mm: float = math.nan
    area_mm2: float = math.nan
    stiffness_kpa_mean: float = math.nan
    stiffness_kpa_max: float = math.nan
    class_name: str = ""
    probe_dx_mm: float = math.nan
    probe_dz_mm: float = math.nan
    probe_tilt_deg: float = math.nan
    probe_gain_db: float = math.nan
    visit_index: float = math.nan
    days_since_baseline: float = math.nan
    softening: float = math.nan
    shrinkage: float = math.nan


_TEXT_FIELDS = {"subject_id", "visit", "track_id", "status", "sample_id", "class_name"}


def read_truth_tracks(path: str | Path) -> list[TruthTrackRow]:
    """truth/tracks.csv (tpnet.data.synth_longitudinal.TRACK_COLUMNS): columns ``subject_id, visit, track_id,
    status`` required; ``sample_id, visit_index, days_since_baseline, x_mm, y_mm, x_base_mm`` (or
    ``x_baseline_mm``), ``y_base_mm`` (or ``y_baseline_mm``), ``area_mm2, stiffness_kpa_mean, stiffness_kpa_max,
    class`` (or ``class_name``), ``softening, shrinkage`` and ``probe_dx_mm, probe_dz_mm, probe_tilt_deg,
    probe_gain_db`` (or ``dx_mm, dz_mm, tilt_deg, gain_db``) optional; unknown columns are ignored. Errors name
    the file, and the line and column where a value is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: truth tracks file not found")
    known = {f.name for f in fields(TruthTrackRow)}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing required column(s) {missing} (has {header}; needs {list(REQUIRED_COLUMNS)})"
            )
        rows = []
        for line, raw in enumerate(reader, start=2):
            values: dict[str, object] = {}
            for column, cell in raw.items():
                if column is None:
                    raise ValueError(f"{path}, line {line}: more cells than columns")
                name = COLUMN_ALIASES.get(column.strip(), column.strip())
                if name not in known:
                    continue
                text = (cell or "").strip()
                if name in _TEXT_FIELDS:
                    values[name] = text
                    continue
                try:
                    values[name] = float(text) if text else math.nan
                except ValueError:
                    raise ValueError(
                        f"{path}, line {line}, column {column!r}: not a number: {text!r}"
                    ) from None
            for column in REQUIRED_COLUMNS:
                if not values.get(column):
                    raise ValueError(f"{path}, line {line}: empty {column}")
            if values["status"] not in STATUSES:
                raise ValueError(
                    f"{path}, line {line}: status {values['status']!r} is not one of {list(STATUSES)}"
                )
            rows.append(TruthTrackRow(**values))
    return rows


@dataclass
class SubjectScore:
    """One subject's additive counts and its change errors (pred - truth, per ``CHANGES`` name)."""

    subject_id: str
    true_pairs: int = 0
    correct_pairs: int = 0
    missed_pairs: int = 0  # the TrP was not detected at one of the two visits
    broken_pairs: int = 0  # detected at both, under different predicted track ids
    true_resolutions: int = 0
    recognised_resolutions: int = 0
    errors: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in CHANGES})


def _present(rows):
    return [r for r in rows if r.status != "resolved"]


def _check_positions(rows: Sequence[TruthTrackRow], subject: str, visit: str) -> None:
    for row in rows:
        if not (math.isfinite(row.x_mm) and math.isfinite(row.y_mm)):
            raise ValueError(
                f"truth track {row.track_id!r} of subject {subject!r} at visit {visit!r} is present "
                f"(status {row.status}) but has no x_mm/y_mm: the scorer matches on the visit frame's positions"
            )


def score_subject(
    subject_id: str, predicted: Sequence[TrackRow], truth: Sequence[TruthTrackRow], match_mm: float = 5.0
) -> SubjectScore:
    """One subject's counts (module docstring): ``predicted`` and ``truth`` are that subject's rows."""
    score = SubjectScore(subject_id)
    visits = visit_order([r.visit for r in truth])
    # (true track, visit) -> the predicted detection matched to it there
    linked: dict[tuple[str, str], TrackRow] = {}
    for visit in visits:
        true_here = _present([r for r in truth if r.visit == visit])
        _check_positions(true_here, subject_id, visit)
        pred_here = [r for r in _present(predicted) if r.visit_id == visit and math.isfinite(r.x_mm)]
        pairs, _ = match_centroids(
            np.array([(p.x_mm, p.y_mm) for p in pred_here]).reshape(-1, 2),
            np.array([(t.x_mm, t.y_mm) for t in true_here]).reshape(-1, 2),
            match_mm,
        )
        for p, t in pairs:
            linked[(true_here[t].track_id, visit)] = pred_here[p]
    by_track: dict[str, list[TruthTrackRow]] = {}
    for row in truth:
        by_track.setdefault(row.track_id, []).append(row)
    rank = {visit: i for i, visit in enumerate(visits)}
    for track_id, rows in by_track.items():
        rows = sorted(rows, key=lambda r: rank[r.visit])
        present = _present(rows)
        if not present:
            continue
        first = present[0]
        start = linked.get((track_id, first.visit))
        for later in rows:
            if rank[later.visit] <= rank[first.visit]:
                continue
            if later.status == "resolved":
                score.true_resolutions += 1
                followed = start is not None and any(
                    r.track_id == start.track_id and r.visit_id == later.visit for r in _present(predicted)
                )
                score.recognised_resolutions += int(start is not None and not followed)
                continue
            score.true_pairs += 1
            end = linked.get((track_id, later.visit))
            if start is None or end is None:
                score.missed_pairs += 1
            elif start.track_id != end.track_id:
                score.broken_pairs += 1
            else:
                score.correct_pairs += 1
                for name in CHANGES:
                    error = (getattr(end, name) - getattr(start, name)) - (
                        getattr(later, name) - getattr(first, name)
                    )
                    if math.isfinite(error):
                        score.errors[name].append(float(error))
    return score


def score_subjects(
    predicted: Sequence[TrackRow], truth: Sequence[TruthTrackRow], match_mm: float = 5.0
) -> list[SubjectScore]:
    """Every truth subject's score (a subject without predictions scores 0 correct pairs); predicted subjects
    without truth are not scored."""
    if not match_mm > 0:
        raise ValueError(f"match_mm must be > 0; got {match_mm}")
    subjects = list(dict.fromkeys(r.subject_id for r in truth))
    return [
        score_subject(
            s, [p for p in predicted if p.subject_id == s], [t for t in truth if t.subject_id == s], match_mm
        )
        for s in subjects
    ]


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def _median_abs(values: np.ndarray) -> float:
    return float(np.median(np.abs(values))) if values.size else math.nan


_COUNTS = (
    "true_pairs",
    "correct_pairs",
    "missed_pairs",
    "broken_pairs",
    "true_resolutions",
    "recognised_resolutions",
)


def _metrics(counts: np.ndarray, errors: dict[str, np.ndarray]) -> dict[str, float]:
    c = dict(zip(_COUNTS, counts, strict=True))
    out = {
        "track_accuracy": _ratio(c["correct_pairs"], c["true_pairs"]),
        # The tracker alone: of the true pairs the detector found at both visits, the share linked correctly.
        "linking_accuracy": _ratio(c["correct_pairs"], c["correct_pairs"] + c["broken_pairs"]),
        # The detector's share: true pairs found at both visits at all.
        "pair_detection_rate": _ratio(c["correct_pairs"] + c["broken_pairs"], c["true_pairs"]),
        "resolved_accuracy": _ratio(c["recognised_resolutions"], c["true_resolutions"]),
    }
    for name, key in ERROR_METRICS.items():
        out[key] = _median_abs(errors[name])
    return out


def _per_subject(
    scores: Sequence[SubjectScore],
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    counts = np.array([[getattr(s, c) for c in _COUNTS] for s in scores], dtype=np.float64).reshape(
        -1, len(_COUNTS)
    )
    errors = {}
    for name in CHANGES:
        values = [np.asarray(s.errors[name], dtype=np.float64) for s in scores]
        owner = np.concatenate([np.full(len(v), i) for i, v in enumerate(values)]) if values else np.zeros(0)
        errors[name] = (np.concatenate(values) if values else np.zeros(0), owner.astype(int))
    return counts, errors


def aggregate(scores: Sequence[SubjectScore]) -> dict[str, float]:
    """Pooled metrics over subjects, and their counts."""
    if not scores:
        raise ValueError("no subjects to aggregate")
    counts, errors = _per_subject(scores)
    out = _metrics(counts.sum(axis=0), {name: values for name, (values, _) in errors.items()})
    out["n_subjects"] = len(scores)
    for i, name in enumerate(_COUNTS):
        out[f"n_{name}"] = int(counts[:, i].sum())
    for name in CHANGES:
        out[f"n_changes_{name}"] = int(errors[name][0].size)
    return out


def bootstrap_ci(
    scores: Sequence[SubjectScore], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile interval of each metric over ``n_boot`` resamples of subjects with replacement (a drawn
    subject brings all its pairs and errors, as often as it is drawn); NaN resamples are left out, and a metric
    NaN in every resample gets (NaN, NaN)."""
    if not scores:
        raise ValueError("no subjects to resample")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}")
    counts, errors = _per_subject(scores)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for draw in rng.integers(0, len(scores), size=(n_boot, len(scores))):
        weight = np.bincount(draw, minlength=len(scores))
        drawn = {name: np.repeat(values, weight[owner]) for name, (values, owner) in errors.items()}
        for key, value in _metrics(weight @ counts, drawn).items():
            samples.setdefault(key, []).append(value)
    tail = (1.0 - level) / 2.0 * 100.0
    out = {}
    for key, values in samples.items():
        finite = np.asarray(values)[np.isfinite(values)]
        if finite.size == 0:
            out[key] = (math.nan, math.nan)
        else:
            lo, hi = np.percentile(finite, [tail, 100.0 - tail])
            out[key] = (float(lo), float(hi))
    return out


def evaluate_tracks(
    predicted: Sequence[TrackRow],
    truth: Sequence[TruthTrackRow],
    match_mm: float = 5.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """``{"metrics": aggregate(...), "ci": bootstrap_ci(...)}`` of the predicted tracks against the truth (use
    ``tpnet.evaluation.metrics.json_safe`` before writing it as JSON)."""
    scores = score_subjects(predicted, truth, match_mm)
    return {"metrics": aggregate(scores), "ci": bootstrap_ci(scores, n_boot=n_boot, seed=seed)}
