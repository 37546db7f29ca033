"""Fault tolerance of ``tpnet-train``: SIGKILL at bad moments, corrupt checkpoints, non-finite losses, bad data."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import tifffile

from tpnet.core.checkpoint import load_checkpoint
from train_helpers import (
    REPO,
    assert_same_training,
    checkpoint_epoch,
    metric_steps,
    mlflow_runs,
    read_history,
    run_train,
    sigkill,
    start_train,
    subprocess_env,
    wait_for,
)


@pytest.mark.slow
def test_sigkill_during_validation_then_during_a_checkpoint_write_then_resume(
    tmp_path, tiny_train_overrides, mlflow_uri, reference_run
):
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    overrides = [
        *tiny_train_overrides,
        "trainer.max_epochs=3",
        f"logger.tracking_uri={mlflow_uri}",
        f"hydra.run.dir={run_dir}",
        "trainer.resume=auto",  # also valid for the first attempt: nothing to resume yet
    ]

    # 1) killed while validating epoch 1: no checkpoint exists yet
    marker = tmp_path / "validating"
    env = subprocess_env(TPNET_TEST_STALL="validate:1", TPNET_TEST_STALL_FILE=str(marker))
    proc = start_train(overrides, env, tmp_path / "attempt1.log")
    try:
        wait_for(marker.exists, 150, "validation of epoch 1", proc)
        sigkill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (ckpt_dir / "last.pt").exists()
    (first_run,) = mlflow_runs(mlflow_uri)

    # 2) restarted from scratch (same MLflow run), then killed between writing epoch 2's checkpoint to its temp
    # file and renaming it over epoch 1's
    env = subprocess_env(TPNET_TEST_SLOW_CHECKPOINT_S="2")
    proc = start_train(overrides, env, tmp_path / "attempt2.log")
    try:
        wait_for(
            lambda: checkpoint_epoch(ckpt_dir / "last.pt") == 1 and list(ckpt_dir.glob(".*.pt.*.tmp")),
            150,
            "epoch 2's checkpoint write",
            proc,
        )
        sigkill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert load_checkpoint(ckpt_dir / "last.pt")["epoch"] == 1  # the old file, intact
    if (ckpt_dir / "best.pt").exists():
        load_checkpoint(ckpt_dir / "best.pt")
    assert len(mlflow_runs(mlflow_uri)) == 1

    # 3) resumed to the end
    result = run_train(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(ckpt_dir / "last.pt")["epoch"] == 3
    (run,) = mlflow_runs(mlflow_uri)
    assert run.info.run_id == first_run.info.run_id and run.info.status == "FINISHED"
    # Epoch 2 may have reached MLflow twice (logged, then killed before its checkpoint): the same values.
    assert set(metric_steps(mlflow_uri, run.info.run_id, "val/loss")) == {1, 2, 3}
    assert [row["epoch"] for row in read_history(run_dir)] == [1, 2, 3]
    assert_same_training(reference_run, run_dir)


def _corrupt_copy(reference_run, tmp_path):
    source = (reference_run / "checkpoints/last.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(source[: len(source) // 2])
    return bad, bad.read_bytes()


def test_truncated_checkpoint_is_refused_by_resume_naming_the_file(
    tmp_path, reference_run, tiny_train_overrides
):
    bad, before = _corrupt_copy(reference_run, tmp_path)
    run_dir = tmp_path / "run"
    result = run_train(
        [*tiny_train_overrides, f"trainer.resume={bad}", f"hydra.run.dir={run_dir}", "logger.enabled=false"]
    )
    assert result.returncode != 0
    assert str(bad) in result.stderr and "truncated" in result.stderr
    assert "Traceback" not in result.stderr
    assert bad.read_bytes() == before
    assert not (run_dir / "checkpoints").exists()


def test_truncated_checkpoint_is_refused_by_tpnet_eval_naming_the_file(tmp_path, reference_run):
    import subprocess
    import sys

    bad, before = _corrupt_copy(reference_run, tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tpnet.evaluation.cli",
            f"checkpoint={bad}",
            "log_to_mlflow=false",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert str(bad) in result.stderr and "truncated" in result.stderr
    assert bad.read_bytes() == before
    assert not (tmp_path / "eval" / "metrics_test.json").exists()


def _nan_loss_overrides(tmp_path, tiny_train_overrides, nan_steps, policy):
    return [
        *tiny_train_overrides,
        "trainer.max_epochs=2",
        "trainer.test_after_training=false",
        "logger.enabled=false",
        f"hydra.run.dir={tmp_path / policy}",
        "loss=ce",
        "loss._target_=train_helpers.NaNLoss",  # tests/train_helpers.py, importable via PYTHONPATH
        f"+loss.nan_steps={nan_steps}",
        f"trainer.nan_policy={policy}",
        # NaNLoss counts its calls as steps; deep supervision calls the loss once per decoder level.
        "model.deep_supervision=false",
    ]


@pytest.mark.slow
def test_non_finite_loss_is_skipped_or_stops_cleanly(tmp_path, tiny_train_overrides):
    # 3 steps per epoch: training steps 1 and 4 (0-based) fall in epochs 1 and 2.
    skip = run_train(_nan_loss_overrides(tmp_path, tiny_train_overrides, "[1,4]", "skip"))
    assert skip.returncode == 0, skip.stderr[-3000:]
    assert (skip.stdout + skip.stderr).count("non-finite loss") == 2
    state = load_checkpoint(tmp_path / "skip/checkpoints/last.pt")
    assert state["epoch"] == 2 and state["global_step"] == 4  # 6 steps, 2 skipped
    assert all(bool(t.isfinite().all()) for t in state["model"].values() if t.is_floating_point())

    stop = run_train(_nan_loss_overrides(tmp_path, tiny_train_overrides, "[4]", "stop"))
    assert stop.returncode != 0
    assert "non-finite loss at epoch 2" in stop.stderr and "nan_policy=stop" in stop.stderr
    assert "Traceback" not in stop.stderr
    assert load_checkpoint(tmp_path / "stop/checkpoints/last.pt")["epoch"] == 1


def test_frames_with_nan_bmode_or_absurd_stiffness_are_refused_naming_the_samples(
    tmp_path, synthetic_cache, tiny_train_overrides
):
    (source,) = [p for p in synthetic_cache.iterdir() if (p / "manifest.csv").is_file()]
    root = shutil.copytree(source, tmp_path / "dataset")
    with (root / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    with_swe = [r for r in rows if r["elasto"]]
    # one B-mode with a NaN (float .npy), one SWE map with negative and one with 1e6 kPa values
    nan_row, negative_row, stiff_row = rows[0], with_swe[1], with_swe[2]
    bmode = np.full((96, 96), 0.5, np.float32)
    bmode[10, 10] = np.nan
    np.save(root / "bmode/nan.npy", bmode)
    nan_row["bmode"] = "bmode/nan.npy"
    for row, value in ((negative_row, -20.0), (stiff_row, 1e6)):
        kpa = tifffile.imread(root / row["elasto"]).astype(np.float32)
        kpa[np.isfinite(kpa)] = value
        tifffile.imwrite(root / row["elasto"], kpa)
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    run_dir = tmp_path / "run"
    result = run_train(
        [*tiny_train_overrides, f"data.root={root}", f"hydra.run.dir={run_dir}", "logger.enabled=false"]
    )
    assert result.returncode != 0
    for row in (nan_row, negative_row, stiff_row):
        assert row["sample_id"] in result.stderr, row["sample_id"]
    assert "NaN" in result.stderr and "absurd stiffness" in result.stderr
    assert not (run_dir / "checkpoints").exists()
