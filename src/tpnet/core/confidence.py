"""Calibrated confidence (issue #14): what a probability map may claim about each detection and frame.

SHARED by evaluation and inference, numpy + standard library only. PLACEHOLDER wired by the lead: the
calibration helper replaces the bodies; the interface below is what tpnet-infer and tpnet-eval call.

- ``Calibration.from_meta(meta)``: the model's fitted calibration (``meta["calibration"]``); identity for a
  model without one.
- ``Calibration.temperature``: pixel temperature, passed to ``predict_probs(..., temperature=...)``.
- ``Calibration.apply(points)``: in place, sets each TriggerPoint's calibrated ``confidence``, ``p_active`` and
  ``reported_class`` (``active_trp`` / ``latent_trp`` / ``indeterminate``) from its measured evidence.
- ``Calibration.frame_probability(probs, classes, points)``: calibrated P(frame contains a TrP).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from tpnet.core.postprocess import TriggerPoint, frame_trp_score

INDETERMINATE = "indeterminate"


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0
    detection: dict | None = None  # fitted detection model (None: uncalibrated)
    frame: dict | None = None  # fitted frame model
    active: dict | None = None  # fitted p_active model
    active_band: float = 0.1
    active_separable: bool = False  # validated active/latent accuracy: 95 % CI excludes chance
    tta: bool = False  # fitted on TTA (identity + lateral flip) predictions

    @classmethod
    def from_meta(cls, meta: Mapping) -> Calibration:
        data = meta.get("calibration") or {}
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)

    def apply(self, points: Sequence[TriggerPoint]) -> None:
        for p in points:
            if p.raw_confidence != p.raw_confidence:
                p.raw_confidence = p.confidence
            p.reported_class = p.class_name

    def frame_probability(
        self, probs: np.ndarray, classes: Sequence[str], points: Sequence[TriggerPoint]
    ) -> float:
        return frame_trp_score(probs, classes)
