"""A promise (issue #16): a class's role is declared, not guessed from its name, and every tool reads the roles.

A dataset whose trigger-point class is called ``nodule`` (no ``_trp`` suffix) must be treated as having trigger
points by the label checks and the monitor choice at the start of training, the calibration of post-processing,
the validation overlays, cross-validation's default metric, the plan's explanation and the report's legend;
without the roles (the naming rule) each of them says there are none, so every assertion here can fail.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from tpnet.core.contract import parse_roles
from tpnet.core.postprocess import PostprocessParams

CLASSES = ("background", "nodule", "artery")
ROLES = parse_roles({"trp": ["nodule"], "critical": ["artery"]}, CLASSES, "test")


def _labels() -> np.ndarray:
    labels = np.zeros((48, 48), np.uint8)
    labels[12:24, 12:24] = 1
    labels[30:38, 30:38] = 2
    return labels


def test_label_checks_and_the_monitor_read_the_roles():
    from tpnet.training.label_set import SplitLabels, choose_monitor, has_trigger_points, label_set_warnings

    summary = {split: SplitLabels(n_frames=4, labels={0, 1, 2}) for split in ("train", "val", "test")}
    assert not any("trigger" in w for w in label_set_warnings(summary, CLASSES, 0.2, ROLES))
    assert any("no trigger-point class" in w for w in label_set_warnings(summary, CLASSES, 0.2))
    assert choose_monitor("val/det_f1", "max", summary, CLASSES, ROLES)[0] == "val/det_f1"
    assert choose_monitor("val/det_f1", "max", summary, CLASSES)[0] == "val/dice_mean"
    assert has_trigger_points(summary["val"], CLASSES, ROLES) and not has_trigger_points(
        summary["val"], CLASSES
    )


def test_calibration_finds_the_declared_trigger_points():
    from tpnet.training.calibrate import choose_postprocess, predict_validation

    class Perfect(torch.nn.Module):  # predicts the label map itself: the one true TrP is found at any setting
        size_multiple = 16

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            one_hot = torch.nn.functional.one_hot(torch.from_numpy(_labels()).long(), 3).permute(2, 0, 1)
            return (one_hot.float() * 20.0)[None].expand(image.shape[0], -1, -1, -1)

    frame = {
        "image": torch.zeros(3, 48, 48),
        "mask": torch.from_numpy(_labels()),
        "spacing_mm": 0.2,
        "elasto_kpa": None,
        "sample_id": "f0",
        "subject_id": "s0",
    }
    cpu = torch.device("cpu")
    with_roles = predict_validation(Perfect(), [frame], CLASSES, cpu, None, roles=ROLES)
    assert [p.class_name for p in with_roles[0].gt_points] == ["nodule"]
    assert predict_validation(Perfect(), [frame], CLASSES, cpu, None)[0].gt_points == []
    _, grid = choose_postprocess(with_roles, CLASSES, PostprocessParams(), [0.5], [0.5], roles=ROLES)
    assert grid[0]["det_f1"] == 1.0


def test_validation_overlays_outline_the_declared_trigger_points(tmp_path):
    from tpnet.core.postprocess import find_trigger_points
    from tpnet.training.overlays import write_overlays

    labels = _labels()
    frame = {
        "image": torch.full((3, 48, 48), 0.3),
        "mask": torch.from_numpy(labels),
        "spacing_mm": 0.2,
        "elasto_kpa": None,
        "sample_id": "f0",
        "pred": labels,
        "points": find_trigger_points(labels, 0.2, CLASSES, roles=ROLES),
    }
    (with_roles,) = write_overlays([frame], CLASSES, tmp_path / "roles", ROLES)
    (by_name,) = write_overlays([frame], CLASSES, tmp_path / "names")  # the same frame and predicted points
    # the ground truth's TrP outline and marker, and the legend's "indeterminate", appear with the roles only
    assert with_roles.read_bytes() != by_name.read_bytes()


def test_cross_validation_and_the_plan_know_the_dataset_has_trigger_points():
    from tpnet.evaluation.cross_validation import default_metric
    from tpnet.planning.plan import _has_trp

    assert default_metric(CLASSES, ROLES) == "det_f1" and default_metric(CLASSES) == "dice_mean"
    from tpnet.planning.fingerprint import Fingerprint

    fingerprint = Fingerprint("crafted", CLASSES, (), {}, ROLES.trp)
    assert _has_trp(fingerprint) and not _has_trp(dataclasses.replace(fingerprint, trp_classes=None))


def test_the_report_legend_offers_indeterminate_for_declared_trigger_points():
    from tpnet.inference.report import _legend

    assert any("ndeterminate" in entry["label"] for entry in _legend(CLASSES, ["nodule"]))
    assert not any("ndeterminate" in entry["label"] for entry in _legend(CLASSES, []))
