"""Calibrated confidence (issue #14): what a probability map may claim about each detection and frame.

SHARED by training (which fits it on validation), evaluation and inference (which apply it); numpy + standard
library only. Method and justification: docs/confidence.md.

- Pixel level: one temperature ``T`` (``fit_temperature``) on the log of the (TTA-averaged) probabilities,
  ``softmax(log p / T)`` (``tpnet.core.predict.temper_probs``).
- Detection level: ``confidence`` = P(true trigger point | the component's own evidence), an L2-regularised
  logistic regression (``fit_logistic``) on ``detection_features``; frame level likewise on ``frame_features``.
- Active vs latent: ``p_active`` = logistic on logit(active_fraction), fitted on validation detections that
  matched a true TrP; the reported class is ``indeterminate`` unless the validated active/latent balanced accuracy's
  95 % CI lies above chance (``active_separable``) AND ``p_active`` is at least ``active_band`` away from 0.5.

``Calibration.from_meta(meta)`` is the model's fitted calibration (identity for a model without one),
``.temperature`` goes to ``predict_probs``, ``.apply(points)`` sets confidence / p_active / reported_class in
place, ``.frame_probability(probs, classes, points)`` is the calibrated P(frame contains a TrP).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from tpnet.core.contract import ClassRoles
from tpnet.core.postprocess import TriggerPoint, frame_trp_score

INDETERMINATE = "indeterminate"
ACTIVE, LATENT = "active_trp", "latent_trp"

DETECTION_FEATURES: tuple[str, ...] = (
    "logit_raw_confidence",
    "logit_max_prob",
    "log_area_mm2",
    "log_stiffness_contrast",
    "has_swe",
)
FRAME_FEATURES: tuple[str, ...] = ("logit_max_trp_prob", "logit_max_detection_confidence")
ACTIVE_FEATURES: tuple[str, ...] = ("logit_active_fraction",)

# Fewer fitting examples than this, or fewer of either outcome: no model (the raw number is kept, and said).
MIN_EXAMPLES = 20
MIN_PER_OUTCOME = 5
L2 = 1.0  # ridge on the standardised coefficients (not the intercept): shrinks towards the base rate
_EPS = 1e-4  # logit clip: probabilities of 0 / 1 (an empty frame, a saturated nodule) stay finite features


def _logit(p: float) -> float:
    p = min(max(float(p), _EPS), 1.0 - _EPS) if p == p else 0.5
    return math.log(p / (1.0 - p))


def _sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


# ---- pixel temperature ---------------------------------------------------------------------------------------


def temperature_nll(log_probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of softmax(log p / T) over (N, K) log-probabilities with true classes ``labels`` (N,)."""
    z = log_probs / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(
    probs: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0), iterations: int = 60
) -> float:
    """The T minimising ``temperature_nll``: golden-section search on log T. The NLL is convex in 1/T, so it has
    one minimum on the (monotone) log T axis. ``probs`` (N, K), ``labels`` (N,). Empty input: 1."""
    if len(labels) == 0:
        return 1.0
    log_probs = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, None))
    labels = np.asarray(labels, np.int64)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = (temperature_nll(log_probs, labels, math.exp(v)) for v in (a, b))
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = temperature_nll(log_probs, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = temperature_nll(log_probs, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2.0))


# ---- logistic regression (Newton / IRLS) --------------------------------------------------------------------


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, names: Sequence[str], l2: float = L2, iterations: int = 50
) -> dict | None:
    """L2-regularised logistic regression on standardised features by Newton's method (IRLS).

    Returns a JSON-able model (``predict_logistic``) or None when there is too little to fit: fewer than
    ``MIN_EXAMPLES`` rows or fewer than ``MIN_PER_OUTCOME`` of either label. A constant feature gets scale 1
    (its standardised value is 0 and the ridge keeps its weight at 0)."""
    y = np.asarray(labels, np.float64).ravel()
    n_pos = int(y.sum())
    if len(y) < MIN_EXAMPLES or min(n_pos, len(y) - n_pos) < MIN_PER_OUTCOME:
        return None
    x = np.asarray(features, np.float64).reshape(len(y), len(names))
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    design = np.hstack([np.ones((len(y), 1)), (x - mean) / scale])
    ridge = np.full(design.shape[1], float(l2))
    ridge[0] = 0.0
    w = np.zeros(design.shape[1])
    w[0] = _logit(n_pos / len(y))
    for _ in range(iterations):
        p = _sigmoid(design @ w)
        gradient = design.T @ (p - y) + ridge * w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(ridge) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return {
        "features": list(names),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "intercept": float(w[0]),
        "coef": w[1:].tolist(),
        "l2": float(l2),
        "n": len(y),
        "n_positive": n_pos,
    }


def predict_logistic(model: Mapping, features: np.ndarray) -> np.ndarray:
    """P(label 1) of a ``fit_logistic`` model for (N, F) features."""
    x = np.atleast_2d(np.asarray(features, np.float64))
    z = (x - np.asarray(model["mean"])) / np.asarray(model["scale"])
    return np.asarray(_sigmoid(float(model["intercept"]) + z @ np.asarray(model["coef"])), np.float64)


# ---- features ------------------------------------------------------------------------------------------------


def detection_features(point: TriggerPoint) -> list[float]:
    """The component's own evidence (docs/confidence.md): mean and peak TrP probability (logits), size
    (log mm2) and stiffness contrast with its surroundings (log ratio; 0 with has_swe = 0 where unmeasured)."""
    raw = point.raw_confidence if point.raw_confidence == point.raw_confidence else point.confidence
    peak = point.max_prob if point.max_prob == point.max_prob else raw
    contrast = point.stiffness_contrast
    has_swe = contrast == contrast and contrast > 0
    return [
        _logit(raw),
        _logit(peak),
        math.log(max(float(point.area_mm2), 1e-3)),
        math.log(contrast) if has_swe else 0.0,
        1.0 if has_swe else 0.0,
    ]


def frame_features(max_trp_prob: float, max_detection_confidence: float) -> list[float]:
    return [_logit(max_trp_prob), _logit(max_detection_confidence)]


def active_features(point: TriggerPoint) -> list[float]:
    return [_logit(point.active_fraction)]


# ---- the calibration a model carries -------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0
    detection: dict | None = None  # fitted detection model (None: uncalibrated, confidence = raw mean)
    frame: dict | None = None  # fitted frame model (None: the largest summed TrP probability)
    active: dict | None = None  # fitted p_active model (None: p_active NaN, class indeterminate)
    active_band: float = 0.1
    active_separable: bool = False  # validated active/latent balanced accuracy: 95 % CI above chance (0.5)
    tta: bool = False  # fitted on TTA (identity + lateral flip) predictions
    notes: tuple[str, ...] = ()  # what could not be fitted, and why (the record says it)

    @classmethod
    def from_meta(cls, meta: Mapping) -> Calibration:
        data = dict(meta.get("calibration") or {})
        if "notes" in data:
            data["notes"] = tuple(data["notes"] or ())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out

    def detection_confidence(self, point: TriggerPoint) -> float:
        raw = point.raw_confidence if point.raw_confidence == point.raw_confidence else point.confidence
        if self.detection is None:
            return float(raw)
        return float(predict_logistic(self.detection, [detection_features(point)])[0])

    def p_active(self, point: TriggerPoint) -> float:
        if self.active is None or point.active_fraction != point.active_fraction:
            return math.nan
        return float(predict_logistic(self.active, [active_features(point)])[0])

    def p_active_of(self, logit_active_fraction: float) -> float:
        """p_active from the feature itself (the fitting code has features, not points)."""
        if self.active is None:
            return math.nan
        return float(predict_logistic(self.active, [[logit_active_fraction]])[0])

    def reported_class(self, p_active: float) -> str:
        if not self.active_separable or p_active != p_active or abs(p_active - 0.5) < self.active_band:
            return INDETERMINATE
        return ACTIVE if p_active > 0.5 else LATENT

    def apply(self, points: Sequence[TriggerPoint]) -> None:
        """In place: raw_confidence (kept), calibrated confidence, p_active and reported_class."""
        for p in points:
            if p.raw_confidence != p.raw_confidence:
                p.raw_confidence = p.confidence
            p.confidence = self.detection_confidence(p)
            p.p_active = self.p_active(p)
            p.reported_class = self.reported_class(p.p_active)

    def frame_probability(
        self,
        probs: np.ndarray,
        classes: Sequence[str],
        points: Sequence[TriggerPoint],
        roles: ClassRoles | None = None,
    ) -> float:
        """Calibrated P(frame contains a TrP); ``points`` are the frame's detections (calibrated or not)."""
        score = frame_trp_score(probs, classes, roles)
        if self.frame is None:
            return score
        best = max((self.detection_confidence(p) for p in points), default=0.0)
        return float(predict_logistic(self.frame, [frame_features(score, best)])[0])
