"""A real 3-fold cross-validation sweep (``tpnet-train -m cv.fold=0,1,2``, Hydra's basic launcher, a SQLite MLflow
store), run once per module with the spacing left to the plan: one plan and one spacing in every fold, out-of-fold
predictions covering every non-test subject exactly once, a parent MLflow run with the folds as children."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tpnet.core.checkpoint import load_checkpoint
from tpnet.core.contract import load_manifest
from tpnet.data.datamodule import dataset_root
from tpnet.data.splits import kfold_subjects, split_rows
from tpnet.evaluation.cross_validation import OOF_FILE, load_oof
from tpnet.training.cv_sweep import CrossValidationCallback, sweep_folds
from train_helpers import mlflow_runs, run_train

FOLDS = 3


@pytest.fixture(scope="module")
def sweep(
    tmp_path_factory: pytest.TempPathFactory, tiny_train_overrides: list[str], mlflow_store_template: Path
):
    """The sweep folder (``mlflow.db`` beside it)."""
    root = tmp_path_factory.mktemp("cv_sweep")
    shutil.copy(mlflow_store_template, root / "mlflow.db")
    overrides = [o for o in tiny_train_overrides if not o.startswith("data.spacing_mm=")]
    result = run_train([
        "-m", f"cv.fold={','.join(map(str, range(FOLDS)))}", f"cv.folds={FOLDS}", *overrides,
        "data.spacing_mm=null", "trainer.max_epochs=1", f"logger.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        # Calibrated (and stored in best.pt) all the same, on a one-point grid: the folds' time goes to CV.
        "calibration.thresholds=[0.5]", "calibration.min_areas_mm2=[2.0]", "calibration.min_mean_probs=[0.0]",
        "logger.overlay_every_n_epochs=0", "logger.log_checkpoint=false",
        f"hydra.sweep.dir={root / 'sweep'}",
    ], timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cross-validation summary:" in result.stderr, result.stderr[-3000:]
    return root / "sweep"


def fold_dirs(sweep: Path) -> list[Path]:
    return [sweep / str(n) for n in range(FOLDS)]


def test_one_plan_and_one_spacing_in_every_fold(sweep: Path):
    plans = [(run / "plan.json").read_text() for run in fold_dirs(sweep)]
    assert plans[0] == plans[1] == plans[2], "the folds planned differently"
    assert (sweep / "plan.json").read_text() == plans[0]
    plan = json.loads(plans[0])
    assert plan["values"]["spacing_mm"]["source"] == "fingerprint"  # planned: data.spacing_mm=null
    spacing = plan["values"]["spacing_mm"]["value"]
    for run in fold_dirs(sweep):
        assert OmegaConf.load(run / "config.yaml").data.spacing_mm == spacing
        assert load_checkpoint(run / "checkpoints" / "best.pt")["meta"]["spacing_mm"] == spacing
    summary = json.loads((sweep / "cv_summary.json").read_text())
    assert summary["plan"]["equal"] is True and summary["plan"]["n_plans"] == FOLDS


def test_out_of_fold_predictions_cover_every_non_test_subject_once(sweep: Path):
    config = OmegaConf.load(sweep / "0" / "config.yaml")
    rows = [r for r in load_manifest(dataset_root(config.data)) if r.mask]
    plain = split_rows(rows, seed=int(config.seed), val_fraction=config.data.val_fraction,
                       test_fraction=config.data.test_fraction)  # fmt: skip
    non_test = sorted({r.subject_id for r in plain["train"] + plain["val"]})
    expected_frames = len(plain["train"]) + len(plain["val"])
    folds_subjects = kfold_subjects(non_test, FOLDS, int(config.seed))

    predicted = []
    for fold, run in enumerate(fold_dirs(sweep)):
        header, records = load_oof(run / OOF_FILE)
        assert header["fold"] == fold and header["subjects"] == folds_subjects[fold]
        stored = load_checkpoint(run / "checkpoints" / "best.pt")["meta"]["postprocess"]
        assert header["postprocess"] == stored and header["calibrated_on_these_subjects"] is True
        predicted += sorted({r.subject_id for r in records})
    assert sorted(predicted) == non_test  # each subject once, none left out

    (summary,) = json.loads((sweep / "cv_summary.json").read_text())["configurations"]
    assert summary["complete"] and summary["coverage"]["exactly_once"]
    assert summary["coverage"]["n_non_test_subjects"] == len(non_test)
    pooled = summary["pooled"]
    assert pooled["n_frames"] == expected_frames and pooled["n_subjects"] == len(non_test)
    lo, hi = pooled["ci95"]["dice_mean"]
    assert lo <= pooled["dice_mean"] <= hi
    assert all("test" in row for row in summary["folds"])  # each fold's test metrics.json, too
    assert "mildly optimistic" in (sweep / "cv_summary.md").read_text()


def test_parent_run_holds_the_folds_as_children(sweep: Path):
    uri = f"sqlite:///{sweep.parent / 'mlflow.db'}"
    runs = mlflow_runs(uri)
    (parent,) = [r for r in runs if r.data.tags.get("cv.role") == "parent"]
    parent_id = parent.info.run_id
    assert json.loads((sweep / "cv_parent_run.json").read_text())["run_id"] == parent_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert sorted(r.data.tags["cv.fold"] for r in children) == ["0", "1", "2"]
    assert len(runs) == FOLDS + 1
    assert parent.info.status == "FINISHED"
    assert parent.data.params["cv.n_folds"] == str(FOLDS)
    (summary,) = json.loads((sweep / "cv_summary.json").read_text())["configurations"]
    assert parent.data.metrics["oof/dice_mean"] == pytest.approx(summary["pooled"]["dice_mean"])
    from mlflow.tracking import MlflowClient

    artifacts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(parent_id)}
    assert {"cv_summary.json", "cv_summary.md", "plan.json"} <= artifacts


def test_cv_cli_summarizes_a_copy_with_a_crashed_fold_and_compares(sweep: Path, tmp_path: Path):
    """What a SLURM user does: summarize a sweep whose fold 2 died, then compare it with the full one."""
    copy = tmp_path / "crashed"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("*.pt", "cv_*", "plan.json"))
    (copy / "2" / OOF_FILE).unlink()
    tpnet_cv = str(Path(sys.executable).with_name("tpnet-cv"))
    result = subprocess.run([tpnet_cv, "summarize", str(copy), "--n-boot", "50", "--no-mlflow"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (config,) = json.loads((copy / "cv_summary.json").read_text())["configurations"]
    assert config["missing_folds"] == [2] and not config["complete"]
    out = tmp_path / "compare.json"
    result = subprocess.run([tpnet_cv, "compare", str(sweep), str(copy), "--n-boot", "50", "--out", str(out)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "unpaired" in result.stdout and "incomplete" in result.stdout
    # No trigger point out of fold in these tiny data: det_f1 is undefined everywhere, so ranked by Dice.
    report = json.loads(out.read_text())
    assert report["metric"] == "dice_mean" and "ranked by dice_mean" in result.stdout
    assert any(line.startswith(f"use {report['best']} (dice_mean") for line in result.stdout.splitlines())
    assert {e["name"] for e in report["ranking"]} == {str(sweep), str(copy)}


def test_a_sweep_without_cv_fold_is_left_alone(tmp_path: Path):
    """``-m optim.lr=...``: no parent run, no summary; ``-m cv.fold=...`` (command line or sweeper params) is one."""

    def multirun_config(task: list[str], params: dict | None = None):
        return OmegaConf.create({
            "cv": {"fold": None, "folds": 5}, "seed": 0, "evaluation": {"n_boot": 10},
            "logger": {"enabled": True, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                       "experiment_name": "tpnet"},
            "hydra": {"overrides": {"task": task}, "sweep": {"dir": str(tmp_path / "lr")},
                      "sweeper": {"params": params or {}}},
        })  # fmt: skip

    lr_sweep = multirun_config(["optim.lr=0.1,0.01"])
    assert sweep_folds(lr_sweep) is None
    callback = CrossValidationCallback()
    callback.on_multirun_start(lr_sweep)
    callback.on_multirun_end(lr_sweep)
    assert not (tmp_path / "lr").exists() and not (tmp_path / "mlflow.db").exists()
    assert sweep_folds(multirun_config(["cv.fold=0,1,2", "optim.lr=0.1"])) == [0, 1, 2]
    assert sweep_folds(multirun_config([], {"cv.fold": "range(3)"})) == [0, 1, 2]


def test_a_failed_job_still_gets_its_sweep_summarised(sweep: Path, tmp_path: Path):
    """Hydra's basic sweeper raises after a failed job instead of calling on_multirun_end: the callback
    summarises when the last job has ended."""
    from hydra.core.utils import JobReturn, JobStatus

    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("*.pt", "cv_*", "plan.json"))
    (copy / "2" / OOF_FILE).unlink()  # fold 2 died before its out-of-fold predictions
    config = OmegaConf.create({
        "cv": {"fold": None, "folds": FOLDS}, "seed": 0, "evaluation": {"n_boot": 10}, "logger": {"enabled": False},
        "hydra": {"overrides": {"task": ["cv.fold=0,1,2"]}, "sweep": {"dir": str(copy)}, "sweeper": {"params": {}}},
    })  # fmt: skip
    callback = CrossValidationCallback()
    callback.on_multirun_start(config)
    for status in (JobStatus.COMPLETED, JobStatus.COMPLETED):
        callback.on_job_end(config, JobReturn(status=status))
        assert not (copy / "cv_summary.json").exists()
    failed = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("non-finite loss"))
    callback.on_job_end(config, failed)
    (summary,) = json.loads((copy / "cv_summary.json").read_text())["configurations"]
    assert summary["crashed_folds"] == [2] and summary["pooled"]["n_subjects"] < 5
    assert not (copy / "cv_parent_run.json").exists()  # logger.enabled=false: no parent run


def test_the_folds_export_as_one_parity_checked_ensemble(sweep: Path, tmp_path: Path):
    """Acceptance (issue #13): the sweep's three best.pt become one TorchScript file (parity checked in a fresh
    process by tpnet-export) that plain torch.jit.load runs in a process of its own."""
    from train_helpers import REPO, subprocess_env

    checkpoints = [run / "checkpoints" / "best.pt" for run in fold_dirs(sweep)]
    output = tmp_path / "ensemble.pt"
    result = subprocess.run(
        [sys.executable, "-m", "tpnet.export.cli", f"checkpoint=[{','.join(map(str, checkpoints))}]",
         f"output={output}", "parity_frames=1", "log_to_mlflow=false", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"max_abs_diff"' in result.stdout + result.stderr
    script = (
        "import json, sys, torch; extra = {'tpnet_meta.json': ''}; "
        "net = torch.jit.load(sys.argv[1], _extra_files=extra); meta = json.loads(extra['tpnet_meta.json']); "
        "x = torch.rand(1, len(meta['encoding']['channels']), 64, 64); "
        "print(json.dumps({'n': meta['ensemble']['n_members'], 'shape': list(net(x).shape)}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script, str(output)], capture_output=True, text=True, timeout=120
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    info = json.loads(loaded.stdout.strip().splitlines()[-1])
    spec_classes = load_checkpoint(checkpoints[0])["meta"]["classes"]
    assert info == {"n": FOLDS, "shape": [1, len(spec_classes), 64, 64]}
