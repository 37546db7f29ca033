"""``tpnet-train`` end to end through the real Hydra CLI in subprocesses, on tiny data and a tiny U-Net."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from foreign import write_foreign_dataset
from train_helpers import (
    REPO,
    metric_steps,
    mlflow_runs,
    read_history,
    run_train,
    subprocess_env,
    tiny_overrides,
)

EPOCH_METRICS = (
    "train/loss", "val/loss", "val/dice_mean", "val/det_f1", "lr", "throughput/img_per_s",
    "throughput/data_wait_fraction",
)  # fmt: skip
TINY_MODEL = ["data.patch_size=[32,32]", "data.batch_size=4", "data.num_workers=0"]
TINY_MODEL += ["model.base_width=4", "model.depth=2", "evaluation.n_boot=20"]


@pytest.mark.slow
def test_train_on_a_foreign_dataset_leaves_checkpoints_and_one_complete_mlflow_run(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from tpnet.core.checkpoint import load_checkpoint

    data_root = write_foreign_dataset(tmp_path / "foreign")
    run_dir = tmp_path / "run"
    result = run_train(
        [
            f"data.root={data_root}",
            "trainer.max_epochs=3",
            "trainer.device=cpu",
            f"hydra.run.dir={run_dir}",
            f"logger.tracking_uri={mlflow_uri}",
            *TINY_MODEL,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]

    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "config.yaml", "metrics.json"):
        assert (run_dir / name).is_file(), name
    last = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert last["epoch"] == 3 and last["global_step"] >= 3  # every epoch trained (3 frames < 1 batch of 4)
    assert last["meta"]["dataset_name"] == "foreign_lab"

    (run,) = mlflow_runs(mlflow_uri)
    assert run.info.status == "FINISHED"
    assert run.info.run_id == last["mlflow_run_id"]
    params = run.data.params
    assert params["data.root"] == str(data_root)
    assert params["trainer.max_epochs"] == "3"
    assert params["model.base_width"] == "4"
    assert params["optim._target_"] == "torch.optim.AdamW"
    for key in EPOCH_METRICS:
        assert metric_steps(mlflow_uri, run.info.run_id, key) == [1, 2, 3], key
    assert all(0.0 <= row["throughput/data_wait_fraction"] <= 1.0 for row in read_history(run_dir))
    # The run read its frames from the preprocessed cache it built on its first epoch (conftest points
    # data.cache.dir's default, $TPNET_PREPROCESSED, at a temporary folder).
    caches = list(Path(os.environ["TPNET_PREPROCESSED"]).glob("foreign_lab-*/index.json"))
    assert caches, "tpnet-train did not build its preprocessed cache"
    train_losses = [row["train/loss"] for row in read_history(run_dir)]
    assert all(loss is not None and math.isfinite(loss) and loss > 0 for loss in train_losses)
    # loc_err_mm is only defined when a predicted TrP matched a true one: logged exactly for those epochs.
    defined = [row["epoch"] for row in read_history(run_dir) if row["val/loc_err_mm"] is not None]
    assert metric_steps(mlflow_uri, run.info.run_id, "val/loc_err_mm") == defined

    tags = run.data.tags
    assert tags["dataset"] == "foreign_lab" and tags["device"] == "cpu"
    assert len(tags["dataset_fingerprint"]) == 16 and tags["host"] and tags["git_commit"]

    client = MlflowClient(tracking_uri=mlflow_uri)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "checkpoints", "overlays"} <= top
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    (epoch_dir,) = client.list_artifacts(run.info.run_id, "overlays")
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run.info.run_id, epoch_dir.path))
    assert not (run_dir / "mlflow_not_logged.txt").exists()

    # Issue #14: calibration errors before and after, with subject-bootstrap CIs, in metrics.json and MLflow;
    # the reliability diagram as an artifact; the model card in the checkpoint that exports copy.
    report = json.loads((run_dir / "metrics.json").read_text())
    for key in ("pixel_ece", "pixel_ece_raw", "trp_pixel_ece", "frame_ece", "frame_ece_raw"):
        assert 0.0 <= report[key] <= 1.0 and len(report["ci95"][key]) == 2, key
    assert {"detection_ece", "detection_ece_raw", "detection_brier", "detection_brier_raw"} <= report.keys()
    assert len(report["reliability"]["pixel"]["raw"]["count"]) == report["reliability"]["n_bins"]
    assert "reliability_test.png" in top
    logged = run.data.metrics
    assert logged["test/pixel_ece"] == pytest.approx(report["pixel_ece"])
    assert logged["test/pixel_ece_ci_low"] <= logged["test/pixel_ece"] <= logged["test/pixel_ece_ci_high"]
    card = load_checkpoint(run_dir / "checkpoints/best.pt")["meta"]["model_card"]
    assert card["training_data"]["name"] == "foreign_lab" and card["training_data"]["synthetic"] is False
    assert card["channels"] == list(last["meta"]["encoding"]["channels"]) and card["input_reference"]
    assert card["test"]["pixel_ece"]["value"] == pytest.approx(report["pixel_ece"])


def _cfg_job(command: list[str]) -> str:
    result = subprocess.run(
        [*command, "--cfg", "all", "seed=3", "trainer.max_epochs=2"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_scripts_train_py_and_tpnet_train_are_the_same_program():
    console_script = Path(sys.executable).with_name("tpnet-train")
    reference = _cfg_job([str(console_script)])
    assert "max_epochs: 2" in reference
    assert _cfg_job([sys.executable, "scripts/train.py"]) == reference
    assert _cfg_job([sys.executable, "-m", "tpnet.training.cli"]) == reference


@pytest.mark.slow
def test_multirun_sweep_over_seeds_gives_two_mlflow_runs(tmp_path, tiny_train_overrides, mlflow_uri):
    result = run_train(
        [
            "-m",
            "seed=0,1",
            *tiny_train_overrides,
            "trainer.max_epochs=1",
            "trainer.test_after_training=false",
            f"logger.tracking_uri={mlflow_uri}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = mlflow_runs(mlflow_uri)
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "checkpoints/last.pt").is_file()


def test_cv_folds_change_validation_subjects_not_test_subjects(synthetic_cache):
    from hydra import compose, initialize_config_dir

    from tpnet.configuration import config_dir, validate_train_config
    from tpnet.data.datamodule import setup_data

    subjects = {}
    for fold in (0, 1):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", [*tiny_overrides(synthetic_cache), "cv.folds=2", f"cv.fold={fold}"])
        validate_train_config(cfg)
        data = setup_data(cfg.data, int(cfg.seed), cfg.cv.fold, cfg.cv.folds, check=False)
        subjects[fold] = {split: {r.subject_id for r in rows} for split, rows in data.splits.items()}
    assert subjects[0]["test"] == subjects[1]["test"] and subjects[0]["test"]
    assert subjects[0]["val"] and subjects[1]["val"] and subjects[0]["val"].isdisjoint(subjects[1]["val"])
    for fold in (0, 1):
        assert subjects[fold]["val"].isdisjoint(subjects[fold]["train"] | subjects[fold]["test"])
        assert subjects[fold]["train"] | subjects[fold]["val"] == subjects[0]["train"] | subjects[0]["val"]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("trainer.max_epoch=3", "trainer.max_epoch"),
        ("trainer.max_epochs=ten", "trainer.max_epochs"),
        ("model=unett", "model/unett"),
        ("trainer.device=gpu", "trainer.device"),
    ],
)
def test_bad_override_fails_fast_naming_the_key(tmp_path, override, named):
    run_dir = tmp_path / "run"
    result = run_train(
        [override, f"hydra.run.dir={run_dir}", "data.synthetic.cache_dir=/nonexistent"], timeout=60
    )
    assert result.returncode != 0
    assert named in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()
    assert not (run_dir / "config.yaml").exists()
