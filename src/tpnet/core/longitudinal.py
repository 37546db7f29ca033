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
2. Registration (``register``): a rigid map (``Registration``): a lateral shift, an in-plane tilt of the probe
   about its face's centre (heel-toe rocking, a few degrees) and a depth offset (pressure, gel), fitted on the
   interface depth profiles. Not on the skin line: a linear probe keeps the skin against its face, so the skin
   stays at the frame's top whatever the rocking (it held fitted tilts at 70 % of the true ones on
   tpnet.data.synth_longitudinal visits); it locates the search and the depths below the skin. No scale: the
   in-plane pixel size is known from the scanner, so a fitted scale would only trade against the shift on smooth
   undulations (ambiguity, no gain). The fit is a search over shifts and tilts (robust to local minima, which a
   gradient fit on periodic undulations is not) with a truncated squared depth mismatch (an interface seen in one
   visit only does not pull the fit). It is not fitted on the intensity profile, which hypoechoic TrPs shape: the
   injection changes them, and the registration would follow the treatment effect; its correlation at the fit is
   reported as an independent check.
   ``reliable`` is False, with the reasons, when there is no interface to register on (an empty frame: the shifts
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
import re
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
# ranges per mm). It must reach MIN_INTERFACE_CONTRAST times the frame's typical level (the median over depths
# under the skin), and MIN_INTERFACE_STRENGTH where that level is near 0 (a frame mostly in acoustic shadow).
# Measured: synthetic frames (tpnet.data.synth, 8 subjects) typical levels 0.5-1.3, fasciae and bone lines
# 2.5-4.6; tpnet.data.synth_longitudinal frames (a deep acoustic shadow widens the quartile range) typical 0.27,
# fasciae and bone line 1.2-2.0; speckle alone stays within 1.5 times its typical level.
MIN_INTERFACE_STRENGTH = 1.0
MIN_INTERFACE_CONTRAST = 2.0
# A position's own edge must reach this share of the interface's strength to count as seen there.
MIN_COLUMN_STRENGTH_FRACTION = 0.3
TRACE_MEDIAN_MM = 2.0  # lateral running median of a traced depth: one column jumping to speckle is ignored
INTENSITY_DEPTH_MM = 15.0  # depth band under the skin averaged into the lateral intensity profile
MIN_SPREAD = 1e-3  # an image whose inter-quartile grey range is below this is flat: no anatomy

# ---- registration ----
MAX_DEPTH_SHIFT_MM = 3.0  # probe pressure and gel thickness change depths by millimetres, not centimetres
DEPTH_GRID_MM = 0.1
# In-plane rocking (heel-toe) of a re-placed probe: a few degrees (tpnet.data.synth_longitudinal draws SD 1, at
# most 3). Fitted as a rotation about the probe face's centre: at 3 degrees the frame's ends move 1 mm in depth
# on a 40 mm probe, beyond the 0.5 mm residual a translation alone would have to leave.
MAX_TILT_DEG = 3.0
TILT_GRID_DEG = 1.0
TRUNCATION_MM = 1.0  # a depth mismatch beyond this counts as an outlier (an interface seen in one visit only)
MIN_OVERLAP_FRACTION = 0.5  # of the follow-up frame's width that lands inside the baseline frame
MIN_SAMPLES = 20  # comparable (profile, lateral position) samples needed to score a shift
MAX_RESIDUAL_MM = 0.5  # RMS mismatch of the agreeing samples: the same anatomy agrees within ~0.1-0.3 mm
MIN_INLIER_FRACTION = 0.5  # at least half the interface samples agree within TRUNCATION_MM
# Costs are mean truncated squared mismatches; the noise is the agreeing samples' mean squared mismatch at the fit
# (at least SHIFT_TOLERANCE_MM2). A shift costing less than SHIFT_TOLERANCE_RELATIVE noise units more than the fit
# fits as well (lateral_uncertainty_mm); about two standard errors of a mean over the ~30 independent samples of
# a frame's profiles.
SHIFT_TOLERANCE_RELATIVE = 0.5
SHIFT_TOLERANCE_MM2 = 0.05**2
MAX_LATERAL_UNCERTAINTY_MM = 1.5  # well inside the 5 mm matching radius
# Another basin of the cost over lateral shifts (a local minimum farther than MAX_LATERAL_UNCERTAINTY_MM from the
# fit) must cost at least AMBIGUITY_MARGIN noise units more than the fit: periodic undulations fit at a wrong
# shift too, and a right shift is expected to fit clearly better.
AMBIGUITY_MARGIN = 2.0
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
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def visit_order(labels: Sequence[str]) -> list[str]:
    """A subject's visit labels in time order: numerically when all are numbers (ordinals), as dates when all are
    ISO dates (string order is date order), else in the order given."""
    unique = list(dict.fromkeys(labels))
    try:
        return sorted(unique, key=float)
    except ValueError:
        pass
    if all(_ISO_DATE.match(label) for label in unique):
        return sorted(unique)
    return unique


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
    """Follow-up frame -> baseline frame, a rigid map: the follow-up probe lies ``lateral_shift_mm`` along the
    baseline's probe axis, rocked in plane by ``tilt_deg`` about its face's centre (``pivot_x_mm``, + = its
    right end deeper), and ``depth_shift_mm`` deeper (pressure, gel)::

        x_base = pivot + lateral_shift + (x - pivot) cos(tilt) - y sin(tilt)
        y_base = (x - pivot) sin(tilt) + y cos(tilt) + depth_shift

    ``residual_mm``: RMS depth mismatch of the interface samples that agree (within ``TRUNCATION_MM``) over the
    overlap, the noise; ``inlier_fraction``: their share; ``lateral_uncertainty_mm``: how far from the fitted
    shift another shift fits as well; ``rival_margin``: by how many noise units (mean squared mismatch) the best
    shift of another basin fits worse; ``intensity_correlation``: the lateral intensity profiles' correlation at the fit (a
    check, not fitted). Shifts are NaN when there was nothing to fit."""

    lateral_shift_mm: float
    depth_shift_mm: float
    tilt_deg: float
    pivot_x_mm: float
    residual_mm: float
    overlap_fraction: float
    inlier_fraction: float
    lateral_uncertainty_mm: float
    rival_margin: float  # how much more the best other basin costs, in noise units (inf: no other basin)
    n_samples: int
    intensity_correlation: float
    reliable: bool
    reason: str  # "" when reliable, else every failed rule, "; "-separated

    @classmethod
    def identity(cls) -> Registration:
        """The baseline to itself."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, math.inf, 0, math.nan, True, "")

    @property
    def has_shift(self) -> bool:
        return all(math.isfinite(v) for v in (self.lateral_shift_mm, self.depth_shift_mm, self.tilt_deg))

    def to_baseline(self, x_mm: float, y_mm: float) -> tuple[float, float]:
        """A follow-up position in the baseline frame (unchanged when there is no shift to apply)."""
        if not self.has_shift:
            return float(x_mm), float(y_mm)
        x_base, y_base = _rigid(
            np.float64(x_mm), np.float64(y_mm), self.pivot_x_mm, self.lateral_shift_mm, self.tilt_deg
        )
        return float(x_base), float(y_base) + self.depth_shift_mm

    def to_dict(self) -> dict:
        return asdict(self)


def _rigid(x_mm: np.ndarray, y_mm: np.ndarray, pivot_mm: float, dx_mm: float, tilt_deg: float):
    """The rigid map of ``Registration`` without its depth shift."""
    t = math.radians(tilt_deg)
    c, s = math.cos(t), math.sin(t)
    u = x_mm - pivot_mm
    return pivot_mm + dx_mm + u * c - y_mm * s, u * s + y_mm * c


def _sample(profile_x0: float, values: np.ndarray, x_mm: np.ndarray) -> np.ndarray:
    """Linear interpolation of (K, C) ``values`` on the LATERAL_GRID_MM grid at ``x_mm`` (any shape): (K,
    *x_mm.shape); NaN outside the grid, at a NaN position and next to a NaN value (a gap is never bridged)."""
    size = values.shape[-1]
    if size < 2:
        return np.full(values.shape[:-1] + x_mm.shape, np.nan)
    pos = (x_mm - profile_x0) / LATERAL_GRID_MM
    inside = np.isfinite(pos) & (pos >= -1e-9) & (pos <= size - 1 + 1e-9)
    pos = np.where(inside, pos, 0.0)
    i0 = np.clip(np.floor(pos).astype(int), 0, size - 2)
    frac = pos - i0
    out = values[..., i0] * (1.0 - frac) + values[..., i0 + 1] * frac
    return np.where(inside, out, np.nan)


def _candidate(baseline: AnatomyProfile, follow: AnatomyProfile, dx: float, tilt: float) -> np.ndarray:
    """The follow-up interfaces mapped by one (lateral shift, tilt), before the depth shift: the baseline's
    interface depths minus the mapped follow-up depths, (Kb, Kf, C)."""
    x_k, d_k = _rigid(follow.x_mm[None, :], follow.interfaces_mm, follow.width_mm / 2.0, dx, tilt)
    return _sample(baseline.x_mm[0], baseline.interfaces_mm, x_k) - d_k[None]


def _residuals(candidate: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """Signed depth mismatches for each depth shift in ``dz``: (len(dz), Kf * C), NaN where not comparable; each
    follow-up interface meets the nearest baseline interface."""
    diff = candidate[None] - dz[:, None, None, None]  # (D, Kb, Kf, C)
    magnitude = np.where(np.isfinite(diff), np.abs(diff), np.inf)
    nearest = np.argmin(magnitude, axis=1)[:, None]  # (D, 1, Kf, C)
    return np.take_along_axis(diff, nearest, axis=1)[:, 0].reshape(len(dz), -1)


def _cost(residuals: np.ndarray) -> np.ndarray:
    """Mean truncated squared mismatch per row; inf with fewer than MIN_SAMPLES comparable samples."""
    finite = np.isfinite(residuals)
    count = finite.sum(axis=1)
    squared = np.where(finite, np.minimum(np.where(finite, residuals, 0.0) ** 2, TRUNCATION_MM**2), 0.0)
    return np.where(count >= MIN_SAMPLES, squared.sum(axis=1) / np.maximum(count, 1), np.inf)


def _fit_depth(candidate: np.ndarray, dz_grid: np.ndarray) -> tuple[float, float, np.ndarray | None]:
    """The best depth shift of a candidate: grid search, then the mean of the inliers' mismatch (the
    least-squares optimum of the truncated loss once the inliers are fixed). Returns (cost, dz, residuals)."""
    cost = _cost(_residuals(candidate, dz_grid))
    if not np.isfinite(cost).any():
        return math.inf, math.nan, None
    dz = float(dz_grid[int(np.argmin(cost))])
    for _ in range(3):
        res = _residuals(candidate, np.array([dz]))[0]
        inliers = np.isfinite(res) & (np.abs(res) < TRUNCATION_MM)
        if not inliers.any():
            break
        dz += float(np.mean(res[inliers]))
    res = _residuals(candidate, np.array([dz]))
    return float(_cost(res)[0]), dz, res[0]


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
        tilt_deg=nan,
        pivot_x_mm=nan,
        residual_mm=nan,
        overlap_fraction=nan,
        inlier_fraction=nan,
        lateral_uncertainty_mm=nan,
        rival_margin=nan,
        n_samples=0,
        intensity_correlation=nan,
        reliable=False,
        reason=reason,
    )


def _refine(costs_of, centre: float, step: float, half_steps: int) -> tuple[float, float]:
    """The best of ``centre + k step`` (|k| <= half_steps), then the vertex of the parabola through it and its
    neighbours (within half a step). Returns (value, cost)."""
    values = centre + np.arange(-half_steps, half_steps + 1) * step
    costs = np.array([costs_of(v) for v in values])
    i = int(np.argmin(costs))
    best = float(values[i])
    if 0 < i < len(values) - 1 and np.all(np.isfinite(costs[i - 1 : i + 2])):
        c0, c1, c2 = costs[i - 1 : i + 2]
        curvature = c0 - 2 * c1 + c2
        if curvature > 0:
            best += float(np.clip(0.5 * (c0 - c2) / curvature, -0.5, 0.5)) * step
    return best, float(costs[i])


def register(
    baseline: AnatomyProfile,
    follow_up: AnatomyProfile,
    max_shift_mm: float = 10.0,
    max_tilt_deg: float = MAX_TILT_DEG,
) -> Registration:
    """The rigid map of ``follow_up``'s frame onto ``baseline``'s (``Registration``; module docstring, step 2).

    Coarse search: lateral shifts within +/- ``max_shift_mm`` every ``LATERAL_GRID_MM`` (those leaving less than
    ``MIN_OVERLAP_FRACTION`` of the follow-up frame inside the baseline's are not tried) and tilts within +/-
    ``max_tilt_deg`` every ``TILT_GRID_DEG``, each with its best depth shift within +/- ``MAX_DEPTH_SHIFT_MM``.
    Then the shift and the tilt are refined in turn (to 0.05 mm and TILT_GRID_DEG / 8); ``max_tilt_deg=0``
    fits a translation only."""
    if not max_shift_mm >= 0:
        raise ValueError(f"max_shift_mm must be >= 0; got {max_shift_mm}")
    if not 0 <= max_tilt_deg <= 45:
        raise ValueError(f"max_tilt_deg must be in [0, 45]; got {max_tilt_deg}")
    missing = [
        f"{name}: {'; '.join(p.notes) or 'no interface found'}"
        for name, p in (("baseline", baseline), ("follow-up", follow_up))
        if len(p.interfaces_mm) == 0
    ]
    if missing:
        return _unregistered("no interface below the skin to register on (" + "; ".join(missing) + ")")
    dz_grid = np.arange(-MAX_DEPTH_SHIFT_MM, MAX_DEPTH_SHIFT_MM + 1e-9, DEPTH_GRID_MM)
    steps = int(math.floor(max_shift_mm / LATERAL_GRID_MM + 1e-9))
    shifts = np.arange(-steps, steps + 1) * LATERAL_GRID_MM
    shifts = shifts[[_overlap(baseline, follow_up, dx) >= MIN_OVERLAP_FRACTION for dx in shifts]]
    if shifts.size == 0:
        return _unregistered(
            f"no shift within {max_shift_mm:g} mm overlaps the frames by {MIN_OVERLAP_FRACTION:.0%}"
        )
    tilt_steps = int(math.floor(max_tilt_deg / TILT_GRID_DEG + 1e-9))
    tilts = np.arange(-tilt_steps, tilt_steps + 1) * TILT_GRID_DEG
    grid = np.array(
        [
            [_cost(_residuals(_candidate(baseline, follow_up, dx, tilt), dz_grid)).min() for dx in shifts]
            for tilt in tilts
        ]
    )  # (tilts, shifts)
    costs = grid.min(axis=0)  # the cost curve over lateral shifts
    if not np.isfinite(costs).any():
        return _unregistered(
            f"the anatomy of the two visits has fewer than {MIN_SAMPLES} comparable samples at any shift "
            "(interfaces seen in one visit only)"
        )
    best = int(np.argmin(costs))
    tilt = float(tilts[int(np.argmin(grid[:, best]))])
    dx = float(shifts[best])
    fine_dx, fine_tilt = LATERAL_GRID_MM / 5, TILT_GRID_DEG / 8

    def cost_at(shift: float, angle: float) -> float:
        return _fit_depth(_candidate(baseline, follow_up, shift, angle), dz_grid)[0]

    for _ in range(2):  # coordinate descent: shift, then tilt
        dx, _cost_dx = _refine(lambda v, a=tilt: cost_at(v, a), dx, fine_dx, 5)
        if tilt_steps:
            tilt, _cost_tilt = _refine(lambda a, v=dx: cost_at(v, a), tilt, fine_tilt, 4)
            tilt = float(np.clip(tilt, -max_tilt_deg, max_tilt_deg))
    cost, dz, res = _fit_depth(_candidate(baseline, follow_up, dx, tilt), dz_grid)
    comparable = np.isfinite(res) if res is not None else np.zeros(0, bool)
    if not comparable.any():
        return _unregistered("no comparable anatomy at the fitted shift")
    inliers = comparable & (np.abs(np.where(comparable, res, np.inf)) < TRUNCATION_MM)
    inlier_fraction = float(inliers.sum() / comparable.sum())
    # The agreeing samples' mean squared mismatch: the noise the cost differences are weighed against (an
    # interface seen in one visit only adds the same capped cost at every shift, and says nothing about noise).
    noise = float(np.mean(res[inliers] ** 2)) if inliers.any() else math.inf
    residual_mm = math.sqrt(noise)
    noise = max(noise, SHIFT_TOLERANCE_MM2)

    tolerance = SHIFT_TOLERANCE_RELATIVE * noise
    as_good = shifts[costs <= costs[best] + tolerance]
    lateral_uncertainty = float(np.max(np.abs(as_good - dx))) if as_good.size else math.nan
    # The best other basin: local minima of the cost curve away from the fit.
    local_min = np.ones(len(costs), bool)
    local_min[1:] &= costs[1:] <= costs[:-1]
    local_min[:-1] &= costs[:-1] <= costs[1:]
    rivals = np.where(local_min & np.isfinite(costs) & (np.abs(shifts - dx) > MAX_LATERAL_UNCERTAINTY_MM))[0]
    rival = int(rivals[np.argmin(costs[rivals])]) if rivals.size else None
    rival_shift = float(shifts[rival]) if rival is not None else math.nan
    rival_margin = (float(costs[rival]) - float(costs[best])) / noise if rival is not None else math.inf
    overlap = _overlap(baseline, follow_up, dx)
    x_face, _ = _rigid(follow_up.x_mm, np.zeros_like(follow_up.x_mm), follow_up.width_mm / 2.0, dx, tilt)
    correlation = _correlation(
        _sample(baseline.x_mm[0], baseline.intensity[None], x_face)[0], follow_up.intensity
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
    if rival_margin < AMBIGUITY_MARGIN:
        reasons.append(
            f"ambiguous: a shift of {rival_shift:+.2f} mm fits almost as well (its cost exceeds the fit's by "
            f"{rival_margin:.1f} times the noise, needed {AMBIGUITY_MARGIN:g})"
        )
    if overlap < MIN_OVERLAP_FRACTION:
        reasons.append(f"overlap {overlap:.0%} below {MIN_OVERLAP_FRACTION:.0%}")
    return Registration(
        lateral_shift_mm=dx,
        depth_shift_mm=dz,
        tilt_deg=tilt,
        pivot_x_mm=follow_up.width_mm / 2.0,
        residual_mm=residual_mm,
        overlap_fraction=overlap,
        inlier_fraction=inlier_fraction,
        lateral_uncertainty_mm=lateral_uncertainty,
        rival_margin=rival_margin,
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
    def from_trigger_point(cls, point) -> Detection:
        """The tracked measurements of a ``tpnet.core.postprocess.TriggerPoint``."""
        return cls(
            x_mm=float(point.x_mm),
            y_mm=float(point.y_mm),
            area_mm2=float(point.area_mm2),
            stiffness_kpa_mean=float(point.stiffness_kpa_mean),
            stiffness_kpa_max=float(point.stiffness_kpa_max),
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
