"""A run SIGKILLed mid-epoch and restarted with ``trainer.resume=auto`` ends exactly like an uninterrupted one,
with or without DataLoader workers (the reference run uses none: the data never depend on the worker count)."""

from __future__ import annotations

import pytest

from train_helpers import (
    assert_same_training,
    metric_steps,
    mlflow_runs,
    run_train,
    sigkill_mid_epoch_2,
)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(
    tmp_path, tiny_train_overrides, mlflow_uri, reference_run, workers
):
    run_dir = tmp_path / "run"
    overrides = [
        *tiny_train_overrides,
        f"data.num_workers={workers}",
        "trainer.max_epochs=3",
        f"logger.tracking_uri={mlflow_uri}",
        f"hydra.run.dir={run_dir}",
    ]
    sigkill_mid_epoch_2(overrides, run_dir, tmp_path)
    (first_run,) = mlflow_runs(mlflow_uri)

    result = run_train([*overrides, "trainer.resume=auto"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr

    (run,) = mlflow_runs(mlflow_uri)  # continued, not a second run
    assert run.info.run_id == first_run.info.run_id and run.info.status == "FINISHED"
    for key in ("train/loss", "val/loss", "lr"):
        assert metric_steps(mlflow_uri, run.info.run_id, key) == [1, 2, 3], key
    assert_same_training(reference_run, run_dir)
