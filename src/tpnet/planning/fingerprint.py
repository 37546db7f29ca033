"""A dataset's fingerprint (nnU-Net's word): what the plan is derived from, measured once over the frames.

Per labelled frame: pixel size, frame size in pixels and mm, every labelled structure (connected component of
each non-background class: area, minor and major extent in mm), B-mode grey-level statistics over the imaged
region, and whether SWE was acquired. Frames are read at their own pixel size (no resampling), in threads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from tpnet.core.contract import ContractError, DatasetSpec, ManifestRow, resolve_path
from tpnet.core.contract_frames import fit_to_bmode, read_row_bmode
from tpnet.core.encoding import IMAGED_GREY_MIN
from tpnet.core.io import read_mask
from tpnet.data.dataset import frame_spacing_mm, load_frame

# Foreground grey levels kept per frame for the dataset's foreground statistics (a fixed, even subsample).
_FOREGROUND_SAMPLE_PER_FRAME = 4096


class FingerprintError(ValueError):
    """A frame that cannot be fingerprinted; the message names the sample and the file."""


@dataclass(frozen=True)
class Structure:
    """One labelled structure: a connected component of one class's pixels."""

    class_name: str
    area_mm2: float
    minor_mm: float  # thickness: twice the largest inscribed radius (a thin band's width)
    major_mm: float  # length: 4 sqrt(largest second moment), an ellipse's long axis


@dataclass(frozen=True)
class FrameFingerprint:
    sample_id: str
    subject_id: str
    spacing_mm: float
    shape_px: tuple[int, int]  # (H, W) as the network sees it (a DICOM frame: its image region)
    has_swe: bool
    bmode_mean: float  # over the imaged region (grey > IMAGED_GREY_MIN), B-mode in [0, 1]
    bmode_std: float
    bmode_p005: float  # 0.5th percentile
    bmode_p995: float  # 99.5th percentile
    imaged_fraction: float  # share of the frame's pixels inside the imaged region
    structures: tuple[Structure, ...]

    @property
    def shape_mm(self) -> tuple[float, float]:
        return self.shape_px[0] * self.spacing_mm, self.shape_px[1] * self.spacing_mm


@dataclass(frozen=True)
class Fingerprint:
    """Every fingerprinted frame, plus the B-mode statistics of the labelled (foreground) pixels."""

    dataset_name: str
    classes: tuple[str, ...]
    frames: tuple[FrameFingerprint, ...]
    foreground_bmode: dict[str, float | None] = field(
        default_factory=dict
    )  # mean, std, p005, p995 (None: none)
    # The trigger-point classes by the dataset's roles (None: the naming rule, for a fingerprint built by hand).
    trp_classes: tuple[str, ...] | None = None

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def n_subjects(self) -> int:
        return len({f.subject_id for f in self.frames})

    def spacings_mm(self) -> np.ndarray:
        return np.array([f.spacing_mm for f in self.frames], dtype=np.float64)

    def structures(self, classes: Sequence[str] | None = None) -> list[Structure]:
        """Every structure of the given classes (default: all non-background classes)."""
        wanted = set(self.classes[1:] if classes is None else classes)
        return [s for f in self.frames for s in f.structures if s.class_name in wanted]

    def summary(self) -> dict[str, Any]:
        """The figures the plan reads, for plan.json and the table (medians and percentiles over frames)."""
        spacing = self.spacings_mm()
        heights = np.array([f.shape_mm[0] for f in self.frames])
        widths = np.array([f.shape_mm[1] for f in self.frames])
        per_class: dict[str, dict[str, float | int]] = {}
        for name in self.classes[1:]:
            found = self.structures([name])
            per_class[name] = {"n_structures": len(found), **_extent_percentiles(found)}
        return {
            "dataset_name": self.dataset_name,
            "classes": list(self.classes),
            "n_frames": self.n_frames,
            "n_subjects": self.n_subjects,
            "spacing_mm": {
                "min": _f(spacing.min()),
                "median": _f(np.median(spacing)),
                "max": _f(spacing.max()),
            },
            "frame_mm": {"median_height": _f(np.median(heights)), "median_width": _f(np.median(widths))},
            "structures": {
                "all": {"n_structures": len(self.structures()), **_extent_percentiles(self.structures())},
                **per_class,
            },  # fmt: skip
            "swe_fraction": _f(np.mean([f.has_swe for f in self.frames])),
            "bmode_imaged": {
                "median_mean": _f(np.median([f.bmode_mean for f in self.frames])),
                "median_std": _f(np.median([f.bmode_std for f in self.frames])),
                "p005": _f(np.median([f.bmode_p005 for f in self.frames])),
                "p995": _f(np.median([f.bmode_p995 for f in self.frames])),
            },
            "bmode_foreground": dict(self.foreground_bmode),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_fingerprint(spec: DatasetSpec, rows: Sequence[ManifestRow], workers: int = 4) -> Fingerprint:
    """Fingerprint the labelled ``rows`` (training calls it with every non-test row: one plan for every fold).
    ``FingerprintError`` names the first frame that cannot be read."""
    labelled = [r for r in rows if r.mask]
    if not labelled:
        raise FingerprintError(f"{spec.root}: no labelled frame (no row with a mask) to plan from")
    with ThreadPoolExecutor(max(1, int(workers))) as pool:
        results = list(pool.map(lambda row: _fingerprint_row(spec, row), labelled))
    frames = tuple(frame for frame, _ in results)
    foreground = np.concatenate([values for _, values in results]) if results else np.zeros(0, np.float32)
    return Fingerprint(
        spec.name, tuple(spec.classes), frames, _grey_stats(foreground), tuple(spec.class_roles.trp)
    )


def _fingerprint_row(spec: DatasetSpec, row: ManifestRow) -> tuple[FrameFingerprint, np.ndarray]:
    try:
        if row.slice_index is not None:  # a slice of a sweep (contract v2): read at its own pixel size
            spacing = frame_spacing_mm(spec, row)
            slice_frame = load_frame(spec, row, spacing)
            grey, mask = slice_frame.bmode, slice_frame.mask
        else:
            bmode = read_row_bmode(resolve_path(spec.root, row.bmode), row.frame)
            mask_path = resolve_path(spec.root, row.mask)  # type: ignore[arg-type]
            mask = fit_to_bmode(read_mask(mask_path), f"mask {row.mask}", bmode)
            spacing = frame_spacing_mm(spec, row, bmode.header)
            grey = bmode.grey
    except (ContractError, OSError, ValueError) as exc:  # FrameReadError is a ValueError too
        raise FingerprintError(f"{row.sample_id}: {exc}") from None
    imaged = grey > IMAGED_GREY_MIN
    values = grey[imaged] if imaged.any() else grey.ravel()
    p005, p995 = np.percentile(values, [0.5, 99.5])
    structures = tuple(
        s
        for index, name in enumerate(spec.classes)
        if index > 0
        for s in _components(mask == index, name, spacing)
    )
    foreground = grey[mask > 0]
    if foreground.size > _FOREGROUND_SAMPLE_PER_FRAME:
        foreground = foreground[:: math.ceil(foreground.size / _FOREGROUND_SAMPLE_PER_FRAME)]
    frame = FrameFingerprint(
        sample_id=row.sample_id,
        subject_id=row.subject_id,
        spacing_mm=float(spacing),
        shape_px=(int(grey.shape[0]), int(grey.shape[1])),
        has_swe=bool(row.elasto),
        bmode_mean=float(values.mean()),
        bmode_std=float(values.std()),
        bmode_p005=float(p005),
        bmode_p995=float(p995),
        imaged_fraction=float(imaged.mean()),
        structures=structures,
    )
    return frame, foreground.astype(np.float32, copy=False)


def _components(binary: np.ndarray, class_name: str, spacing_mm: float) -> list[Structure]:
    """Connected components (8-connected) of one class: area, thickness and length, in mm."""
    if not binary.any():
        return []
    binary = binary.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    # Thickness from the distance transform (robust for curved bands, where second moments would measure the
    # bend): the largest distance r to a background pixel of a band w px wide is (w + 1) / 2 for odd w and w / 2
    # for even w, so w = 2 r - 0.5 within half a pixel.
    padded = np.pad(binary, 1)  # the frame's edge does not end a structure's thickness
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs]
    max_radius = np.zeros(n, np.float64)
    np.maximum.at(max_radius, ids, distance[ys, xs])
    count = np.bincount(ids, minlength=n).astype(np.float64)
    sum_x, sum_y = np.bincount(ids, xs, n), np.bincount(ids, ys, n)
    sum_xx, sum_yy = (
        np.bincount(ids, xs * xs.astype(np.float64), n),
        np.bincount(ids, ys * ys.astype(np.float64), n),
    )
    sum_xy = np.bincount(ids, xs * ys.astype(np.float64), n)
    out = []
    for k in range(1, n):
        c = count[k]
        mx, my = sum_x[k] / c, sum_y[k] / c
        # Second moments of the pixel cloud (+1/12: a pixel is a unit square, not a point).
        vxx, vyy = sum_xx[k] / c - mx * mx + 1 / 12, sum_yy[k] / c - my * my + 1 / 12
        vxy = sum_xy[k] / c - mx * my
        largest = (vxx + vyy) / 2 + math.sqrt(((vxx - vyy) / 2) ** 2 + vxy * vxy)
        minor_px = max(1.0, 2.0 * float(max_radius[k]) - 0.5)
        major_px = max(4.0 * math.sqrt(largest), minor_px)
        out.append(
            Structure(
                class_name=class_name,
                area_mm2=float(stats[k, cv2.CC_STAT_AREA]) * spacing_mm**2,
                minor_mm=minor_px * spacing_mm,
                major_mm=major_px * spacing_mm,
            )
        )
    return out


def _extent_percentiles(structures: Sequence[Structure]) -> dict[str, float | None]:
    """Structure-size percentiles; None (JSON null) where there is no structure."""
    if not structures:
        return {"minor_mm_p10": None, "minor_mm_median": None, "major_mm_p90": None, "area_mm2_median": None}
    minor = np.array([s.minor_mm for s in structures])
    return {
        "minor_mm_p10": _f(np.percentile(minor, 10)),
        "minor_mm_median": _f(np.median(minor)),
        "major_mm_p90": _f(np.percentile([s.major_mm for s in structures], 90)),
        "area_mm2_median": _f(np.median([s.area_mm2 for s in structures])),
    }


def _grey_stats(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"mean": None, "std": None, "p005": None, "p995": None}
    p005, p995 = np.percentile(values, [0.5, 99.5])
    return {"mean": _f(values.mean()), "std": _f(values.std()), "p005": _f(p005), "p995": _f(p995)}


def _f(value: Any) -> float:
    return round(float(value), 6)
