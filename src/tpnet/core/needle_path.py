"""A straight in-plane needle path to a trigger point, and how close it passes to nerves and vessels (issue #16).

SHARED by inference (what the clinician is shown) and evaluation (the same path re-measured on the true
critical-structure mask). numpy + OpenCV + standard library only.

The rule. The needle enters at the skin line from the left or the right side of the image, at an angle to the
skin in [``min_angle_deg``, ``max_angle_deg``] (every ``angle_step_deg``), and runs straight to the TrP's
centroid. A path's clearance is the smallest distance from any point of the whole segment (entry to target) to
the centre of any critical pixel (a nerve or a vessel, ``critical_mask``). The planner keeps the path with the
largest clearance (ties: the shorter path, less tissue crossed) and calls it safe when the clearance reaches
``min_clearance_mm``.

What tpnet vouches for. Only what the frame shows: a path counts only when its skin entry lies inside the imaged
width (a path entering beside the image crosses tissue tpnet has not seen), and a structure outside the frame,
or outside the imaged plane (the beam has a thickness of its own), is not seen. A frame with no critical pixel
gives every path an infinite clearance: nothing in view to hit, which says nothing about what is out of view.

Conventions as in ``tpnet.core.postprocess``: x = column (lateral), y = row (depth), pixel centres at integer
coordinates, mm = px * spacing_mm (square pixels). "left" / "right" are the image's sides (which end of the probe
that is depends on the orientation marker, which tpnet does not read).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from tpnet.core.contract import ClassRoles, critical_class_indices
from tpnet.core.postprocess import MIN_VESSEL_AREA_MM2

# Clearances closer than this (mm) are a tie, and the shorter path wins.
TIE_MM = 1e-6
SIDES: tuple[str, ...] = ("left", "right")


@dataclass
class GuidanceParams:
    """How needle paths are planned and judged.

    min_clearance_mm (3.0): a path is safe when no point of it comes closer than this to a nerve or a vessel.
    A margin, not a physical constant; it covers (figures from the literature, the sum is judgement):
    - the needle leaving its planned line: interventional radiologists report unwanted needle bending of up to
      5.3 mm on average (maximum encountered) and accept at most 2.7 mm of placement error (de Jong et al. 2018,
      "Needle placement errors: do we need steerable needles in interventional radiology?", Med Devices (Auckl)
      11:259-265); trigger-point paths are short (1-4 cm), so about 2 mm of deflection is assumed here;
    - the needle's own half-width: 21-25 G needles are used for trigger points (Yoon et al. 2009 compared 21, 23
      and 25 G), 0.26-0.41 mm outer radius; clearance is measured from the needle's axis;
    - the segmentation's boundary error: about one pixel (0.1-0.3 mm at the usual spacings) on the synthetic
      data, more on real frames; and distances run to pixel centres, half a pixel inside a structure's edge;
    - the teaching that ultrasound guidance exists to keep the needle clear of "vital neurovascular structures"
      (Wong & Wong 2012, "A new look at trigger point injections"), with no guideline fixing a distance.
    2 + 0.4 + 0.3, rounded up to 3 mm. Configurable (``--min-clearance-mm``) for a site that decides otherwise.

    min_angle_deg, max_angle_deg (15, 70): the needle's angle to the skin line. Below ~15 degrees an in-plane
    needle runs a long way under the skin for little depth; above ~70 degrees it is nearly parallel to the beam
    and its tip is hard to recognise (steep in-plane angles; e.g. PMC7761225). Judgement, configurable.
    angle_step_deg (1.0): the grid of angles tried, finer than a hand holds an angle. Between neighbouring angles
    the entry moves along the skin by depth * step / sin(angle)^2 (step in radians; 0.7 mm for a 2 cm deep TrP
    at 45 degrees, 5 mm at 15), points nearer the target proportionally less, so the best angle off the grid
    can be clearer than the best on it by up to half that. A coarse grid can only miss a clearer path (a TrP
    called unsafe that has a safe path); it never calls an unsafe path safe: the clearance reported is the
    chosen path's own.

    critical_prob_threshold (0.1): a pixel whose summed critical-class probability reaches it is critical even
    where the arg-max says otherwise. Low on purpose: a structure the network half-sees is avoided, and a path
    the planner calls safe should be safe on the true mask (the unsafe-called-safe rate, evaluation).

    min_critical_area_mm2 (0.5, ``postprocess.MIN_VESSEL_AREA_MM2``): arg-max critical components smaller than
    this are speckle, not structures, and do not steer the plan (the cross-section of a 0.8 mm vessel). It does
    not apply to the probability rule, which stays conservative.
    """

    min_clearance_mm: float = 3.0
    min_angle_deg: float = 15.0
    max_angle_deg: float = 70.0
    angle_step_deg: float = 1.0
    critical_prob_threshold: float = 0.1
    min_critical_area_mm2: float = MIN_VESSEL_AREA_MM2

    def __post_init__(self) -> None:
        if not self.min_clearance_mm >= 0.0:
            raise ValueError(f"min_clearance_mm must be >= 0; got {self.min_clearance_mm}")
        if not 0.0 < self.min_angle_deg <= self.max_angle_deg < 90.0:
            raise ValueError(
                f"angles must satisfy 0 < min_angle_deg <= max_angle_deg < 90; got "
                f"{self.min_angle_deg}, {self.max_angle_deg}"
            )
        if not self.angle_step_deg > 0.0:
            raise ValueError(f"angle_step_deg must be > 0; got {self.angle_step_deg}")
        if not 0.0 < self.critical_prob_threshold <= 1.0:
            raise ValueError(f"critical_prob_threshold must be in (0, 1]; got {self.critical_prob_threshold}")
        if not self.min_critical_area_mm2 >= 0.0:
            raise ValueError(f"min_critical_area_mm2 must be >= 0; got {self.min_critical_area_mm2}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GuidanceParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown guidance parameter(s) {unknown}; expected {sorted(known)}")
        return cls(**{k: float(v) for k, v in d.items()})

    def angles_deg(self) -> np.ndarray:
        """The angles tried: min_angle_deg, every angle_step_deg, and max_angle_deg itself."""
        count = int(math.floor((self.max_angle_deg - self.min_angle_deg) / self.angle_step_deg + 1e-9)) + 1
        angles = self.min_angle_deg + self.angle_step_deg * np.arange(count)
        if self.max_angle_deg - angles[-1] > 1e-9:
            angles = np.append(angles, self.max_angle_deg)
        return angles


@dataclass
class NeedlePath:
    """The chosen path. clearance_mm is ``math.inf`` when the frame holds no critical pixel (then safe)."""

    side: str  # "left" / "right": the image side the needle enters from
    angle_deg: float  # to the skin line
    depth_mm: float  # path length, entry to target
    clearance_mm: float  # smallest distance from the segment to a critical pixel centre
    safe: bool  # clearance_mm >= GuidanceParams.min_clearance_mm
    entry_x_px: float
    entry_y_px: float
    target_x_px: float
    target_y_px: float

    def to_dict(self) -> dict:
        return asdict(self)


def structure_mask(
    label_map: np.ndarray, class_indices: Sequence[int], spacing_mm: float, min_area_mm2: float
) -> np.ndarray:
    """Pixels labelled with any of ``class_indices``, in 8-connected components of at least ``min_area_mm2``."""
    mask = np.isin(label_map, list(class_indices))
    if not mask.any() or min_area_mm2 <= 0.0:
        return mask
    n, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    big = stats[:, cv2.CC_STAT_AREA] * float(spacing_mm) ** 2 >= min_area_mm2
    big[0] = False
    return big[components]


def critical_mask(
    label_map: np.ndarray,
    probs: np.ndarray | None,
    classes: Sequence[str],
    roles: ClassRoles | None,
    params: GuidanceParams,
    spacing_mm: float,
    labelled: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W) bool: pixels a needle must keep clear of.

    The arg-max critical pixels (``label_map`` in a critical class; components under
    ``params.min_critical_area_mm2`` dropped) OR the pixels whose summed critical-class probability reaches
    ``params.critical_prob_threshold``. ``probs`` None (ground truth): the label map alone. ``roles`` None: the
    naming rule (vessel, nerve). ``labelled``: the arg-max part when the caller has made it already
    (``structure_mask`` of the critical classes with ``params.min_critical_area_mm2``)."""
    if label_map.ndim != 2:
        raise ValueError(f"label_map must be (H, W); got shape {label_map.shape}")
    critical = critical_class_indices(classes, roles)
    if not critical:
        return np.zeros(label_map.shape, bool)
    if labelled is None:
        labelled = structure_mask(label_map, critical, spacing_mm, params.min_critical_area_mm2)
    mask = labelled.copy()
    if probs is not None:
        if probs.ndim != 3 or probs.shape[0] != len(classes) or probs.shape[1:] != label_map.shape:
            raise ValueError(
                f"probs must be (K={len(classes)}, {label_map.shape[0]}, {label_map.shape[1]}); got {probs.shape}"
            )
        mask |= probs[critical].sum(axis=0) >= params.critical_prob_threshold
    return mask


def distance_map_px(structure: np.ndarray) -> np.ndarray | None:
    """Per pixel centre, the exact Euclidean distance (px) to the nearest ``structure`` pixel centre (0 on it);
    None when the structure is empty. OpenCV's DIST_L2 with DIST_MASK_PRECISE is the exact transform
    (Felzenszwalb & Huttenlocher), not the 3x3 / 5x5 chamfer approximation."""
    if not structure.any():
        return None
    return cv2.distanceTransform((~structure).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def boundary_distance_mm(component_mask: np.ndarray, structure_mask: np.ndarray, spacing_mm: float) -> float:
    """Smallest distance (mm) between a pixel centre of ``component_mask`` (a TrP) and one of ``structure_mask``
    (nerves, vessels): boundary to boundary, 0 when they touch or overlap. NaN when either mask is empty."""
    if component_mask.shape != structure_mask.shape:
        raise ValueError(f"mask shapes differ: {component_mask.shape} vs {structure_mask.shape}")
    distance = distance_map_px(structure_mask)
    if distance is None or not component_mask.any():
        return math.nan
    return float(distance[component_mask].min()) * float(spacing_mm)


def _path_clearances_px(
    distance: np.ndarray, entry_x: np.ndarray, entry_y: float, target_x: float, target_y: float
) -> np.ndarray:
    """Clearance (px) of each segment from (entry_x[i], entry_y) down to the target, as a lower bound that
    never over-states the exact distance from the segment to a critical pixel centre, and under-states it by
    less than one pixel diagonal (sqrt 2 px).

    Why it holds. Cut the frame into one-pixel row strips [m, m + 1]; inside strip m the segment runs between
    two columns, so every point p of it lies in a cell [c, c + 1] x [m, m + 1] whose four corners (pixel
    centres) are in rows m, m + 1 and in the columns floor(x_min) .. ceil(x_max) of that strip. For the lattice
    point c* nearest p, the corner k of p's cell found by clipping c* to the cell is, axis by axis, no farther
    from c* than p is, so distance[k] <= |k - c*| <= |p - c*|: the smallest ``distance`` over those corners
    bounds p from below. Every corner of a touched cell lies within sqrt 2 px of a point of the segment, and
    ``distance`` is 1-Lipschitz, hence the tightness. (Reading the distance at sampled points instead can
    over-state: bilinear interpolation gives 0.85 px at a cell's centre beside a critical pixel whose true
    distance is 0.71 px, the nearest pixel up to 0.71 px more than the truth.)

    All paths share the entry row and the target, so the strips are the same for all: (paths, strips, columns)
    arrays, no loop."""
    first_row = int(math.floor(entry_y))
    strip_top = np.arange(first_row, int(math.ceil(target_y)), dtype=np.float64)  # rows m
    y_a = np.maximum(strip_top, entry_y)
    y_b = np.minimum(strip_top + 1.0, target_y)
    slope = (target_x - entry_x) / (target_y - entry_y)  # dx per dy, per path
    x_a = entry_x[:, None] + (y_a - entry_y)[None, :] * slope[:, None]
    x_b = entry_x[:, None] + (y_b - entry_y)[None, :] * slope[:, None]
    col_lo = np.floor(np.minimum(x_a, x_b)).astype(np.intp)
    col_hi = np.ceil(np.maximum(x_a, x_b)).astype(np.intp)
    rows = strip_top.astype(np.intp)
    # Smallest distance over the two corner rows of each strip (row m + 1 exists: m <= ceil(target_y) - 1).
    row_pair = np.minimum(distance[rows], distance[np.minimum(rows + 1, distance.shape[0] - 1)])
    widest = int((col_hi - col_lo).max()) + 1
    cols = np.minimum(col_lo[..., None] + np.arange(widest), col_hi[..., None])  # the last column repeats
    per_strip = row_pair[np.arange(len(rows))[None, :, None], cols].min(axis=2)
    return per_strip.min(axis=1)


def segment_clearance_mm(
    distance_px: np.ndarray | None,
    entry_xy_px: tuple[float, float],
    target_xy_px: tuple[float, float],
    spacing_mm: float,
) -> float:
    """Clearance (mm) of one given segment on a ``distance_map_px`` map, by the planner's own rule (so a path
    planned on one mask and re-measured on another, e.g. the true one, differ only by the mask); inf when the
    map is None (no critical pixel). The segment may run in any direction; both ends must lie in the frame."""
    if distance_px is None:
        return math.inf
    (x_a, y_a), (x_b, y_b) = (tuple(float(v) for v in p) for p in (entry_xy_px, target_xy_px))
    height, width = distance_px.shape
    for x, y in ((x_a, y_a), (x_b, y_b)):
        if not (0.0 <= y <= height - 1 and 0.0 <= x <= width - 1):
            raise ValueError(f"segment end ({x}, {y}) lies outside the {height} x {width} frame")
    if y_a > y_b:  # the strips run downwards
        (x_a, y_a), (x_b, y_b) = (x_b, y_b), (x_a, y_a)
    if y_a == y_b:  # level: its cells' corners are the rows around it, the columns it spans
        rows = distance_px[int(math.floor(y_a)) : int(math.ceil(y_a)) + 1]
        cols = slice(int(math.floor(min(x_a, x_b))), int(math.ceil(max(x_a, x_b))) + 1)
        return float(rows[:, cols].min()) * float(spacing_mm)
    clearance_px = _path_clearances_px(distance_px, np.array([x_a]), y_a, x_b, y_b)[0]
    return float(clearance_px) * float(spacing_mm)


def plan_needle_path(
    target_yx_px: tuple[float, float],
    critical: np.ndarray,
    skin_row: int | None,
    spacing_mm: float,
    params: GuidanceParams,
    exclude: np.ndarray | None = None,
    distance_px: np.ndarray | None = None,
) -> NeedlePath | None:
    """The in-plane path to ``target_yx_px`` (a TrP centroid, (row, column)) with the largest clearance from
    ``critical`` (see the module docstring), or None when there is none: the target lies on or above the skin
    line, or no angle in range enters the skin inside the imaged width. The caller reports such a TrP as having
    no safe in-plane path; it never drops it.

    skin_row: ``tpnet.core.skin_line.find_skin_row``; None (no skin echo found) falls back to row 0, the top of
    the image, which is where the transducer face is. exclude: pixels that never count as critical (the TrP's
    own pixels: the needle is meant to be there). distance_px: ``distance_map_px(critical & ~exclude)`` when
    the caller plans several TrPs on one frame (computed here otherwise; None from it means no critical pixel).
    """
    if critical.ndim != 2:
        raise ValueError(f"critical must be (H, W); got shape {critical.shape}")
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be > 0; got {spacing_mm}")
    height, width = critical.shape
    target_y, target_x = (float(v) for v in target_yx_px)
    if not (0.0 <= target_y <= height - 1 and 0.0 <= target_x <= width - 1):
        raise ValueError(f"target {target_yx_px} lies outside the {height} x {width} frame")
    entry_y = float(0 if skin_row is None else skin_row)
    depth_px = target_y - entry_y
    if depth_px <= 0.0:
        return None

    angles = params.angles_deg()
    run_px = depth_px / np.tan(np.radians(angles))  # horizontal distance from the entry to the target
    sides = np.repeat(np.array(SIDES), len(angles))
    all_angles = np.tile(angles, 2)
    entry_x = np.concatenate((target_x - run_px, target_x + run_px))
    in_view = (entry_x >= 0.0) & (entry_x <= width - 1)
    if not in_view.any():
        return None
    sides, all_angles, entry_x = sides[in_view], all_angles[in_view], entry_x[in_view]
    lengths_px = depth_px / np.sin(np.radians(all_angles))

    if distance_px is None:
        avoid = critical if exclude is None else critical & ~exclude
        distance_px = distance_map_px(avoid)
    if distance_px is None:
        clearances_mm = np.full(len(entry_x), math.inf)
    else:
        clearances_mm = _path_clearances_px(distance_px, entry_x, entry_y, target_x, target_y) * float(
            spacing_mm
        )

    # Largest clearance first; among (near-)ties the shortest path.
    best = clearances_mm.max()
    tied = np.flatnonzero(clearances_mm >= best - TIE_MM) if math.isfinite(best) else np.arange(len(entry_x))
    chosen = int(tied[np.argmin(lengths_px[tied])])
    clearance = float(clearances_mm[chosen])
    return NeedlePath(
        side=str(sides[chosen]),
        angle_deg=float(all_angles[chosen]),
        depth_mm=float(lengths_px[chosen]) * float(spacing_mm),
        clearance_mm=clearance,
        safe=bool(clearance >= params.min_clearance_mm),
        entry_x_px=float(entry_x[chosen]),
        entry_y_px=entry_y,
        target_x_px=target_x,
        target_y_px=target_y,
    )
