"""The out-of-distribution checks: a training-input reference that stays small, thresholds set by the training
frames themselves, and named warnings that fire on frames unlike them (and not on frames like them)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from tpnet.core.input_check import (
    FIELD_OF_VIEW_IMPLAUSIBLE,
    INTENSITY_UNLIKE_TRAINING,
    MISSING_MODALITY,
    PIXEL_SIZE_ASSUMED,
    SPACING_FAR_FROM_TRAINING,
    frame_statistics,
    frame_warnings,
    input_reference,
    intensity_warning,
    usable_reference,
)

CHANNELS = ("bmode", "elasto", "elasto_valid")


def _speckle_frame(rng, gain=1.0, shape=(96, 96)):
    """Rayleigh speckle, log-compressed into [0, 1] like a B-mode: a stand-in for a training frame."""
    envelope = np.hypot(rng.normal(size=shape), rng.normal(size=shape))
    grey = np.clip(0.25 * np.log1p(4.0 * envelope) * gain, 1e-3, 1.0).astype(np.float32)
    return grey


def _encoded(grey, swe=True):
    valid = np.ones_like(grey) if swe else np.zeros_like(grey)
    return np.stack([grey, 0.3 * valid, valid])


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    return input_reference(
        (_encoded(_speckle_frame(rng, gain=rng.uniform(0.95, 1.05))) for _ in range(60)), CHANNELS
    )


def test_reference_is_small_json_with_thresholds_from_the_training_frames(reference):
    text = json.dumps(reference)
    assert len(text) < 5000 and json.loads(text) == reference
    assert usable_reference(reference) and reference["n_frames"] == 60
    assert reference["swe_frame_fraction"] == 1.0
    for statistic in ("intensity", "speckle"):
        part = reference[statistic]
        # 99th percentile of the training frames' own distances x the margin: above their median.
        assert part["threshold"] == pytest.approx(part["distances"]["p99"] * 1.5, rel=1e-3)
        assert part["threshold"] > part["distances"]["p50"] > 0
    assert input_reference([], CHANNELS) == {} and not usable_reference({})
    assert not usable_reference(
        {**reference, "version": 99}
    )  # another method: no test rather than a wrong one


def test_frames_like_training_pass_and_unlike_ones_warn(reference):
    rng = np.random.default_rng(1)
    alike = [frame_statistics(_speckle_frame(rng)) for _ in range(40)]
    assert sum(intensity_warning(s, reference) is not None for s in alike) == 0

    darker = intensity_warning(frame_statistics(_speckle_frame(rng, gain=0.6)), reference)
    assert darker.code == INTENSITY_UNLIKE_TRAINING and "grey-level distribution" in darker.message
    # Same grey levels, no speckle: a smooth image (a blurred screenshot) fails the texture statistic.
    smooth = cv2.GaussianBlur(_speckle_frame(rng), (0, 0), 4.0)
    smooth = np.quantile(_speckle_frame(rng), np.linspace(0, 1, smooth.size))[
        np.argsort(np.argsort(smooth.ravel()))
    ]
    warning = intensity_warning(frame_statistics(smooth.reshape(96, 96).astype(np.float32)), reference)
    assert warning is not None and "speckle contrast" in warning.message
    assert frame_statistics(np.zeros((8, 8), np.float32)) is None  # nothing imaged: no statistic, no warning


def test_frame_warnings_name_each_code(reference):
    rng = np.random.default_rng(2)
    stats = frame_statistics(_speckle_frame(rng))
    common = {"model_spacing_mm": 0.2, "channels": CHANNELS, "statistics": stats, "reference": reference}

    assert frame_warnings(spacing_mm=0.2, shape=(96, 96), has_swe=True, **common) == []
    found = frame_warnings(spacing_mm=None, shape=(96, 96), has_swe=False, **common)
    assert [w.code for w in found] == [MISSING_MODALITY, PIXEL_SIZE_ASSUMED]
    assert "100% of its training frames had SWE" in found[0].message and "0.2 mm/pixel" in found[1].message
    # B-mode-only model: no SWE expected, none missing.
    assert (
        frame_warnings(spacing_mm=0.2, shape=(96, 96), has_swe=False, **{**common, "channels": ("bmode",)})
        == []
    )

    slip = frame_warnings(spacing_mm=0.9, shape=(96, 96), has_swe=True, **common)  # 4.5x the training spacing
    assert [w.code for w in slip] == [SPACING_FAR_FROM_TRAINING]
    wide = frame_warnings(
        spacing_mm=None, shape=(2000, 2000), has_swe=True, **common
    )  # 400 mm at 0.2 assumed
    assert [w.code for w in wide] == [PIXEL_SIZE_ASSUMED, FIELD_OF_VIEW_IMPLAUSIBLE]
    assert "at the assumed 0.2 mm/pixel" in wide[1].message
    # No usable reference (an older model): the statistic test is skipped, the other checks still run.
    dark = frame_statistics(_speckle_frame(rng, gain=0.5))
    assert frame_warnings(spacing_mm=0.2, shape=(96, 96), has_swe=True, **{**common, "statistics": dark})
    assert not frame_warnings(
        spacing_mm=0.2, shape=(96, 96), has_swe=True, **{**common, "statistics": dark, "reference": None}
    )
