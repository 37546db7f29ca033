"""The clinician's overlay (core/overlay.py): legend, scale bar, depth ruler, title, SWE colour layer, labels that
do not overlap, a legible size for any input, contours visible under the markers, uncertainty circles and the
indeterminate class colour. Each test reads the drawn pixels back."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from tpnet.core.guidance import plan_guidance
from tpnet.core.needle_path import GuidanceParams
from tpnet.core.overlay import (
    CLASS_COLOURS,
    MARKER_COLOUR,
    MIN_IMAGE_SIDE_PX,
    MIN_TEXT_PX,
    NEEDLE_CLEAR_COLOUR,
    NEEDLE_UNSAFE_COLOUR,
    PANEL_TEXT,
    SMALL_TEXT,
    SWE_BOX_COLOUR,
    nice_length,
    overlay_layout,
    place_labels,
    render_overlay,
)
from tpnet.core.postprocess import find_trigger_points

CLASSES = ("background", "active_trp", "latent_trp", "vessel")
BG, ACTIVE, LATENT, VESSEL = range(4)
SPACING_MM = 0.1


def _ellipse(shape: tuple[int, int], cx: int, cy: int, a: float, b: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0


@pytest.fixture
def scene() -> dict:
    """A 256 x 256 frame: an active TrP at (60, 80), a latent one at (170, 150), a vessel, SWE over the middle."""
    shape = (256, 256)
    rng = np.random.default_rng(0)
    bmode = np.clip(0.35 + 0.1 * rng.standard_normal(shape), 0, 1)
    bmode[:20] = 0.05  # gel above the skin
    bmode[20:24] = 0.95  # the skin echo
    labels = np.zeros(shape, np.uint8)
    labels[_ellipse(shape, 60, 80, 16, 9)] = ACTIVE
    labels[_ellipse(shape, 170, 150, 12, 10)] = LATENT
    labels[200:215, 40:60] = VESSEL
    elasto = np.full(shape, np.nan, np.float32)
    elasto[40:220, 30:230] = np.linspace(10, 90, 200, dtype=np.float32)[None, :]
    points = find_trigger_points(labels, SPACING_MM, CLASSES, elasto_kpa=elasto)
    return {"bmode": bmode, "labels": labels, "elasto": elasto, "points": points}


def _render(scene: dict, points=None, **kwargs) -> np.ndarray:
    options = {"spacing_mm": SPACING_MM, "skin_row": 20, "title": "frame_001.png", "swe_layer": True} | kwargs
    points = scene["points"] if points is None else points
    return render_overlay(scene["bmode"], scene["labels"], CLASSES, points, scene["elasto"], **options)


def _layout(scene: dict, overlay: np.ndarray, colour_bar: bool = True):
    """The geometry render_overlay used (the legend's height aside, which does not move anything above it)."""
    layout = overlay_layout(scene["bmode"].shape, spacing_mm=SPACING_MM, title="t", colour_bar=colour_bar)
    assert overlay.shape[1] == layout.width
    return layout


def _has_colour(region: np.ndarray, colour: tuple[int, int, int], tolerance: int = 0) -> bool:
    return bool((np.abs(region.astype(int) - np.array(colour)).max(axis=-1) <= tolerance).any())


def test_nice_lengths():
    assert [nice_length(v) for v in (0.7, 1.0, 1.9, 4.99, 7.68, 12, 350)] == [0.5, 1, 1, 2, 5, 10, 200]


@pytest.mark.parametrize("shape", [(40, 60), (100, 150), (256, 256), (600, 800), (1500, 2000)])
def test_legible_at_any_input_size(shape):
    """Small frames are upscaled by an integer factor until the image's shorter side reaches the minimum, and the
    text is never below the minimum size; large frames are not upscaled."""
    layout = overlay_layout(shape, spacing_mm=0.2, title="x", colour_bar=True)
    assert min(layout.image_w, layout.image_h) >= MIN_IMAGE_SIDE_PX
    assert layout.image_w == shape[1] * layout.scale and layout.image_h == shape[0] * layout.scale
    assert layout.text_px >= MIN_TEXT_PX
    if min(shape) >= MIN_IMAGE_SIDE_PX:
        assert layout.scale == 1 and layout.text_px >= min(shape) // 40  # grows with the frame


def test_title_text_is_at_least_the_minimum_height(scene):
    """The burned-in file name's capitals, measured in pixels, are text_px tall, and the smaller text (legend,
    ruler) that is SMALL_TEXT of them is no smaller than MIN_TEXT_PX."""
    small = {k: v[:60, :80] if isinstance(v, np.ndarray) else v for k, v in scene.items()}
    overlay = render_overlay(small["bmode"], small["labels"], CLASSES, [], title="HHHH")
    layout = overlay_layout((60, 80), title="HHHH")
    band = overlay[: layout.image_y]
    bright = np.flatnonzero((band.min(axis=-1) > 200).any(axis=1))
    cap_height = bright[-1] - bright[0] + 1
    assert cap_height >= layout.text_px - 1 and cap_height * SMALL_TEXT >= MIN_TEXT_PX - 1


def test_legend_shows_every_class_swatch_and_the_swe_box(scene):
    overlay = _render(scene)
    layout = _layout(scene, overlay)
    legend = overlay[layout.legend_y :]
    for name in ("active_trp", "latent_trp", "vessel", "indeterminate"):
        assert _has_colour(legend, CLASS_COLOURS[name]), name
    assert _has_colour(legend, SWE_BOX_COLOUR)
    # ... and nothing of it over the image: the legend lies wholly under it.
    assert overlay.shape[0] > layout.legend_y + 2 * layout.text_px


def test_scale_bar_is_a_nice_length_in_mm(scene):
    """A 256 px frame at 0.1 mm is drawn at x2: 30 % of the image is 7.68 mm -> a 5 mm bar = 50 frame px = 100 px."""
    overlay = _render(scene)
    layout = _layout(scene, overlay)
    assert layout.scale == 2
    expected_mm = nice_length(layout.image_w * 0.3 * SPACING_MM / layout.scale)
    assert expected_mm == 5
    legend = overlay[layout.legend_y : layout.legend_y + 2 * layout.text_px]
    white = (legend == MARKER_COLOUR).all(axis=-1)
    runs = [int(row[layout.image_x :].argmin()) for row in white if row[layout.image_x]]
    assert runs and max(runs) == round(expected_mm / SPACING_MM * layout.scale) == 100


def test_without_a_pixel_size_there_is_no_scale_bar_and_no_ruler(scene):
    with_mm = _render(scene)
    without = _render(scene, spacing_mm=None)
    assert without.shape[1] < with_mm.shape[1]  # no ruler margin
    layout = overlay_layout(scene["bmode"].shape, title="t", colour_bar=True)
    legend = without[layout.legend_y : layout.legend_y + 2 * layout.text_px]
    assert not (legend == MARKER_COLOUR).all(axis=-1).any()  # no white bar
    assert _has_colour(legend, (255, 200, 80))  # the "pixel size unknown" line instead


def test_depth_ruler_starts_at_the_skin_line(scene):
    """The ruler's origin marker (green when a skin line was found) sits on the skin line's row; ticks every
    nice step (about a quarter of the depth shown) below it: 23.5 mm -> 5 mm, 16.5 mm -> 2 mm."""
    for skin_row, step_mm in ((20, 5), (90, 2)):
        overlay = _render(scene, skin_row=skin_row)
        layout = _layout(scene, overlay)
        margin = overlay[: layout.legend_y, : layout.ruler_w]  # (the legend's SWE swatch is green too)
        rows = np.flatnonzero((margin == SWE_BOX_COLOUR).all(axis=-1).any(axis=1))
        zero_y = layout.to_overlay(0, skin_row)[1]
        assert rows.size and abs((rows[0] + rows[-1]) / 2 - zero_y) <= 1
        # 0.1 mm/px drawn x2: 20 px per mm; no tick above the skin line.
        step_px = step_mm * 20
        tick_column = margin[:, layout.ruler_w - 4 - layout.text_px // 4]
        tick_rows = np.flatnonzero((tick_column == PANEL_TEXT).all(axis=-1))
        expected = [zero_y + k * step_px for k in range(1, 9) if zero_y + k * step_px < layout.legend_y]
        assert expected and all(np.abs(tick_rows - row).min() <= 1 for row in expected)
        assert not (
            (tick_rows >= layout.image_y) & (tick_rows < zero_y - layout.text_px)
        ).any()  # (title above)
    no_skin = _render(scene, skin_row=None)
    assert not (no_skin[: layout.legend_y, : layout.ruler_w] == SWE_BOX_COLOUR).all(axis=-1).any()


def test_swe_layer_colours_only_where_there_is_signal_and_has_a_colour_bar(scene):
    plain = _render(scene, swe_layer=False)
    coloured = _render(scene)
    layout = _layout(scene, coloured)
    assert plain.shape[1] < coloured.shape[1]  # the colour bar's margin
    inside = layout.to_overlay(220, 100)  # SWE signal, no finding
    outside = layout.to_overlay(10, 240)  # no SWE signal
    r, g, b = (int(v) for v in coloured[inside[1], inside[0]])
    assert max(r, g, b) - min(r, g, b) > 40  # coloured
    r, g, b = (int(v) for v in coloured[outside[1], outside[0]])
    assert r == g == b  # grey B-mode untouched
    bar = coloured[layout.image_y : layout.image_y + layout.image_h, layout.image_x + layout.image_w :]
    spread = bar.astype(int).max(axis=-1) - bar.astype(int).min(axis=-1)
    assert (spread > 40).sum() > layout.image_h  # a column of colours, top to bottom


def test_contours_stay_visible_under_the_markers(scene):
    """The class outline is drawn after the marker: where the outline crosses the marker's vertical arm (the
    centroid's column) it keeps the class colour."""
    overlay = _render(scene, swe_layer=False, title=None)
    layout = overlay_layout(scene["bmode"].shape, spacing_mm=SPACING_MM)
    for point in scene["points"]:
        x, _ = layout.to_overlay(point.x_px, point.y_px)
        column = overlay[layout.image_y : layout.image_y + layout.image_h, x]
        assert _has_colour(column, CLASS_COLOURS[point.class_name]), point.class_name
        assert _has_colour(column, MARKER_COLOUR)  # and the marker itself


def test_indeterminate_trigger_points_are_drawn_in_their_own_colour(scene):
    points = [dataclasses.replace(p, reported_class="indeterminate") for p in scene["points"]]
    overlay = _render(scene, points=points, swe_layer=False)
    layout = _layout(scene, overlay, colour_bar=False)
    image = overlay[
        layout.image_y : layout.image_y + layout.image_h, layout.image_x : layout.image_x + layout.image_w
    ]
    assert _has_colour(image, CLASS_COLOURS["indeterminate"])
    assert not _has_colour(image, CLASS_COLOURS["active_trp"])
    assert not _has_colour(image, CLASS_COLOURS["latent_trp"])


def test_uncertainty_circle_has_the_radius_of_the_centroid_sd(scene):
    """centroid_sd_mm = 2 mm at 0.1 mm/px, drawn x2: a dashed white circle of radius 40 px; NaN draws none."""
    active = scene["points"][0]
    assert active.class_name == "active_trp"
    with_sd = [dataclasses.replace(active, centroid_sd_mm=2.0)]
    without = [dataclasses.replace(active, centroid_sd_mm=math.nan)]
    a = _render(scene, points=with_sd, swe_layer=False)
    b = _render(scene, points=without, swe_layer=False)
    layout = overlay_layout(scene["bmode"].shape, spacing_mm=SPACING_MM, title="t")
    cx, cy = layout.to_overlay(active.x_px, active.y_px)
    radius = 2.0 / SPACING_MM * layout.scale
    assert radius == 40
    on_circle = 0
    angles = np.deg2rad(np.arange(0, 360, 2))
    for angle in angles:
        x, y = round(cx + radius * math.cos(angle)), round(cy + radius * math.sin(angle))
        on_circle += bool((a[y - 1 : y + 2, x - 1 : x + 2] == MARKER_COLOUR).all(axis=-1).any())
    assert 0.5 * len(angles) <= on_circle <= 0.9 * len(angles)  # dashed: most of the way round, not all
    yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
    near_circle = np.abs(np.hypot(xx - cx, yy - cy) - radius) < 3
    white_with, white_without = ((image[near_circle] == MARKER_COLOUR).all(axis=-1).sum() for image in (a, b))
    assert white_without < 0.2 * white_with  # NaN: no circle (what is left there is the number's label)


def test_placed_labels_never_overlap_each_other_or_the_anchors():
    """A dense cluster of findings: every label stays inside the image and off every other label and marker."""
    rng = np.random.default_rng(3)
    anchors = [(int(x), int(y)) for x, y in rng.integers(200, 260, size=(12, 2))]
    sizes = [(30, 24)] * len(anchors)
    bounds = (0, 0, 640, 480)
    gap = 9
    rects = place_labels(anchors, sizes, bounds, gap)
    for rect, (w, h) in zip(rects, sizes, strict=True):
        assert rect[2] - rect[0] == w and rect[3] - rect[1] == h
        assert bounds[0] <= rect[0] and bounds[1] <= rect[1] and rect[2] <= bounds[2] and rect[3] <= bounds[3]
    for a, b in itertools.combinations(rects, 2):
        assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    for rect in rects:
        for x, y in anchors:
            assert not (rect[0] < x + gap and x - gap < rect[2] and rect[1] < y + gap and y - gap < rect[3])


def test_overlays_of_one_frame_have_one_size_whatever_they_show(scene):
    """Ground truth beside prediction (training's validation images): same legend, same size."""
    truth = render_overlay(scene["bmode"], scene["labels"], CLASSES, scene["points"], scene["elasto"])
    nothing = render_overlay(scene["bmode"], np.zeros_like(scene["labels"]), CLASSES, [], scene["elasto"])
    assert truth.shape == nothing.shape and truth.dtype == nothing.dtype == np.uint8


def test_needle_paths_are_drawn_white_when_clear_red_with_a_warning_when_not(scene):
    """Issue #16: each TrP's planned path, entry to centroid; the legend does not depend on what is drawn."""
    guided = [dataclasses.replace(p) for p in scene["points"]]
    plan_guidance(guided, scene["labels"], None, CLASSES, None, SPACING_MM, 20, GuidanceParams())
    active, latent = guided
    assert active.path_safe and latent.path_safe  # the vessel is far below both
    unsafe = dataclasses.replace(latent, path_safe=False)
    without = _render(scene, points=guided, swe_layer=False)
    clear = _render(scene, points=[active, unsafe], swe_layer=False, needle_min_clearance_mm=3.0)
    layout = _layout(scene, clear, colour_bar=False)

    def along(point):  # points of its path between the skin and the TrP's number label
        x0, y0 = layout.to_overlay(point.entry_x_px, point.entry_y_px)
        x1, y1 = layout.to_overlay(point.x_px, point.y_px)
        return [(round(x0 + f * (x1 - x0)), round(y0 + f * (y1 - y0))) for f in np.linspace(0.15, 0.6, 10)]

    for x, y in along(active):
        assert _has_colour(clear[y - 1 : y + 2, x - 1 : x + 2], NEEDLE_CLEAR_COLOUR)
        assert not _has_colour(without[y - 1 : y + 2, x - 1 : x + 2], NEEDLE_CLEAR_COLOUR)
    for x, y in along(unsafe):
        assert _has_colour(clear[y - 1 : y + 2, x - 1 : x + 2], NEEDLE_UNSAFE_COLOUR)
    ex, ey = layout.to_overlay(unsafe.entry_x_px, unsafe.entry_y_px)
    below_entry = clear[ey : ey + 2 * layout.text_px + 2, ex - layout.text_px : ex + layout.text_px + 1]
    red = (np.abs(below_entry.astype(int) - NEEDLE_UNSAFE_COLOUR).max(axis=-1) == 0).sum()
    assert red > layout.text_px**2 / 2  # the warning triangle under the skin entry

    # No in-plane path: no line, a warning triangle beside the TrP.
    no_path = dataclasses.replace(
        active, needle_side="", path_safe=False, entry_x_px=math.nan, entry_y_px=math.nan
    )
    flagged = _render(scene, points=[no_path], swe_layer=False, needle_min_clearance_mm=3.0)
    tx, ty = layout.to_overlay(active.x_px, active.y_px)
    beside = flagged[ty - 3 * layout.text_px : ty + layout.text_px, tx : tx + 3 * layout.text_px]
    assert _has_colour(beside, NEEDLE_UNSAFE_COLOUR)
    for x, y in along(active):
        assert not _has_colour(flagged[y - 1 : y + 2, x - 1 : x + 2], NEEDLE_CLEAR_COLOUR)
    empty, drawn = (
        render_overlay(
            scene["bmode"], scene["labels"], CLASSES, points, scene["elasto"], needle_min_clearance_mm=3
        )
        for points in ([], guided)
    )
    assert empty.shape == drawn.shape
