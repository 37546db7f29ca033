"""The same trigger points across a patient's visits (issue #18): register each visit on anatomy, match, track.

numpy + OpenCV + standard library only (tpnet.core: no torch, no scipy).

Conventions as in ``tpnet.core.postprocess``: x = lateral (along the probe axis), y = depth, mm = px * spacing_mm
from the centre of the top-left pixel. A visit's registration maps its frame to the baseline's:
``x_base = x + lateral_shift_mm``, ``y_base = y + depth_shift_mm``.

1. Anatomy that does not move with the needle (``anatomy_profile``). The probe is never put down in the same
   place, so TrP pixel positions of two visits cannot be compared. What stays is the layered anatomy: the skin
   line and the long bright interfaces below it (fasciae, the bone line), whose depths undulate slowly along the
   probe axis. Per lateral position (a grid every ``LATERAL_GRID_MM``) the profile holds
   - the skin depth: ``find_skin_row`` on a strip of columns ``SKIN_STRIP_MM`` wide (the one skin rule of tpnet);
   - the depths of up to ``MAX_INTERFACES`` interfaces: rising edges (dark above, bright below: the top of a
     fascia or of the bone) of the image smoothed along the probe axis, so long horizontal structures survive and
     speckle does not. An interface must show in at least half the columns (median across columns of the edge
     strength, tolerant to the undulation), then it is traced column by column near that depth;
   - a lateral intensity profile: the mean grey of the tissue under the skin per lateral position, z-scored.
   Gain: the image is first normalised by its median and inter-quartile range, so a gain change (an offset in
   log-compressed grey) or another dynamic range (a scale) changes neither the depths nor the edge strengths.
2. Registration (``register``): a lateral shift and a depth offset, fitted on the skin and interface depth
   profiles. Why so little: the in-plane pixel size is known from the scanner, so a fitted lateral scale would only
   trade against the shift on smooth undulations (ambiguity, no gain); a rotation or a tilt of a few degrees moves
   depths by a fraction of a millimetre across the frame and is left in the residual. The fit is a search over
   shifts (robust to local minima, which a gradient fit on periodic undulations is not) with a truncated squared
   depth mismatch (an interface seen in one visit only does not pull the fit). It is not fitted on the intensity
   profile, which hypoechoic TrPs shape: the injection changes them, and the registration would follow the
   treatment effect; its correlation at the fitted shift is reported as an independent check.
   ``reliable`` is False, with the reasons, when there is no anatomy to register on (an empty frame: the shifts
   are NaN, never a silent zero), when the frames overlap too little, when the anatomy does not agree after the
   shift (residual, share of agreeing samples), or when the lateral shift is not determined (flat interfaces: a
   wide range of shifts fits as well; periodic ones: another shift fits nearly as well) or lies at the edge of
   the search range.
3. Matching (``match_visits``): follow-up TrPs mapped into the baseline frame, exact minimum-distance assignment
   (``tpnet.core.assignment``), pairs beyond ``max_distance_mm`` left unmatched; an unreliable registration flags
   every match with its reason.
4. Tracks (``build_tracks``) and changes from each track's first visit (``track_changes``), with the measurement
   uncertainty of each change (rule in ``track_changes``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import cv2
import numpy as np

from tpnet.core.assignment import min_cost_assignment
from tpnet.core.skin_line import find_skin_row

# ---- anatomy profile ----
# Profile sampling along the probe axis (undulations of the layers have wavelengths of 10 mm and more).
LATERAL_GRID_MM = 0.25
SKIN_STRIP_MM = 3.0  # columns whose median row profile gives the skin depth at one lateral position
LATERAL_SMOOTH_MM = 1.0  # Gaussian sigma along the probe axis: long interfaces stay, speckle averages out
DEPTH_SMOOTH_MM = 0.15  # Gaussian sigma in depth: about one speckle length at 10-15 MHz
# Interfaces are searched this far below the skin (the skin echo's own edges lie above).
SKIN_CLEARANCE_MM = 1.0
MAX_INTERFACES = 4
# Two rising edges closer than this are one interface (a fascia's two edges).
MIN_INTERFACE_SEPARATION_MM = 1.5
# A long interface shows within this depth of a row in at least half the positions (undulation amplitude).
LONG_TOLERANCE_MM = 1.0
# An interface is traced this far above and below its depth (the undulation's range: its depth can lie at a crest).
TRACE_WINDOW_MM = 1.5
# An interface's strength: the median across positions of its rising edge (normalised grey per mm: inter-quartile
# ranges per mm). It must reach MIN_INTERFACE_STRENGTH and MIN_INTERFACE_CONTRAST times the frame's typical level
# (the median over depths under the skin). Measured on synthetic frames (tpnet.data.synth, 8 subjects): typical
# levels 0.5-1.3, fasciae and bone lines 2.5-4.6; the hand-made frames of the tests: 7-8.
MIN_INTERFACE_STRENGTH = 2.0
MIN_INTERFACE_CONTRAST = 2.0
# A position's own edge must reach this share of the interface's strength to count as seen there.
MIN_COLUMN_STRENGTH_FRACTION = 0.3
TRACE_MEDIAN_MM = 2.0  # lateral running median of a traced depth: one column jumping to speckle is ignored
INTENSITY_DEPTH_MM = 15.0  # depth band under the skin averaged into the lateral intensity profile
MIN_SPREAD = 1e-3  # an image whose inter-quartile grey range is below this is flat: no anatomy

# ---- registration ----
MAX_DEPTH_SHIFT_MM = 3.0  # probe pressure and gel thickness change depths by millimetres, not centimetres
DEPTH_GRID_MM = 0.1
TRUNCATION_MM = 1.0  # a depth mismatch beyond this counts as an outlier (an interface seen in one visit only)
MIN_OVERLAP_FRACTION = 0.5  # of the follow-up frame's width that lands inside the baseline frame
MIN_SAMPLES = 20  # comparable (profile, lateral position) samples needed to score a shift
MAX_RESIDUAL_MM = 0.5  # RMS truncated depth mismatch: the same anatomy agrees within ~0.1-0.3 mm
MIN_INLIER_FRACTION = 0.7  # share of samples agreeing within TRUNCATION_MM
# Shifts whose cost is within this of the best (relative, and an absolute floor in mm^2) fit as well: the
# relative part is about two standard errors of a mean over the ~30 independent samples of a frame's profiles.
SHIFT_TOLERANCE_RELATIVE = 0.5
SHIFT_TOLERANCE_MM2 = 0.05**2
MAX_LATERAL_UNCERTAINTY_MM = 1.5  # well inside the 5 mm matching radius
# Another basin of the cost over lateral shifts (a local minimum farther than MAX_LATERAL_UNCERTAINTY_MM from the
# fit) must cost at least this many times the fit's cost: periodic undulations fit at a wrong shift too, and a
# right shift is expected to fit clearly better. On two synthetic frames of one subject (tpnet.data.synth: tilt
# and undulations drawn per frame) the wrong shift that fitted best had a rival at 2.6x, the true shift.
AMBIGUITY_RATIO = 3.0
# The lateral intensity profiles are not fitted and not a rule: where speckle dominates them (the hand-made frames
# of the tests: correlation -0.5 to 0.2 at the exact shift) they would veto good fits. Their correlation at the fit
# is reported for the reader.

# ---- changes ----
# Shear-wave speed is estimated on kernels of about a millimetre, so SWE pixels closer than that are not
# independent: a TrP's mean stiffness rests on (covered area / SWE_CELL_MM2) samples (assumption).
SWE_CELL_MM2 = 1.0
# Standard deviation of a segmented boundary's position (about one to two pixels at 0.1-0.2 mm; assumption).
BOUNDARY_SD_MM = 0.2

STATUSES = ("new", "persisting", "resolved")


@dataclass
class AnatomyProfile:
    """Per lateral position ``x_mm`` (the frame's mm, every ``LATERAL_GRID_MM``): skin and interface depths (mm,
    NaN where not seen), the interfaces' strengths and the z-scored lateral intensity profile."""

    spacing_mm: float
    x_mm: np.ndarray  # (C,)
    skin_mm: np.ndarray  # (C,)
    interfaces_mm: np.ndarray  # (K, C), shallowest first
    interface_strength: np.ndarray  # (K,) median edge strength, normalised grey per mm
    intensity: np.ndarray  # (C,) z-scored across positions; NaN where undefined
    width_mm: float
    depth_mm: float
    notes: list[str] = field(default_factory=list)  # why something was not found

    @property
    def has_anatomy(self) -> bool:
        return bool(np.isfinite(self.skin_mm).any() or np.isfinite(self.interfaces_mm).any())


def _check_frame(bmode: np.ndarray, spacing_mm: float) -> np.ndarray:
    grey = np.asarray(bmode, dtype=np.float32)
    if grey.ndim != 2 or min(grey.shape) < 2:
        raise ValueError(f"bmode must be an (H, W) frame; got shape {grey.shape}")
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing_mm must be > 0; got {spacing_mm}")
    return np.nan_to_num(grey, nan=0.0)


def _running_nanmedian(values: np.ndarray, window: int) -> np.ndarray:
    """Median over ``window`` neighbours (odd), ignoring NaN; NaN where the whole window is NaN."""
    if window <= 1 or values.shape[-1] < 2:
        return values.copy()
    half = window // 2
    padded = np.pad(values, [(0, 0)] * (values.ndim - 1) + [(half, half)], constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=-1)
    out = np.full(values.shape, np.nan)
    seen = np.isfinite(windows).any(axis=-1)
    if seen.any():
        out[seen] = np.nanmedian(windows[seen], axis=-1)
    return np.where(np.isfinite(values), out, np.nan)  # never invents a depth where none was traced


def _peak_rows(row_profile: np.ndarray, min_gap_rows: int, strength: float, count: int) -> list[int]:
    """Rows of the strongest local maxima at least ``min_gap_rows`` apart, each at least ``strength``."""
    rows: list[int] = []
    for row in np.argsort(row_profile)[::-1]:
        if row_profile[row] < strength or len(rows) == count:
            break
        if all(abs(int(row) - r) >= min_gap_rows for r in rows):
            rows.append(int(row))
    return sorted(rows)


def _skin_depths(grey: np.ndarray, columns: np.ndarray, spacing_mm: float) -> np.ndarray:
    half = max(1, int(round(SKIN_STRIP_MM / spacing_mm / 2)))
    depths = np.full(len(columns), np.nan)
    for i, col in enumerate(columns):
        row = find_skin_row(grey[:, max(0, col - half) : col + half + 1])
        if row is not None:
            depths[i] = row * spacing_mm
    return _running_nanmedian(depths, _odd(TRACE_MEDIAN_MM / LATERAL_GRID_MM))


def _odd(n: float) -> int:
    return max(1, int(round(n)) | 1)


def anatomy_profile(bmode: np.ndarray, spacing_mm: float) -> AnatomyProfile:
    """The anatomy of an (H, W) B-mode in [0, 1] that a re-placed probe sees again (module docstring, step 1)."""
    grey = _check_frame(bmode, spacing_mm)
    height, width = grey.shape
    width_mm, depth_mm = (width - 1) * spacing_mm, height * spacing_mm
    x_mm = np.arange(0.0, width_mm + 1e-9, LATERAL_GRID_MM)
    columns = np.clip(np.round(x_mm / spacing_mm).astype(int), 0, width - 1)
    empty = AnatomyProfile(
        spacing_mm=float(spacing_mm),
        x_mm=x_mm,
        skin_mm=np.full(len(x_mm), np.nan),
        interfaces_mm=np.empty((0, len(x_mm))),
        interface_strength=np.empty(0),
        intensity=np.full(len(x_mm), np.nan),
        width_mm=width_mm,
        depth_mm=depth_mm,
    )
    q25, median, q75 = np.percentile(grey, [25, 50, 75])
    if q75 - q25 < MIN_SPREAD:
        empty.notes.append("flat image (no grey-level spread): no anatomy to register on")
        return empty
    normalised = (grey - median) / (q75 - q25)  # gain (offset) and dynamic range (scale) removed
    smooth = cv2.GaussianBlur(
        normalised, (0, 0), sigmaX=LATERAL_SMOOTH_MM / spacing_mm, sigmaY=DEPTH_SMOOTH_MM / spacing_mm
    )
    edge = np.zeros_like(smooth)
    edge[1:-1] = np.maximum(smooth[2:] - smooth[:-2], 0.0) / (2.0 * spacing_mm)  # rising edges, per mm

    skin_mm = _skin_depths(grey, columns, spacing_mm)
    whole_skin = find_skin_row(grey)
    if not np.isfinite(skin_mm).any():
        empty.notes.append("no skin line found")
    # Where a column's skin is unknown, the frame's skin row (or the top) bounds the search.
    top_mm = np.where(np.isfinite(skin_mm), skin_mm, (whole_skin or 0) * spacing_mm) + SKIN_CLEARANCE_MM
    rows_mm = np.arange(height) * spacing_mm
    below_skin = rows_mm[:, None] >= top_mm[None, :]
    sampled = np.where(below_skin, edge[:, columns], 0.0)  # (H, C)

    # Long interfaces: a rising edge within the trace window of a row in at least half the positions.
    tolerance_rows = max(1, int(round(LONG_TOLERANCE_MM / spacing_mm)))
    window_rows = max(1, int(round(TRACE_WINDOW_MM / spacing_mm)))
    tolerant = cv2.dilate(sampled.astype(np.float32), np.ones((2 * tolerance_rows + 1, 1), np.uint8))
    row_profile = np.median(tolerant, axis=1)
    searched = rows_mm >= float(np.min(top_mm))
    typical = float(np.median(row_profile[searched])) if searched.any() else 0.0
    threshold = max(MIN_INTERFACE_STRENGTH, MIN_INTERFACE_CONTRAST * typical)
    min_gap_rows = max(1, int(round(MIN_INTERFACE_SEPARATION_MM / spacing_mm)))
    peaks = _peak_rows(row_profile, min_gap_rows, threshold, MAX_INTERFACES)
    # The dilated profile has a plateau per interface; its depth is where the mean edge across positions peaks.
    mean_edge = sampled.mean(axis=1)
    strength_at: dict[int, float] = {}
    for peak_row in peaks:
        lo = max(0, peak_row - tolerance_rows)
        seed = lo + int(np.argmax(mean_edge[lo : peak_row + tolerance_rows + 1]))
        # Two peaks on one plateau refine to one edge, or to two close ones: the stronger edge stays.
        rival = next((r for r in strength_at if abs(r - seed) < min_gap_rows), None)
        if rival is None:
            strength_at[seed] = float(row_profile[peak_row])
        elif mean_edge[seed] > mean_edge[rival]:
            strength_at[seed] = max(strength_at.pop(rival), float(row_profile[peak_row]))
    seeds = sorted(strength_at)
    interfaces, strengths = [], []
    for k, seed in enumerate(seeds):
        # The window stops half-way to the neighbouring interfaces, so two traces never swap.
        up = min(window_rows, (seed - seeds[k - 1]) // 2) if k > 0 else window_rows
        down = min(window_rows, (seeds[k + 1] - seed) // 2) if k + 1 < len(seeds) else window_rows
        lo, hi = max(1, seed - up), min(height - 2, seed + down)
        band = sampled[lo : hi + 1]  # (rows, C)
        best = np.argmax(band, axis=0)
        peak = band[best, np.arange(band.shape[1])]
        depth = (lo + best).astype(np.float64)
        # Sub-pixel: the parabola through the peak and its two neighbours.
        inner = (best > 0) & (best < band.shape[0] - 1)
        idx = np.where(inner)[0]
        left, right = band[best[idx] - 1, idx], band[best[idx] + 1, idx]
        curvature = left - 2.0 * peak[idx] + right
        offset = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1.0), 0.0)
        depth[idx] += np.clip(offset, -0.5, 0.5)
        # A peak at the window's edge is the slope of something outside it, not this interface.
        seen = inner & (peak >= MIN_COLUMN_STRENGTH_FRACTION * strength_at[seed])
        traced = np.where(seen, depth * spacing_mm, np.nan)
        interfaces.append(_running_nanmedian(traced, _odd(TRACE_MEDIAN_MM / LATERAL_GRID_MM)))
        strengths.append(float(strength_at[seed]))
    if not interfaces:
        empty.notes.append(f"no long interface below the skin reaches edge strength {threshold:.3g}")

    band_mm = (rows_mm[:, None] >= top_mm[None, :]) & (
        rows_mm[:, None] < top_mm[None, :] + INTENSITY_DEPTH_MM
    )
    counts = band_mm.sum(axis=0)
    column_mean = np.where(
        counts > 0, (smooth[:, columns] * band_mm).sum(axis=0) / np.maximum(counts, 1), np.nan
    )
    spread = np.nanstd(column_mean) if np.isfinite(column_mean).sum() > 1 else 0.0
    intensity = (column_mean - np.nanmean(column_mean)) / spread if spread > 0 else np.full(len(x_mm), np.nan)
    return AnatomyProfile(
        spacing_mm=float(spacing_mm),
        x_mm=x_mm,
        skin_mm=skin_mm,
        interfaces_mm=np.asarray(interfaces, dtype=np.float64).reshape(len(interfaces), len(x_mm)),
        interface_strength=np.asarray(strengths, dtype=np.float64),
        intensity=intensity,
        width_mm=width_mm,
        depth_mm=depth_mm,
        notes=empty.notes,
    )


@dataclass
class Registration:
    """Follow-up frame -> baseline frame: ``x_base = x + lateral_shift_mm``, ``y_base = y + depth_shift_mm``.

    ``residual_mm``: RMS depth mismatch of the skin and interfaces over the overlap (each sample capped at
    ``TRUNCATION_MM``); ``inlier_fraction``: share of samples within it; ``lateral_uncertainty_mm``: how far
    from the fitted shift another shift fits as well; ``rival_cost_ratio``: how much worse the best shift of
    another basin fits; ``intensity_correlation``: the lateral intensity profiles'
    correlation at the fitted shift (a check, not fitted). Shifts are NaN when there was nothing to fit."""

    lateral_shift_mm: float
    depth_shift_mm: float
    residual_mm: float
    overlap_fraction: float
    inlier_fraction: float
    lateral_uncertainty_mm: float
    rival_cost_ratio: float  # the best other basin's cost over the fit's (inf: no other basin)
    n_samples: int
    intensity_correlation: float
    reliable: bool
    reason: str  # "" when reliable, else every failed rule, "; "-separated

    @classmethod
    def identity(cls) -> Registration:
        """The baseline to itself."""
        return cls(0.0, 0.0, 0.0, 1.0, 1.0, 0.0, math.inf, 0, math.nan, True, "")

    @property
    def has_shift(self) -> bool:
        return math.isfinite(self.lateral_shift_mm) and math.isfinite(self.depth_shift_mm)

    def to_baseline(self, x_mm: float, y_mm: float) -> tuple[float, float]:
        """A follow-up position in the baseline frame (unchanged when there is no shift to apply)."""
        if not self.has_shift:
            return float(x_mm), float(y_mm)
        return float(x_mm) + self.lateral_shift_mm, float(y_mm) + self.depth_shift_mm

    def to_dict(self) -> dict:
        return asdict(self)


def _sample(profile_x0: float, values: np.ndarray, x_mm: np.ndarray) -> np.ndarray:
    """Linear interpolation of (K, C) ``values`` on the LATERAL_GRID_MM grid at ``x_mm``; NaN outside the grid
    and next to a NaN (a gap is never bridged)."""
    size = values.shape[-1]
    if size < 2:
        return np.full(values.shape[:-1] + x_mm.shape, np.nan)
    pos = (x_mm - profile_x0) / LATERAL_GRID_MM
    inside = (pos >= -1e-9) & (pos <= size - 1 + 1e-9)
    i0 = np.clip(np.floor(pos).astype(int), 0, size - 2)
    frac = pos - i0
    out = values[..., i0] * (1.0 - frac) + values[..., i0 + 1] * frac
    return np.where(inside, out, np.nan)


def _residuals(baseline: AnatomyProfile, follow: AnatomyProfile, dx: float, dz: np.ndarray) -> np.ndarray:
    """Signed depth mismatches (baseline - mapped follow-up) for each depth shift in ``dz``: (len(dz), S), NaN
    where not comparable. Skin meets skin; each follow-up interface meets the nearest baseline interface."""
    x_base = follow.x_mm + dx
    skin_b = _sample(baseline.x_mm[0], baseline.skin_mm[None], x_base)[0]
    skin = skin_b[None, :] - (follow.skin_mm[None, :] + dz[:, None])  # (D, C)
    parts = [skin]
    if len(baseline.interfaces_mm) and len(follow.interfaces_mm):
        base_k = _sample(baseline.x_mm[0], baseline.interfaces_mm, x_base)  # (Kb, C)
        diff = base_k[None, None, :, :] - (follow.interfaces_mm[None, :, None, :] + dz[:, None, None, None])
        magnitude = np.where(np.isfinite(diff), np.abs(diff), np.inf)
        nearest = np.argmin(magnitude, axis=2)  # (D, Kf, C)
        chosen = np.take_along_axis(diff, nearest[:, :, None, :], axis=2)[:, :, 0, :]
        parts.append(chosen.reshape(len(dz), -1))
    return np.concatenate(parts, axis=1)


def _cost(residuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean truncated squared mismatch per row and the sample count; inf with fewer than MIN_SAMPLES."""
    finite = np.isfinite(residuals)
    count = finite.sum(axis=1)
    squared = np.where(finite, np.minimum(residuals**2, TRUNCATION_MM**2), 0.0)
    cost = np.where(count >= MIN_SAMPLES, squared.sum(axis=1) / np.maximum(count, 1), np.inf)
    return cost, count


def _fit_depth(baseline: AnatomyProfile, follow: AnatomyProfile, dx: float, dz_grid: np.ndarray):
    """The best depth shift for a lateral shift: grid search, then the mean of the inliers' mismatch (the
    least-squares optimum for the truncated loss once the inliers are fixed). Returns (cost, dz, residuals)."""
    cost, _ = _cost(_residuals(baseline, follow, dx, dz_grid))
    if not np.isfinite(cost).any():
        return math.inf, math.nan, None
    dz = float(dz_grid[int(np.argmin(cost))])
    for _ in range(3):
        res = _residuals(baseline, follow, dx, np.array([dz]))[0]
        inliers = np.isfinite(res) & (np.abs(res) < TRUNCATION_MM)
        if not inliers.any():
            break
        dz += float(np.mean(res[inliers]))
    res = _residuals(baseline, follow, dx, np.array([dz]))
    cost, _ = _cost(res)
    return float(cost[0]), dz, res[0]


def _overlap(baseline: AnatomyProfile, follow: AnatomyProfile, dx: float) -> float:
    lo, hi = max(0.0, dx), min(baseline.width_mm, follow.width_mm + dx)
    return max(0.0, hi - lo) / follow.width_mm if follow.width_mm > 0 else 0.0


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 3:
        return math.nan
    a, b = a[both] - a[both].mean(), b[both] - b[both].mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else math.nan


def _unregistered(reason: str) -> Registration:
    """Nothing fitted: every figure NaN, never a zero shift."""
    nan = math.nan
    return Registration(
        lateral_shift_mm=nan,
        depth_shift_mm=nan,
        residual_mm=nan,
        overlap_fraction=nan,
        inlier_fraction=nan,
        lateral_uncertainty_mm=nan,
        rival_cost_ratio=nan,
        n_samples=0,
        intensity_correlation=nan,
        reliable=False,
        reason=reason,
    )


def register(baseline: AnatomyProfile, follow_up: AnatomyProfile, max_shift_mm: float = 10.0) -> Registration:
    """The lateral and depth shift mapping ``follow_up``'s frame onto ``baseline``'s (module docstring, step 2).

    Lateral shifts within +/- ``max_shift_mm`` are searched every ``LATERAL_GRID_MM`` (those leaving less than
    ``MIN_OVERLAP_FRACTION`` of the follow-up frame inside the baseline's are not), each with its best depth shift
    within +/- ``MAX_DEPTH_SHIFT_MM``; the best is refined to a twentieth of a millimetre."""
    if not max_shift_mm >= 0:
        raise ValueError(f"max_shift_mm must be >= 0; got {max_shift_mm}")
    missing = [
        f"{name}: {'; '.join(p.notes) or 'no skin line and no interface found'}"
        for name, p in (("baseline", baseline), ("follow-up", follow_up))
        if not p.has_anatomy
    ]
    if missing:
        return _unregistered("no anatomy to register on (" + "; ".join(missing) + ")")
    dz_grid = np.arange(-MAX_DEPTH_SHIFT_MM, MAX_DEPTH_SHIFT_MM + 1e-9, DEPTH_GRID_MM)
    steps = int(math.floor(max_shift_mm / LATERAL_GRID_MM + 1e-9))
    shifts = np.arange(-steps, steps + 1) * LATERAL_GRID_MM
    shifts = shifts[[_overlap(baseline, follow_up, dx) >= MIN_OVERLAP_FRACTION for dx in shifts]]
    if shifts.size == 0:
        return _unregistered(
            f"no shift within {max_shift_mm:g} mm overlaps the frames by {MIN_OVERLAP_FRACTION:.0%}"
        )
    costs = np.array([_cost(_residuals(baseline, follow_up, dx, dz_grid))[0].min() for dx in shifts])
    if not np.isfinite(costs).any():
        return _unregistered(
            f"the anatomy of the two visits has fewer than {MIN_SAMPLES} comparable samples at any shift "
            "(skin or interfaces seen in one visit only)"
        )
    best = int(np.argmin(costs))
    # Refine around the best grid shift, then a parabola through the three best fine shifts.
    fine = shifts[best] + np.arange(-5, 6) * (LATERAL_GRID_MM / 5)
    fine_costs = np.array([_fit_depth(baseline, follow_up, dx, dz_grid)[0] for dx in fine])
    f = int(np.argmin(fine_costs))
    dx = float(fine[f])
    if 0 < f < len(fine) - 1 and np.all(np.isfinite(fine_costs[f - 1 : f + 2])):
        c0, c1, c2 = fine_costs[f - 1 : f + 2]
        curvature = c0 - 2 * c1 + c2
        if curvature > 0:
            dx += float(np.clip(0.5 * (c0 - c2) / curvature, -0.5, 0.5)) * (LATERAL_GRID_MM / 5)
    cost, dz, res = _fit_depth(baseline, follow_up, dx, dz_grid)
    comparable = np.isfinite(res) if res is not None else np.zeros(0, bool)
    if not comparable.any():
        return _unregistered("no comparable anatomy at the fitted shift")
    inlier_fraction = float(np.mean(np.abs(res[comparable]) < TRUNCATION_MM))
    residual_mm = math.sqrt(cost)

    tolerance = max(SHIFT_TOLERANCE_RELATIVE * float(costs[best]), SHIFT_TOLERANCE_MM2)
    as_good = shifts[costs <= costs[best] + tolerance]
    lateral_uncertainty = float(np.max(np.abs(as_good - dx))) if as_good.size else math.nan
    # The best other basin: local minima of the cost curve away from the fit.
    inner_min = np.ones(len(costs), bool)
    inner_min[1:] &= costs[1:] <= costs[:-1]
    inner_min[:-1] &= costs[:-1] <= costs[1:]
    rivals = np.where(inner_min & np.isfinite(costs) & (np.abs(shifts - dx) > MAX_LATERAL_UNCERTAINTY_MM))[0]
    rival = int(rivals[np.argmin(costs[rivals])]) if rivals.size else None
    rival_shift = float(shifts[rival]) if rival is not None else math.nan
    floor = max(float(costs[best]), SHIFT_TOLERANCE_MM2)
    rival_ratio = float(costs[rival]) / floor if rival is not None else math.inf
    overlap = _overlap(baseline, follow_up, dx)
    correlation = _correlation(
        _sample(baseline.x_mm[0], baseline.intensity[None], follow_up.x_mm + dx)[0], follow_up.intensity
    )

    reasons = []
    if residual_mm > MAX_RESIDUAL_MM:
        reasons.append(
            f"anatomy mismatch {residual_mm:.2f} mm RMS after the shift (limit {MAX_RESIDUAL_MM:g} mm)"
        )
    if inlier_fraction < MIN_INLIER_FRACTION:
        reasons.append(
            f"only {inlier_fraction:.0%} of the anatomy agrees within {TRUNCATION_MM:g} mm "
            f"(needed {MIN_INLIER_FRACTION:.0%})"
        )
    if lateral_uncertainty > MAX_LATERAL_UNCERTAINTY_MM:
        reasons.append(
            f"lateral shift not determined: shifts up to {lateral_uncertainty:.1f} mm away fit as well "
            f"(limit {MAX_LATERAL_UNCERTAINTY_MM:g} mm; interfaces too flat along the probe axis)"
        )
    if steps > 0 and best in (0, len(shifts) - 1) and abs(shifts[best]) > LATERAL_GRID_MM:
        reasons.append(f"best shift at the edge of the search range ({shifts[best]:+.2f} mm)")
    if rival_ratio < AMBIGUITY_RATIO:
        reasons.append(
            f"ambiguous: a shift of {rival_shift:+.2f} mm fits almost as well ({rival_ratio:.1f}x the cost, "
            f"needed {AMBIGUITY_RATIO:g}x)"
        )
    if overlap < MIN_OVERLAP_FRACTION:
        reasons.append(f"overlap {overlap:.0%} below {MIN_OVERLAP_FRACTION:.0%}")
    return Registration(
        lateral_shift_mm=dx,
        depth_shift_mm=dz,
        residual_mm=residual_mm,
        overlap_fraction=overlap,
        inlier_fraction=inlier_fraction,
        lateral_uncertainty_mm=lateral_uncertainty,
        rival_cost_ratio=rival_ratio,
        n_samples=int(comparable.sum()),
        intensity_correlation=correlation,
        reliable=not reasons,
        reason="; ".join(reasons),
    )


# ---- matching and tracks ----


class Positioned(Protocol):
    x_mm: float
    y_mm: float


@dataclass
class Detection:
    """What tracking needs of one detected TrP (a ``TriggerPoint`` gives most of it: ``from_trigger_point``).
    Positions in the visit's own frame; NaN where unknown."""

    x_mm: float
    y_mm: float
    area_mm2: float
    stiffness_kpa_mean: float = math.nan
    stiffness_kpa_max: float = math.nan
    stiffness_kpa_sd: float = math.nan
    swe_coverage: float = math.nan
    class_name: str = ""
    confidence: float = math.nan
    depth_from_skin_mm: float = math.nan

    @classmethod
    def from_trigger_point(cls, point, stiffness_kpa_max: float = math.nan) -> Detection:
        """``TriggerPoint`` has no maximum stiffness: pass it when measured (NaN otherwise)."""
        return cls(
            x_mm=float(point.x_mm),
            y_mm=float(point.y_mm),
            area_mm2=float(point.area_mm2),
            stiffness_kpa_mean=float(point.stiffness_kpa_mean),
            stiffness_kpa_max=float(stiffness_kpa_max),
            stiffness_kpa_sd=float(point.stiffness_kpa_sd),
            swe_coverage=float(point.swe_coverage),
            class_name=str(point.reported_class or point.class_name),
            confidence=float(point.confidence),
            depth_from_skin_mm=float(point.depth_from_skin_mm),
        )


@dataclass
class Match:
    """One baseline TrP and one follow-up TrP (indices into the two lists), or one of them alone (unmatched:
    the other index None). ``x_base_mm``/``y_base_mm``: the follow-up TrP in the baseline frame (NaN without
    one); ``flagged`` with ``reason`` when the registration was unreliable."""

    baseline_index: int | None
    follow_index: int | None
    distance_mm: float
    x_base_mm: float
    y_base_mm: float
    flagged: bool
    reason: str


def _flag_reason(registration: Registration) -> str:
    if registration.reliable:
        return ""
    why = f"unreliable registration: {registration.reason}"
    return why if registration.has_shift else why + " (positions compared unregistered)"


def match_visits(
    baseline_points: Sequence[Positioned],
    follow_points: Sequence[Positioned],
    registration: Registration,
    max_distance_mm: float = 5.0,
) -> list[Match]:
    """One-to-one matching of follow-up TrPs (their frame) to baseline TrPs (the baseline frame) by distance in
    the baseline frame. The most pairs within ``max_distance_mm`` win, then the smallest total distance (exact
    assignment). Pairs first (by baseline index), then the unmatched baseline TrPs, then the unmatched follow-up
    TrPs. Every entry is flagged when the registration is unreliable."""
    if not max_distance_mm > 0:
        raise ValueError(f"max_distance_mm must be > 0; got {max_distance_mm}")
    flagged, reason = not registration.reliable, _flag_reason(registration)
    mapped = np.array([registration.to_baseline(p.x_mm, p.y_mm) for p in follow_points]).reshape(-1, 2)
    base = np.array([(p.x_mm, p.y_mm) for p in baseline_points], dtype=np.float64).reshape(-1, 2)
    dist = np.hypot(base[:, None, 0] - mapped[None, :, 0], base[:, None, 1] - mapped[None, :, 1])
    dist = np.where(np.isfinite(dist), dist, np.inf)
    pairs: list[tuple[int, int]] = []
    if dist.size:
        too_far = dist > max_distance_mm
        # An out-of-radius pair costs more than any set of in-radius pairs: the number of matches comes first.
        cost = np.where(too_far, (max(dist.shape) + 1) * max_distance_mm + 1.0, dist)
        pairs = [(r, c) for r, c in min_cost_assignment(cost) if not too_far[r, c]]
    matches = [
        Match(r, c, float(dist[r, c]), float(mapped[c, 0]), float(mapped[c, 1]), flagged, reason)
        for r, c in pairs
    ]
    paired_base, paired_follow = {r for r, _ in pairs}, {c for _, c in pairs}
    matches += [
        Match(i, None, math.nan, math.nan, math.nan, flagged, reason)
        for i in range(len(base))
        if i not in paired_base
    ]
    matches += [
        Match(None, j, math.nan, float(mapped[j, 0]), float(mapped[j, 1]), flagged, reason)
        for j in range(len(mapped))
        if j not in paired_follow
    ]
    return matches


@dataclass
class Visit:
    """One visit of one subject: ``detections`` in the visit's frame and its registration to the baseline
    (None for the baseline itself, the first visit). ``days_since_injection``: None before any injection."""

    visit_id: str
    days_since_first: float
    detections: list[Detection]
    registration: Registration | None = None
    date: str = ""  # ISO date when known
    days_since_injection: float | None = None


@dataclass
class TrackRow:
    """One TrP at one visit. ``status``: new (first seen at this visit: every TrP at the baseline), persisting
    (matched to its track's last position), resolved (its track was seen at the previous visit and has no match
    here: no measurements, position the last seen). Positions ``x_base_mm``/``y_base_mm`` in the baseline frame,
    ``x_mm``/``y_mm`` in the visit's frame (NaN when resolved)."""

    subject_id: str
    track_id: int
    visit_id: str
    visit_index: int
    days_since_first: float
    days_since_injection: float | None
    status: str
    x_base_mm: float
    y_base_mm: float
    x_mm: float
    y_mm: float
    area_mm2: float
    stiffness_kpa_mean: float
    stiffness_kpa_max: float
    stiffness_kpa_sd: float
    swe_coverage: float
    class_name: str
    confidence: float
    depth_from_skin_mm: float
    detection_index: int | None  # into the visit's detections; None when resolved
    match_distance_mm: float  # to the track's last position, baseline frame; NaN when new or resolved
    flagged: bool
    flag_reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Track:
    """A track's last seen position, in the baseline frame (x_mm/y_mm, so ``match_visits`` reads it)."""

    track_id: int
    x_mm: float
    y_mm: float
    present: bool  # seen at the latest visit


def _row(subject_id, track, visit, index, status, detection, det_index, distance, reason) -> TrackRow:
    d = detection or Detection(math.nan, math.nan, math.nan)
    return TrackRow(
        subject_id=subject_id,
        track_id=track.track_id,
        visit_id=visit.visit_id,
        visit_index=index,
        days_since_first=float(visit.days_since_first),
        days_since_injection=visit.days_since_injection,
        status=status,
        x_base_mm=track.x_mm,
        y_base_mm=track.y_mm,
        x_mm=d.x_mm,
        y_mm=d.y_mm,
        area_mm2=d.area_mm2,
        stiffness_kpa_mean=d.stiffness_kpa_mean,
        stiffness_kpa_max=d.stiffness_kpa_max,
        stiffness_kpa_sd=d.stiffness_kpa_sd,
        swe_coverage=d.swe_coverage,
        class_name=d.class_name,
        confidence=d.confidence,
        depth_from_skin_mm=d.depth_from_skin_mm,
        detection_index=det_index,
        match_distance_mm=distance,
        flagged=bool(reason),
        flag_reason=reason,
    )


def build_tracks(
    visits: Sequence[Visit], max_distance_mm: float = 5.0, subject_id: str = ""
) -> list[TrackRow]:
    """One subject's visits (date order, the first is the baseline) chained into tracks (ids 1, 2, ... per
    subject). Each visit's TrPs are matched (``match_visits``) to every track's last position in the baseline
    frame, resolved tracks included: a TrP found again where one resolved (or where the detector missed it once)
    continues its track as persisting. Rows come per visit: the visit's detections in their order, then the
    tracks resolved there. Every row of a visit with an unreliable registration is flagged with the reason."""
    if not visits:
        return []
    days = [float(v.days_since_first) for v in visits]
    if any(b < a for a, b in zip(days, days[1:], strict=False)):
        raise ValueError(f"visits must be in date order; days since first visit {days}")
    if visits[0].registration is not None:
        raise ValueError(f"visit {visits[0].visit_id!r} is the baseline: its registration must be None")
    tracks: list[_Track] = []
    rows: list[TrackRow] = []
    for index, visit in enumerate(visits):
        if index == 0:
            registration = Registration.identity()
        elif visit.registration is None:
            raise ValueError(
                f"visit {visit.visit_id!r} has no registration to the baseline (register it: an unreliable "
                "registration is fine, it flags the visit's matches)"
            )
        else:
            registration = visit.registration
        reason = _flag_reason(registration)
        matches = match_visits(tracks, visit.detections, registration, max_distance_mm) if index else []
        track_of = {
            m.follow_index: (m.baseline_index, m.distance_mm) for m in matches if m.follow_index is not None
        }
        visit_rows, seen = [], set()
        for j, detection in enumerate(visit.detections):
            x_base, y_base = registration.to_baseline(detection.x_mm, detection.y_mm)
            t, distance = track_of.get(j, (None, math.nan))
            if t is None:
                track = _Track(len(tracks) + 1, x_base, y_base, True)
                tracks.append(track)
                status = "new"
            else:
                track = tracks[t]
                track.x_mm, track.y_mm = x_base, y_base
                status = "persisting"
            seen.add(track.track_id)
            visit_rows.append(_row(subject_id, track, visit, index, status, detection, j, distance, reason))
        for track in tracks:
            if track.track_id in seen:
                track.present = True
            elif track.present:
                track.present = False
                visit_rows.append(
                    _row(subject_id, track, visit, index, "resolved", None, None, math.nan, reason)
                )
        rows += visit_rows
    return rows


# ---- changes ----


@dataclass
class Change:
    """One track from its first visit (``reference_visit_id``) to a later visit: differences (later - first) and
    their standard deviations (rule in ``track_changes``). Resolved: the size falls to 0 and the stiffness
    changes are NaN (nothing measured)."""

    subject_id: str
    track_id: int
    reference_visit_id: str
    visit_id: str
    days_since_first: float
    days_since_injection: float | None
    status: str
    delta_stiffness_kpa_mean: float
    delta_stiffness_kpa_mean_sd: float
    delta_stiffness_kpa_max: float
    delta_stiffness_kpa_max_sd: float
    delta_area_mm2: float
    delta_area_mm2_sd: float
    relative_area_change: float  # delta / reference area
    flagged: bool
    flag_reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def stiffness_mean_sd(row: TrackRow) -> float:
    """Standard error of a TrP's mean stiffness: its SWE SD over the square root of its independent SWE samples
    (covered area / ``SWE_CELL_MM2``, at least one). NaN without an SD or a coverage."""
    covered = row.swe_coverage * row.area_mm2 / SWE_CELL_MM2
    if not math.isfinite(covered):  # no SWE map, or no area: nothing to count
        return math.nan
    return row.stiffness_kpa_sd / math.sqrt(max(1.0, covered))


def area_sd(area_mm2: float) -> float:
    """Standard deviation of a segmented area: the boundary of the disc of that area moved by ``BOUNDARY_SD_MM``."""
    return BOUNDARY_SD_MM * 2.0 * math.sqrt(math.pi * area_mm2) if area_mm2 >= 0 else math.nan


def track_changes(tracks: Sequence[TrackRow]) -> list[Change]:
    """Per track, the change from its first row to each later row, in row order.

    Uncertainty rule (standard deviations, independent visits added in quadrature): the mean stiffness carries
    its standard error (``stiffness_mean_sd``); the maximum, a single extreme pixel, carries one SWE SD (the
    spread of one sample); the area carries ``area_sd``. Between-session repeatability of SWE (probe pressure,
    region) is not in it: it is not measured in one frame."""
    first: dict[tuple[str, int], TrackRow] = {}
    changes = []
    for row in tracks:
        key = (row.subject_id, row.track_id)
        if key not in first:
            first[key] = row
            continue
        ref = first[key]
        if row.status == "resolved":  # the size falls to 0; no stiffness was measured
            delta_area = -ref.area_mm2
            delta_area_sd = area_sd(ref.area_mm2)
            stiffness = (math.nan,) * 4
        else:
            delta_area = row.area_mm2 - ref.area_mm2
            delta_area_sd = math.hypot(area_sd(ref.area_mm2), area_sd(row.area_mm2))
            stiffness = (
                row.stiffness_kpa_mean - ref.stiffness_kpa_mean,
                math.hypot(stiffness_mean_sd(ref), stiffness_mean_sd(row)),
                row.stiffness_kpa_max - ref.stiffness_kpa_max,
                math.hypot(ref.stiffness_kpa_sd, row.stiffness_kpa_sd),
            )
        changes.append(
            Change(
                subject_id=row.subject_id,
                track_id=row.track_id,
                reference_visit_id=ref.visit_id,
                visit_id=row.visit_id,
                days_since_first=row.days_since_first,
                days_since_injection=row.days_since_injection,
                status=row.status,
                delta_stiffness_kpa_mean=stiffness[0],
                delta_stiffness_kpa_mean_sd=stiffness[1],
                delta_stiffness_kpa_max=stiffness[2],
                delta_stiffness_kpa_max_sd=stiffness[3],
                delta_area_mm2=delta_area,
                delta_area_mm2_sd=delta_area_sd,
                relative_area_change=delta_area / ref.area_mm2 if ref.area_mm2 > 0 else math.nan,
                flagged=ref.flagged or row.flagged,
                flag_reason="; ".join(r for r in dict.fromkeys((ref.flag_reason, row.flag_reason)) if r),
            )
        )
    return changes
