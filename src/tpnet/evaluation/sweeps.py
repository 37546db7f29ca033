"""3-D scoring of sweeps during evaluation (issue #17): the slices of a volume row are predicted one by one as
frames (and scored per slice by the 2-D metrics, for comparison); ``SweepScorer`` stacks each sweep's predicted
and true label slices as they arrive and, when the sweep's last slice has passed, finds the 3-D trigger points
of both (``tpnet.core.volume_postprocess``) and scores them (``tpnet.evaluation.metrics_3d``).

One sweep is held at a time (uint8 labels, float32 kPa: 6 bytes a voxel), so memory follows the longest sweep
of the split, not the split. The slices of a sweep must arrive in order and together, as the split's frame
loader gives them (manifest order, one volume row's slices one after another).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tpnet.core.contract import ClassRoles
from tpnet.core.volume_postprocess import DEFAULT_MIN_VOLUME_MM3, TriggerPoint3D, find_trigger_points_3d
from tpnet.evaluation.metrics_3d import VolumeRecord, evaluation_report_3d, volume_record


@dataclass
class _Sweep:
    volume_id: str
    subject_id: str
    spacing_mm: tuple[float, float, float]
    pred: list[np.ndarray] = field(default_factory=list)
    gt: list[np.ndarray] = field(default_factory=list)
    elasto: list[np.ndarray | None] = field(default_factory=list)


class SweepScorer:
    """Collects the slices of each sweep from the evaluation loop (``add``) and keeps one ``VolumeRecord`` per
    sweep (``records``), plus the trigger points found (``points``: volume_id -> (predicted, true)). Frames that
    are not slices of a sweep (no ``volume_id``) are ignored. Call ``finish`` after the last frame."""

    def __init__(
        self,
        classes: Sequence[str],
        match_mm: float,
        roles: ClassRoles | None = None,
        min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
    ) -> None:
        self.classes, self.roles = tuple(classes), roles
        self.match_mm, self.min_volume_mm3 = float(match_mm), float(min_volume_mm3)
        self.records: list[VolumeRecord] = []
        self.points: dict[str, tuple[list[TriggerPoint3D], list[TriggerPoint3D]]] = {}
        self._current: _Sweep | None = None
        self._done: set[str] = set()

    def add(self, frame: dict, pred_labels: np.ndarray, gt_labels: np.ndarray) -> None:
        """One evaluated frame: its dict (``volume_id``, ``slice_index``, ``slice_spacing_mm``, ``spacing_mm``,
        ``subject_id``, ``elasto_kpa``) and its predicted and true (H, W) label maps."""
        volume_id = frame.get("volume_id")
        if volume_id is None:
            return
        if self._current is not None and self._current.volume_id != volume_id:
            self._flush()
        if self._current is None:
            if volume_id in self._done:
                raise ValueError(
                    f"{frame['sample_id']}: slices of sweep {volume_id} arrive apart from the rest"
                )
            pixel = float(frame["spacing_mm"])
            self._current = _Sweep(
                volume_id, str(frame["subject_id"]), (float(frame["slice_spacing_mm"]), pixel, pixel)
            )
        sweep = self._current
        if int(frame["slice_index"]) != len(sweep.pred):
            raise ValueError(
                f"{frame['sample_id']}: slice {frame['slice_index']} of sweep {volume_id} arrives after "
                f"{len(sweep.pred)} slice(s); slices must come in order"
            )
        sweep.pred.append(np.asarray(pred_labels, np.uint8))
        sweep.gt.append(np.asarray(gt_labels, np.uint8))
        elasto = frame.get("elasto_kpa")
        sweep.elasto.append(None if elasto is None else np.asarray(elasto, np.float32))

    def finish(self) -> list[VolumeRecord]:
        if self._current is not None:
            self._flush()
        return self.records

    def _flush(self) -> None:
        sweep, self._current = self._current, None
        assert sweep is not None
        pred, gt = np.stack(sweep.pred), np.stack(sweep.gt)
        elasto = None
        if all(e is not None for e in sweep.elasto):
            elasto = np.stack(sweep.elasto)  # type: ignore[arg-type]
        found = [
            find_trigger_points_3d(
                labels, sweep.spacing_mm, self.classes, self.roles, elasto, min_volume_mm3=minimum
            )
            # The truth keeps every labelled nodule: the volume threshold is the prediction's speck filter.
            for labels, minimum in ((pred, self.min_volume_mm3), (gt, 0.0))
        ]
        self.points[sweep.volume_id] = (found[0], found[1])
        self.records.append(
            volume_record(
                found[0],
                found[1],
                sample_id=sweep.volume_id,
                subject_id=sweep.subject_id,
                match_mm=self.match_mm,
            )
        )
        self._done.add(sweep.volume_id)


def scorer_for_split(
    rows: Sequence[object],
    classes: Sequence[str],
    match_mm: float,
    roles: ClassRoles | None = None,
    min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
) -> SweepScorer | None:
    """A ``SweepScorer`` when the split's rows hold slices of sweeps, else None (a 2-D split)."""
    if not any(getattr(row, "slice_index", None) is not None for row in rows):
        return None
    return SweepScorer(classes, match_mm, roles, min_volume_mm3)


def sweep_report(scorer: SweepScorer | None, n_boot: int, seed: int) -> dict | None:
    """metrics.json's ``sweeps_3d`` block: 3-D detection figures with subject-bootstrap CIs over the split's
    sweeps (``metrics_3d.evaluation_report_3d``), and the volume threshold they were found with."""
    if scorer is None or not scorer.records:
        return None
    report = evaluation_report_3d(scorer.records, n_boot=n_boot, seed=seed)
    report["min_volume_mm3"] = scorer.min_volume_mm3
    return report
