"""Pictures of a sweep's 3-D trigger points for the report (issue #17): what a clinician looks at, not reads.

A sweep is analysed one slice at a time, so the pictures are made from what ``SweepThumbnails`` keeps while the
slices go by: a small copy of each slice (B-mode and labels, bounded per slice) and full-resolution running
projections along the sweep (O(H * W) whatever the number of slices). Three views:

- ``render_projection``: the highest trigger-point probability along the sweep over the mean B-mode, each
  TrP's projected outline in its class colour and its number: where the TrPs lie, seen through the sweep.
- ``render_mid_slice``: the full-resolution slice through one TrP's centre (the caller re-reads it), outlines,
  its number and "slice k of first..last".
- ``render_along_sweep``: the reformat through the TrP's centre across the slices, depth down and the sweep
  axis across: the longitudinal view a sonographer gets by turning the probe 90 degrees, so it reads like a
  scan; above it a bracket marks the TrP's extent along the sweep (its slices, in mm).

Every picture is honest about scale: 1 px is the same number of mm across and down (slice spacing usually
differs from the pixel size, so the along-sweep view is resampled), with rulers in mm and a scale bar. The
views of one sweep share one scale by default (``sweep_px_per_mm``), so depths line up side by side.
Colours are the overlays' (``tpnet.core.overlay``); a TrP is drawn in the class the report shows for it
(``shown_classes``: "indeterminate" unless the model is validated to tell active from latent, as in 2-D).

numpy + OpenCV only (the torch-free inference install). Axes (z, y, x) = (slice, row = depth, column);
spacing_mm = (slice_mm, row_mm, col_mm); mm figures run between voxel centres, 0 at voxel (0, 0, 0), as
``tpnet.core.volume_postprocess`` measures them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from tpnet.core.confidence import Calibration
from tpnet.core.contract import ClassRoles, critical_class_indices, trp_class_indices
from tpnet.core.overlay import (
    HALO_COLOUR,
    MARKER_COLOUR,
    MIN_TEXT_PX,
    PANEL_COLOUR,
    PANEL_TEXT,
    SMALL_TEXT,
    class_colour,
    draw_labels,
    draw_text,
    nice_length,
    text_width,
)
from tpnet.core.volume_postprocess import TriggerPoint3D
from tpnet.inference.report import class_label

INDETERMINATE = "indeterminate"
DEFAULT_THUMB_SIDE = 160  # px: a thumbnail's longer side (about 0.25-0.4 mm per px for 40-60 mm frames)
# Default scale of a sweep's pictures: depth this tall, no picture wider than MAX_IMAGE_SIDE_PX.
TARGET_DEPTH_PX = 480
MAX_IMAGE_SIDE_PX = 1200
MIN_CANVAS_W = 520  # px: room for the title and legend beside a short sweep's narrow along-sweep view
PROB_COLOUR = (40, 210, 90)  # green tint: no class uses it in these views, so it never hides an outline
PROB_ALPHA = 0.65  # tint opacity at probability 1
OTHER_TRP_COLOUR = (170, 170, 170)  # another TrP crossing a TrP's own view: thin grey, it has its own views


# ------------------------------------------------------------------------------------------- what is kept


class SweepThumbnails:
    """What the pictures need from a sweep fed one slice at a time (``add_slice``).

    Per slice: its B-mode (uint8, area-averaged) and labels (uint8, nearest) shrunk so the longer side is at
    most ``max_side`` px (never enlarged): ``bytes_per_slice`` = th * tw * 2 <= max_side^2 * 2 bytes (51 kB at
    160). Whatever the number of slices, (H, W) at full resolution: the running maximum of the TrP probability
    (float32), the mean B-mode (float64 sum) and which classes each pixel showed in any slice (one bit per
    class). ``class_count``: labels are 0..class_count - 1 (at most 64)."""

    def __init__(
        self, shape_hw: tuple[int, int], max_side: int = DEFAULT_THUMB_SIDE, *, class_count: int
    ) -> None:
        height, width = (int(v) for v in shape_hw)
        if height < 1 or width < 1:
            raise ValueError(f"shape_hw must be two positive sizes; got {shape_hw!r}")
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1; got {max_side}")
        if not 1 <= class_count <= 64:
            raise ValueError(f"class_count must be 1..64 (one bit per class); got {class_count}")
        self.shape_hw = (height, width)
        self.class_count = class_count
        shrink = max(1.0, max(height, width) / max_side)
        self.thumb_hw = (max(1, round(height / shrink)), max(1, round(width / shrink)))
        # One bit per class: the smallest unsigned type with class_count bits.
        bit_types = (np.uint8, np.uint16, np.uint32, np.uint64)
        self._bits_dtype = next(d for d in bit_types if np.iinfo(d).bits >= class_count)
        self._bmode_thumbs: list[np.ndarray] = []
        self._label_thumbs: list[np.ndarray] = []
        self._bmode_sum = np.zeros((height, width), np.float64)
        self._prob_max: np.ndarray | None = None
        self._classes_seen = np.zeros((height, width), self._bits_dtype)

    def add_slice(self, bmode: np.ndarray, labels: np.ndarray, trp_prob: np.ndarray | None = None) -> None:
        """The next slice: B-mode (H, W) in [0, 1], labels (H, W) uint8, summed TrP probability (H, W) or None."""
        for name, array in (("bmode", bmode), ("labels", labels), ("trp_prob", trp_prob)):
            if array is not None and array.shape != self.shape_hw:
                raise ValueError(
                    f"{name} shape {array.shape} differs from the sweep's slices {self.shape_hw}"
                )
        if labels.size and int(labels.max()) >= self.class_count:
            raise ValueError(f"label {int(labels.max())} is not below class_count {self.class_count}")
        grey = np.nan_to_num(np.asarray(bmode, np.float64), nan=0.0).clip(0.0, 1.0)
        self._bmode_sum += grey
        labels = np.ascontiguousarray(labels, np.uint8)
        self._classes_seen |= np.left_shift(self._bits_dtype(1), labels.astype(self._bits_dtype))
        if trp_prob is not None:
            prob = np.nan_to_num(np.asarray(trp_prob, np.float32), nan=0.0)
            self._prob_max = prob.copy() if self._prob_max is None else np.maximum(self._prob_max, prob)
        th, tw = self.thumb_hw
        grey8 = np.round(grey * 255.0).astype(np.uint8)
        if (th, tw) == self.shape_hw:
            self._bmode_thumbs.append(grey8)
            self._label_thumbs.append(labels.copy())
        else:
            self._bmode_thumbs.append(cv2.resize(grey8, (tw, th), interpolation=cv2.INTER_AREA))
            self._label_thumbs.append(cv2.resize(labels, (tw, th), interpolation=cv2.INTER_NEAREST_EXACT))

    @property
    def slice_count(self) -> int:
        return len(self._bmode_thumbs)

    @property
    def bytes_per_slice(self) -> int:
        return 2 * self.thumb_hw[0] * self.thumb_hw[1]

    @property
    def nbytes(self) -> int:
        """Everything kept: the thumbnails plus the full-resolution projections."""
        thumbs = sum(t.nbytes for t in self._bmode_thumbs) + sum(t.nbytes for t in self._label_thumbs)
        prob = 0 if self._prob_max is None else self._prob_max.nbytes
        return thumbs + self._bmode_sum.nbytes + self._classes_seen.nbytes + prob

    @property
    def mean_bmode(self) -> np.ndarray:
        """(H, W) float in [0, 1]: the B-mode averaged over the slices."""
        return self._bmode_sum / max(1, self.slice_count)

    @property
    def trp_prob_max(self) -> np.ndarray | None:
        """(H, W) float32: the highest TrP probability along the sweep; None when no slice gave one."""
        return self._prob_max

    def seen_mask(self, labels: Sequence[int]) -> np.ndarray:
        """(H, W) bool: pixels that show any of ``labels`` in at least one slice (the labels' projection)."""
        bits = self._bits_dtype(0)
        for label in labels:
            bits |= self._bits_dtype(1) << self._bits_dtype(label)
        return (self._classes_seen & bits) != 0

    def bmode_column(self, x_px: float) -> np.ndarray:
        """(th, Z) uint8: each slice's thumbnail column through full-resolution column ``x_px``."""
        return np.stack([t[:, self._thumb_column(x_px)] for t in self._bmode_thumbs], axis=1)

    def label_column(self, x_px: float) -> np.ndarray:
        """(th, Z) uint8: the labels of that column, slice by slice."""
        return np.stack([t[:, self._thumb_column(x_px)] for t in self._label_thumbs], axis=1)

    def _thumb_column(self, x_px: float) -> int:
        width, thumb_w = self.shape_hw[1], self.thumb_hw[1]
        return int(np.clip(math.floor((x_px + 0.5) * thumb_w / width), 0, thumb_w - 1))


# ---------------------------------------------------------------------------------------- which class shows


def shown_classes(
    trps: Sequence[TriggerPoint3D],
    calibration: Calibration | None,
    p_active: Mapping[int, float] | None = None,
) -> dict[int, str]:
    """trp_id -> the class the report shows, by the 2-D rule (``Calibration.reported_class``): active or latent
    only when the model's active/latent accuracy is validated above chance (``active_separable``) AND the TrP's
    p_active (``p_active``: trp_id -> probability; absent = unknown) is at least ``active_band`` from 0.5;
    otherwise "indeterminate". No calibration, or no p_active: every TrP is indeterminate, never its raw
    majority label."""
    rule = calibration or Calibration()
    return {t.trp_id: rule.reported_class(float((p_active or {}).get(t.trp_id, math.nan))) for t in trps}


def shown_class(trp: TriggerPoint3D, class_shown: Mapping[int, str] | None) -> str:
    """The class ``class_shown`` (trp_id -> class) gives the TrP; "indeterminate" where it gives none."""
    return (class_shown or {}).get(trp.trp_id, INDETERMINATE)


def _trp_colour(trp: TriggerPoint3D, class_shown: Mapping[int, str] | None) -> tuple[int, int, int]:
    return class_colour(shown_class(trp, class_shown), trp.label)


def mid_slice_index(trp: TriggerPoint3D, spacing_mm: Sequence[float]) -> int:
    """The slice through the TrP's centre (the nearest to its centroid's z, within its slices): the slice
    ``render_mid_slice`` shows, which the caller re-reads at full resolution."""
    first, last = trp.slices
    return int(np.clip(round(trp.centroid_mm[2] / float(spacing_mm[0])), first, last))


def sweep_px_per_mm(shape_zyx: Sequence[int], spacing_mm: Sequence[float]) -> float:
    """One scale for all pictures of a sweep (so depths line up side by side): the depth ``TARGET_DEPTH_PX``
    tall, unless the frame's width or the sweep's length would then exceed ``MAX_IMAGE_SIDE_PX``."""
    slices, height, width = (int(v) for v in shape_zyx)
    slice_mm, row_mm, col_mm = (float(v) for v in spacing_mm)
    longest = max(width * col_mm, slices * slice_mm)
    return min(TARGET_DEPTH_PX / (height * row_mm), MAX_IMAGE_SIDE_PX / longest)


# ---------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class ViewLayout:
    """Where things lie in a picture (pixels). The image box shows a raster of samples ``sample_mm`` =
    (across, down) apart at ``px_per_mm`` on both axes; a position in mm (between sample centres, 0 at the
    first, as the table measures) maps to the picture by ``to_picture``. Under the image: the bottom ruler
    (``ruler_h`` tall), then the panel with the scale bar and the legend from ``legend_y``."""

    px_per_mm: float
    sample_mm: tuple[float, float]
    image_x: int
    image_y: int
    image_w: int
    image_h: int
    width: int
    text_px: int  # cap height of the title and TrP numbers; the legend's is SMALL_TEXT of it
    ruler_h: int

    @property
    def legend_y(self) -> int:
        return self.image_y + self.image_h + self.ruler_h

    @property
    def font_scale(self) -> float:
        return self.text_px / 20.0  # Hershey simplex capitals are 20 px tall at scale 1 (as in overlay.py)

    @property
    def thickness(self) -> int:
        return max(1, round(self.text_px / 9))

    @property
    def pad(self) -> int:
        return self.text_px // 2 + 2

    def to_picture(self, across_mm: float, down_mm: float) -> tuple[int, int]:
        return (
            round(self.image_x + (across_mm + self.sample_mm[0] / 2) * self.px_per_mm - 0.5),
            round(self.image_y + (down_mm + self.sample_mm[1] / 2) * self.px_per_mm - 0.5),
        )


def _layout(
    samples: tuple[int, int],
    sample_mm: tuple[float, float],
    px_per_mm: float,
    *,
    top_lines: int = 0,
    bar_chars: int = 0,
) -> ViewLayout:
    """``samples`` = (across, down) counts of the raster shown: the title above, the depth ruler left, the
    lateral or sweep ruler under the image; ``top_lines``: lines of room between title and image,
    ``bar_chars``: characters of room right of the image (a colour bar)."""
    if not (math.isfinite(px_per_mm) and px_per_mm > 0):
        raise ValueError(f"px_per_mm must be a positive number; got {px_per_mm!r}")
    image_w = max(1, round(samples[0] * sample_mm[0] * px_per_mm))
    image_h = max(1, round(samples[1] * sample_mm[1] * px_per_mm))
    # As overlay.py: the smallest text MIN_TEXT_PX tall, larger on larger pictures (capped for very wide ones).
    text_px = max(math.ceil(MIN_TEXT_PX / SMALL_TEXT), round(min(max(image_w, image_h), 960) / 36))
    pad = text_px // 2 + 2
    ruler_w = 4 * text_px + pad
    right = max(pad, bar_chars * text_px)
    content = ruler_w + image_w + right
    width = max(MIN_CANVAS_W, content)
    return ViewLayout(
        px_per_mm=float(px_per_mm),
        sample_mm=(float(sample_mm[0]), float(sample_mm[1])),
        image_x=ruler_w + (width - content) // 2,  # a narrow view is centred, its ruler beside it
        image_y=text_px + 2 * pad + top_lines * (text_px + pad),
        image_w=image_w,
        image_h=image_h,
        width=width,
        text_px=text_px,
        ruler_h=text_px + 2 * pad,
    )


def projection_layout(
    thumbs: SweepThumbnails, spacing_mm: Sequence[float], px_per_mm: float | None = None
) -> ViewLayout:
    """The projection's geometry: W x H pixels of col_mm x row_mm; room for the probability colour bar."""
    height, width = thumbs.shape_hw
    ppm = px_per_mm or sweep_px_per_mm((thumbs.slice_count, height, width), spacing_mm)
    bar = 5 if thumbs.trp_prob_max is not None else 0
    return _layout((width, height), (float(spacing_mm[2]), float(spacing_mm[1])), ppm, bar_chars=bar)


def mid_slice_layout(
    shape_hw: tuple[int, int],
    spacing_mm: Sequence[float],
    px_per_mm: float | None = None,
    slice_count: int = 1,
) -> ViewLayout:
    """The mid slice's geometry: W x H pixels of col_mm x row_mm (``slice_count`` only sets the default scale);
    a line above the image for the mark of the along-sweep plane."""
    height, width = shape_hw
    ppm = px_per_mm or sweep_px_per_mm((slice_count, height, width), spacing_mm)
    return _layout((width, height), (float(spacing_mm[2]), float(spacing_mm[1])), ppm, top_lines=1)


def along_sweep_layout(
    thumbs: SweepThumbnails, spacing_mm: Sequence[float], px_per_mm: float | None = None
) -> ViewLayout:
    """The along-sweep view's geometry: Z slices of slice_mm across, the frame's depth (H * row_mm) down in
    thumbnail rows, so image_w = round(Z * slice_mm * px_per_mm) whatever the thumbnails' size; two lines
    above the image for the extent bracket and its label."""
    height, width = thumbs.shape_hw
    ppm = px_per_mm or sweep_px_per_mm((thumbs.slice_count, height, width), spacing_mm)
    thumb_h = thumbs.thumb_hw[0]
    sample = (float(spacing_mm[0]), height * float(spacing_mm[1]) / thumb_h)
    return _layout((thumbs.slice_count, thumb_h), sample, ppm, top_lines=2)


# ------------------------------------------------------------------------------------------------ the views

Entry = tuple[str, "tuple[int, int, int] | None"]  # legend text, swatch colour (None: text only)
Outline = tuple[np.ndarray, tuple[int, int, int], int]  # image-box mask, colour, thickness


def render_projection(
    thumbs: SweepThumbnails,
    trps: Sequence[TriggerPoint3D],
    classes: Sequence[str],
    spacing_mm: Sequence[float],
    *,
    class_shown: Mapping[int, str] | None = None,
    roles: ClassRoles | None = None,
    px_per_mm: float | None = None,
    title: str | None = None,
) -> np.ndarray:
    """RGB uint8: the highest TrP probability along the sweep (green tint, with its colour bar) over the mean
    B-mode; each TrP's projected outline (the footprint of the TrP classes over all slices, the part round its
    centre) in the colour of the class shown for it (``class_shown``: trp_id -> class; absent:
    indeterminate), critical structures' projections outlined, every TrP's centre marked and numbered.
    TrPs one behind the other along the sweep share one footprint: both numbers stand in it."""
    _, row_mm, col_mm = _checked_spacing(spacing_mm)
    _check_thumbs(thumbs)
    layout = projection_layout(thumbs, spacing_mm, px_per_mm)
    prob = thumbs.trp_prob_max
    entries = _class_entries(classes, roles, [shown_class(t, class_shown) for t in trps])
    if prob is not None:
        entries.append(("highest P(trigger point) along the sweep", PROB_COLOUR))
    else:
        entries.append(("no probabilities given: outlines only", None))
    entries += [("+ n: trigger point n (as in the table)", None), ("grey: the slices' mean B-mode", None)]
    entries.append(("left: depth, bottom: lateral (mm from the image corner)", None))
    canvas, lines = _canvas(layout, entries)
    image = _grey_image(layout, thumbs.mean_bmode)
    if prob is not None:
        image = _tint(image, _resized(prob, layout, cv2.INTER_LINEAR))
    _paste(canvas, layout, image)

    outlines: list[Outline] = [
        (_resized_mask(thumbs.seen_mask([i]), layout), class_colour(classes[i], i), layout.thickness)
        for i in critical_class_indices(classes, roles)
    ]
    footprint = thumbs.seen_mask(trp_class_indices(classes, roles)).astype(np.uint8)
    count, components = cv2.connectedComponents(footprint, connectivity=8, ltype=cv2.CV_32S)
    anchors = []
    for trp in trps:
        own = _nearest_component(
            components, count, (trp.centroid_mm[0] / col_mm, trp.centroid_mm[1] / row_mm)
        )
        if own is not None:
            outlines.append((_resized_mask(own, layout), _trp_colour(trp, class_shown), layout.thickness + 1))
        anchors.append(layout.to_picture(trp.centroid_mm[0], trp.centroid_mm[1]))
    _draw_outlines(canvas, layout, outlines)
    for anchor in anchors:
        _cross(canvas, layout, anchor)
    _numbers(canvas, layout, [str(t.trp_id) for t in trps], anchors)

    last = thumbs.slice_count - 1
    heading = f"projection along the sweep, slices 0..{last}"
    _title(canvas, layout, f"{title}: {heading}" if title else heading.capitalize())
    _depth_ruler(canvas, layout, thumbs.shape_hw[0], row_mm)
    _bottom_ruler(canvas, layout, thumbs.shape_hw[1], col_mm)
    if prob is not None:
        _prob_bar(canvas, layout)
    _legend(canvas, layout, lines)
    return canvas


def render_mid_slice(
    bmode_slice: np.ndarray,
    labels_slice: np.ndarray,
    trp: TriggerPoint3D,
    classes: Sequence[str],
    spacing_mm: Sequence[float],
    *,
    slice_index: int | None = None,
    trp_mask: np.ndarray | None = None,
    class_shown: Mapping[int, str] | None = None,
    roles: ClassRoles | None = None,
    px_per_mm: float | None = None,
    slice_count: int = 1,
    title: str | None = None,
) -> np.ndarray:
    """RGB uint8: the full-resolution slice through the TrP's centre (``slice_index``, default
    ``mid_slice_index``) with the labels' outlines, the TrP in its shown class colour, its centre and number,
    "slice k of first..last" in the title and a triangle above the image where the along-sweep view cuts it.

    ``trp_mask``: (H, W) bool, the TrP's own voxels in this slice (from the 3-D component map) when the caller
    has it; None: the slice's TrP-class region nearest the TrP's centre is taken for it, the rest drawn as
    other TrPs. ``slice_count``: the sweep's, for the default scale (``sweep_px_per_mm``)."""
    slice_mm, row_mm, col_mm = _checked_spacing(spacing_mm)
    if bmode_slice.ndim != 2 or bmode_slice.shape != labels_slice.shape:
        raise ValueError(
            f"bmode_slice {bmode_slice.shape} and labels_slice {labels_slice.shape}: one (H, W) each"
        )
    if trp_mask is not None and trp_mask.shape != labels_slice.shape:
        raise ValueError(f"trp_mask shape {trp_mask.shape} differs from the slice's {labels_slice.shape}")
    k = mid_slice_index(trp, spacing_mm) if slice_index is None else int(slice_index)
    layout = mid_slice_layout(bmode_slice.shape, spacing_mm, px_per_mm, slice_count)
    entries = _class_entries(classes, roles, [shown_class(trp, class_shown)])
    entries += [("other trigger point", OTHER_TRP_COLOUR), ("+: its centre", None)]
    entries += [("triangle: the along-sweep view's plane", None)]
    entries.append(("left: depth, bottom: lateral (mm from the image corner)", None))
    canvas, lines = _canvas(layout, entries)
    _paste(canvas, layout, _grey_image(layout, bmode_slice))

    in_trp = np.isin(labels_slice, trp_class_indices(classes, roles))
    if trp_mask is None:
        count, components = cv2.connectedComponents(in_trp.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        own = _nearest_component(
            components, count, (trp.centroid_mm[0] / col_mm, trp.centroid_mm[1] / row_mm)
        )
        own = np.zeros_like(in_trp) if own is None else own
    else:
        own = np.asarray(trp_mask, bool)
    outlines = _critical_outlines(labels_slice, classes, roles, layout)
    outlines.append((_resized_mask(in_trp & ~own, layout), OTHER_TRP_COLOUR, max(1, layout.thickness - 1)))
    outlines.append((_resized_mask(own, layout), _trp_colour(trp, class_shown), layout.thickness + 1))
    _draw_outlines(canvas, layout, outlines)
    anchor = layout.to_picture(trp.centroid_mm[0], trp.centroid_mm[1])
    _cross(canvas, layout, anchor)
    _numbers(canvas, layout, [str(trp.trp_id)], [anchor])
    _top_mark(canvas, layout, anchor[0])

    first, last = trp.slices
    heading = f"TrP {trp.trp_id}: slice {k} of {first}..{last} (z {k * slice_mm:.1f} mm)"
    _title(canvas, layout, f"{title}: {heading}" if title else heading)
    _depth_ruler(canvas, layout, bmode_slice.shape[0], row_mm)
    _bottom_ruler(canvas, layout, bmode_slice.shape[1], col_mm)
    _legend(canvas, layout, lines)
    return canvas


def render_along_sweep(
    thumbs: SweepThumbnails,
    trp: TriggerPoint3D,
    classes: Sequence[str],
    spacing_mm: Sequence[float],
    *,
    class_shown: Mapping[int, str] | None = None,
    roles: ClassRoles | None = None,
    px_per_mm: float | None = None,
    title: str | None = None,
) -> np.ndarray:
    """RGB uint8: the plane through the TrP's centre that holds the sweep axis, from the thumbnails: depth
    down, the slices left to right (1 px = the same mm both ways, so a round nodule looks round), labels
    outlined (the TrP in its shown colour, other TrPs grey, critical structures in theirs). Above it a bracket
    spans the TrP's slices first..last, labelled with its extent in mm (slices x slice spacing, as the table
    counts it), and a triangle marks the mid slice (``render_mid_slice``'s)."""
    slice_mm, row_mm, col_mm = _checked_spacing(spacing_mm)
    _check_thumbs(thumbs)
    layout = along_sweep_layout(thumbs, spacing_mm, px_per_mm)
    row_sample_mm = layout.sample_mm[1]
    entries = _class_entries(classes, roles, [shown_class(trp, class_shown)])
    entries += [("other trigger point", OTHER_TRP_COLOUR), ("+: its centre", None)]
    entries += [("bracket: its slices; triangle: the mid slice shown", None)]
    entries.append(
        (f"left: depth (mm, sampled every {row_sample_mm:.2g} mm), bottom: z along the sweep (mm)", None)
    )
    canvas, lines = _canvas(layout, entries)
    x_px = trp.centroid_mm[0] / col_mm
    _paste(canvas, layout, _grey_image(layout, thumbs.bmode_column(x_px) / 255.0))

    plane = thumbs.label_column(x_px)  # (thumbnail rows, Z)
    first, last = trp.slices
    in_trp = np.isin(plane, trp_class_indices(classes, roles))
    within = np.zeros_like(in_trp)
    within[:, first : last + 1] = in_trp[:, first : last + 1]  # its own region lies within its slices
    count, components = cv2.connectedComponents(within.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    # The centre in thumbnail rows: row centres (r + 0.5) * row_mm from the top edge, samples row_sample_mm.
    thumb_row = (trp.centroid_mm[1] + row_mm / 2) / row_sample_mm - 0.5
    own = _nearest_component(components, count, (trp.centroid_mm[2] / slice_mm, thumb_row))
    own = np.zeros_like(in_trp) if own is None else own
    colour = _trp_colour(trp, class_shown)
    outlines = _critical_outlines(plane, classes, roles, layout)
    outlines.append((_resized_mask(in_trp & ~own, layout), OTHER_TRP_COLOUR, max(1, layout.thickness - 1)))
    outlines.append((_resized_mask(own, layout), colour, layout.thickness + 1))
    _draw_outlines(canvas, layout, outlines)
    # Depth in the table is from row 0's centre; the picture's rows are thumbnail samples: shift between them.
    anchor = layout.to_picture(trp.centroid_mm[2], trp.centroid_mm[1] + (row_mm - row_sample_mm) / 2)
    _cross(canvas, layout, anchor)
    _numbers(canvas, layout, [str(trp.trp_id)], [anchor])
    _extent_bracket(canvas, layout, trp, colour, mid_slice_index(trp, spacing_mm))

    heading = f"TrP {trp.trp_id} along the sweep, at lateral {trp.centroid_mm[0]:.1f} mm"
    _title(canvas, layout, f"{title}: {heading}" if title else heading)
    _depth_ruler(canvas, layout, thumbs.shape_hw[0], row_mm)
    _bottom_ruler(canvas, layout, thumbs.slice_count, slice_mm)
    _legend(canvas, layout, lines)
    return canvas


# ------------------------------------------------------------------------------------------ image layers


def _checked_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in spacing_mm)
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"spacing_mm must be three positive numbers (slice, row, column) in mm; got {spacing_mm!r}"
        )
    return values


def _check_thumbs(thumbs: SweepThumbnails) -> None:
    if thumbs.slice_count == 0:
        raise ValueError("no slice was added to the thumbnails")


def _canvas(layout: ViewLayout, entries: list[Entry]) -> tuple[np.ndarray, list[list[Entry]]]:
    """The blank picture, tall enough for the legend (``entries`` flowed into lines as wide as it)."""
    lines = _wrap_legend(entries, layout)
    legend_h = (len(lines) + 1) * (layout.text_px + layout.pad) + layout.pad  # + the scale-bar line
    return np.full((layout.legend_y + legend_h, layout.width, 3), PANEL_COLOUR, np.uint8), lines


def _grey_image(layout: ViewLayout, grey: np.ndarray) -> np.ndarray:
    """A [0, 1] raster resampled to the image box, as RGB uint8."""
    image = _resized(np.nan_to_num(np.asarray(grey, np.float32), nan=0.0), layout, None)
    image8 = np.round(np.clip(image, 0, 1) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(image8[..., None], 3, axis=2))


def _resized(raster: np.ndarray, layout: ViewLayout, interpolation: int | None) -> np.ndarray:
    """A raster stretched to the image box; area-averaged where both axes shrink, else linear (smooth)."""
    size = (layout.image_w, layout.image_h)
    if interpolation is None:
        shrinks = layout.image_w <= raster.shape[1] and layout.image_h <= raster.shape[0]
        interpolation = cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR
    return cv2.resize(np.asarray(raster, np.float32), size, interpolation=interpolation)


def _resized_mask(mask: np.ndarray, layout: ViewLayout) -> np.ndarray:
    """Nearest sample: outlines follow the raster's own pixels."""
    size = (layout.image_w, layout.image_h)
    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT)


def _tint(image: np.ndarray, prob: np.ndarray) -> np.ndarray:
    alpha = (PROB_ALPHA * np.clip(prob, 0, 1))[..., None]
    mixed = image.astype(np.float32) * (1 - alpha) + np.asarray(PROB_COLOUR, np.float32) * alpha
    return np.round(mixed).astype(np.uint8)


def _paste(canvas: np.ndarray, layout: ViewLayout, image: np.ndarray) -> None:
    canvas[
        layout.image_y : layout.image_y + layout.image_h, layout.image_x : layout.image_x + layout.image_w
    ] = image


def _nearest_component(
    components: np.ndarray, count: int, point_xy: tuple[float, float]
) -> np.ndarray | None:
    """(H, W) bool: the component under the point (x, y in pixels), else the one with a pixel nearest to it;
    None when there is none."""
    if count <= 1:
        return None
    x, y = point_xy
    row = int(np.clip(round(y), 0, components.shape[0] - 1))
    col = int(np.clip(round(x), 0, components.shape[1] - 1))
    if components[row, col] > 0:
        return components == components[row, col]
    rows, cols = np.nonzero(components)
    nearest = int(np.argmin((rows - y) ** 2 + (cols - x) ** 2))
    return components == components[rows[nearest], cols[nearest]]


def _critical_outlines(
    labels: np.ndarray, classes: Sequence[str], roles: ClassRoles | None, layout: ViewLayout
) -> list[Outline]:
    return [
        (_resized_mask(labels == i, layout), class_colour(classes[i], i), layout.thickness)
        for i in critical_class_indices(classes, roles)
    ]


def _draw_outlines(canvas: np.ndarray, layout: ViewLayout, outlines: Sequence[Outline]) -> None:
    """Every halo first, then the colours, in order (the TrP last: on top)."""
    drawn = []
    for mask, colour, thickness in outlines:
        if not mask.any():
            continue
        padded = np.pad(mask, 1)  # a region touching the image's edge still closes
        offset = (layout.image_x - 1, layout.image_y - 1)
        contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=offset)
        drawn.append((contours, colour, thickness))
    for contours, _, thickness in drawn:
        cv2.drawContours(canvas, contours, -1, HALO_COLOUR, thickness + 2)
    for contours, colour, thickness in drawn:
        cv2.drawContours(canvas, contours, -1, colour, thickness)


def _cross(canvas: np.ndarray, layout: ViewLayout, centre: tuple[int, int]) -> None:
    size = max(7, layout.text_px)
    cv2.drawMarker(canvas, centre, HALO_COLOUR, cv2.MARKER_CROSS, size, layout.thickness + 2)
    cv2.drawMarker(canvas, centre, MARKER_COLOUR, cv2.MARKER_CROSS, size, layout.thickness)


def _numbers(
    canvas: np.ndarray, layout: ViewLayout, texts: Sequence[str], anchors: Sequence[tuple[int, int]]
) -> None:
    """Each TrP's number beside its centre where it hides no other (overlay.place_labels); a leader line when
    it had to move away."""
    draw_labels(canvas, layout, texts, anchors, gap=layout.pad)


def _top_mark(canvas: np.ndarray, layout: ViewLayout, x: int) -> None:
    """A small white triangle just above the image, pointing down at column ``x``."""
    size = max(4, layout.text_px // 2)
    tip = layout.image_y - 2
    triangle = np.array([[x, tip], [x - size, tip - size - 2], [x + size, tip - size - 2]], np.int32)
    cv2.fillPoly(canvas, [triangle], MARKER_COLOUR)
    cv2.polylines(canvas, [triangle], True, HALO_COLOUR, 1, cv2.LINE_AA)


def _extent_bracket(
    canvas: np.ndarray, layout: ViewLayout, trp: TriggerPoint3D, colour: tuple[int, int, int], mid: int
) -> None:
    """Above the image: a bracket over slices first..last (the outer edges of their slabs, so its length is
    the extent the table gives), labelled, and the mid slice's triangle under it."""
    first, last = trp.slices
    slice_px = layout.sample_mm[0] * layout.px_per_mm
    x0 = round(layout.image_x + first * slice_px)
    x1 = max(x0 + 1, round(layout.image_x + (last + 1) * slice_px) - 1)
    y = layout.image_y - layout.text_px // 2 - 6
    tick = layout.text_px // 2 + 2
    points = np.array([[x0, y + tick], [x0, y], [x1, y], [x1, y + tick]], np.int32)
    cv2.polylines(canvas, [points], False, HALO_COLOUR, layout.thickness + 2)
    cv2.polylines(canvas, [points], False, colour, layout.thickness)
    label = f"extent {trp.extent_along_sweep_mm:.1f} mm: slices {first}..{last}"
    width = text_width(label, layout, SMALL_TEXT)
    left = int(np.clip((x0 + x1 - width) // 2, layout.pad, layout.width - layout.pad - width))
    draw_text(canvas, label, (left, y - layout.pad), layout, PANEL_TEXT, SMALL_TEXT)
    _top_mark(canvas, layout, round(layout.image_x + (mid + 0.5) * slice_px - 0.5))


# ----------------------------------------------------------------------------------------------- margins


def _title(canvas: np.ndarray, layout: ViewLayout, title: str) -> None:
    """The title, shortened in the middle ("start...end") to fit: both ends of a file name matter."""
    title = title.encode("ascii", "replace").decode("ascii")
    available = layout.width - 2 * layout.pad
    text, keep = title, len(title)
    while keep > 4 and text_width(text, layout) > available:
        keep -= 1
        text = title[: keep // 2] + "..." + title[len(title) - keep // 2 :]
    draw_text(canvas, text, (layout.pad, layout.pad + layout.text_px), layout, PANEL_TEXT)


def _ruler_step(length_mm: float, layout: ViewLayout, label_px: float) -> float:
    """A 1-2-5 step in mm: about four ticks over ``length_mm``, but never closer than ``label_px`` on the
    picture (their labels would touch)."""
    step = nice_length(max(length_mm / 4, 1e-3))
    while step * layout.px_per_mm < label_px:
        step = nice_length(step * 2.5)  # the next 1-2-5 value up: 1 -> 2, 2 -> 5, 5 -> 10
    return step


def _depth_ruler(canvas: np.ndarray, layout: ViewLayout, rows: int, row_mm: float) -> None:
    """Ticks in mm down the left margin at row centres, as the table measures depth (0 = row 0)."""
    last_mm = (rows - 1) * row_mm
    axis_x = layout.image_x - 4
    bottom = layout.image_y + layout.image_h - 1
    cv2.line(canvas, (axis_x, layout.image_y), (axis_x, bottom), PANEL_TEXT, layout.thickness)
    step = _ruler_step(last_mm, layout, 2.0 * layout.text_px)
    tick = layout.text_px // 2
    for k in range(int(last_mm / step + 1e-9) + 1):
        y = round(layout.image_y + (k * step + row_mm / 2) * layout.px_per_mm - 0.5)
        cv2.line(canvas, (axis_x - tick, y), (axis_x, y), PANEL_TEXT, layout.thickness)
        label = f"{k * step:g}"
        x = axis_x - tick - 3 - text_width(label, layout, SMALL_TEXT)
        draw_text(canvas, label, (x, min(y + layout.text_px // 2, bottom)), layout, PANEL_TEXT, SMALL_TEXT)


def _bottom_ruler(canvas: np.ndarray, layout: ViewLayout, samples: int, sample_mm: float) -> None:
    """Ticks in mm under the image at sample centres (lateral columns, or slices along the sweep; 0 = the
    first), labels centred under them."""
    last_mm = (samples - 1) * sample_mm
    axis_y = layout.image_y + layout.image_h + 3
    right = layout.image_x + layout.image_w - 1
    cv2.line(canvas, (layout.image_x, axis_y), (right, axis_y), PANEL_TEXT, layout.thickness)
    widest = text_width(f"{last_mm:.0f}.5", layout, SMALL_TEXT)
    step = _ruler_step(last_mm, layout, widest + layout.text_px)
    tick = layout.text_px // 2
    for k in range(int(last_mm / step + 1e-9) + 1):
        x = round(layout.image_x + (k * step + sample_mm / 2) * layout.px_per_mm - 0.5)
        cv2.line(canvas, (x, axis_y), (x, axis_y + tick), PANEL_TEXT, layout.thickness)
        label = f"{k * step:g}"
        width = text_width(label, layout, SMALL_TEXT)
        left = int(np.clip(x - width // 2, 0, layout.width - width))
        draw_text(canvas, label, (left, axis_y + tick + layout.text_px), layout, PANEL_TEXT, SMALL_TEXT)


def _prob_bar(canvas: np.ndarray, layout: ViewLayout) -> None:
    """The probability tint's scale (0 to 1) right of the image, on mid-grey tissue."""
    x0 = layout.image_x + layout.image_w + layout.text_px // 2
    bar_w = layout.text_px
    top = layout.image_y + layout.text_px + 6
    bottom = layout.image_y + layout.image_h - 1
    if bottom - top < 2 * layout.text_px:
        return  # too short a picture for a readable bar; the legend still names the tint
    values = np.linspace(1.0, 0.0, bottom - top + 1)[:, None].repeat(bar_w, axis=1)
    canvas[top : bottom + 1, x0 : x0 + bar_w] = _tint(np.full((*values.shape, 3), 128, np.uint8), values)
    cv2.rectangle(canvas, (x0, top), (x0 + bar_w - 1, bottom), PANEL_TEXT, 1)
    draw_text(canvas, "P", (x0, layout.image_y + layout.text_px), layout, PANEL_TEXT, SMALL_TEXT)
    for value, y in ((1.0, top), (0.5, (top + bottom) // 2), (0.0, bottom)):
        cv2.line(canvas, (x0 + bar_w, y), (x0 + bar_w + 4, y), PANEL_TEXT, 1)
        y_text = min(max(y + layout.text_px // 2, top + layout.text_px), bottom)
        draw_text(
            canvas,
            f"{value:g}",
            (x0 + bar_w + 4 + layout.text_px // 2, y_text),
            layout,
            PANEL_TEXT,
            SMALL_TEXT,
        )


def _class_entries(classes: Sequence[str], roles: ClassRoles | None, shown: Sequence[str]) -> list[Entry]:
    """Legend swatches: the classes the TrPs are shown as (in the order first seen), then the critical
    structures; the raw TrP classes are not listed when no TrP is shown as one (e.g. all indeterminate)."""
    entries: list[Entry] = []
    index = {name: i for i, name in enumerate(classes)}
    for name in dict.fromkeys(shown):
        entries.append((class_label(name), class_colour(name, index.get(name, 0))))
    for i in critical_class_indices(classes, roles):
        entries.append((class_label(classes[i]), class_colour(classes[i], i)))
    return entries


def _entry_width(entry: Entry, layout: ViewLayout) -> int:
    swatch = layout.text_px + 6 if entry[1] is not None else 0
    return swatch + text_width(entry[0], layout, SMALL_TEXT) + 2 * layout.text_px


def _wrap_legend(entries: list[Entry], layout: ViewLayout) -> list[list[Entry]]:
    """Entries flowed into lines as wide as the picture; an entry wider than a line is cut between words."""
    available = layout.width - layout.text_px
    pieces: list[Entry] = []
    for text, colour in entries:
        words = text.split(" ")
        while words:
            take = len(words)
            while take > 1 and _entry_width((" ".join(words[:take]), colour), layout) > available:
                take -= 1
            pieces.append((" ".join(words[:take]), colour))
            words, colour = words[take:], None  # the swatch stays with the first piece
    lines: list[list[Entry]] = [[]]
    used = 0
    for entry in pieces:
        width = _entry_width(entry, layout)
        if lines[-1] and used + width > available:
            lines.append([])
            used = 0
        lines[-1].append(entry)
        used += width
    return [line for line in lines if line]


def _legend(canvas: np.ndarray, layout: ViewLayout, lines: list[list[Entry]]) -> None:
    """Under the bottom ruler: the scale bar (the same mm across and down), then the legend lines."""
    line_h = layout.text_px + layout.pad
    baseline = layout.legend_y + layout.pad + layout.text_px
    length_mm = nice_length(0.3 * layout.image_w / layout.px_per_mm)
    length_px = max(1, round(length_mm * layout.px_per_mm))
    x = layout.pad
    bar_h = max(3, layout.text_px // 3)
    cv2.rectangle(canvas, (x, baseline - bar_h), (x + length_px - 1, baseline - 1), MARKER_COLOUR, -1)
    label = f"{length_mm:g} mm  (1 px = {1 / layout.px_per_mm:.3g} mm, both axes)"
    draw_text(canvas, label, (x + length_px + layout.pad, baseline), layout, PANEL_TEXT, SMALL_TEXT)
    for row, line in enumerate(lines, start=1):
        x = layout.pad
        y = baseline + row * line_h
        for text, colour in line:
            if colour is not None:
                cv2.rectangle(canvas, (x, y - layout.text_px), (x + layout.text_px, y), colour, -1)
                x += layout.text_px + 6
            draw_text(canvas, text, (x, y), layout, PANEL_TEXT, SMALL_TEXT)
            x += text_width(text, layout, SMALL_TEXT) + 2 * layout.text_px
