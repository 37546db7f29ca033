from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from tpnet.core.postprocess import PostprocessParams
from tpnet.evaluation.evaluate import evaluate, evaluation_report, save_metrics_json

CLASSES = ("background", "active_trp", "latent_trp", "vessel")
SPACING_MM = 0.1


class OracleNet(nn.Module):
    """Reads the label map hidden in channel 1 (label / 10) and returns confident one-hot logits.
    Refuses sizes that are not a multiple of 8, as a strided network would."""

    size_multiple = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise RuntimeError(f"input {tuple(x.shape)} not padded to a multiple of 8")
        labels = torch.round(x[:, 1] * 10).long()
        return 20.0 * nn.functional.one_hot(labels, len(CLASSES)).permute(0, 3, 1, 2).float()


def make_frame(sample_id: str, subject_id: str, shape: tuple[int, int], nodules: list) -> dict:
    mask = np.zeros(shape, np.uint8)
    mask[-6:, :5] = 3  # a vessel in the corner
    for label, (y0, y1, x0, x1) in nodules:
        mask[y0:y1, x0:x1] = label
    rng = np.random.default_rng(len(sample_id))
    image = np.stack([rng.random(shape, dtype=np.float32), mask.astype(np.float32) / 10.0])
    elasto = np.full(shape, np.nan, np.float32)
    elasto[: shape[0] // 2] = 30.0
    return {
        "image": torch.from_numpy(image),
        "mask": torch.from_numpy(mask).long(),
        "elasto_kpa": elasto,
        "spacing_mm": SPACING_MM,
        "sample_id": sample_id,
        "subject_id": subject_id,
    }


@pytest.fixture
def frames() -> list[dict]:
    return [
        make_frame("a1", "A", (40, 57), [(1, (5, 15, 5, 20)), (2, (20, 30, 30, 45))]),
        make_frame("a2", "A", (33, 47), []),
        make_frame("b1", "B", (64, 48), [(2, (40, 52, 10, 22))]),
    ]


def test_oracle_scores_perfectly(frames):
    net = OracleNet().train()
    params = PostprocessParams(threshold=0.5, min_area_mm2=0.5, match_mm=5.0)
    metrics, records = evaluate(net, frames, CLASSES, OracleNet.size_multiple, params)
    assert net.training  # mode restored for the training loop
    assert [r.sample_id for r in records] == ["a1", "a2", "b1"]
    assert metrics["det_f1"] == 1.0 and metrics["det_f1@3mm"] == 1.0 and metrics["det_f1@10mm"] == 1.0
    assert metrics["dice_mean"] == pytest.approx(1.0)
    for name in CLASSES:
        assert metrics[f"dice/{name}"] == pytest.approx(1.0)
    assert metrics["loc_err_mm"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["class_acc"] == 1.0
    assert metrics["frame_auc"] == 1.0
    assert metrics["fp_per_frame"] == 0.0
    assert (metrics["n_frames"], metrics["n_subjects"], metrics["n_gt_trp"]) == (3, 2, 3)


def test_tta_and_amp_run(frames):
    params = PostprocessParams(min_area_mm2=0.5)
    metrics, _ = evaluate(OracleNet(), frames, CLASSES, 8, params, tta=True, amp_dtype=torch.bfloat16)
    assert metrics["det_f1"] == 1.0


def test_a_wrong_model_is_penalised(frames):
    class AllBackground(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], len(CLASSES), *x.shape[-2:])
            logits[:, 0] = 5.0
            return logits

    metrics, _ = evaluate(AllBackground(), frames, CLASSES, 1, PostprocessParams())
    assert metrics["det_recall"] == 0.0 and metrics["det_f1"] == 0.0
    assert metrics["dice/active_trp"] == 0.0
    assert metrics["frame_auc"] == pytest.approx(0.5)  # every frame scores the same: ties count 1/2


def test_bad_frame_names_the_sample(frames):
    frames[1]["mask"] = torch.zeros(5, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="a2: mask shape"):
        evaluate(OracleNet(), frames, CLASSES, 8, PostprocessParams())


def test_report_and_atomic_json(frames, tmp_path):
    _, records = evaluate(OracleNet(), frames, CLASSES, 8, PostprocessParams(min_area_mm2=0.5))
    report = evaluation_report(records, CLASSES, n_boot=50, seed=0)
    assert set(report["ci95"]) >= {"det_f1", "dice_mean", "frame_auc"}
    lo, hi = report["ci95"]["det_f1"]
    assert lo <= report["det_f1"] <= hi
    path = tmp_path / "out" / "metrics.json"
    save_metrics_json(path, report)
    loaded = json.loads(path.read_text())
    assert loaded["det_f1"] == 1.0
    assert loaded["n_frames"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left behind
    # NaN becomes null (JSON has no NaN).
    save_metrics_json(path, {"loc_err_mm": float("nan"), "ci95": {"x": (np.float32(0.5), math.nan)}})
    assert json.loads(path.read_text()) == {"ci95": {"x": [0.5, None]}, "loc_err_mm": None}


def test_metrics_json_of_frames_without_a_trigger_point_has_no_perfect_f1(tmp_path):
    # Vessels only (two subjects): the oracle is right everywhere, but there is no TrP to find, so detection F1,
    # precision, recall and their intervals are null in metrics.json, each with its reason, not 1.0 [1, 1].
    frames = [make_frame("x1", "X", (40, 40), []), make_frame("y1", "Y", (32, 48), [])]
    _, records = evaluate(OracleNet(), frames, CLASSES, 8, PostprocessParams(min_area_mm2=0.5))
    path = tmp_path / "metrics.json"
    save_metrics_json(path, evaluation_report(records, CLASSES, n_boot=50, seed=0))
    report = json.loads(path.read_text())
    assert report["n_gt_trp"] == 0 and report["dice/vessel"] == pytest.approx(1.0)
    for key in ("det_f1", "det_precision", "det_recall", "det_f1@3mm", "det_f1@10mm"):
        assert report[key] is None, key
        assert report["ci95"][key] == [None, None], key
        assert "no true trigger point" in report["undefined"][key], key
    assert report["fp_per_frame"] == 0.0 and "fp_per_frame" not in report["undefined"]
    assert 1.0 not in [report[k] for k in report if k.startswith("det_")]
