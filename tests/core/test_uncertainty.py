"""Per-detection uncertainty across test-time passes: known spreads on hand-made probability maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tpnet.core.postprocess import PostprocessParams, find_trigger_points, labels_from_probs
from tpnet.core.uncertainty import pass_spread, trp_components

CLASSES = ("background", "active_trp", "latent_trp")
SPACING_MM = 0.2


def _disc(shape, cx, cy, r, value):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.where((xx - cx) ** 2 + (yy - cy) ** 2 <= r**2, value, 0.0).astype(np.float32)


def _probs(trp):
    return np.stack([1 - trp, trp, np.zeros_like(trp)])


def test_spread_of_two_passes_is_their_difference_over_root_two():
    shape = (60, 80)
    mean = _disc(shape, 20, 30, 6, 0.8) + _disc(shape, 60, 30, 6, 0.9)
    label_map = labels_from_probs(_probs(mean), CLASSES, PostprocessParams(min_area_mm2=0.0), SPACING_MM)
    points = find_trigger_points(label_map, SPACING_MM, CLASSES, probs=_probs(mean))
    components, ids = trp_components(label_map, CLASSES, points)
    assert len(points) == 2 and sorted(ids) == [1, 2]

    # Pass A: the left nodule at 0.7, its mass shifted 2 px right; pass B: 0.9, shifted 2 px left. The right
    # nodule is the same in both passes.
    right = _disc(shape, 60, 30, 6, 0.9)
    pass_a = right + _disc(shape, 20, 30, 6, 0.5) + _disc(shape, 22, 30, 6, 0.2)
    pass_b = right + _disc(shape, 20, 30, 6, 0.7) + _disc(shape, 18, 30, 6, 0.2)
    spreads = pass_spread(np.stack([pass_a, pass_b]), components, ids, SPACING_MM)
    left, still = (spreads[i] for i in np.argsort([p.x_px for p in points]))

    inside = components == ids[int(np.argmin([p.x_px for p in points]))]
    m_a, m_b = pass_a[inside].mean(), pass_b[inside].mean()
    assert left.confidence_sd == pytest.approx(abs(m_a - m_b) / math.sqrt(2), rel=1e-5)
    cols = np.nonzero(inside)[1]
    cx_a = (pass_a[inside] * cols).sum() / pass_a[inside].sum()
    cx_b = (pass_b[inside] * cols).sum() / pass_b[inside].sum()
    assert left.centroid_sd_mm == pytest.approx(abs(cx_a - cx_b) / math.sqrt(2) * SPACING_MM, rel=1e-5)
    assert left.centroid_sd_mm > 0.05
    assert still.confidence_sd == pytest.approx(0.0, abs=1e-9) and still.centroid_sd_mm == pytest.approx(
        0.0, abs=1e-9
    )


def test_one_pass_has_no_spread():
    shape = (40, 40)
    mean = _disc(shape, 20, 20, 6, 0.8)
    label_map = labels_from_probs(_probs(mean), CLASSES, PostprocessParams(min_area_mm2=0.0), SPACING_MM)
    points = find_trigger_points(label_map, SPACING_MM, CLASSES, probs=_probs(mean))
    components, ids = trp_components(label_map, CLASSES, points)
    (spread,) = pass_spread(mean[None], components, ids, SPACING_MM)
    assert math.isnan(spread.confidence_sd) and math.isnan(spread.centroid_sd_mm)
    with pytest.raises(ValueError, match="trp_passes must be"):
        pass_spread(mean[None, :10], components, ids, SPACING_MM)
