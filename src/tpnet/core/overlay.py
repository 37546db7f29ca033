"""Overlay image for clinicians: the B-mode with class contours, numbered TrP markers, the SWE box, and around it
what a reader needs to read it alone: the file name, a legend, a scale bar in mm, a depth ruler from the skin line
and (optionally) the SWE stiffness map as a colour layer with its colour bar in kPa.

Legible at any input size: the image is drawn at an integer multiple of the frame's size so that its shorter side
is at least ``MIN_IMAGE_SIDE_PX``, and text is sized from that, so the overlay is usually LARGER than the frame
(and has margins): ``overlay_layout`` says where the frame's pixels lie in it. Label maps (``masks/``) stay at the
frame's own size; only this picture is scaled. numpy + OpenCV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from tpnet.core.contract import ClassRoles, trp_class_indices
from tpnet.core.postprocess import TriggerPoint

# RGB. Contours, not filled areas: the tissue underneath must stay visible.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "active_trp": (255, 40, 40),  # red
    "latent_trp": (255, 220, 0),  # yellow
    "indeterminate": (200, 130, 255),  # lilac: a TrP whose type the model cannot tell
    "vessel": (40, 140, 255),  # blue, lightened to stand out on dark B-mode
    "nerve": (0, 230, 230),  # cyan: critical structures cool, trigger points warm (yellow is latent_trp's)
}
CLASS_LABELS = {
    "active_trp": "Active trigger point",
    "latent_trp": "Latent trigger point",
    "indeterminate": "Trigger point, type indeterminate",
    "vessel": "Blood vessel",
    "nerve": "Nerve",
}
OTHER_COLOURS: tuple[tuple[int, int, int], ...] = ((255, 0, 255), (0, 255, 255), (255, 140, 0))
SWE_BOX_COLOUR = (0, 220, 0)  # green
# Needle paths (issue #16): white like a needle on B-mode when clear, red with a warning triangle when not.
NEEDLE_CLEAR_COLOUR = (255, 255, 255)
NEEDLE_UNSAFE_COLOUR = (255, 30, 30)
MARKER_COLOUR = (255, 255, 255)
HALO_COLOUR = (0, 0, 0)  # under every line and letter: legible on bright tissue and on the SWE colours
PANEL_COLOUR = (28, 32, 38)
PANEL_TEXT = (235, 235, 235)

MIN_IMAGE_SIDE_PX = 480  # the image's shorter side in the overlay, at least (small frames are upscaled)
MIN_TEXT_PX = 14  # cap height (px) of the smallest text: legend, ruler and colour-bar labels
SMALL_TEXT = 0.85  # their size relative to the title and the TrP numbers
SWE_ALPHA = 0.45  # opacity of the stiffness colour layer: the B-mode stays readable under it
SWE_COLORMAP = cv2.COLORMAP_JET  # blue = soft, red = stiff, as on most elastography scanners
NICE_STEPS = (1, 2, 5)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colour(name: str, index: int) -> tuple[int, int, int]:
    return CLASS_COLOURS.get(name, OTHER_COLOURS[index % len(OTHER_COLOURS)])


def class_label(name: str) -> str:
    return CLASS_LABELS.get(name, name.replace("_", " ").capitalize())


def swe_box(elasto_kpa: np.ndarray | None) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) inclusive bounding box of the pixels with SWE signal, or None."""
    if elasto_kpa is None:
        return None
    rows = np.flatnonzero(np.isfinite(elasto_kpa).any(axis=1))
    cols = np.flatnonzero(np.isfinite(elasto_kpa).any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def nice_length(limit: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``limit`` (> 0): scale-bar lengths and ruler steps."""
    power = 10.0 ** math.floor(math.log10(limit))
    return max(step * power for step in NICE_STEPS if step * power <= limit)


@dataclass(frozen=True)
class OverlayLayout:
    """Where things lie in the overlay (pixels). Frame pixel (x, y) has its centre at
    (image_x + (x + 0.5) * scale - 0.5, image_y + (y + 0.5) * scale - 0.5)."""

    scale: int  # overlay pixels per frame pixel
    image_x: int
    image_y: int
    image_w: int
    image_h: int
    width: int
    height: int
    text_px: int  # cap height of the title and the TrP numbers; the smaller text is SMALL_TEXT of it
    ruler_w: int  # left margin (depth ruler)
    bar_w: int  # right margin (SWE colour bar)
    title_h: int
    legend_y: int  # top of the legend panel under the image

    @property
    def font_scale(self) -> float:
        return self.text_px / 20.0  # Hershey simplex capitals are 20 px tall at scale 1 (measured)

    @property
    def thickness(self) -> int:
        return max(1, round(self.text_px / 9))

    def to_overlay(self, x: float, y: float) -> tuple[int, int]:
        return (
            round(self.image_x + (x + 0.5) * self.scale - 0.5),
            round(self.image_y + (y + 0.5) * self.scale - 0.5),
        )


def overlay_layout(
    shape: tuple[int, int],
    *,
    spacing_mm: float | None = None,
    title: str | None = None,
    colour_bar: bool = False,
    legend_lines: int = 2,
) -> OverlayLayout:
    """The overlay's geometry for a frame of ``shape`` (H, W): integer upscaling, then margins for the title,
    the depth ruler (only with a known pixel size), the colour bar and the legend panel."""
    height, width = shape
    scale = max(1, math.ceil(MIN_IMAGE_SIDE_PX / max(1, min(height, width))))
    image_w, image_h = width * scale, height * scale
    text_px = max(math.ceil(MIN_TEXT_PX / SMALL_TEXT), round(min(image_w, image_h) / 36))
    pad = text_px // 2 + 2
    title_h = text_px + 2 * pad if title else pad
    ruler_w = 4 * text_px + pad if spacing_mm is not None else pad
    bar_w = 6 * text_px if colour_bar else pad
    legend_h = legend_lines * (text_px + pad) + pad
    return OverlayLayout(
        scale=scale,
        image_x=ruler_w,
        image_y=title_h,
        image_w=image_w,
        image_h=image_h,
        width=ruler_w + image_w + bar_w,
        height=title_h + image_h + legend_h,
        text_px=text_px,
        ruler_w=ruler_w,
        bar_w=bar_w,
        title_h=title_h,
        legend_y=title_h + image_h,
    )


def render_overlay(
    bmode: np.ndarray,
    label_map: np.ndarray,
    classes: Sequence[str],
    trigger_points: Sequence[TriggerPoint],
    elasto_kpa: np.ndarray | None = None,
    *,
    spacing_mm: float | None = None,  # None: pixel size unknown (no scale bar, no ruler in mm)
    skin_row: int
    | None = None,  # the skin line's row (depth ruler origin); None: not found (ruler from the top)
    title: str | None = None,  # burned in: the file name
    swe_layer: bool = False,  # the SWE stiffness map as a colour layer with its colour bar
    needle_min_clearance_mm: float | None = None,  # draw each TrP's planned needle path; None: none drawn
    roles: ClassRoles | None = None,  # which classes are trigger points (None: the naming rule)
) -> np.ndarray:
    """(H, W) B-mode in [0, 1] -> RGB uint8 overlay, at least ``MIN_IMAGE_SIDE_PX`` on the image's shorter side and
    so possibly larger than the frame, with margins (``overlay_layout`` gives the geometry). The legend depends on
    the classes, the SWE box and the pixel size only, so the overlays of one frame (e.g. ground truth beside
    prediction) have the same size whatever they show.

    With ``needle_min_clearance_mm`` each trigger point's planned path (``tpnet.core.guidance``: its entry_x_px /
    entry_y_px to its centroid) is drawn as a line, white when clear, red with a red warning triangle at the skin
    entry when it passes closer than that to a nerve or vessel; a TrP without an in-plane path gets the red
    triangle beside it. The legend then explains them (for every overlay of the run, drawn paths or not)."""
    height, width = bmode.shape
    kpa_range = _kpa_range(elasto_kpa) if swe_layer else None
    box = swe_box(elasto_kpa)
    ruler = (
        None
        if spacing_mm is None
        else ("skin line" if skin_row is not None else "image top (no skin line found)")
    )
    entries = _legend_entries(classes, box is not None, ruler, needle_min_clearance_mm, roles)
    probe = overlay_layout(
        (height, width), spacing_mm=spacing_mm, title=title, colour_bar=kpa_range is not None
    )
    lines = _wrap_legend(entries, probe)
    layout = overlay_layout(
        (height, width), spacing_mm=spacing_mm, title=title, colour_bar=kpa_range is not None,
        legend_lines=len(lines) + 1,  # + the scale-bar line
    )  # fmt: skip

    canvas = np.full((layout.height, layout.width, 3), PANEL_COLOUR, np.uint8)
    image = _scaled_bmode(bmode, layout.scale)
    if kpa_range is not None:
        image = _blend_swe(image, elasto_kpa, kpa_range, layout.scale)
    canvas[
        layout.image_y : layout.image_y + layout.image_h, layout.image_x : layout.image_x + layout.image_w
    ] = image

    # Order matters: markers under the contours (a contour is never hidden by its marker), labels on top.
    if box is not None:
        x0, y0 = layout.to_overlay(box[0] - 0.5, box[1] - 0.5)
        x1, y1 = layout.to_overlay(box[2] + 0.5, box[3] + 0.5)
        _rectangle(canvas, (x0, y0), (x1, y1), SWE_BOX_COLOUR, layout.thickness)
    if needle_min_clearance_mm is not None:  # under the markers and outlines: the target stays readable
        _needle_paths(canvas, layout, trigger_points)
    components = _trp_components(label_map, classes, trigger_points, roles)
    for point, extent in components.values():
        if point is not None:
            _marker(canvas, layout, point, extent)
    _draw_contours(canvas, layout, label_map, classes, components, roles)
    _uncertainty_circles(canvas, layout, trigger_points, spacing_mm)
    _labels(canvas, layout, trigger_points)

    if title:
        _title(canvas, layout, title)
    if spacing_mm is not None:
        _depth_ruler(canvas, layout, spacing_mm, skin_row)
    if kpa_range is not None:
        _colour_bar(canvas, layout, kpa_range)
    _legend(canvas, layout, lines, spacing_mm)
    return canvas


# ----------------------------------------------------------------------------------------------- image layers


def _scaled_bmode(bmode: np.ndarray, scale: int) -> np.ndarray:
    grey = np.clip(bmode * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if scale > 1:  # linear: smooth tissue; the masks below are scaled by nearest neighbour (exact outlines)
        grey = cv2.resize(
            grey, (grey.shape[1] * scale, grey.shape[0] * scale), interpolation=cv2.INTER_LINEAR
        )
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


def _upscale(array: np.ndarray, scale: int) -> np.ndarray:
    return array if scale == 1 else np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)


def _kpa_range(elasto_kpa: np.ndarray | None) -> tuple[float, float] | None:
    """(0, top) for the colour layer: top = the 99th percentile rounded up to a readable number; None without SWE."""
    if elasto_kpa is None:
        return None
    valid = elasto_kpa[np.isfinite(elasto_kpa)]
    if valid.size == 0:
        return None
    high = max(float(np.percentile(valid, 99)), 1.0)
    step = nice_length(high / 4)
    return 0.0, step * math.ceil(high / step)


def _swe_colours(values: np.ndarray, kpa_range: tuple[float, float]) -> np.ndarray:
    """kPa -> RGB uint8 with the layer's colour map."""
    low, high = kpa_range
    levels = np.clip((values - low) / (high - low) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(levels.reshape(-1, 1), SWE_COLORMAP)[:, 0, ::-1].reshape(*values.shape, 3)


def _blend_swe(
    image: np.ndarray, elasto_kpa: np.ndarray, kpa_range: tuple[float, float], scale: int
) -> np.ndarray:
    kpa = _upscale(elasto_kpa, scale)
    valid = np.isfinite(kpa)
    colours = _swe_colours(np.where(valid, kpa, 0.0), kpa_range)
    mixed = image.astype(np.float32) * (1 - SWE_ALPHA) + colours.astype(np.float32) * SWE_ALPHA
    return np.where(valid[..., None], np.round(mixed), image).astype(np.uint8)


# ------------------------------------------------------------------------------------------ findings drawn on it


def _trp_components(
    label_map: np.ndarray,
    classes: Sequence[str],
    trigger_points: Sequence[TriggerPoint],
    roles: ClassRoles | None = None,
) -> dict[int, tuple[TriggerPoint | None, tuple[int, int, int, int]]]:
    """Each TrP component of the label map (as ``find_trigger_points`` makes them: 8-connected union of the TrP
    classes) -> (its trigger point, matched by centroid, or None; its bounding box x, y, w, h in frame pixels)."""
    trp = trp_class_indices(classes, roles)
    if not trp:
        return {}
    n, _, stats, centroids = cv2.connectedComponentsWithStats(
        np.isin(label_map, trp).astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    result = {}
    for index in range(1, n):
        cx, cy = centroids[index]
        near = [p for p in trigger_points if abs(p.x_px - cx) < 0.51 and abs(p.y_px - cy) < 0.51]
        result[index] = (near[0] if near else None, tuple(int(v) for v in stats[index, :4]))
    return result


def _draw_contours(
    canvas: np.ndarray,
    layout: OverlayLayout,
    label_map: np.ndarray,
    classes: Sequence[str],
    components: dict[int, tuple[TriggerPoint | None, tuple[int, int, int, int]]],
    roles: ClassRoles | None = None,
) -> None:
    """Class outlines; a trigger point's outline takes the class the report shows (``reported_class``), so an
    indeterminate one is not drawn red or yellow."""
    trp = set(trp_class_indices(classes, roles))
    scaled = _upscale(label_map, layout.scale)
    offset = (layout.image_x, layout.image_y)
    outlines: list[tuple[list[np.ndarray], tuple[int, int, int]]] = []
    for index, name in enumerate(classes):
        if index == 0 or index in trp:
            continue  # background; TrPs below, one component at a time
        contours, _ = cv2.findContours((scaled == index).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=offset)  # fmt: skip
        outlines.append((list(contours), class_colour(name, index)))
    if components:
        trp_mask = np.isin(label_map, list(trp))
        _, component_map, _, _ = cv2.connectedComponentsWithStats(trp_mask.astype(np.uint8), connectivity=8)
        scaled_components = _upscale(component_map, layout.scale)
        for index, (point, (x, y, w, h)) in components.items():
            s = layout.scale
            crop = scaled_components[y * s : (y + h) * s, x * s : (x + w) * s] == index
            crop = np.pad(crop, 1).astype(np.uint8)  # a component touching the crop's edge still closes
            contours, _ = cv2.findContours(
                crop,
                cv2.RETR_EXTERNAL,
                cv2.CHAIN_APPROX_NONE,
                offset=(offset[0] + x * s - 1, offset[1] + y * s - 1),
            )
            if point is not None:
                name = point.reported_class or point.class_name
                colour = class_colour(name, point.label)
            else:  # no trigger point given for it (e.g. a caller drawing a bare label map): its majority class
                labels = label_map[y : y + h, x : x + w][component_map[y : y + h, x : x + w] == index]
                majority = int(np.bincount(labels).argmax())
                colour = class_colour(classes[majority], majority)
            outlines.append((list(contours), colour))
    for contours, _ in outlines:
        cv2.drawContours(canvas, contours, -1, HALO_COLOUR, layout.thickness + 2)
    for contours, colour in outlines:
        cv2.drawContours(canvas, contours, -1, colour, layout.thickness)


def _marker(
    canvas: np.ndarray, layout: OverlayLayout, point: TriggerPoint, extent: tuple[int, int, int, int]
) -> None:
    """A cross at the centroid, small enough to stay inside the nodule's outline."""
    centre = layout.to_overlay(point.x_px, point.y_px)
    inside = 0.35 * min(extent[2], extent[3]) * layout.scale
    size = int(max(5, min(layout.text_px * 1.2, inside * 2)))
    cv2.drawMarker(canvas, centre, HALO_COLOUR, cv2.MARKER_CROSS, size, layout.thickness + 2)
    cv2.drawMarker(canvas, centre, MARKER_COLOUR, cv2.MARKER_CROSS, size, layout.thickness)


def _needle_paths(canvas: np.ndarray, layout: OverlayLayout, trigger_points: Sequence[TriggerPoint]) -> None:
    """Each TrP's planned path, entry to centroid; unsafe ones (and TrPs without a path) get a warning triangle."""
    for point in trigger_points:
        target = layout.to_overlay(point.x_px, point.y_px)
        if point.needle_side == "" or not math.isfinite(point.entry_x_px):  # no in-plane path at all
            offset = layout.text_px
            _warning(canvas, layout, (target[0] + offset, target[1] - offset))
            continue
        entry = layout.to_overlay(point.entry_x_px, point.entry_y_px)
        colour = NEEDLE_CLEAR_COLOUR if point.path_safe else NEEDLE_UNSAFE_COLOUR
        cv2.line(canvas, entry, target, HALO_COLOUR, layout.thickness + 2, cv2.LINE_AA)
        cv2.line(canvas, entry, target, colour, layout.thickness, cv2.LINE_AA)
        if not point.path_safe:
            _warning(canvas, layout, (entry[0], entry[1] + layout.text_px))


def _warning(canvas: np.ndarray, layout: OverlayLayout, centre: tuple[int, int]) -> None:
    """A red warning triangle with "!" centred at ``centre``."""
    half = layout.text_px
    cx, cy = centre
    triangle = np.array([[cx, cy - half], [cx - half, cy + half], [cx + half, cy + half]], np.int32)
    cv2.fillPoly(canvas, [triangle], NEEDLE_UNSAFE_COLOUR)
    cv2.polylines(canvas, [triangle], True, HALO_COLOUR, max(1, layout.thickness - 1), cv2.LINE_AA)
    (w, _), _ = cv2.getTextSize("!", FONT, layout.font_scale * SMALL_TEXT, layout.thickness)
    draw_text(canvas, "!", (cx - w // 2, cy + half - 2), layout, MARKER_COLOUR, SMALL_TEXT)


def _uncertainty_circles(
    canvas: np.ndarray,
    layout: OverlayLayout,
    trigger_points: Sequence[TriggerPoint],
    spacing_mm: float | None,
) -> None:
    """A dashed circle of radius ``centroid_sd_mm`` around each detection whose position spread is known: where the
    model hesitates. The mm -> px factor is the one its mm figures used (its own x_mm / x_px when the frame's
    pixel size was assumed), so the circle matches the CSV."""
    for point in trigger_points:
        if not math.isfinite(point.centroid_sd_mm):
            continue
        spacing = spacing_mm or _spacing_used(point)
        if spacing is None:
            continue
        radius = point.centroid_sd_mm / spacing * layout.scale
        if radius < 2:
            continue  # smaller than the marker: nothing to show
        centre = layout.to_overlay(point.x_px, point.y_px)
        axes = (round(radius), round(radius))
        for start in range(0, 360, 30):  # dashes: 18 degrees drawn, 12 left out
            cv2.ellipse(canvas, centre, axes, 0, start, start + 18, HALO_COLOUR, layout.thickness + 2)
            cv2.ellipse(canvas, centre, axes, 0, start, start + 18, MARKER_COLOUR, layout.thickness)


def _spacing_used(point: TriggerPoint) -> float | None:
    for mm, px in ((point.x_mm, point.x_px), (point.y_mm, point.y_px)):
        if math.isfinite(mm) and px > 0.5:
            return mm / px
    return None


def place_labels(
    anchors: Sequence[tuple[int, int]],
    sizes: Sequence[tuple[int, int]],
    bounds: tuple[int, int, int, int],
    gap: int,
) -> list[tuple[int, int, int, int]]:
    """A rectangle (x0, y0, x1, y1) for each label (w, h) near its anchor, inside ``bounds`` (x0, y0, x1, y1),
    overlapping no other label and no anchor: the first free place on rings of growing distance around the anchor
    (8 directions each). Where none is free the label goes to the first place inside the bounds."""
    placed: list[tuple[int, int, int, int]] = []
    anchor_boxes = [(x - gap, y - gap, x + gap, y + gap) for x, y in anchors]
    for (ax, ay), (w, h) in zip(anchors, sizes, strict=True):
        candidates = []
        for ring in range(1, 8):
            d = ring * (gap + max(w, h) // 2)
            for dx, dy in ((1, -1), (1, 1), (-1, -1), (-1, 1), (1, 0), (-1, 0), (0, -1), (0, 1)):
                cx, cy = ax + dx * d, ay + dy * d
                candidates.append((cx - w // 2, cy - h // 2, cx - w // 2 + w, cy - h // 2 + h))
        inside = [c for c in candidates if c[0] >= bounds[0] and c[1] >= bounds[1] and c[2] <= bounds[2] and c[3] <= bounds[3]]  # fmt: skip
        free = [c for c in inside if not any(_overlap(c, other) for other in placed + anchor_boxes)]
        placed.append(free[0] if free else (inside or candidates)[0])
    return placed


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _labels(canvas: np.ndarray, layout: OverlayLayout, trigger_points: Sequence[TriggerPoint]) -> None:
    """Each TrP's number beside it, where it hides no other number; a leader line when it had to move away."""
    texts = [str(p.trp_id) for p in trigger_points]
    anchors = [layout.to_overlay(p.x_px, p.y_px) for p in trigger_points]
    draw_labels(canvas, layout, texts, anchors, gap=layout.text_px // 2 + 2)


def draw_labels(
    canvas: np.ndarray, layout, texts: Sequence[str], anchors: Sequence[tuple[int, int]], gap: int
) -> None:
    """Each text beside its anchor where it hides no other (``label_rects``), white on a halo; a leader line
    back to the anchor when it had to move more than 2.5 text heights away. Frame overlays and sweep pictures."""
    if not texts:
        return
    rects = label_rects(texts, anchors, layout, gap=gap)
    for text, (ax, ay), rect in zip(texts, anchors, rects, strict=True):
        cx, cy = (rect[0] + rect[2]) // 2, (rect[1] + rect[3]) // 2
        if math.hypot(cx - ax, cy - ay) > 2.5 * layout.text_px:
            cv2.line(canvas, (ax, ay), (cx, cy), HALO_COLOUR, layout.thickness + 2)
            cv2.line(canvas, (ax, ay), (cx, cy), MARKER_COLOUR, max(1, layout.thickness - 1))
        draw_text(canvas, text, (rect[0] + 2, rect[3] - 3), layout, MARKER_COLOUR)


# ------------------------------------------------------------------------------------------------- the margins


def label_rects(
    texts: Sequence[str], anchors: Sequence[tuple[int, int]], layout: Any, gap: int
) -> list[tuple[int, int, int, int]]:
    """Where each text goes (``place_labels``), kept inside ``layout``'s image area; ``layout``: any layout with
    font_scale, thickness and image_x/_y/_w/_h (an overlay's, a sweep picture's)."""
    sizes = []
    for text in texts:
        (w, h), _ = cv2.getTextSize(text, FONT, layout.font_scale, layout.thickness)
        sizes.append((w + 4, h + 6))
    bounds = (
        layout.image_x,
        layout.image_y,
        layout.image_x + layout.image_w,
        layout.image_y + layout.image_h,
    )
    return place_labels(anchors, sizes, bounds, gap=gap)


def draw_text(
    canvas: np.ndarray,
    text: str,
    origin: tuple[int, int],
    layout: OverlayLayout,
    colour: tuple[int, int, int],
    scale: float = 1.0,
) -> None:
    """Haloed text; Hershey fonts are ASCII only, other characters become '?'."""
    text = text.encode("ascii", "replace").decode("ascii")
    font_scale = layout.font_scale * scale
    cv2.putText(canvas, text, origin, FONT, font_scale, HALO_COLOUR, layout.thickness + 2, cv2.LINE_AA)
    cv2.putText(canvas, text, origin, FONT, font_scale, colour, layout.thickness, cv2.LINE_AA)


def text_width(text: str, layout: OverlayLayout, scale: float = 1.0) -> int:
    """Pixel width of ``draw_text``'s text (ASCII, as drawn)."""
    text = text.encode("ascii", "replace").decode("ascii")
    return cv2.getTextSize(text, FONT, layout.font_scale * scale, layout.thickness)[0][0]


def _fit(text: str, width: int, layout: OverlayLayout) -> str:
    """``text`` shortened in the middle ("start...end") to fit ``width`` pixels: both ends of a file name matter."""
    text = text.encode("ascii", "replace").decode("ascii")
    if text_width(text, layout) <= width:
        return text
    keep = len(text)
    while keep > 4 and text_width(text[: keep // 2] + "..." + text[len(text) - keep // 2 :], layout) > width:
        keep -= 1
    return text[: keep // 2] + "..." + text[len(text) - keep // 2 :]


def _title(canvas: np.ndarray, layout: OverlayLayout, title: str) -> None:
    pad = layout.text_px // 2 + 2
    draw_text(
        canvas, _fit(title, layout.width - 2 * pad, layout), (pad, pad + layout.text_px), layout, PANEL_TEXT
    )


def _rectangle(
    canvas: np.ndarray,
    top_left: tuple[int, int],
    bottom_right: tuple[int, int],
    colour: tuple[int, int, int],
    thickness: int,
) -> None:
    cv2.rectangle(canvas, top_left, bottom_right, HALO_COLOUR, thickness + 2)
    cv2.rectangle(canvas, top_left, bottom_right, colour, thickness)


def _depth_ruler(canvas: np.ndarray, layout: OverlayLayout, spacing_mm: float, skin_row: int | None) -> None:
    """Ticks in mm down the left margin, 0 at the skin line (or at the image's top edge when no skin line was
    found, said by the label under it)."""
    px_per_mm = layout.scale / spacing_mm
    origin_row = -0.5 if skin_row is None else float(skin_row)
    zero_y = layout.to_overlay(0, origin_row)[1]
    bottom = layout.image_y + layout.image_h - 1
    depth_mm = (bottom - zero_y) / px_per_mm
    if depth_mm <= 0:
        return
    step = nice_length(max(depth_mm / 4, 2.0 * layout.text_px / px_per_mm))
    axis_x = layout.ruler_w - 4
    cv2.line(canvas, (axis_x, zero_y), (axis_x, bottom), PANEL_TEXT, layout.thickness)
    tick = layout.text_px // 2
    for k in range(int(depth_mm // step) + 1):
        y = round(zero_y + k * step * px_per_mm)
        cv2.line(canvas, (axis_x - tick, y), (axis_x, y), PANEL_TEXT, layout.thickness)
        label = f"{k * step:g}"
        x = axis_x - tick - 3 - text_width(label, layout, SMALL_TEXT)
        draw_text(canvas, label, (x, min(y + layout.text_px // 2, bottom)), layout, PANEL_TEXT, SMALL_TEXT)
    # The origin, pointing at the image: a small triangle at the skin line.
    size = layout.text_px // 2
    triangle = np.array([[axis_x, zero_y], [axis_x - size, zero_y - size], [axis_x - size, zero_y + size]])
    cv2.fillPoly(canvas, [triangle.astype(np.int32)], SWE_BOX_COLOUR if skin_row is not None else PANEL_TEXT)


def _colour_bar(canvas: np.ndarray, layout: OverlayLayout, kpa_range: tuple[float, float]) -> None:
    """The stiffness colour scale in the right margin, labelled in kPa."""
    low, high = kpa_range
    x0 = layout.image_x + layout.image_w + layout.text_px // 2
    bar_w = layout.text_px
    top = layout.image_y + layout.text_px + 6
    bottom = layout.image_y + layout.image_h - 1
    values = np.linspace(high, low, bottom - top + 1)[:, None].repeat(bar_w, axis=1)
    colours = _swe_colours(values, kpa_range)
    blended = np.round(colours * SWE_ALPHA + 128 * (1 - SWE_ALPHA)).astype(np.uint8)  # as on mid-grey tissue
    canvas[top : bottom + 1, x0 : x0 + bar_w] = blended
    cv2.rectangle(canvas, (x0, top), (x0 + bar_w - 1, bottom), PANEL_TEXT, 1)
    draw_text(canvas, "kPa", (x0, layout.image_y + layout.text_px), layout, PANEL_TEXT, SMALL_TEXT)
    for fraction in (0.0, 0.5, 1.0):
        value = low + fraction * (high - low)
        y = round(bottom - fraction * (bottom - top))
        cv2.line(canvas, (x0 + bar_w, y), (x0 + bar_w + 4, y), PANEL_TEXT, 1)
        # A gap after the tick, or "40" beside its tick reads as "-40".
        draw_text(canvas, f"{value:g}", (x0 + bar_w + 4 + layout.text_px // 2, min(max(y + layout.text_px // 2, top + layout.text_px), bottom)), layout, PANEL_TEXT, SMALL_TEXT)  # fmt: skip


def _legend_entries(
    classes: Sequence[str],
    has_swe_box: bool,
    ruler_origin: str | None,
    needle_min_clearance_mm: float | None = None,
    roles: ClassRoles | None = None,
) -> list[tuple[str, tuple[int, int, int] | None]]:
    """(text, swatch colour or None for a drawn symbol) for the legend: the same for every overlay of one frame."""
    entries: list[tuple[str, tuple[int, int, int] | None]] = []
    trp = trp_class_indices(classes, roles)
    for index, name in enumerate(classes):
        if index > 0:
            entries.append((class_label(name), class_colour(name, index)))
    if trp:
        entries.append((class_label("indeterminate"), class_colour("indeterminate", 0)))
    if has_swe_box:
        entries.append(("SWE area", SWE_BOX_COLOUR))
    if trp:
        entries.append(("+ n: trigger point n (as in the table)", None))
        entries.append(("dashed circle: position spread (1 SD)", None))
    if trp and needle_min_clearance_mm is not None:
        clear = f"needle path, >= {needle_min_clearance_mm:g} mm from nerves/vessels"
        entries.append((clear, NEEDLE_CLEAR_COLOUR))
        entries.append(("red path / triangle: too close, or no in-plane path", NEEDLE_UNSAFE_COLOUR))
    if ruler_origin is not None:
        entries.append((f"left ruler: depth in mm below the {ruler_origin}", None))
    return entries


def _entry_width(entry: tuple[str, tuple[int, int, int] | None], layout: OverlayLayout) -> int:
    swatch = layout.text_px + 6 if entry[1] is not None else 0
    return swatch + text_width(entry[0], layout, SMALL_TEXT) + 2 * layout.text_px


def _wrap_legend(
    entries: list[tuple[str, tuple[int, int, int] | None]], layout: OverlayLayout
) -> list[list[tuple[str, tuple[int, int, int] | None]]]:
    """Entries flowed into lines as wide as the overlay."""
    lines: list[list] = [[]]
    used = 0
    available = layout.width - layout.text_px
    for entry in entries:
        width = _entry_width(entry, layout)
        if lines[-1] and used + width > available:
            lines.append([])
            used = 0
        lines[-1].append(entry)
        used += width
    return [line for line in lines if line]


def _legend(
    canvas: np.ndarray,
    layout: OverlayLayout,
    lines: list[list[tuple[str, tuple[int, int, int] | None]]],
    spacing_mm: float | None,
) -> None:
    """Under the image: the scale bar (or why there is none), then the legend lines."""
    pad = layout.text_px // 2 + 2
    line_h = layout.text_px + pad
    baseline = layout.legend_y + pad + layout.text_px
    x = layout.image_x
    if spacing_mm is not None:
        length_mm = nice_length(layout.image_w * 0.3 * spacing_mm / layout.scale)
        length_px = round(length_mm / spacing_mm * layout.scale)
        bar_h = max(3, layout.text_px // 3)
        cv2.rectangle(canvas, (x, baseline - bar_h), (x + length_px - 1, baseline - 1), MARKER_COLOUR, -1)
        label = f"{length_mm:g} mm   (pixel {spacing_mm:.3g} mm)"
        draw_text(canvas, label, (x + length_px + pad, baseline), layout, PANEL_TEXT, SMALL_TEXT)
    else:
        draw_text(
            canvas, "pixel size unknown: no mm scale", (x, baseline), layout, (255, 200, 80), SMALL_TEXT
        )
    for row, line in enumerate(lines, start=1):
        x = pad
        y = baseline + row * line_h
        for text, colour in line:
            if colour is not None:
                cv2.rectangle(canvas, (x, y - layout.text_px), (x + layout.text_px, y), colour, -1)
                x += layout.text_px + 6
            draw_text(canvas, text, (x, y), layout, PANEL_TEXT, SMALL_TEXT)
            x += text_width(text, layout, SMALL_TEXT) + 2 * layout.text_px
