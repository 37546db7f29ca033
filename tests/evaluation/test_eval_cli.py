"""``tpnet-eval`` on a checkpoint of a real (tiny) training run."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from train_helpers import REPO, assert_config_error_at_start, subprocess_env

POINT_METRICS = ("det_f1", "det_precision", "det_recall", "loc_err_mm", "class_acc", "dice_mean")


def test_tpnet_eval_writes_metrics_with_confidence_intervals(tmp_path, reference_run):
    output = tmp_path / "metrics.json"
    tracking_uri = f"sqlite:///{reference_run.parent / 'mlflow.db'}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tpnet.evaluation.cli",
            f"checkpoint={reference_run / 'checkpoints/best.pt'}",
            "evaluation.n_boot=50",
            "device=cpu",
            f"output={output}",
            f"tracking_uri={tracking_uri}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["split"] == "test" and report["n_frames"] == 3
    assert report["bootstrap"] == {"n_boot": 50, "seed": 0, "unit": "subject"}
    classes = ("background", "active_trp", "latent_trp", "vessel")
    for key in (*POINT_METRICS, *(f"dice/{c}" for c in classes)):
        assert key in report, key
        low, high = report["ci95"][key]  # always a pair; null where the metric is undefined
        value = report[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        assert value >= 0 or key == "loc_err_mm"
        if low is not None:
            assert low <= high
    # The training run's own test report came from the same checkpoint and data: same point estimates.
    trained = json.loads((reference_run / "metrics.json").read_text())
    for key in ("det_f1", "dice_mean", "dice/background", "pixel_ece", "frame_ece"):
        assert report[key] == trained[key], key  # calibration and its TTA applied alike (issue #14)
    assert report["tta"] == trained["calibration"]["tta"]
    # Guidance judged on the true vessels (issue #16), with the model's guidance settings (the defaults here).
    assert report["guidance"]["min_clearance_mm"] == 3.0
    rate = report["guidance/unsafe_called_safe_rate"]
    assert (rate is None) == (report["n_paths_called_safe"] == 0)
    assert rate is None or 0.0 <= rate <= 1.0
    assert "guidance/unsafe_called_safe_rate" in report["ci95"] and "det_f1/vessel" in report["ci95"]
    assert output.with_name(f"reliability_{output.stem}.png").stat().st_size > 0
    # ... and are attached to the checkpoint's own MLflow run.
    import torch
    from mlflow import MlflowClient

    run_id = torch.load(reference_run / "checkpoints/best.pt", weights_only=True)["mlflow_run_id"]
    client = MlflowClient(tracking_uri=tracking_uri)
    logged = client.get_run(run_id).data.metrics
    assert logged["test/dice/background"] == report["dice/background"]
    assert logged.get("test/det_f1") == report["det_f1"]  # None on both sides when undefined
    assert logged.get("test/guidance/unsafe_called_safe_rate") == rate
    # A flag is a setting, not a number over time: a tag, never a metric.
    assert "test/tta" not in logged and client.get_run(run_id).data.tags["test/tta"] == "false"
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == [
        "eval/metrics.json",
        "eval/reliability_metrics.png",
    ]


# ---- a typo fails at start: exit 2, the key named, no traceback, nothing heavy imported -----------------------

# Runs tpnet-eval's real main() in a fresh interpreter and reports, at exit, which heavy modules it had imported.
EVAL_TYPOS = [
    (["checkpint=/nowhere/best.pt"], "checkpint"),  # Hydra alone: "Could not override", exit 1
    (["checkpoint=/nowhere/best.pt", "+n_bot=5"], "n_bot"),  # appended, then silently ignored
    (["checkpoint=/nowhere/best.pt", "data.rot=/data"], "data.rot"),
    (["checkpoint=/nowhere/best.pt", "evaluation.n_boot=many"], "evaluation.n_boot"),  # wrong type
    (["checkpoint=/nowhere/best.pt", "tta=maybe"], "tta"),
    (["checkpoint=/nowhere/best.pt", "split=tset"], "split"),  # not a split
    (["checkpoint=/nowhere/best.pt", "evaluation.n_boot=0"], "evaluation.n_boot"),  # out of range
    (["checkpoint=/nowhere/best.pt", "postprocess={threshold: 2.0}"], "postprocess.threshold"),
    (["checkpoint=/nowhere/best.pt", "postprocess={treshold: 0.4}"], "postprocess.treshold"),
    ([], "checkpoint"),  # required
]


@pytest.mark.parametrize(("overrides", "key"), EVAL_TYPOS, ids=[key for _, key in EVAL_TYPOS])
def test_eval_config_typo_fails_at_start_naming_the_key(tmp_path, overrides, key):
    assert_config_error_at_start("tpnet-eval", "tpnet.evaluation.cli", overrides, key, tmp_path)
