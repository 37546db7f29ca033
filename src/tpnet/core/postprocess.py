"""From class probabilities to a label map and a list of trigger points, in millimetres.

SHARED by evaluation and inference: ground-truth masks and predictions go through the same
``find_trigger_points``, so a reported metric measures exactly what a clinician is shown.
numpy + OpenCV + standard library only.

Conventions: x = column (lateral), y = row (depth); mm = px * spacing_mm with the origin at the
centre of the top-left pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from tpnet.core.contract import ClassRoles, trp_class_indices

VESSEL_CLASS = "vessel"
ACTIVE_CLASS = "active_trp"
# Vessel fragments smaller than this (a few pixels of speckle the network called vessel) are not used for the
# TrP-to-vessel distance: a needle plan must not be steered by a spurious dot. 0.5 mm2 is the cross-section of
# a 0.8 mm vessel, below the arteries a needle plan is about (and 12 px at the usual 0.2 mm spacing).
MIN_VESSEL_AREA_MM2 = 0.5
# Width of the ring around a TrP whose median stiffness is the reference for stiffness_contrast.
CONTRAST_RING_MM = 2.0


@dataclass
class PostprocessParams:
    """threshold: summed TrP probability that makes a pixel TrP; min_area_mm2: smaller TrP
    components are dropped; match_mm: radius for matching predicted and true TrPs; min_mean_prob: TrP
    components whose mean summed TrP probability is lower are dropped (0 keeps all). A texture false alarm
    tends to be a patch just over the threshold, a nodule has a confident core: the mean tells them apart
    where the threshold alone would also cut the true nodules' rims. Models saved before it existed have
    none in their metadata and get 0 (``from_dict``)."""

    threshold: float = 0.5
    min_area_mm2: float = 2.0
    match_mm: float = 5.0
    min_mean_prob: float = 0.0
    # Sweeps (issue #17): 3-D trigger points smaller than this are dropped (volume_postprocess; calibrated on the
    # validation sweeps, tpnet.training.calibrate_sweeps). Unused for frames; models saved before it: the default.
    min_volume_mm3: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1]; got {self.threshold}")
        if self.min_area_mm2 < 0.0:
            raise ValueError(f"min_area_mm2 must be >= 0; got {self.min_area_mm2}")
        if self.match_mm <= 0.0:
            raise ValueError(f"match_mm must be > 0; got {self.match_mm}")
        if not 0.0 <= self.min_mean_prob < 1.0:
            raise ValueError(f"min_mean_prob must be in [0, 1); got {self.min_mean_prob}")
        if not self.min_volume_mm3 >= 0.0:
            raise ValueError(f"min_volume_mm3 must be >= 0; got {self.min_volume_mm3}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PostprocessParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown postprocess parameter(s) {unknown}; expected {sorted(known)}")
        return cls(**{k: float(v) for k, v in d.items()})


@dataclass
class TriggerPoint:
    """One nodule. NaN where unknown: no SWE under it, no vessel in the frame.

    The fields after ``nearest_vessel_mm`` have defaults (positional construction stays valid): the component's
    own evidence, measured by ``find_trigger_points``, and what ``tpnet.core.confidence`` and the inference tool
    make of it (issue #14). ``confidence`` is the calibrated P(true trigger point) once a model's calibration is
    applied, ``raw_confidence`` the uncalibrated mean probability it started from."""

    trp_id: int
    class_name: str
    label: int
    x_px: float
    y_px: float
    x_mm: float
    y_mm: float
    area_mm2: float
    stiffness_kpa_mean: float
    confidence: float
    nearest_vessel_mm: float
    raw_confidence: float = math.nan  # mean summed TrP probability inside (uncalibrated)
    max_prob: float = math.nan  # largest summed TrP probability inside
    active_fraction: float = math.nan  # active share of the component's TrP probability mass
    stiffness_kpa_median: float = math.nan
    stiffness_kpa_sd: float = math.nan
    swe_coverage: float = math.nan  # share of its pixels with a valid SWE value; NaN: no SWE map at all
    stiffness_kpa_max: float = math.nan  # largest valid kPa inside (follow-up visits compare it, issue #18)
    stiffness_contrast: float = math.nan  # median kPa inside / median kPa in a ring around it
    p_active: float = math.nan  # calibrated P(active | a true TrP); NaN: the model cannot say
    reported_class: str = ""  # what CSV and report show: active_trp, latent_trp or indeterminate
    confidence_sd: float = math.nan  # spread of the detection's probability across TTA passes
    centroid_sd_mm: float = math.nan  # spread of its centroid across TTA passes (mm, radial)
    depth_from_skin_mm: float = math.nan  # centroid depth below the skin line
    # Needle guidance (issue #16, ``tpnet.core.guidance.plan_guidance``): boundary-to-boundary distances to the
    # nerves and to any critical structure (NaN: none in the frame), and the planned in-plane path (side ""
    # and NaN figures: no in-plane path, which is never safe; clearance inf: no critical structure in view).
    nearest_nerve_mm: float = math.nan
    nearest_critical_mm: float = math.nan
    needle_side: str = ""  # "left" / "right": the image side the needle enters from
    needle_angle_deg: float = math.nan  # to the skin line
    needle_depth_mm: float = math.nan  # path length, skin entry to centroid
    needle_clearance_mm: float = math.nan  # the path's smallest distance to a critical pixel
    path_safe: bool = False  # needle_clearance_mm >= GuidanceParams.min_clearance_mm
    entry_x_px: float = math.nan  # the skin entry, for drawing
    entry_y_px: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


def vessel_class_index(classes: Sequence[str]) -> int | None:
    return list(classes).index(VESSEL_CLASS) if VESSEL_CLASS in classes else None


def _check_probs(probs: np.ndarray, classes: Sequence[str]) -> None:
    if probs.ndim != 3 or probs.shape[0] != len(classes):
        raise ValueError(f"probs must be (K={len(classes)}, H, W); got shape {probs.shape}")


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components: (count incl. background 0, label image, stats, centroids (x, y))."""
    return cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)


def _per_component_sum(components: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(components.ravel(), weights=values.ravel().astype(np.float64), minlength=n)


def _eroded(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbours are all in ``mask`` (the frame border does not erode)."""
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return cv2.erode(mask.astype(np.uint8), cross).astype(bool)


def labels_from_probs(
    probs: np.ndarray,
    classes: Sequence[str],
    params: PostprocessParams,
    spacing_mm: float,
    roles: ClassRoles | None = None,
) -> np.ndarray:
    """(K, H, W) probabilities -> (H, W) uint8 label map.

    A pixel is TrP where the summed TrP-class probability reaches ``params.threshold``; each TrP
    component takes the TrP class with the largest summed probability inside it (a nodule is never
    split into active and latent halves); components under ``params.min_area_mm2`` or whose mean summed
    TrP probability is under ``params.min_mean_prob``, and all other pixels, take the argmax among the
    non-TrP classes. ``roles`` says which classes are TrPs (None: the naming rule).
    """
    _check_probs(probs, classes)
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be > 0; got {spacing_mm}")
    trp = trp_class_indices(classes, roles)
    other = np.array([i for i in range(len(classes)) if i not in trp])
    labels = other[np.argmax(probs[other], axis=0)].astype(np.uint8)
    if not trp:
        return labels

    n, components, stats, _ = _components(probs[trp].sum(axis=0) >= params.threshold)
    if n == 1:
        return labels
    mass = np.stack([_per_component_sum(components, probs[k], n) for k in trp])  # (T, n)
    comp_class = np.asarray(trp)[np.argmax(mass, axis=0)]
    area_px = stats[:, cv2.CC_STAT_AREA]
    mean_prob = mass.sum(axis=0) / np.maximum(area_px, 1)
    keep = (area_px * float(spacing_mm) ** 2 >= params.min_area_mm2) & (mean_prob >= params.min_mean_prob)
    keep[0] = False  # component 0 is the non-TrP background
    comp_label = np.where(keep, comp_class, -1)[components]
    return np.where(comp_label >= 0, comp_label, labels).astype(np.uint8)


def find_trigger_points(
    label_map: np.ndarray,
    spacing_mm: float,
    classes: Sequence[str],
    probs: np.ndarray | None = None,
    elasto_kpa: np.ndarray | None = None,
    min_area_mm2: float = 0.0,
    min_vessel_area_mm2: float = MIN_VESSEL_AREA_MM2,
    roles: ClassRoles | None = None,
) -> list[TriggerPoint]:
    """Connected components (8-connectivity) of the union of TrP classes, in mm, sorted by (y, x).

    Class = majority TrP label inside (ties go to the earlier class); confidence = raw_confidence = mean summed
    TrP probability inside (1.0 without ``probs``, i.e. ground truth); max_prob = its largest value inside;
    active_fraction = active_trp share of the TrP probability mass inside; stiffness = mean, median and sample
    SD (ddof=1; 0 for one pixel) and maximum of the valid kPa values under the component, swe_coverage = valid SWE pixels /
    component pixels (all NaN without an SWE map); stiffness_contrast = median kPa inside / median valid kPa in
    a ``CONTRAST_RING_MM`` ring around it outside every TrP (NaN when either is empty);
    nearest_vessel_mm = centroid to the nearest vessel-pixel centre, ignoring vessel components under
    ``min_vessel_area_mm2`` (default ``MIN_VESSEL_AREA_MM2``).
    """
    if label_map.ndim != 2:
        raise ValueError(f"label_map must be (H, W); got shape {label_map.shape}")
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be > 0; got {spacing_mm}")
    shape = label_map.shape
    if probs is not None:
        _check_probs(probs, classes)
        if probs.shape[1:] != shape:
            raise ValueError(f"probs shape {probs.shape[1:]} differs from label_map shape {shape}")
    if elasto_kpa is not None and elasto_kpa.shape != shape:
        raise ValueError(f"elasto_kpa shape {elasto_kpa.shape} differs from label_map shape {shape}")

    trp = trp_class_indices(classes, roles)
    if not trp:
        return []
    n, components, stats, centroids = _components(np.isin(label_map, trp))
    if n == 1:
        return []

    votes = np.stack([_per_component_sum(components, label_map == k, n) for k in trp])  # (T, n)
    comp_label = np.asarray(trp)[np.argmax(votes, axis=0)]
    area_px = stats[:, cv2.CC_STAT_AREA].astype(np.float64)

    max_prob = np.full(n, np.nan)
    active_fraction = np.full(n, np.nan)
    if probs is not None:
        # Component 0 (background) is empty when every pixel is TrP, e.g. an untrained model.
        trp_prob = probs[trp].sum(axis=0)
        trp_mass = _per_component_sum(components, trp_prob, n)
        confidence = np.zeros(n)
        np.divide(trp_mass, area_px, out=confidence, where=area_px > 0)
        max_prob = np.zeros(n)
        np.maximum.at(max_prob, components.ravel(), trp_prob.ravel().astype(np.float64))
        if ACTIVE_CLASS in classes:
            active_mass = _per_component_sum(components, probs[list(classes).index(ACTIVE_CLASS)], n)
            np.divide(active_mass, trp_mass, out=active_fraction, where=trp_mass > 0)
    else:
        confidence = np.ones(n)

    stiffness = np.full(n, np.nan)
    if elasto_kpa is not None:
        valid = np.isfinite(elasto_kpa)
        kpa_sum = _per_component_sum(components, np.where(valid, elasto_kpa, 0.0), n)
        kpa_count = _per_component_sum(components, valid, n)
        np.divide(kpa_sum, kpa_count, out=stiffness, where=kpa_count > 0)

    stiffness_stats = _stiffness_stats(components, stats, elasto_kpa, spacing_mm)
    vessel_mask = _vessel_mask(label_map, classes, spacing_mm, min_vessel_area_mm2)
    vessel_edge_yx = np.argwhere(vessel_mask & ~_eroded(vessel_mask))

    points = []
    for c in range(1, n):
        area_mm2 = float(area_px[c]) * spacing_mm**2
        if area_mm2 < min_area_mm2:
            continue
        x_px, y_px = (float(v) for v in centroids[c])
        nearest_vessel_mm = math.nan
        if len(vessel_edge_yx):
            # Outside a vessel pixel's square the nearest vessel pixel is on the vessel's edge; only
            # a centroid lying on a vessel pixel needs every vessel pixel.
            on_vessel = vessel_mask[round(y_px), round(x_px)]
            yx = np.argwhere(vessel_mask) if on_vessel else vessel_edge_yx
            nearest_px = np.sqrt(np.min((yx[:, 0] - y_px) ** 2 + (yx[:, 1] - x_px) ** 2))
            nearest_vessel_mm = float(nearest_px) * spacing_mm
        label = int(comp_label[c])
        points.append(
            TriggerPoint(
                trp_id=0,
                class_name=classes[label],
                label=label,
                x_px=x_px,
                y_px=y_px,
                x_mm=x_px * spacing_mm,
                y_mm=y_px * spacing_mm,
                area_mm2=area_mm2,
                stiffness_kpa_mean=float(stiffness[c]),
                confidence=float(confidence[c]),
                nearest_vessel_mm=nearest_vessel_mm,
                raw_confidence=float(confidence[c]),
                max_prob=float(max_prob[c]),
                active_fraction=float(active_fraction[c]),
                **stiffness_stats[c],
            )
        )
    points.sort(key=lambda p: (p.y_px, p.x_px))
    for trp_id, point in enumerate(points, start=1):
        point.trp_id = trp_id
    return points


def _vessel_mask(
    label_map: np.ndarray, classes: Sequence[str], spacing_mm: float, min_area_mm2: float
) -> np.ndarray:
    """Vessel pixels of the components of at least ``min_area_mm2``."""
    vessel = vessel_class_index(classes)
    if vessel is None:
        return np.zeros(label_map.shape, bool)
    n, components, stats, _ = _components(label_map == vessel)
    big = stats[:, cv2.CC_STAT_AREA] * float(spacing_mm) ** 2 >= min_area_mm2
    big[0] = False
    return big[components]


def _stiffness_stats(
    components: np.ndarray, boxes: np.ndarray, elasto_kpa: np.ndarray | None, spacing_mm: float
) -> list[dict[str, float]]:
    """Per component: stiffness median, SD, SWE coverage and contrast with its surrounding ring."""
    nan = {
        "stiffness_kpa_median": math.nan,
        "stiffness_kpa_sd": math.nan,
        "swe_coverage": math.nan,
        "stiffness_kpa_max": math.nan,
    }
    n = len(boxes)
    out = [{**nan, "stiffness_contrast": math.nan} for _ in range(n)]
    if elasto_kpa is None:
        return out
    valid = np.isfinite(elasto_kpa)
    any_trp = components > 0
    ring_px = max(1, round(CONTRAST_RING_MM / float(spacing_mm)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
    height, width = components.shape
    for c in range(1, n):
        x, y, w, h = (int(v) for v in boxes[c, :4])
        y0, y1 = max(0, y - ring_px), min(height, y + h + ring_px)
        x0, x1 = max(0, x - ring_px), min(width, x + w + ring_px)
        inside = components[y0:y1, x0:x1] == c
        kpa, ok = elasto_kpa[y0:y1, x0:x1], valid[y0:y1, x0:x1]
        values = kpa[inside & ok].astype(np.float64)
        out[c]["swe_coverage"] = float(values.size / max(int(inside.sum()), 1))
        if values.size == 0:
            continue
        median = float(np.median(values))
        out[c]["stiffness_kpa_median"] = median
        out[c]["stiffness_kpa_max"] = float(values.max())
        out[c]["stiffness_kpa_sd"] = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
        ring = cv2.dilate(inside.astype(np.uint8), kernel).astype(bool) & ~any_trp[y0:y1, x0:x1] & ok
        if ring.any():
            ring_median = float(np.median(kpa[ring]))
            if ring_median > 0:
                out[c]["stiffness_contrast"] = median / ring_median
    return out


def frame_trp_score(probs: np.ndarray, classes: Sequence[str], roles: ClassRoles | None = None) -> float:
    """Frame-level "contains a TrP" score: the largest summed TrP probability over pixels."""
    _check_probs(probs, classes)
    trp = trp_class_indices(classes, roles)
    if not trp or probs[0].size == 0:
        return 0.0
    return float(probs[trp].sum(axis=0).max())
