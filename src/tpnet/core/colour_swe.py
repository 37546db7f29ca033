"""Colour-coded shear-wave elastography decoded back to kPa, by nearest colour on the screenshot's colour bar.

1. The colour bar is sampled along its length: per position the median colour across the bar's width (tick
   marks and JPEG noise drop out), resampled to at least ``BAR_ENTRIES`` positions; position i of n maps
   linearly to ``min + (max - min) * i / (n - 1)`` kPa.
2. The bar must be a colour ramp (``colour_bar_problem``), else the profile's box is wrong: at least
   ``BAR_MIN_COLOURED_SHARE`` of its samples coloured (CIELAB chroma >= ``BAR_MIN_CHROMA``), at least
   ``BAR_MIN_DISTINCT`` distinct colours (CIELAB rounded to ``BAR_DISTINCT_STEP`` units), a colour path of at
   least ``BAR_MIN_PATH_DELTA_E`` along its length, and no step between neighbouring samples above
   max(``BAR_MAX_STEP_DELTA_E``, ``BAR_STEP_FACTOR`` x the mean step) (a jump means the box takes in the bar's
   frame, its labels or the background).
3. Each SWE pixel p (RGB in [0, 1]) is unblended, then matched:
   - ``replace`` (pure colour): the colour is p itself; nearest bar colour in CIELAB.
   - ``overlay`` with the grey known (dual view: the B-mode view's pixel at the same place, g = its luma):
     p = alpha * c + (1 - alpha) * g, so c = (p - (1 - alpha) * g) / alpha; nearest bar colour in CIELAB.
   - ``overlay`` in a single view (grey unknown): the grey g adds the same amount to R, G and B, so only the
     chroma part of p (p minus its channel mean, a linear opponent plane where blending is exact) carries the
     colour: the bar colour c minimising |chroma(p) - alpha * chroma(c)| is the match, and g follows in closed
     form (the least-squares grey, mean(p - alpha * c) / (1 - alpha)); that g is the B-mode estimate under the
     colour. The unblended colour is then compared with c in CIELAB for the distance test.
   alpha is the profile's ``overlay_alpha``, else estimated per image: the value in [0.2, 1] minimising the
   median blend residual over (up to ``ALPHA_SAMPLE``) coloured pixels, searched on a 0.05 grid, then 0.01.
4. NaN (no SWE signal) where p is grey (CIELAB chroma below ``GREY_CHROMA``), or the unblended colour is
   farther than ``MAX_DELTA_E`` from every bar colour (text, markers, a different colour map). The caller
   sets NaN outside the SWE box.

CIELAB comes from OpenCV (``cv2.cvtColor`` on float32 RGB in [0, 1], D65, L in 0..100). Matching is
vectorised numpy in chunks of ``CHUNK_PIXELS`` pixels so memory stays bounded (chunk x bar entries floats).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BAR_ENTRIES = 256  # a bar shorter than this is interpolated: matching resolution ~0.4 % of the range
GREY_CHROMA = 6.0  # CIELAB chroma below which a pixel is grey (JPEG leaves grey within ~2-3 units)
MAX_DELTA_E = 22.0  # CIELAB distance to the nearest bar colour beyond which a pixel is not the colour map
BAR_MIN_CHROMA = 10.0
BAR_MIN_COLOURED_SHARE = 0.75
BAR_MIN_DISTINCT = 8
BAR_DISTINCT_STEP = 5.0
BAR_MIN_PATH_DELTA_E = 60.0
BAR_MAX_STEP_DELTA_E = 20.0
BAR_STEP_FACTOR = 6.0
ALPHA_RANGE = (0.2, 1.0)
ALPHA_SAMPLE = 4000
CHUNK_PIXELS = 32768


@dataclass(frozen=True)
class ColourBar:
    rgb: np.ndarray  # (n, 3) float32 in [0, 1], from the minimum to the maximum
    lab: np.ndarray  # (n, 3) float32 CIELAB
    kpa: np.ndarray  # (n,) float32, linear from range[0] to range[1]
    samples_lab: np.ndarray  # (length, 3) the bar as sampled, before resampling (for the ramp check)


@dataclass(frozen=True)
class DecodedSWE:
    kpa: np.ndarray  # (h, w) float32, NaN = no signal
    grey: np.ndarray | None  # (h, w) float32 in [0, 1]: the grey under the colour (single-view overlay)
    alpha: float | None  # the colour map's opacity used (overlay), None for replace


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB of RGB floats in [0, 1], any leading shape (..., 3)."""
    flat = np.ascontiguousarray(rgb, dtype=np.float32).reshape(-1, 1, 3)
    if flat.size == 0:  # OpenCV refuses empty images; no pixel, no colour
        return np.zeros(rgb.shape, np.float32)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(rgb.shape)


def chroma(lab: np.ndarray) -> np.ndarray:
    return np.hypot(lab[..., 1], lab[..., 2])


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma (what cv2's RGB2GRAY and DICOM colour-to-grey use), same scale as the input."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def sample_colour_bar(bar_pixels: np.ndarray, orientation: str, range_kpa: tuple[float, float]) -> ColourBar:
    """The bar's colours from minimum to maximum. ``bar_pixels``: the colorbar_box crop, uint8 (h, w, 3)."""
    pixels = bar_pixels.astype(np.float32) / 255.0
    if orientation in ("bottom-to-top", "top-to-bottom"):
        samples = np.median(pixels, axis=1)  # one colour per row
        if orientation == "bottom-to-top":
            samples = samples[::-1]
    else:
        samples = np.median(pixels, axis=0)  # one colour per column
        if orientation == "right-to-left":
            samples = samples[::-1]
    samples = samples.astype(np.float32)
    entries = max(BAR_ENTRIES, len(samples))
    where = np.linspace(0.0, len(samples) - 1.0, entries)
    rgb = np.stack([np.interp(where, np.arange(len(samples)), samples[:, k]) for k in range(3)], axis=1)
    rgb = rgb.astype(np.float32)
    low, high = range_kpa
    return ColourBar(
        rgb=rgb,
        lab=rgb_to_lab(rgb),
        kpa=np.linspace(low, high, entries, dtype=np.float32),
        samples_lab=rgb_to_lab(samples),
    )


def colour_bar_problem(bar: ColourBar) -> str | None:
    """Why the sampled bar is not a colour ramp (the module docstring's rule), or None when it is one."""
    lab = bar.samples_lab
    coloured = float(np.mean(chroma(lab) >= BAR_MIN_CHROMA))
    if coloured < BAR_MIN_COLOURED_SHARE:
        return (
            f"the colour bar is not a colour ramp: only {coloured:.0%} of its samples are coloured (need "
            f">= {BAR_MIN_COLOURED_SHARE:.0%} with CIELAB chroma >= {BAR_MIN_CHROMA:g}); is colorbar_box on the bar?"
        )
    distinct = len(np.unique(np.round(lab / BAR_DISTINCT_STEP), axis=0))
    if distinct < BAR_MIN_DISTINCT:
        return (
            f"the colour bar is not a colour ramp: {distinct} distinct colours (need >= {BAR_MIN_DISTINCT})"
        )
    steps = np.linalg.norm(np.diff(lab, axis=0), axis=1)
    path = float(steps.sum())
    if path < BAR_MIN_PATH_DELTA_E:
        return (
            f"the colour bar is not a colour ramp: its colours change by {path:.0f} CIELAB units along its "
            f"length (need >= {BAR_MIN_PATH_DELTA_E:g})"
        )
    limit = max(BAR_MAX_STEP_DELTA_E, BAR_STEP_FACTOR * path / len(steps))
    jump = int(np.argmax(steps))
    if steps[jump] > limit:
        return (
            f"the colour bar is not a smooth colour ramp: its colour jumps by {steps[jump]:.0f} CIELAB units "
            f"between samples {jump} and {jump + 1} of {len(lab)} (limit {limit:.0f}); colorbar_box probably "
            "takes in the bar's frame, tick labels or the background"
        )
    return None


def decode_swe(
    swe_pixels: np.ndarray,
    bar: ColourBar,
    blend: str,
    grey: np.ndarray | None = None,
    alpha: float | None = None,
) -> DecodedSWE:
    """kPa per pixel of ``swe_pixels`` (uint8 (h, w, 3)). ``grey``: the B-mode under the colour in [0, 1]
    (dual view), None to estimate it (single-view overlay). ``alpha``: the colour's opacity, None to estimate."""
    shape = swe_pixels.shape[:2]
    p = swe_pixels.reshape(-1, 3).astype(np.float32) / 255.0
    signal = chroma(rgb_to_lab(p)) >= GREY_CHROMA
    kpa = np.full(p.shape[0], np.nan, np.float32)
    grey_out = None
    used_alpha: float | None = None
    index = np.flatnonzero(signal)
    colours = p[index]
    if blend == "replace":
        match, distance = _nearest_lab(colours, bar.lab)
    elif grey is not None:
        g = grey.reshape(-1).astype(np.float32)[index, None]
        used_alpha = alpha if alpha is not None else _estimate_alpha(colours, g, bar)
        unblended = np.clip((colours - (1.0 - used_alpha) * g) / used_alpha, 0.0, 1.0)
        match, distance = _nearest_lab(unblended, bar.lab)
    else:
        used_alpha = alpha if alpha is not None else _estimate_alpha(colours, None, bar)
        match, g = _nearest_chroma(colours, bar.rgb, used_alpha)
        unblended = np.clip((colours - (1.0 - used_alpha) * g[:, None]) / used_alpha, 0.0, 1.0)
        distance = np.linalg.norm(rgb_to_lab(unblended) - bar.lab[match], axis=1)
        grey_out = luma(p)
        grey_out[index] = g
        grey_out = grey_out.reshape(shape)
    close = distance <= MAX_DELTA_E
    kpa[index[close]] = bar.kpa[match[close]]
    return DecodedSWE(kpa=kpa.reshape(shape), grey=grey_out, alpha=used_alpha)


def _nearest(points: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest table row for each point and the squared distance, in bounded-memory chunks."""
    table = table.astype(np.float32)
    table_sq = np.einsum("ij,ij->i", table, table)
    index = np.empty(len(points), np.int64)
    dist_sq = np.empty(len(points), np.float32)
    for start in range(0, len(points), CHUNK_PIXELS):
        chunk = points[start : start + CHUNK_PIXELS].astype(np.float32)
        d = table_sq[None, :] - 2.0 * (chunk @ table.T)  # |p|^2 added after the argmin: same order
        best = np.argmin(d, axis=1)
        index[start : start + len(chunk)] = best
        dist_sq[start : start + len(chunk)] = d[np.arange(len(chunk)), best] + np.einsum(
            "ij,ij->i", chunk, chunk
        )
    return index, np.maximum(dist_sq, 0.0)


def _nearest_lab(rgb: np.ndarray, bar_lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index, dist_sq = _nearest(rgb_to_lab(rgb), bar_lab)
    return index, np.sqrt(dist_sq)


def _chroma_part(rgb: np.ndarray) -> np.ndarray:
    """RGB minus its channel mean: what is left of a colour after any grey is added or removed."""
    return rgb - rgb.mean(axis=-1, keepdims=True)


def _nearest_chroma(colours: np.ndarray, bar_rgb: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Single-view overlay: the bar colour whose scaled chroma is nearest, and the grey that completes the blend."""
    match, _ = _nearest(_chroma_part(colours), alpha * _chroma_part(bar_rgb))
    if alpha >= 1.0:
        return match, luma(colours)  # opaque colour: nothing of the grey is left to estimate
    g = (colours - alpha * bar_rgb[match]).mean(axis=1) / (1.0 - alpha)
    return match, np.clip(g, 0.0, 1.0).astype(np.float32)


def _blend_residual(colours: np.ndarray, grey: np.ndarray | None, bar: ColourBar, alpha: float) -> float:
    """Median RGB distance between the pixels and the best blend alpha * c + (1 - alpha) * g of a bar colour."""
    if grey is None:
        _, dist_sq = _nearest(_chroma_part(colours), alpha * _chroma_part(bar.rgb))
    else:
        _, dist_sq = _nearest(colours - (1.0 - alpha) * grey, alpha * bar.rgb)
    return float(np.median(dist_sq))


def _estimate_alpha(colours: np.ndarray, grey: np.ndarray | None, bar: ColourBar) -> float:
    if len(colours) == 0:
        return 1.0
    if len(colours) > ALPHA_SAMPLE:
        pick = np.random.default_rng(0).choice(len(colours), ALPHA_SAMPLE, replace=False)  # reproducible
        colours = colours[pick]
        grey = grey[pick] if grey is not None else None
    low, high = ALPHA_RANGE
    coarse = np.arange(low, high + 1e-6, 0.05)
    best = min(coarse, key=lambda a: _blend_residual(colours, grey, bar, float(a)))
    fine = np.arange(max(low, best - 0.05), min(high, best + 0.05) + 1e-6, 0.01)
    return float(min(fine, key=lambda a: _blend_residual(colours, grey, bar, float(a))))
