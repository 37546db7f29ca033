"""``tpnet-eval checkpoint=[...]``: the folds' ensemble scored on their shared test split, recorded in an MLflow run
of its own (real Hydra config, real checkpoints and SQLite store; in-process, the CLI path is tested for one
checkpoint in test_eval_cli.py)."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from ensemble_members import make_fold_checkpoints
from tpnet.configuration import config_dir, validate_eval_config
from tpnet.evaluation.cli import run_eval
from tpnet.models.ensemble import EnsembleError, ensemble_postprocess
from tpnet.training.checkpoint import save_checkpoint


def _eval_config(paths, *overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("eval", overrides=[f"checkpoint=[{','.join(str(p) for p in paths)}]", *overrides])
    validate_eval_config(cfg)
    return cfg


def test_tpnet_eval_scores_an_ensemble_in_a_run_of_its_own(tmp_path, reference_run, mlflow_uri):
    paths = make_fold_checkpoints(reference_run, tmp_path, mlflow_uri, folds=3)
    output = tmp_path / "metrics.json"
    cfg = _eval_config(
        paths, "evaluation.n_boot=20", "device=cpu", f"output={output}", f"tracking_uri={mlflow_uri}"
    )

    run_eval(cfg)
    run_eval(cfg)  # again: the same run records it, not a second one

    report = json.loads(output.read_text())
    assert report["split"] == "test" and report["n_frames"] == 3
    assert report["checkpoint"] == [str(p.resolve()) for p in paths]
    info = report["ensemble"]
    assert info["n_members"] == 3 and [m["fold"] for m in info["members"]] == [0, 1, 2]
    states = [torch.load(p, weights_only=True) for p in paths]
    assert report["postprocess"] == ensemble_postprocess([s["meta"] for s in states])

    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("tpnet")  # the members' experiment
    runs = client.search_runs([experiment.experiment_id], f"tags.`tpnet.ensemble.id` = '{info['id']}'")
    assert [r.info.run_name for r in runs] == [f"ensemble-3folds-{info['id']}"]
    run = runs[0]
    member_runs = [s["mlflow_run_id"] for s in states]
    assert run.data.tags["tpnet.ensemble.member_run_ids"] == ",".join(member_runs)
    assert run.data.metrics["test/dice_mean"] == report["dice_mean"]
    # A flag is not a number over time: a tag, not a metric.
    assert "test/tta" not in run.data.metrics and run.data.tags["test/tta"] == "false"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "eval")] == [
        "eval/metrics.json",
        "eval/reliability_metrics.png",
    ]
    for member_run in member_runs:  # no member's run gets the ensemble's numbers
        assert not any(k.startswith("test/") for k in client.get_run(member_run).data.metrics)


def test_members_that_do_not_share_the_test_split_are_refused(tmp_path, reference_run, mlflow_uri):
    paths = make_fold_checkpoints(reference_run, tmp_path, mlflow_uri, folds=3)
    state = torch.load(paths[1], weights_only=True)
    state["config"]["seed"] = 1  # another seed holds out other test subjects
    save_checkpoint(state, paths[1])
    with pytest.raises(EnsembleError, match="test split differs") as refused:
        run_eval(_eval_config(paths, "device=cpu", "log_to_mlflow=false", f"output={tmp_path / 'm.json'}"))
    assert str(paths[1]) in str(refused.value)

    with pytest.raises(EnsembleError, match="split=test only"):
        run_eval(_eval_config(paths[:1] + paths[2:], "device=cpu", "split=val", "log_to_mlflow=false"))
    assert not (tmp_path / "m.json").exists()
