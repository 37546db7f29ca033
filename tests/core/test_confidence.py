"""tpnet.core.confidence: the temperature and logistic fits recover known truths, and a Calibration reports a
class only when its fitted model and the validated accuracy allow it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tpnet.core.confidence import (
    DETECTION_FEATURES,
    INDETERMINATE,
    Calibration,
    detection_features,
    fit_logistic,
    fit_temperature,
    predict_logistic,
)
from tpnet.core.postprocess import TriggerPoint

IDENTITY_ACTIVE = {"features": ["logit_active_fraction"], "mean": [0.0], "scale": [1.0], "intercept": 0.0, "coef": [1.0]}  # fmt: skip


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("distortion", [0.4, 1.0, 2.5])
def test_temperature_undoes_a_known_over_or_under_confidence(distortion):
    rng = np.random.default_rng(0)
    true_probs = _softmax(rng.normal(size=(20000, 4)) * 1.5)
    labels = (rng.random((len(true_probs), 1)) > np.cumsum(true_probs, axis=1)).sum(axis=1)
    stated = _softmax(np.log(true_probs) * distortion)  # T = 1 / distortion undoes it
    assert fit_temperature(stated, labels) == pytest.approx(distortion, rel=0.05)


def test_temperature_of_nothing_is_one():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, np.int64)) == 1.0


def test_logistic_recovers_the_true_probability_and_refuses_too_few_examples():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 2))
    truth = 1 / (1 + np.exp(-(1.5 * x[:, 0] - 0.5)))  # the second feature carries nothing
    y = rng.random(4000) < truth
    model = fit_logistic(x, y, ("a", "b"))
    predicted = predict_logistic(model, x)
    assert np.mean(np.abs(predicted - truth)) < 0.03
    assert abs(model["coef"][1]) < 0.1 * abs(model["coef"][0])
    assert fit_logistic(x[:10], y[:10], ("a", "b")) is None  # fewer than MIN_EXAMPLES
    assert fit_logistic(x, np.zeros(4000, bool), ("a", "b")) is None  # one outcome only
    assert fit_logistic(np.zeros((0, 2)), np.zeros(0), ("a", "b")) is None


def _point(active_fraction: float, raw: float = 0.7) -> TriggerPoint:
    return TriggerPoint(1, "active_trp", 1, 5.0, 5.0, 1.0, 1.0, 12.0, math.nan, raw, math.nan,
                        raw_confidence=raw, max_prob=0.9, active_fraction=active_fraction)  # fmt: skip


def test_the_class_is_reported_only_when_validated_separable_and_outside_the_band():
    separable = Calibration(active=IDENTITY_ACTIVE, active_separable=True, active_band=0.1)
    points = [_point(0.9), _point(0.1), _point(0.55)]
    separable.apply(points)
    assert [p.reported_class for p in points] == ["active_trp", "latent_trp", INDETERMINATE]
    assert points[0].p_active == pytest.approx(0.9)

    not_validated = Calibration(active=IDENTITY_ACTIVE, active_separable=False)
    points = [_point(0.99)]
    not_validated.apply(points)
    assert points[0].reported_class == INDETERMINATE and points[0].p_active == pytest.approx(0.99)

    uncalibrated = [_point(0.99)]
    Calibration().apply(uncalibrated)  # an older model: no p_active model at all
    assert uncalibrated[0].reported_class == INDETERMINATE and math.isnan(uncalibrated[0].p_active)
    assert uncalibrated[0].confidence == uncalibrated[0].raw_confidence == 0.7


def test_detection_confidence_comes_from_the_fitted_model_and_the_record_round_trips():
    rng = np.random.default_rng(2)
    raw = rng.uniform(0.3, 0.99, 400)
    true_trp = rng.random(400) < raw**3  # the raw mean probability over-states the chance of a true TrP
    features = [detection_features(_point(0.5, r)) for r in raw]
    model = fit_logistic(np.asarray(features), true_trp, DETECTION_FEATURES)
    calibration = Calibration(temperature=0.8, detection=model, notes=("frame probability not fitted",))
    points = [_point(0.5, 0.9)]
    calibration.apply(points)
    assert points[0].raw_confidence == 0.9
    assert points[0].confidence == pytest.approx(0.9**3, abs=0.08)
    again = Calibration.from_meta({"calibration": calibration.to_dict()})
    assert again == calibration
    assert Calibration.from_meta({}) == Calibration()
