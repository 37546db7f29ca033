"""Test helper (issue #18): frames of one patient's layered anatomy seen by a probe put down at different places,
with dark discs the blob detector of model_files reads as active trigger points."""

from __future__ import annotations

import numpy as np

SPACING_MM = 0.1
WIDTH_MM, HEIGHT_MM = 20.0, 12.0
# Layered anatomy in "world" mm: two undulating fasciae (two wavelengths each, so one lateral shift fits best).
FASCIAE = ((4.0, 0.6, 13.0, 0.3, 5.3), (8.5, 0.5, 9.0, 0.25, 4.1))


def scene_frame(probe_x_mm, trps, seed=0):
    """(B-mode, kPa) of a probe whose left edge lies at ``probe_x_mm`` of the world: dark discs (the blob
    detector's active TrPs) at world (x, y, r, kPa) under a soft 30 kPa SWE map, fasciae, a skin echo."""
    h, w = round(HEIGHT_MM / SPACING_MM), round(WIDTH_MM / SPACING_MM)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) * SPACING_MM
    xw = x + probe_x_mm
    rng = np.random.default_rng(seed)
    bmode = 0.55 + rng.normal(0, 0.02, (h, w)).astype(np.float32)
    bmode[y < 0.4] = 0.8
    for y0, a1, l1, a2, l2 in FASCIAE:
        depth = y0 + a1 * np.sin(2 * np.pi * xw / l1) + a2 * np.sin(2 * np.pi * xw / l2 + 1.0)
        bmode[np.abs(y - depth) < 0.25] = 0.8
    kpa = np.full((h, w), 30.0, np.float32)
    for cx, cy, r, stiffness in trps:
        inside = (xw - cx) ** 2 + (y - cy) ** 2 <= r**2
        bmode[inside] = 0.2
        kpa[inside] = stiffness
    return np.clip(bmode, 0.0, 1.0), kpa


A, B, C = (12.0, 6.2), (20.0, 10.6), (8.0, 10.6)  # world positions of three TrPs
