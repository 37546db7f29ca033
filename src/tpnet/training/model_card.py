"""The model card a trained model carries (issue #14; docs/confidence.md, "Model card"): what it was trained on,
what it expects, and what it was validated to do, in the checkpoint's metadata and so in every exported file.

tpnet-infer compares each input with ``input_reference`` (``tpnet.core.input_check``) and prints the figures in
the report's "what this model can and cannot tell" box and summary.json.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tpnet.core.input_check import input_reference
from tpnet.data.datamodule import DataSetup, frame_dataset, frame_loader, iter_frames
from tpnet.evaluation.metrics import json_safe

# The figures a reader needs (names of metrics.json), with their subject-bootstrap 95 % CIs.
FIGURES: tuple[str, ...] = (
    "det_f1", "det_precision", "det_recall", "loc_err_mm", "class_acc", "class_balanced_acc", "active_latent_balanced_acc",
    "fp_per_frame",
    "detection_ece", "detection_ece_raw", "detection_brier", "pixel_ece", "pixel_ece_raw", "trp_pixel_ece",
    "frame_auc", "frame_ece",
)  # fmt: skip
# Training frames summarised for the input check: evenly spread over the split, enough for stable quantiles.
REFERENCE_FRAMES = 64


def figures(report: dict | None) -> dict[str, Any] | None:
    """``{metric: {"value", "ci95"}, "n_frames", "n_subjects"}`` from a metrics.json-style report."""
    if not report:
        return None
    ci = report.get("ci95", {})
    out: dict[str, Any] = {
        key: {"value": report[key], "ci95": list(ci.get(key, [math.nan, math.nan]))}
        for key in FIGURES
        if key in report
    }
    out["n_frames"] = int(report.get("n_frames", 0))
    out["n_subjects"] = int(report.get("n_subjects", 0))
    out["n_gt_trp"] = int(report.get("n_gt_trp", 0))
    return out


def training_input_reference(data: DataSetup, workers: int = 0) -> dict:
    """``input_reference`` of up to ``REFERENCE_FRAMES`` whole training frames, encoded at the model's spacing
    exactly as evaluation and tpnet-infer feed the network."""
    dataset = frame_dataset(data, "train")
    n = len(dataset)
    if n == 0:
        return {}
    indices = sorted({int(i) for i in np.linspace(0, n - 1, min(n, REFERENCE_FRAMES))})
    frames = iter_frames(frame_loader(dataset, indices, workers))
    return input_reference((f["image"].numpy() for f in frames), data.encoding.channels)


def build_model_card(
    data: DataSetup,
    validation: dict | None,
    test: dict | None,
    active_separable: bool,
    reference: dict,
) -> dict[str, Any]:
    spec = data.spec
    card = {
        "training_data": {
            "name": spec.name,
            "fingerprint": data.fingerprint,
            "synthetic": bool(getattr(spec, "synthetic", False)),
            "subjects": {split: len({row.subject_id for row in rows}) for split, rows in data.splits.items()},
            "frames": {split: len(rows) for split, rows in data.splits.items()},
        },
        "channels": list(data.encoding.channels),
        "spacing_mm": float(data.spacing_mm),
        "validation": figures(validation),
        "test": figures(test),
        "active_separable": bool(active_separable),
        "input_reference": reference,
    }
    return json_safe(card)
