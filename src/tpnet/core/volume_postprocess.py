"""From a 3-D label map of a sweep to trigger points in millimetres (issue #17, three-dimensional ultrasound).

The volume counterpart of ``tpnet.core.postprocess.find_trigger_points``: the connected components of the
trigger-point classes, now across slices, each measured in mm (centroid, volume, extent along the sweep),
with its stiffness, confidence and distance to the nearest critical structure (nerve, vessel).

numpy + OpenCV + standard library only: core/ is imported by the torch-free inference install, which has no
scipy. Components are labelled per slice with OpenCV and joined across neighbouring slices (exactly the
26-connected components); distances are OpenCV's exact per-slice transforms combined across slices (exactly
the 3-D Euclidean distance). Per slice this is the 2-D code's own labelling (8-connected) and distance.

Conventions: axes (z, y, x) = (slice along the sweep, row = depth, column = lateral), as
``tpnet.core.volume_io`` reads volumes; ``spacing_mm`` = (slice_spacing_mm, row_mm, col_mm); mm = index *
spacing with the origin at the centre of voxel (0, 0, 0); distances run between voxel centres, as in 2-D.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from tpnet.core.contract import ClassRoles, critical_class_indices, trp_class_indices
from tpnet.core.needle_path import distance_map_px
from tpnet.core.postprocess import PostprocessParams

# Components smaller than this are dropped. The 2-D default (PostprocessParams.min_area_mm2 = 2 mm2, a disc
# 1.6 mm across) turned into a volume: the ball of that cross-section is 4/3 pi 0.8^3 = 2.1 mm3. A trigger
# point is 16 +- 11 mm2 in area (Sikdar et al. 2009); the smallest common one (-1 SD, a 3.6 x 1.8 mm ellipse)
# as an ellipsoid as deep along the sweep as it is thick (1.8 mm) is 4/3 pi 1.8 0.9 0.9 = 6.1 mm3, three times
# this, while a one-pixel-thick speck of noise over a few slices (e.g. 1 mm2 x 1 slice of 0.5 mm = 0.5 mm3)
# falls below it. A one-slice blob passes when its area times the slice spacing reaches it.
DEFAULT_MIN_VOLUME_MM3 = 2.0
# Row and column pixel sizes may differ this much (relative), as tpnet.core.dicom accepts for a frame; distances
# then use the smaller of the two, so they are exact for square pixels and never over-stated otherwise.
IN_PLANE_TOLERANCE = 0.02


@dataclass(frozen=True)
class TriggerPoint3D:
    """One trigger point of a sweep. NaN where unknown: no SWE voxel under it, no probabilities, no critical
    voxel in the volume.

    extent_along_sweep_mm = number of slices spanned (last - first + 1) * slice spacing: each slice stands for
    a slab one spacing thick, the convention that also makes volume_mm3 = voxels * voxel volume; a TrP seen in
    one slice extends one spacing, not 0, and an ellipsoid of diameter d drawn on the slices is d +- one
    spacing (centre-to-centre, (n - 1) * spacing, would under-state every TrP by one spacing)."""

    trp_id: int  # 1, 2, ... in (z, y, x) order of the centroids
    class_name: str
    label: int  # the class index
    centroid_mm: tuple[
        float, float, float
    ]  # (x, y, z): column * col_mm, row * row_mm (depth), slice * slice_mm
    volume_mm3: float
    extent_along_sweep_mm: float
    slices: tuple[int, int]  # first and last slice index, inclusive
    voxel_count: int
    stiffness_kpa_mean: float  # over the finite SWE voxels inside
    stiffness_kpa_max: float
    swe_coverage: float  # share of its voxels with a finite SWE value; NaN: no SWE volume at all
    confidence: float  # mean summed TrP probability inside; NaN without probabilities
    nearest_critical_mm: float  # smallest voxel-centre distance to a critical voxel; NaN: none in the volume

    def to_dict(self) -> dict:
        return asdict(self)


def label_components_26(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """26-connected components of a (Z, H, W) bool mask: (count, int32 labels; 0 = outside, 1..count).

    Why 26 and not 6: slices lie 0.5-2 mm apart, 5-20 pixels, so the tapering or oblique edge of one nodule
    shifts between neighbouring slices and its cross-sections may meet only at an edge or a corner; 6-connectivity
    would cut such a nodule into several and count each as a trigger point. 26 is also the 3-D form of the 8
    used in 2-D (tpnet.core.postprocess), so every slice of a component is a union of 2-D components."""
    if mask.ndim != 3:
        raise ValueError(f"mask must be (Z, H, W); got shape {mask.shape}")
    labels = np.zeros(mask.shape, np.int32)
    count = 0
    for z in range(mask.shape[0]):
        n, in_slice = cv2.connectedComponents(mask[z].astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        labels[z] = np.where(in_slice > 0, in_slice + count, 0)
        count += n - 1
    if count == 0:
        return 0, labels
    root = _union_roots(count, _cross_slice_pairs(labels[:-1], labels[1:]))
    # Roots are labels 1..count (0 stays 0, the smallest), so the inverse of unique numbers them 1, 2, ...
    _, compact = np.unique(root, return_inverse=True)
    return int(compact.max()), compact.astype(np.int32)[labels]


def _cross_slice_pairs(below: np.ndarray, above: np.ndarray) -> np.ndarray:
    """(P, 2) distinct pairs of labels (``below`` slice z, ``above`` slice z + 1) whose voxels are
    26-neighbours: the 9 in-plane offsets (dy, dx) in {-1, 0, 1}^2 between a voxel and the next slice's
    voxels. ``below`` and ``above``: (..., H, W) labels, 0 = outside; a stack of slices (the whole volume) or
    one slice each (tpnet.core.volume_stream, which sees one slice at a time)."""
    height, width = below.shape[-2:]
    pairs = [np.empty((0, 2), np.int32)]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            a = below[..., max(0, dy) : height + min(0, dy), max(0, dx) : width + min(0, dx)]
            b = above[..., max(0, -dy) : height + min(0, -dy), max(0, -dx) : width + min(0, -dx)]
            both = (a > 0) & (b > 0)
            pairs.append(np.stack([a[both], b[both]], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def _union_roots(count: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over labels 0..count joined by ``pairs``: each label's root, the smallest label of its set."""
    parent = list(range(count + 1))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    for a, b in pairs.tolist():
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    return np.array([find(i) for i in range(count + 1)])


def find_trigger_points_3d(
    label_map: np.ndarray,
    spacing_mm: Sequence[float],
    classes: Sequence[str],
    roles: ClassRoles | None = None,
    elasto_kpa: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
) -> list[TriggerPoint3D]:
    """26-connected components of the union of the TrP classes of a (Z, H, W) label map, in mm, sorted by the
    centroid's (z, y, x).

    spacing_mm: (slice_spacing_mm, row_mm, col_mm); row and column within ``IN_PLANE_TOLERANCE``. roles: which
    classes are TrPs and which critical (None: the naming rule). Class = the majority TrP label inside (ties go
    to the earlier class); elasto_kpa: (Z, H, W) kPa, NaN = no signal; probs: (K, Z, H, W) class probabilities
    for the confidence. Components under ``min_volume_mm3`` are dropped (see ``DEFAULT_MIN_VOLUME_MM3``).
    """
    slice_mm, row_mm, col_mm = _checked_spacing(spacing_mm)
    if label_map.ndim != 3:
        raise ValueError(f"label_map must be (Z, H, W); got shape {label_map.shape}")
    if elasto_kpa is not None and elasto_kpa.shape != label_map.shape:
        raise ValueError(
            f"elasto_kpa shape {elasto_kpa.shape} differs from label_map shape {label_map.shape}"
        )
    if probs is not None and probs.shape != (len(classes), *label_map.shape):
        raise ValueError(
            f"probs must be (K={len(classes)}, {', '.join(map(str, label_map.shape))}); got {probs.shape}"
        )
    if min_volume_mm3 < 0:
        raise ValueError(f"min_volume_mm3 must be >= 0; got {min_volume_mm3}")

    trp = trp_class_indices(classes, roles)
    if not trp:
        return []
    n, components = label_components_26(np.isin(label_map, trp))
    if n == 0:
        return []

    # Every per-component figure is a bincount over the TrP voxels (a small share of the volume).
    z, y, x = np.nonzero(components)
    comp = components[z, y, x]
    size = n + 1
    first, last = np.full(size, z.max()), np.zeros(size, z.dtype)
    np.minimum.at(first, comp, z)
    np.maximum.at(last, comp, z)
    votes = np.bincount(comp * len(classes) + label_map[z, y, x], minlength=size * len(classes))
    kpa_count = kpa_sum = kpa_max = probability_sum = None
    if elasto_kpa is not None:
        kpa_count, kpa_sum, kpa_max = _kpa_sums(comp, size, elasto_kpa[z, y, x])
    if probs is not None:
        probability_sum = np.bincount(comp, weights=probs[trp][:, z, y, x].sum(axis=0), minlength=size)
    critical = np.isin(label_map, critical_class_indices(classes, roles))
    sums = _ComponentSums(
        voxels=np.bincount(comp, minlength=size),
        coordinate_sums=np.stack([np.bincount(comp, weights=axis, minlength=size) for axis in (z, y, x)]),
        first=first,
        last=last,
        votes=votes.reshape(size, len(classes))[:, trp],
        kpa_count=kpa_count,
        kpa_sum=kpa_sum,
        kpa_max=kpa_max,
        probability_sum=probability_sum,
        nearest_critical_mm=_nearest_critical_mm(
            _voxels_by_slice(components),
            size,
            {int(zc): _bounding_box(critical[zc]) for zc in np.flatnonzero(critical.any(axis=(1, 2)))},
            critical.__getitem__,
            (slice_mm, min(row_mm, col_mm)),
        ),
    )
    return _trigger_points(sums, classes, trp, (slice_mm, row_mm, col_mm), min_volume_mm3)


@dataclass(frozen=True)
class _ComponentSums:
    """What every figure of a trigger point is computed from, per component (index 0 = outside, never
    reported; 1..n the components). The whole-volume finder and the streaming one
    (tpnet.core.volume_stream) both reduce their voxels to these, and ``_trigger_points`` turns them into
    TriggerPoint3D, so that the two report the same points. Counts and coordinate sums are whole numbers
    (exact in float64 below 2^53)."""

    voxels: np.ndarray  # (n + 1,) voxel count
    coordinate_sums: np.ndarray  # (3, n + 1): sums of the z, y and x indices of its voxels
    first: np.ndarray  # (n + 1,) first and last slice index
    last: np.ndarray
    votes: np.ndarray  # (n + 1, T): voxels of each TrP class, columns in trp_class_indices order
    kpa_count: np.ndarray | None  # voxels with a finite SWE value; None: no SWE volume
    kpa_sum: np.ndarray | None  # sum of those values (kPa)
    kpa_max: np.ndarray | None  # largest of them; -inf where kpa_count is 0
    probability_sum: np.ndarray | None  # sum over its voxels of the summed TrP probability; None: no probs
    nearest_critical_mm: np.ndarray  # (n + 1,) see _nearest_critical_mm


def _trigger_points(
    sums: _ComponentSums,
    classes: Sequence[str],
    trp: Sequence[int],
    spacing_mm: tuple[float, float, float],
    min_volume_mm3: float,
) -> list[TriggerPoint3D]:
    """The components of ``sums`` at or above ``min_volume_mm3``, numbered 1, 2, ... in (z, y, x) order of
    their centroids (equal centroids, e.g. a ring and the dot at its centre: in component order)."""
    slice_mm, row_mm, col_mm = spacing_mm
    voxels = sums.voxels.astype(np.float64)
    voxels[0] = 1.0  # component 0 (outside) is never reported; avoids dividing by 0
    centroid = sums.coordinate_sums / voxels
    comp_label = np.asarray(trp)[np.argmax(sums.votes, axis=1)]  # ties: the earlier class
    size = len(voxels)
    stiffness_mean, stiffness_max, coverage = (
        np.full(size, np.nan),
        np.full(size, np.nan),
        np.full(size, np.nan),
    )
    if sums.kpa_count is not None:
        count = sums.kpa_count.astype(np.float64)
        np.divide(sums.kpa_sum, count, out=stiffness_mean, where=count > 0)
        stiffness_max[count > 0] = sums.kpa_max[count > 0]
        coverage = count / voxels
    confidence = np.full(size, np.nan) if sums.probability_sum is None else sums.probability_sum / voxels

    voxel_mm3 = slice_mm * row_mm * col_mm
    kept = [c for c in range(1, size) if voxels[c] * voxel_mm3 >= min_volume_mm3]
    kept.sort(key=lambda c: (centroid[0][c], centroid[1][c], centroid[2][c]))
    return [
        TriggerPoint3D(
            trp_id=trp_id,
            class_name=classes[int(comp_label[c])],
            label=int(comp_label[c]),
            centroid_mm=(
                float(centroid[2][c]) * col_mm,
                float(centroid[1][c]) * row_mm,
                float(centroid[0][c]) * slice_mm,
            ),
            volume_mm3=float(voxels[c]) * voxel_mm3,
            extent_along_sweep_mm=float(sums.last[c] - sums.first[c] + 1) * slice_mm,
            slices=(int(sums.first[c]), int(sums.last[c])),
            voxel_count=int(voxels[c]),
            stiffness_kpa_mean=float(stiffness_mean[c]),
            stiffness_kpa_max=float(stiffness_max[c]),
            swe_coverage=float(coverage[c]),
            confidence=float(confidence[c]),
            nearest_critical_mm=float(sums.nearest_critical_mm[c]),
        )
        for trp_id, c in enumerate(kept, start=1)
    ]


def _checked_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in spacing_mm)
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"spacing_mm must be three positive numbers (slice, row, column) in mm; got {spacing_mm!r}"
        )
    _, row_mm, col_mm = values
    if abs(row_mm - col_mm) / min(row_mm, col_mm) > IN_PLANE_TOLERANCE:
        raise ValueError(
            f"row and column pixel sizes {row_mm:.6g} and {col_mm:.6g} mm differ by more than "
            f"{IN_PLANE_TOLERANCE:.0%}; tpnet needs square pixels in each slice (the slice spacing may differ)"
        )
    return values


def _kpa_sums(comp: np.ndarray, size: int, kpa_at_voxels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per component: count, sum and max (-inf when none) of its finite SWE values; ``comp`` and
    ``kpa_at_voxels`` list the voxels (component, kPa)."""
    kpa = kpa_at_voxels.astype(np.float64)
    valid = np.isfinite(kpa)
    count = np.bincount(comp[valid], minlength=size)
    total = np.bincount(comp[valid], weights=kpa[valid], minlength=size)
    top = np.full(size, -np.inf)
    np.maximum.at(top, comp[valid], kpa[valid])
    return count, total, top


def _voxels_by_slice(components: np.ndarray) -> dict[int, _SliceVoxels]:
    """Slice -> its component voxels, for the slices that have any."""
    by_slice = {}
    width = components.shape[2]
    for z in np.flatnonzero(components.any(axis=(1, 2))):
        flat = components[z].ravel()
        where = np.flatnonzero(flat)
        by_slice[int(z)] = _SliceVoxels.of(where, flat[where], width)
    return by_slice


@dataclass(frozen=True)
class _SliceVoxels:
    """The component voxels of one slice, grouped for the nearest-critical search: flat pixel indices sorted
    by component, so that a per-component minimum over them is one reduceat."""

    where: np.ndarray  # flat pixel indices, grouped by component
    comps: np.ndarray  # the slice's distinct components, ascending
    starts: np.ndarray  # where each component's group begins in ``where``
    box: tuple[int, int, int, int]  # bounding box of the voxels, as _bounding_box

    @classmethod
    def of(cls, where: np.ndarray, comp: np.ndarray, width: int) -> _SliceVoxels:
        """From the flat indices (slices ``width`` pixels wide) of a slice's voxels and their components."""
        order = np.argsort(comp, kind="stable")
        comps, starts = np.unique(comp[order], return_index=True)
        rows, columns = np.divmod(where, width)
        box = (int(rows.min()), int(rows.max()), int(columns.min()), int(columns.max()))
        return cls(where[order], comps, starts, box)


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(first row, last row, first column, last column) of a non-empty (H, W) mask, inclusive."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(columns[0]), int(columns[-1])


# _EXACT_SQUARES: OpenCV's precise transform is exact to about one float32 step but not reproducible in that
# last bit (the same mask gave a different map in 150 of 300 calls, multi- or single-threaded), which would make
# the distances, and whether two runs or the streaming and whole-volume finders agree, a matter of chance. The
# squared distance between pixel centres is a whole number (dy^2 + dx^2), so D^2 rounded to the nearest whole
# number is exact while D times its error stays under 0.5 px^2: one float32 step at D = 1400 px gives 0.09.
# Lower bounds of distances are shrunk by this share before they rule a pair of slices out, so that float32
# rounding in OpenCV's distances can never make a skipped pair the nearest: skipping stays exact.
_BOUND_MARGIN = 1e-6


def _nearest_critical_mm(
    trp_slices: Mapping[int, _SliceVoxels],
    size: int,
    critical_boxes: Mapping[int, tuple[int, int, int, int]],
    critical_mask: Callable[[int], np.ndarray],
    spacing_mm: tuple[float, float],
) -> np.ndarray:
    """Per component, the smallest distance (mm) from one of its voxel centres to a critical voxel centre; NaN
    when the volume has no critical voxel.

    trp_slices: slice -> its component voxels (components 1..size-1); critical_boxes: slice -> bounding box
    of its critical voxels, for the slices that have any; critical_mask(z): slice z's (H, W) bool critical
    mask, asked for only when that slice is searched (tpnet.core.volume_stream unpacks it then); spacing_mm:
    (slice spacing, pixel size).

    Exact for a stack of parallel planes: the squared distance from voxel p to the critical voxels of slice z'
    is ((z_p - z') slice_mm)^2 + (pixel_mm * D_z'(p))^2, D_z' the exact 2-D transform of slice z' (pixels), and
    the nearest critical voxel is the smallest of these over the slices z'. A pair (TrP slice, critical slice)
    is skipped when a lower bound of its terms (slice distance and the gap between the two slices' bounding
    boxes) reaches the best distance found so far for each component of the TrP slice, and a critical slice's
    transform is computed only when a pair with it is not skipped: the result is the minimum of the same terms
    whatever is skipped. Each TrP slice is searched first against its critical slice of smallest bound, which
    makes the skipping bite early: along a vessel that runs through the sweep, a TrP slice's own slice is
    usually the nearest, and the bounds alone rule out the others. Memory: O(TrP slices + critical slices)."""
    if not trp_slices or not critical_boxes:
        return np.full(size, np.nan)
    slice_mm, pixel_mm = spacing_mm
    rows_z, columns_z = sorted(trp_slices), sorted(critical_boxes)
    trp_boxes = np.array([trp_slices[z].box for z in rows_z], np.float64)
    best_sq = np.full(size, np.inf)

    def lower_sq(column: int) -> np.ndarray:
        """Bound of every TrP slice against critical slice ``column``, mm^2."""
        z_critical, box = columns_z[column], critical_boxes[columns_z[column]]
        gap_rows = np.maximum(0.0, np.maximum(box[0] - trp_boxes[:, 1], trp_boxes[:, 0] - box[1]))
        gap_columns = np.maximum(0.0, np.maximum(box[2] - trp_boxes[:, 3], trp_boxes[:, 2] - box[3]))
        dz_mm = (np.asarray(rows_z, np.float64) - z_critical) * slice_mm
        return (dz_mm**2 + (gap_rows**2 + gap_columns**2) * pixel_mm**2) * (1.0 - _BOUND_MARGIN)

    def search(column: int, rows: np.ndarray, bound_sq: np.ndarray) -> None:
        z_critical = columns_z[column]
        distance_px = None
        for row in rows.tolist():
            voxels = trp_slices[rows_z[row]]
            if bound_sq[row] >= best_sq[voxels.comps].max():  # cannot bring any of them closer
                continue
            if distance_px is None:
                distance_px = distance_map_px(critical_mask(z_critical)).ravel()
            dz_sq = ((rows_z[row] - z_critical) * slice_mm) ** 2
            nearest_px = np.minimum.reduceat(distance_px[voxels.where], voxels.starts).astype(np.float64)
            nearest_sq_px = np.rint(nearest_px**2)  # exact: see _EXACT_SQUARES
            best_sq[voxels.comps] = np.minimum(best_sq[voxels.comps], dz_sq + nearest_sq_px * pixel_mm**2)

    # The most promising critical slice of each TrP slice, and each critical slice's best bound (its order).
    promising, promising_sq = np.zeros(len(rows_z), np.int64), np.full(len(rows_z), np.inf)
    column_order_key = np.empty(len(columns_z))
    for column in range(len(columns_z)):
        bound_sq = lower_sq(column)
        better = bound_sq < promising_sq
        promising[better], promising_sq[better] = column, bound_sq[better]
        column_order_key[column] = bound_sq.min()
    for column in np.unique(promising).tolist():
        search(column, np.flatnonzero(promising == column), lower_sq(column))
    # Then every other pair that may still bring a component closer, the most promising critical slices first.
    comps_all = np.concatenate([trp_slices[z].comps for z in rows_z])
    starts_all = np.cumsum([0] + [len(trp_slices[z].comps) for z in rows_z[:-1]])
    for column in np.argsort(column_order_key, kind="stable").tolist():
        bound_sq = lower_sq(column)
        worst_sq = np.maximum.reduceat(best_sq[comps_all], starts_all)
        rows = np.flatnonzero((bound_sq < worst_sq) & (promising != column))
        if len(rows):
            search(column, rows, bound_sq)
    return np.where(np.isfinite(best_sq), np.sqrt(best_sq), np.nan)


def sweep_slice_params(params: PostprocessParams) -> PostprocessParams:
    """The per-slice post-processing of a sweep's slices: the frame's, without its area cut. A nodule's
    first and last slices cut its pole, a few pixels across: a 2-D area threshold there would shorten every
    trigger point by a slice at each end and take its tips off the volume. In 3-D, ``min_volume_mm3`` drops
    the specks the 2-D cut is for."""
    return dataclasses.replace(params, min_area_mm2=0.0)
