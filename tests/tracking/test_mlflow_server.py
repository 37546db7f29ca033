"""Training logs to a real ``mlflow server`` on 127.0.0.1, and survives the server dying or never answering."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from train_helpers import (
    free_port,
    metric_steps,
    mlflow_runs,
    run_train,
    start_mlflow_server,
    start_train,
    stop_mlflow_server,
    subprocess_env,
    wait_for,
)

RUN_FILES = ("checkpoints/best.pt", "checkpoints/last.pt", "config.yaml", "metrics.jsonl", "metrics.json")


def _overrides(tiny_train_overrides, uri, run_dir, experiment="tpnet"):
    return [
        *tiny_train_overrides,
        "trainer.max_epochs=2",
        f"logger.tracking_uri={uri}",
        f"logger.experiment_name={experiment}",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.mark.slow
def test_training_logs_to_a_real_mlflow_server(tmp_path, tiny_train_overrides, mlflow_server):
    experiment = f"server-{uuid.uuid4().hex[:8]}"  # the server is shared by the session
    result = run_train(_overrides(tiny_train_overrides, mlflow_server, tmp_path / "run", experiment))
    assert result.returncode == 0, result.stderr[-3000:]

    (run,) = mlflow_runs(mlflow_server, experiment)
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.max_epochs"] == "2" and run.data.tags["device"] == "cpu"
    for key in ("train/loss", "val/loss", "lr"):
        assert metric_steps(mlflow_server, run.info.run_id, key) == [1, 2], key
    assert "test/dice_mean" in run.data.metrics  # the tiny data hold no TrP: det_f1 is undefined (not logged)
    client = MlflowClient(tracking_uri=mlflow_server)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "checkpoints"} <= artifacts  # uploaded through the server
    local = client.download_artifacts(run.info.run_id, "checkpoints/best.pt", str(tmp_path / "download"))
    assert Path(local).read_bytes() == (tmp_path / "run/checkpoints/best.pt").read_bytes()
    assert not (tmp_path / "run/mlflow_not_logged.txt").exists()


@pytest.mark.slow
def test_training_completes_when_the_server_dies_mid_run(
    tmp_path, tiny_train_overrides, mlflow_store_template
):
    server, url = start_mlflow_server(tmp_path / "server", mlflow_store_template)  # this test's own server
    run_dir = tmp_path / "run"
    marker = tmp_path / "epoch2"
    try:
        # Epoch 2 pauses 5 s after its first step: time to stop the server once epoch 1 reached it.
        env = subprocess_env(TPNET_TEST_STALL="train:2:5", TPNET_TEST_STALL_FILE=str(marker))
        proc = start_train(
            _overrides(tiny_train_overrides, url, run_dir, "dies"), env, tmp_path / "train.log"
        )
        wait_for(marker.exists, 150, "epoch 2", proc)
        (run,) = mlflow_runs(url, "dies")
        assert metric_steps(url, run.info.run_id, "train/loss") == [1]
    finally:
        stop_mlflow_server(server)
    try:
        assert proc.wait(timeout=150) == 0, (tmp_path / "train.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line][-1].startswith(
        '{"epoch": 2'
    )
    not_logged = (run_dir / "mlflow_not_logged.txt").read_text()
    assert url in not_logged and "metric values still queued" in not_logged
    assert "not logged to MLflow" in (tmp_path / "train.log").read_text()


@pytest.mark.slow
def test_training_completes_quickly_when_the_server_is_unreachable_from_the_start(
    tmp_path, tiny_train_overrides
):
    url = f"http://127.0.0.1:{free_port()}"  # closed port
    run_dir = tmp_path / "run"
    start = time.monotonic()
    result = run_train(_overrides(tiny_train_overrides, url, run_dir), timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed < 60, f"{elapsed:.0f} s: MLflow retries stall the run"
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    not_logged = (run_dir / "mlflow_not_logged.txt").read_text()
    assert url in not_logged and "params" in not_logged and "metric values still queued" in not_logged
