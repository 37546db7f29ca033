"""Colour SWE decoding: a known kPa field drawn through cv2's jet/turbo, blended over grey or not, JPEG quality 90,
decoded back within the issue's bounds (median error <= 3 % of the range, >= 95 % of valid pixels recovered)."""

from __future__ import annotations

import numpy as np
import pytest

from screenshot_images import COLORBAR_BOX, RANGE_KPA, draw_screenshot, jpeg
from tpnet.core.colour_swe import colour_bar_problem, decode_swe, luma, sample_colour_bar
from tpnet.core.scanner_profile import crop

SPAN = RANGE_KPA[1] - RANGE_KPA[0]


def _decode(screen: np.ndarray, profile: dict, layout: str):
    bar = sample_colour_bar(crop(screen, tuple(COLORBAR_BOX)), "bottom-to-top", RANGE_KPA)
    assert colour_bar_problem(bar) is None
    swe = crop(screen, tuple(profile["swe_box"]))
    if layout == "dual":
        grey = luma(crop(screen, tuple(profile["bmode_box"])).astype(np.float32)) / 255.0
        return decode_swe(swe, bar, profile["blend"], grey=grey)
    return decode_swe(swe, bar, profile["blend"])


def _swe_truth(kpa: np.ndarray, profile: dict, layout: str) -> np.ndarray:
    if layout == "dual":
        return kpa
    bx, by = profile["bmode_box"][:2]
    sx, sy, sw, sh = profile["swe_box"]
    return kpa[sy - by : sy - by + sh, sx - bx : sx - bx + sw]


@pytest.mark.parametrize("colormap", ["jet", "turbo"])
@pytest.mark.parametrize("layout", ["dual", "overlay"])
def test_blended_colour_decodes_within_the_goal_at_jpeg_90(colormap: str, layout: str) -> None:
    screen, kpa, _, profile = draw_screenshot(colormap, layout, alpha=0.65, seed=3)
    decoded = _decode(jpeg(screen, 90), profile, layout)
    truth = _swe_truth(kpa, profile, layout)
    valid = np.isfinite(truth)
    recovered = np.isfinite(decoded.kpa[valid]).mean()
    error = np.abs(decoded.kpa - truth)[valid & np.isfinite(decoded.kpa)]
    assert recovered >= 0.95, recovered
    assert np.median(error) <= 0.03 * SPAN, np.median(error)
    assert decoded.alpha == pytest.approx(0.65, abs=0.05)  # the opacity was estimated, not given
    # No signal stays no signal: the void and the strip without colour are not decoded as stiffness.
    assert np.isfinite(decoded.kpa[~valid]).mean() <= 0.05


@pytest.mark.parametrize("colormap", ["jet", "turbo"])
def test_pure_colour_replace_and_known_opacity(colormap: str) -> None:
    screen, kpa, _, profile = draw_screenshot(colormap, "dual", seed=5, blend="replace")
    decoded = _decode(jpeg(screen, 90), profile, "dual")
    valid = np.isfinite(kpa)
    assert np.isfinite(decoded.kpa[valid]).mean() >= 0.95
    assert np.nanmedian(np.abs(decoded.kpa - kpa)[valid]) <= 0.03 * SPAN
    assert np.isnan(decoded.kpa[~valid]).mean() >= 0.95  # black around the colour: no signal

    screen, kpa, _, profile = draw_screenshot(colormap, "overlay", alpha=0.5, seed=6)
    bar = sample_colour_bar(crop(screen, tuple(COLORBAR_BOX)), "bottom-to-top", RANGE_KPA)
    decoded = decode_swe(crop(screen, tuple(profile["swe_box"])), bar, "overlay", alpha=0.5)
    truth = _swe_truth(kpa, profile, "overlay")
    assert decoded.alpha == 0.5
    assert np.nanmedian(np.abs(decoded.kpa - truth)[np.isfinite(truth)]) <= 0.03 * SPAN


def test_single_view_overlay_estimates_the_grey_under_the_colour() -> None:
    screen, kpa, grey, profile = draw_screenshot("turbo", "overlay", alpha=0.6, seed=8)
    decoded = _decode(screen, profile, "overlay")  # lossless: the estimate should be close to the truth
    truth_grey = _swe_truth(grey, profile, "overlay")
    coloured = np.isfinite(decoded.kpa)
    err = np.abs(decoded.grey - truth_grey)[coloured]
    assert np.median(err) < 0.03, np.median(err)
    # The colour's own luma would be far off: the estimate really removed the colour.
    colour_luma = luma(crop(screen, tuple(profile["swe_box"])).astype(np.float32)) / 255.0
    assert np.median(np.abs(colour_luma - truth_grey)[coloured]) > 3 * np.median(err)


def test_colour_far_from_the_bar_and_grey_are_nan() -> None:
    screen, _, _, profile = draw_screenshot("jet", "dual", seed=1, blend="replace")
    bar = sample_colour_bar(crop(screen, tuple(COLORBAR_BOX)), "bottom-to-top", RANGE_KPA)
    pixels = np.array(
        [[[255, 0, 255], [128, 128, 128], [0, 0, 0], [255, 255, 255]]], np.uint8
    )  # magenta, greys
    decoded = decode_swe(pixels, bar, "replace")
    assert np.isnan(decoded.kpa).all()
    ends = np.array([[[0, 0, 128], [128, 0, 0]]], np.uint8)  # jet's two ends: minimum and maximum
    low, high = decode_swe(ends, bar, "replace").kpa[0]
    assert low < 0.03 * SPAN and high > 0.97 * SPAN


@pytest.mark.parametrize(
    ("orientation", "transform"),
    [
        ("top-to-bottom", lambda bar: bar[::-1]),
        ("left-to-right", lambda bar: np.rot90(bar, -1)),  # clockwise: the bottom row (minimum) goes left
        ("right-to-left", lambda bar: np.rot90(bar, 1)),
    ],
)
def test_bar_orientations_read_the_minimum_at_the_right_end(orientation, transform) -> None:
    screen, _, _, _ = draw_screenshot("jet", "dual", seed=1)
    upright = crop(screen, tuple(COLORBAR_BOX))  # bottom-to-top
    reference = sample_colour_bar(upright, "bottom-to-top", RANGE_KPA)
    turned = sample_colour_bar(np.ascontiguousarray(transform(upright)), orientation, RANGE_KPA)
    np.testing.assert_allclose(turned.rgb, reference.rgb, atol=1e-6)


def test_a_box_that_is_not_a_colour_ramp_is_named() -> None:
    screen, _, _, profile = draw_screenshot("jet", "dual", seed=1)
    grey_box = crop(screen, tuple(profile["bmode_box"]))[:, :10]  # speckle, not a bar
    problem = colour_bar_problem(sample_colour_bar(grey_box, "bottom-to-top", RANGE_KPA))
    assert problem is not None and "not a colour ramp" in problem and "coloured" in problem
    x, y, w, h = COLORBAR_BOX
    with_frame = screen[y - 6 : y + h, x : x + w]  # takes in the bar's frame and the dark screen above it
    problem = colour_bar_problem(sample_colour_bar(with_frame, "bottom-to-top", RANGE_KPA))
    assert problem is not None and "jumps" in problem
    flat = np.tile(np.array([[[0, 0, 255]], [[0, 0, 250]]], np.uint8), (20, 10, 1))  # blue only: no ramp
    problem = colour_bar_problem(sample_colour_bar(flat, "bottom-to-top", RANGE_KPA))
    assert problem is not None and "distinct colours" in problem
