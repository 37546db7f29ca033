"""Pictures of a sweep's 3-D trigger points (issue #17): what SweepThumbnails keeps slice by slice (bounded per
slice, full-resolution projections), the class a TrP is shown as (the 2-D rule), and the three views: every TrP
marked in its shown colour, the same mm across and down, the along-sweep view as wide as the sweep is long and
its bracket as long as the TrP's extent. Tiny hand-made volumes through the real find_trigger_points_3d."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tpnet.core.confidence import Calibration
from tpnet.core.overlay import CLASS_COLOURS, PANEL_COLOUR
from tpnet.core.volume_postprocess import find_trigger_points_3d
from tpnet.inference.sweep_views import (
    OTHER_TRP_COLOUR,
    SweepThumbnails,
    along_sweep_layout,
    mid_slice_index,
    mid_slice_layout,
    projection_layout,
    render_along_sweep,
    render_mid_slice,
    render_projection,
    shown_classes,
    sweep_px_per_mm,
)

CLASSES = ("background", "active_trp", "latent_trp", "vessel", "nerve")
SPACING = (0.5, 0.2, 0.2)  # slice, row, column (mm): slices farther apart than pixels, as in real sweeps
RED, YELLOW, LILAC = CLASS_COLOURS["active_trp"], CLASS_COLOURS["latent_trp"], CLASS_COLOURS["indeterminate"]
CYAN = CLASS_COLOURS["nerve"]
GREY = 204  # the B-mode of the test sweeps (uint8), a level no outline or text uses


def _ellipsoid(shape, spacing, centre_mm, radii_mm) -> np.ndarray:
    """(Z, H, W) bool; centre (x, y, z) and radii (x, y, z) in mm."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij")
    (cx, cy, cz), (rx, ry, rz) = centre_mm, radii_mm
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1


def _sweep(shape=(16, 40, 60), spacing=SPACING, nerve=True):
    """Two TrPs (an active one, a latent one further along the sweep), a nerve along the sweep; B-mode grey
    ``GREY`` everywhere."""
    labels = np.zeros(shape, np.uint8)
    labels[_ellipsoid(shape, spacing, (3.0, 2.5, 2.0), (1.2, 1.0, 1.2))] = 1
    labels[_ellipsoid(shape, spacing, (8.5, 5.0, 5.5), (1.0, 0.8, 1.0))] = 2
    if nerve:
        labels[_ellipsoid(shape, spacing, (6.0, 6.5, 100.0), (0.6, 0.5, 1e6))] = 4
    bmode = np.full(shape, GREY / 255)
    prob = np.isin(labels, (1, 2)).astype(np.float32) * 0.8
    trps = find_trigger_points_3d(labels, spacing, CLASSES)
    return bmode, labels, prob, trps


def _thumbs(bmode, labels, prob=None, max_side=160) -> SweepThumbnails:
    thumbs = SweepThumbnails(labels.shape[1:], max_side, class_count=len(CLASSES))
    for k in range(labels.shape[0]):
        thumbs.add_slice(bmode[k], labels[k], None if prob is None else prob[k])
    return thumbs


def _has(image: np.ndarray, colour, box=None) -> bool:
    """Whether any pixel of ``image`` (within box x0, y0, x1, y1) has exactly ``colour``."""
    if box is not None:
        x0, y0, x1, y1 = box
        image = image[max(0, y0) : y1, max(0, x0) : x1]
    return bool(np.all(image == np.asarray(colour, np.uint8), axis=-1).any())


def _around(layout, across_mm, down_mm, radius_mm):
    x, y = layout.to_picture(across_mm, down_mm)
    r = round(radius_mm * layout.px_per_mm)
    return x - r, y - r, x + r + 1, y + r + 1


# ------------------------------------------------------------------------------------------- thumbnails


def test_thumbnails_keep_small_copies_and_full_resolution_projections():
    bmode, labels, prob, _ = _sweep(shape=(6, 90, 120))
    bmode = bmode * np.linspace(0.2, 1.0, 6)[:, None, None]
    thumbs = _thumbs(bmode, labels, prob, max_side=40)

    assert thumbs.slice_count == 6
    assert thumbs.thumb_hw == (30, 40)  # longer side 40, aspect kept
    column = thumbs.bmode_column(60.0)
    assert column.dtype == np.uint8 and column.shape == (30, 6)
    plane = thumbs.label_column(60.0)
    assert plane.dtype == np.uint8 and plane.shape == (30, 6)
    assert set(np.unique(plane)) <= set(np.unique(labels))  # nearest: no label is made up between classes
    np.testing.assert_allclose(thumbs.mean_bmode, bmode.mean(axis=0), atol=1e-6)
    np.testing.assert_array_equal(thumbs.trp_prob_max, prob.max(axis=0))
    np.testing.assert_array_equal(thumbs.seen_mask([1, 2]), np.isin(labels, (1, 2)).any(axis=0))
    np.testing.assert_array_equal(thumbs.seen_mask([4]), (labels == 4).any(axis=0))


def test_thumbnails_memory_is_bounded_per_slice_and_the_projections_do_not_grow():
    shape_hw, max_side = (300, 400), 64
    thumbs = SweepThumbnails(shape_hw, max_side, class_count=5)
    assert thumbs.bytes_per_slice <= 2 * max_side * max_side
    bmode, labels = np.full(shape_hw, 0.5, np.float32), np.zeros(shape_hw, np.uint8)
    thumbs.add_slice(bmode, labels, np.zeros(shape_hw, np.float32))
    after_one = thumbs.nbytes
    for _ in range(9):
        thumbs.add_slice(bmode, labels, np.zeros(shape_hw, np.float32))
    assert thumbs.nbytes - after_one == 9 * thumbs.bytes_per_slice  # only the thumbnails grow
    # The full-resolution part is O(H * W): mean (float64), max probability (float32), class bits (uint8).
    assert after_one - thumbs.bytes_per_slice == 300 * 400 * (8 + 4 + 1)


def test_thumbnails_never_enlarge_a_small_frame_and_check_their_input():
    thumbs = SweepThumbnails((20, 30), class_count=3)
    assert thumbs.thumb_hw == (20, 30)
    thumbs.add_slice(np.zeros((20, 30)), np.zeros((20, 30), np.uint8))
    assert thumbs.trp_prob_max is None  # no slice gave probabilities
    with pytest.raises(ValueError, match="shape"):
        thumbs.add_slice(np.zeros((20, 31)), np.zeros((20, 31), np.uint8))
    with pytest.raises(ValueError, match="class_count"):
        thumbs.add_slice(np.zeros((20, 30)), np.full((20, 30), 3, np.uint8))
    with pytest.raises(ValueError, match="class_count"):
        SweepThumbnails((20, 30), class_count=65)


# --------------------------------------------------------------------------------------- shown class, scale


def test_shown_classes_follow_the_2d_rule_and_default_to_indeterminate():
    _, _, _, trps = _sweep()
    assert [t.class_name for t in trps] == ["active_trp", "latent_trp"]
    # No calibration or no p_active: never the raw majority label.
    assert shown_classes(trps, None) == {1: "indeterminate", 2: "indeterminate"}
    separable = Calibration(active_separable=True, active_band=0.1)
    assert shown_classes(trps, separable) == {1: "indeterminate", 2: "indeterminate"}
    assert shown_classes(trps, separable, {1: 0.9, 2: 0.2}) == {1: "active_trp", 2: "latent_trp"}
    assert shown_classes(trps, separable, {1: 0.55, 2: 0.2}) == {1: "indeterminate", 2: "latent_trp"}
    not_separable = Calibration(active_separable=False)
    assert shown_classes(trps, not_separable, {1: 0.99, 2: 0.01}) == {1: "indeterminate", 2: "indeterminate"}


def test_mid_slice_index_is_the_centre_slice_within_the_trp():
    _, _, _, trps = _sweep()
    for trp in trps:
        k = mid_slice_index(trp, SPACING)
        assert trp.slices[0] <= k <= trp.slices[1]
        assert abs(k * SPACING[0] - trp.centroid_mm[2]) <= SPACING[0] / 2


def test_one_scale_per_sweep_depth_tall_unless_too_wide():
    assert sweep_px_per_mm((10, 200, 200), (0.5, 0.2, 0.2)) == pytest.approx(480 / 40)
    # A 300 mm sweep would be 3600 px wide at that scale: capped at 1200 px.
    assert sweep_px_per_mm((600, 200, 200), (0.5, 0.2, 0.2)) == pytest.approx(1200 / 300)


# --------------------------------------------------------------------------------------------- the views


def test_projection_marks_every_trp_in_its_shown_colour():
    bmode, labels, prob, trps = _sweep()
    thumbs = _thumbs(bmode, labels, prob)
    shown = {1: "active_trp", 2: "latent_trp"}
    image = render_projection(thumbs, trps, CLASSES, SPACING, class_shown=shown, title="sweep 1")
    layout = projection_layout(thumbs, SPACING)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[1] == layout.width
    first, second = (_around(layout, t.centroid_mm[0], t.centroid_mm[1], 1.5) for t in trps)
    assert _has(image, RED, first) and not _has(image, YELLOW, first)
    assert _has(image, YELLOW, second) and not _has(image, RED, second)
    assert _has(image, CYAN)  # the nerve's projection is outlined


def test_projection_shows_indeterminate_trps_as_such_by_default():
    bmode, labels, prob, trps = _sweep()
    image = render_projection(_thumbs(bmode, labels, prob), trps, CLASSES, SPACING)
    assert _has(image, LILAC)
    assert not _has(image, RED) and not _has(image, YELLOW)  # no active/latent claim the model cannot make


def test_projection_without_probabilities_has_no_colour_bar():
    bmode, labels, _, trps = _sweep()
    with_prob = projection_layout(_thumbs(bmode, labels, np.zeros_like(bmode)), SPACING)
    without = projection_layout(_thumbs(bmode, labels), SPACING)
    assert with_prob.width > without.width
    image = render_projection(_thumbs(bmode, labels), trps, CLASSES, SPACING)
    assert image.shape[1] == without.width


def test_along_sweep_view_is_as_wide_as_the_sweep_is_long():
    bmode, labels, prob, trps = _sweep()
    thumbs = _thumbs(bmode, labels, prob)
    slices = labels.shape[0]
    for px_per_mm in (None, 7.0, 23.0):
        layout = along_sweep_layout(thumbs, SPACING, px_per_mm)
        ppm = px_per_mm or sweep_px_per_mm(labels.shape, SPACING)
        assert layout.image_w == round(slices * SPACING[0] * ppm)
        assert layout.image_h == round(
            labels.shape[1] * SPACING[1] * ppm
        )  # the frame's depth, in the same mm
        image = render_along_sweep(thumbs, trps[0], CLASSES, SPACING, px_per_mm=px_per_mm)
        assert image.dtype == np.uint8 and image.shape[1] == layout.width and image.shape[2] == 3
        # The B-mode fills exactly the image box on a row without structures.
        row = image[layout.image_y + 2]
        grey = np.flatnonzero(np.all(row == GREY, axis=-1))
        assert (grey[0], grey[-1]) == (layout.image_x, layout.image_x + layout.image_w - 1)
        assert np.all(row[layout.image_x + layout.image_w + 1] == PANEL_COLOUR)


def test_along_sweep_bracket_spans_the_trps_extent():
    bmode, labels, prob, trps = _sweep()
    thumbs = _thumbs(bmode, labels, prob)
    trp = trps[0]
    layout = along_sweep_layout(thumbs, SPACING, 20.0)
    image = render_along_sweep(thumbs, trp, CLASSES, SPACING, class_shown={1: "active_trp"}, px_per_mm=20.0)
    above = image[: layout.image_y]
    columns = np.flatnonzero(np.all(above == np.asarray(RED, np.uint8), axis=-1).any(axis=0))
    # The bracket's end ticks are a line width wide, centred on the slabs' outer edges.
    drawn_mm = (columns[-1] - columns[0] + 1 - layout.thickness) / layout.px_per_mm
    assert trp.extent_along_sweep_mm == (trp.slices[1] - trp.slices[0] + 1) * SPACING[0]
    assert drawn_mm == pytest.approx(trp.extent_along_sweep_mm, abs=1.5 / layout.px_per_mm)
    assert columns[0] == pytest.approx(
        layout.image_x + trp.slices[0] * SPACING[0] * 20.0, abs=layout.thickness
    )


def test_along_sweep_view_keeps_a_ball_round_whatever_the_slice_spacing():
    shape, spacing = (14, 60, 40), (1.0, 0.2, 0.2)  # slices five pixels apart
    labels = np.zeros(shape, np.uint8)
    labels[_ellipsoid(shape, spacing, (4.0, 6.0, 6.5), (3.0, 3.0, 3.0))] = 1
    trps = find_trigger_points_3d(labels, spacing, CLASSES)
    thumbs = _thumbs(np.full(shape, 0.5, np.float32), labels)
    layout = along_sweep_layout(thumbs, spacing, 10.0)
    image = render_along_sweep(thumbs, trps[0], CLASSES, spacing, px_per_mm=10.0)
    box = image[
        layout.image_y : layout.image_y + layout.image_h, layout.image_x : layout.image_x + layout.image_w
    ]
    ys, xs = np.nonzero(np.all(box == np.asarray(LILAC, np.uint8), axis=-1))
    width_mm, height_mm = (np.ptp(xs) + 1) / 10.0, (np.ptp(ys) + 1) / 10.0
    # 6 mm across both ways, give or take one slice (1 mm) across; unscaled it would be 5x narrower.
    assert height_mm == pytest.approx(6.0, abs=0.6)
    assert width_mm == pytest.approx(height_mm, abs=1.2)


def test_along_sweep_view_outlines_critical_structures_and_other_trps():
    shape, spacing = (16, 40, 60), SPACING
    labels = np.zeros(shape, np.uint8)
    labels[_ellipsoid(shape, spacing, (6.0, 2.5, 2.0), (1.2, 1.0, 1.2))] = 1
    labels[_ellipsoid(shape, spacing, (6.0, 5.5, 6.0), (1.2, 0.8, 1.0))] = 2  # same column, later slices
    labels[_ellipsoid(shape, spacing, (6.0, 7.0, 100.0), (0.6, 0.4, 1e6))] = 4  # nerve under both
    trps = find_trigger_points_3d(labels, spacing, CLASSES)
    image = render_along_sweep(_thumbs(np.full(shape, GREY / 255), labels), trps[0], CLASSES, spacing)
    assert _has(image, LILAC) and _has(image, OTHER_TRP_COLOUR) and _has(image, CYAN)


def test_mid_slice_outlines_the_trp_and_greys_the_others():
    bmode, labels, _, trps = _sweep(nerve=False)
    trp = trps[0]
    k = mid_slice_index(trp, SPACING)
    labels_slice = labels[k].copy()
    labels_slice[30:36, 50:56] = 2  # another TrP's cross-section in the same slice
    layout = mid_slice_layout(labels_slice.shape, SPACING, slice_count=labels.shape[0])
    image = render_mid_slice(bmode[k], labels_slice, trp, CLASSES, SPACING, class_shown={1: "active_trp"})
    assert image.dtype == np.uint8 and image.shape[1] == layout.width
    assert _has(image, RED, _around(layout, trp.centroid_mm[0], trp.centroid_mm[1], 2.0))
    assert _has(image, OTHER_TRP_COLOUR, _around(layout, 10.6, 6.6, 1.0))
    assert not _has(image, YELLOW)  # the other TrP is grey here: it has its own views


def test_mid_slice_uses_the_callers_trp_mask():
    bmode, labels, _, trps = _sweep(nerve=False)
    trp = trps[0]
    k = mid_slice_index(trp, SPACING)
    mask = np.zeros(labels.shape[1:], bool)  # the caller says this slice's TrP voxels lie elsewhere
    mask[30:36, 50:56] = True
    labels_slice = labels[k].copy()
    labels_slice[mask] = 1
    layout = mid_slice_layout(labels_slice.shape, SPACING, slice_count=labels.shape[0])
    image = render_mid_slice(bmode[k], labels_slice, trp, CLASSES, SPACING, trp_mask=mask, class_shown={1: "active_trp"})  # fmt: skip
    assert _has(image, RED, _around(layout, 10.6, 6.6, 1.0))
    assert _has(image, OTHER_TRP_COLOUR, _around(layout, trp.centroid_mm[0], trp.centroid_mm[1], 2.0))


def test_views_refuse_what_they_cannot_draw():
    bmode, labels, _, trps = _sweep()
    empty = SweepThumbnails(labels.shape[1:], class_count=len(CLASSES))
    with pytest.raises(ValueError, match="no slice"):
        render_projection(empty, trps, CLASSES, SPACING)
    with pytest.raises(ValueError, match="no slice"):
        render_along_sweep(empty, trps[0], CLASSES, SPACING)
    with pytest.raises(ValueError, match="spacing_mm"):
        render_mid_slice(bmode[0], labels[0], trps[0], CLASSES, (0.5, math.nan, 0.2))
    with pytest.raises(ValueError, match="px_per_mm"):
        render_projection(_thumbs(bmode, labels), trps, CLASSES, SPACING, px_per_mm=-1.0)
