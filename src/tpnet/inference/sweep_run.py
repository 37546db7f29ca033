"""tpnet-infer's sweeps (issue #17): the slices of a 3-D file come out of the predictor one by one, in order,
like frames; ``SweepAssembler`` joins each sweep's slices as they arrive into

- ``masks/<sweep>.nii.gz``: the predicted label volume on the input's grid (streamed slice by slice),
- 3-D trigger points (``tpnet.core.volume_stream``: 26-connected components across slices, volume in mm^3,
  extent along the sweep, stiffness, mean TrP probability, nearest nerve or vessel in 3-D), and
- the sweep's report section with its pictures (``tpnet.inference.sweep_views``, ``sweep_section``),

holding only per-slice bookkeeping, thumbnails and sparse TrP voxels, never the volume: memory stays bounded
for a long sweep. When the last slice has passed, ``add`` returns the sweep's ``detections_3d.csv`` rows and
section; the run writes them and only then journals the sweep's slices, so an interrupted sweep is analysed
again from its first slice on ``--resume`` (its 3-D objects need every slice) and a finished one never twice.

A slice that could not be read or predicted stands in as an empty slice (no finding there) and the sweep's
section says which: a 3-D trigger point across it may be split in two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tpnet.core.confidence import Calibration
from tpnet.core.contract import ClassRoles, trp_class_indices
from tpnet.core.io import write_png
from tpnet.core.volume_postprocess import DEFAULT_MIN_VOLUME_MM3, TriggerPoint3D
from tpnet.core.volume_stream import NiftiLabelWriter, StreamingTriggerPoints3D
from tpnet.inference.inputs import FrameInput
from tpnet.inference.sweep_inputs import load_sweep_slice
from tpnet.inference.sweep_section import SweepPicture, TrpPictures, sweep_section_html
from tpnet.inference.sweep_views import (
    SweepThumbnails,
    mid_slice_index,
    render_along_sweep,
    render_mid_slice,
    render_projection,
    shown_classes,
    sweep_px_per_mm,
)

DETECTIONS_3D_COLUMNS = (
    "sweep", "name", "subject_id", "trp_id", "class", "x_mm", "y_mm", "z_mm", "volume_mm3",
    "extent_along_sweep_mm", "first_slice", "last_slice", "stiffness_kpa_mean", "stiffness_kpa_max",
    "swe_coverage", "mean_trp_probability", "nearest_critical_mm", "slices_missing",
)  # fmt: skip
DETECTIONS_3D_NAME = "detections_3d.csv"


@dataclass
class SweepResult:
    """A finished sweep: its detections_3d.csv rows, report section and TrP counts per shown class."""

    rows: list[list[str]]
    section: str
    trp_counts: dict[str, int]
    trigger_points: list[TriggerPoint3D] = field(default_factory=list)


@dataclass
class _Open:
    first: FrameInput
    spacing_mm: tuple[float, float, float]
    finder: StreamingTriggerPoints3D
    mask: NiftiLabelWriter
    thumbs: SweepThumbnails
    missing: list[int] = field(default_factory=list)
    with_elasto: bool = False  # the sweep has an elastography volume (the finder takes kPa for all or none)


class SweepAssembler:
    def __init__(
        self,
        output_dir: Path,
        classes: tuple[str, ...] | list[str],
        roles: ClassRoles | None,
        calibration: Calibration | None = None,
        min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
        pictures: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.classes, self.roles = tuple(classes), roles
        self.calibration = calibration
        self.min_volume_mm3 = float(min_volume_mm3)
        self.pictures = pictures
        self._trp = trp_class_indices(self.classes, roles)
        self._open: _Open | None = None

    def add(
        self,
        frame: FrameInput,
        label_map: np.ndarray | None,
        bmode: np.ndarray | None = None,
        elasto_kpa: np.ndarray | None = None,
        probs: np.ndarray | None = None,
    ) -> SweepResult | None:
        """Slice ``frame.slice_index`` of its sweep: its (H, W) predicted labels, B-mode, kPa and (K, H, W)
        probabilities at the slice's own size; ``label_map`` None = the slice failed (an empty slice stands in).
        ``probs`` is required with a label map (the TrPs' mean probability and the pictures read it).
        Slices must come in order, 0 first; returns the sweep's result at its last slice, else None."""
        if frame.kind != "sweep" or frame.sweep is None or frame.slice_count is None:
            raise ValueError(f"{frame.name}: not a slice of a sweep")
        current = self._open
        if current is not None and current.first.sweep != frame.sweep:
            self.abort()  # the previous sweep ended early (the run stopped): its files are not published
            current = None
        if current is None:
            if frame.slice_index != 0:
                raise ValueError(f"{frame.name}: a sweep must start at slice 0, not {frame.slice_index}")
            current = self._open = self._start(frame)
        expected = current.finder.slices
        if frame.slice_index != expected:
            raise ValueError(
                f"{frame.name}: slice {frame.slice_index} arrives where slice {expected} was due"
            )
        height, width = current.thumbs.shape_hw
        if label_map is None or probs is None:
            current.missing.append(int(frame.slice_index))
            label_map = np.zeros((height, width), np.uint8)
            bmode = np.zeros((height, width), np.float32)
            probs = _background_probs(len(self.classes), height, width)
            elasto_kpa = None
        if current.with_elasto and elasto_kpa is None:
            elasto_kpa = np.full((height, width), np.nan, np.float32)  # no SWE signal in this slice
        labels = np.asarray(label_map, np.uint8)
        current.finder.add_slice(labels, elasto_kpa, probs)
        current.mask.write_slice(labels)
        trp_prob = probs[self._trp].sum(axis=0).astype(np.float32)
        current.thumbs.add_slice(np.asarray(bmode, np.float32), labels, trp_prob)
        if frame.slice_index == frame.slice_count - 1:
            return self._finish()
        return None

    def abort(self) -> None:
        """Drop the sweep in hand (the run stopped mid-sweep): its partial mask file is removed."""
        if self._open is not None:
            self._open.mask.abort()
            self._open = None

    def _start(self, frame: FrameInput) -> _Open:
        height, width = frame.shape if frame.shape is not None else (0, 0)
        spacing = (float(frame.slice_spacing_mm), float(frame.spacing_mm), float(frame.spacing_mm))
        mask_path = self.output_dir / "masks" / f"{frame.sweep}.nii.gz"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        return _Open(
            first=frame,
            spacing_mm=spacing,
            finder=StreamingTriggerPoints3D(self.classes, spacing, self.roles, self.min_volume_mm3),
            mask=NiftiLabelWriter(mask_path, height, width, spacing),
            thumbs=SweepThumbnails((height, width), class_count=len(self.classes)),
            with_elasto=frame.elasto_path is not None,
        )

    def _finish(self) -> SweepResult:
        current, self._open = self._open, None
        assert current is not None
        points = current.finder.finish()
        current.mask.close()
        frame, spacing = current.first, current.spacing_mm
        shown = shown_classes(points, self.calibration)  # active / latent only where the model is validated
        counts: dict[str, int] = {}
        for p in points:
            counts[shown[p.trp_id]] = counts.get(shown[p.trp_id], 0) + 1
        shape = (current.finder.slices, *current.thumbs.shape_hw)
        warnings = []
        if current.missing:
            warnings.append(
                f"{len(current.missing)} slice(s) could not be analysed ({_listed(current.missing)}); they count as "
                "empty, so a trigger point across them may be split in two or missed"
            )
        projection, trp_pictures = None, {}
        if self.pictures:
            projection, trp_pictures = self._pictures(current, points, shown, shape)
        section = sweep_section_html(
            frame.name.rsplit(" slice ", 1)[0], frame.sweep, points, shape, spacing,
            projection=projection, trp_pictures=trp_pictures, class_shown=shown,
            elasto=current.with_elasto, subject_id=frame.subject_id, warnings=warnings,
        )  # fmt: skip
        rows = [_row(frame, p, shown[p.trp_id], len(current.missing)) for p in points]
        return SweepResult(rows, section, counts, points)

    def _pictures(
        self, current: _Open, points: list[TriggerPoint3D], shown: dict[int, str], shape: tuple[int, int, int]
    ) -> tuple[SweepPicture, dict[int, TrpPictures]]:
        frame, spacing = current.first, current.spacing_mm
        scale = sweep_px_per_mm(shape, spacing)
        folder = self.output_dir / "overlays"
        folder.mkdir(parents=True, exist_ok=True)

        def save(name: str, image: np.ndarray) -> SweepPicture:
            write_png(folder / name, image)
            return SweepPicture(f"overlays/{name}", int(image.shape[1]))

        common = {"class_shown": shown, "roles": self.roles, "px_per_mm": scale}
        projection = save(
            f"{frame.sweep}_projection.png",
            render_projection(current.thumbs, points, self.classes, spacing, **common),
        )
        pictures: dict[int, TrpPictures] = {}
        mask_volume = None
        for p in points:
            k = mid_slice_index(p, spacing)
            if mask_volume is None:
                from tpnet.core.volume_io import open_volume

                mask_volume = open_volume(current.mask.path, values="mask")
            bmode_slice, _ = load_sweep_slice(_slice_frame(frame, k))
            mid = render_mid_slice(
                bmode_slice, mask_volume.slice(k), p, self.classes, spacing, slice_index=k,
                slice_count=shape[0], **common,
            )  # fmt: skip
            along = render_along_sweep(current.thumbs, p, self.classes, spacing, **common)
            pictures[p.trp_id] = TrpPictures(
                save(f"{frame.sweep}_trp{p.trp_id}_slice.png", mid),
                save(f"{frame.sweep}_trp{p.trp_id}_along.png", along),
            )
        return projection, pictures


def _slice_frame(frame: FrameInput, z: int) -> FrameInput:
    from dataclasses import replace

    return replace(frame, slice_index=z)


def _background_probs(classes: int, height: int, width: int) -> np.ndarray:
    probs = np.zeros((classes, height, width), np.float32)
    probs[0] = 1.0
    return probs


def _listed(indices: list[int], shown: int = 5) -> str:
    more = len(indices) - shown
    text = ", ".join(str(i) for i in indices[:shown])
    return f"slices {text}" + (f" and {more} more" if more > 0 else "")


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else ""


def _row(frame: FrameInput, p: TriggerPoint3D, shown: str, missing: int) -> list[str]:
    x, y, z = p.centroid_mm
    return [
        frame.sweep or "", frame.name.rsplit(" slice ", 1)[0], frame.subject_id or "", str(p.trp_id), shown,
        _fmt(x, 2), _fmt(y, 2), _fmt(z, 2), _fmt(p.volume_mm3, 2), _fmt(p.extent_along_sweep_mm, 2),
        str(p.slices[0]), str(p.slices[1]), _fmt(p.stiffness_kpa_mean, 1), _fmt(p.stiffness_kpa_max, 1),
        _fmt(p.swe_coverage, 3), _fmt(p.confidence, 3), _fmt(p.nearest_critical_mm, 2), str(missing),
    ]  # fmt: skip
