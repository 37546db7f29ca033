"""``tpnet-train`` with the default (planned) config on a user's dataset: plan.json in the run folder, the
planned values in config.yaml, the checkpoint and MLflow, command-line values kept with their source, and a
resumed run that reuses its plan."""

from __future__ import annotations

import json

import pytest
import yaml

from foreign import write_foreign_dataset
from tpnet.core.checkpoint import load_checkpoint
from train_helpers import mlflow_runs, run_train

# Tiny network and one epoch; the planned keys (spacing, patch, depth, fg_fraction, bmode_norm) are left to the plan.
TINY = ["trainer.device=cpu", "data.num_workers=0", "model.base_width=4", "calibration.enabled=false"]
TINY += ["trainer.test_after_training=false", "logger.overlay_every_n_epochs=null"]


@pytest.mark.slow
def test_default_config_trains_with_the_plan_and_a_resumed_run_reuses_it(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    data_root = write_foreign_dataset(tmp_path / "foreign")
    run_dir = tmp_path / "run"
    common = [
        f"data.root={data_root}",
        *TINY,
        f"hydra.run.dir={run_dir}",
        f"logger.tracking_uri={mlflow_uri}",
    ]
    result = run_train([*common, "trainer.max_epochs=1", "data.batch_size=4"])
    assert result.returncode == 0, result.stderr[-3000:]

    plan = json.loads((run_dir / "plan.json").read_text())
    values = plan["values"]
    assert values["batch_size"] == {"value": 4, "source": "command line", "why": "set in the command line"}
    assert values["spacing_mm"]["source"] == "fingerprint" and values["patch_size"]["source"] == "fingerprint"
    assert values["bmode_norm"]["value"] == "zscore_frame" and values["fg_fraction"]["source"] == "default"
    assert plan["fingerprint"]["n_frames"] < 7  # the labelled frames without the test subjects
    assert "tpnet-train: experiment plan for foreign_lab" in result.stderr
    assert "data.patch_size" in result.stderr and "command line" in result.stderr

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["patch_size"] == values["patch_size"]["value"]
    assert config["data"]["spacing_mm"] == values["spacing_mm"]["value"]
    assert config["model"]["depth"] == values["depth"]["value"]
    assert config["data"]["bmode_norm"] == "zscore_frame" and config["data"]["batch_size"] == 4
    meta = load_checkpoint(run_dir / "checkpoints/last.pt")["meta"]
    assert meta["encoding"]["bmode_norm"] == "zscore_frame"
    assert meta["spacing_mm"] == values["spacing_mm"]["value"]
    assert meta["size_multiple"] == 2 ** values["depth"]["value"]

    (run,) = mlflow_runs(mlflow_uri)
    params = run.data.params
    assert params["plan.patch_size"] == str(values["patch_size"]["value"])
    assert params["plan.batch_size.source"] == "command line" and params["plan.depth.source"] == "fingerprint"
    assert params["data.patch_size"] == str(values["patch_size"]["value"])
    artifacts = {a.path for a in MlflowClient(tracking_uri=mlflow_uri).list_artifacts(run.info.run_id)}
    assert "plan.json" in artifacts

    # Resumed: the stored plan is used as it is (here with a changed fg_fraction), not planned again.
    plan["values"]["fg_fraction"] = {"value": 0.5, "source": "config", "why": "edited"}
    (run_dir / "plan.json").write_text(json.dumps(plan))
    resume = ["trainer.max_epochs=2", "data.batch_size=4", "trainer.resume=auto", "logger.enabled=false"]
    result = run_train([*common, *resume])
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["epoch"] == 2
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["fg_fraction"] == 0.5
    assert json.loads((run_dir / "plan.json").read_text())["values"]["fg_fraction"]["value"] == 0.5
