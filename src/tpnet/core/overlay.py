"""Overlay image for clinicians: B-mode with class contours, numbered TrP markers and the SWE box."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from tpnet.core.postprocess import TriggerPoint

# RGB. Contours, not filled areas: the tissue underneath must stay visible.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "active_trp": (255, 40, 40),  # red
    "latent_trp": (255, 220, 0),  # yellow
    "vessel": (40, 140, 255),  # blue, lightened to stand out on dark B-mode
}
OTHER_COLOURS: tuple[tuple[int, int, int], ...] = ((255, 0, 255), (0, 255, 255), (255, 140, 0))
SWE_BOX_COLOUR = (0, 220, 0)  # green
MARKER_COLOUR = (255, 255, 255)


def class_colour(name: str, index: int) -> tuple[int, int, int]:
    return CLASS_COLOURS.get(name, OTHER_COLOURS[index % len(OTHER_COLOURS)])


def swe_box(elasto_kpa: np.ndarray | None) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) inclusive bounding box of the pixels with SWE signal, or None."""
    if elasto_kpa is None:
        return None
    rows = np.flatnonzero(np.isfinite(elasto_kpa).any(axis=1))
    cols = np.flatnonzero(np.isfinite(elasto_kpa).any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def render_overlay(
    bmode: np.ndarray,
    label_map: np.ndarray,
    classes: Sequence[str],
    trigger_points: Sequence[TriggerPoint],
    elasto_kpa: np.ndarray | None = None,
    *,
    spacing_mm: float | None = None,  # None: pixel size unknown (no scale bar / ruler in mm)
    skin_row: int | None = None,  # the skin line's row (depth ruler origin); None: not found
    title: str | None = None,  # burned in: the file name
    swe_layer: bool = False,  # the SWE stiffness map as a colour layer with its colour bar
) -> np.ndarray:
    """(H, W) B-mode in [0, 1] -> (H, W, 3) uint8 RGB at the same size (positions match masks/ exactly).
    The keyword arguments are issue #14's (legend, scale bar, ruler, title, SWE layer); placeholders for now."""
    grey = np.clip(bmode * 255.0 + 0.5, 0, 255).astype(np.uint8)
    image = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    height, width = grey.shape
    thickness = max(1, round(min(height, width) / 150))
    font_scale = max(0.35, min(height, width) / 500)

    box = swe_box(elasto_kpa)
    if box is not None:
        cv2.rectangle(image, box[:2], box[2:], SWE_BOX_COLOUR, thickness)
    for index, name in enumerate(classes):
        if index == 0:
            continue  # background
        mask = (label_map == index).astype(np.uint8)
        if not mask.any():
            continue
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(image, contours, -1, class_colour(name, index), thickness)
    for point in trigger_points:
        centre = (round(point.x_px), round(point.y_px))
        size = max(5, round(min(height, width) / 40))
        cv2.drawMarker(image, centre, MARKER_COLOUR, cv2.MARKER_CROSS, size, thickness)
        text_at = (min(centre[0] + size // 2 + 2, width - 1), max(centre[1] - size // 2, 8))
        # Dark outline under white text keeps the id legible on bright tissue.
        cv2.putText(
            image, str(point.trp_id), text_at, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness + 2
        )
        cv2.putText(
            image, str(point.trp_id), text_at, cv2.FONT_HERSHEY_SIMPLEX, font_scale, MARKER_COLOUR, thickness
        )
    return image
