"""Runs a person can read, from one real ``tpnet-train -m seed=0,0`` (two runs of the same config, in one process)
on a dataset without trigger-point classes (``[background, nerve, vessel]``, a contract dataset written here):

- unique, meaningful MLflow run names (the seed is set before MLflow would draw its random name, so two runs
  of one config used to get the same one), tags for the run folder, sweep, overrides and recipe;
- train.log (not Hydra's cli.log), metrics.jsonl and progress.png as artifacts;
- the console: config, device, data, model at start, one line per epoch, test metrics and where things are;
- the default monitor (val/det_f1) cannot be computed: best.pt follows the mean foreground Dice, said once;
- metrics.json holds no F1 of 1.0 for a split without a true trigger point: null, with the reason;
- a second run into a finished run's folder ends in one line.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tpnet.core.checkpoint import load_checkpoint
from train_helpers import REPO, mlflow_runs, read_history, run_train, subprocess_env, train_command

SUBJECTS, FRAMES, SIZE = 6, 2, 64  # 4/1/1 subjects for train/val/test
CLASSES = ["background", "nerve", "vessel"]
EPOCHS = 2


def write_nerve_vessel_dataset(root: Path) -> Path:
    """A contract-v1 dataset (README "Dataset contract") of B-mode frames with a nerve and a vessel: no TrP class."""
    (root / "bmode").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(7)
    rows = []
    for subject in range(SUBJECTS):
        for frame in range(FRAMES):
            sample_id = f"s{subject}_f{frame}"
            mask = np.zeros((SIZE, SIZE), np.uint8)
            cv2.ellipse(mask, (20 + 3 * frame, 30 + subject), (10, 5), 15 * subject, 0, 360, 1, -1)  # nerve
            cv2.circle(mask, (44, 44 - 2 * frame), 6, 2, -1)  # vessel
            image = rng.rayleigh(0.3, mask.shape)
            image[mask == 1] += 0.4  # a bright nerve, a dark vessel
            image[mask == 2] *= 0.2
            cv2.imwrite(str(root / f"bmode/{sample_id}.png"), np.clip(image * 255, 0, 255).astype(np.uint8))
            cv2.imwrite(str(root / f"masks/{sample_id}.png"), mask)
            rows.append(f"{sample_id},p{subject},bmode/{sample_id}.png,,masks/{sample_id}.png,0.2")
    (root / "dataset.yaml").write_text(f"name: nerves_vessels\nclasses: {CLASSES}\nelasto_unit: kPa\n")
    (root / "manifest.csv").write_text(
        "sample_id,subject_id,bmode,elasto,mask,spacing_mm\n" + "\n".join(rows) + "\n"
    )
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, mlflow_store_template) -> dict:
    root = tmp_path_factory.mktemp("readable")
    data_root = write_nerve_vessel_dataset(root / "nerves_vessels")
    shutil.copy(mlflow_store_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    overrides = [
        f"data.root={data_root}", "data.spacing_mm=0.2", "data.patch_size=[32,32]", "data.batch_size=4",
        "data.num_workers=0", "model.base_width=4", "model.depth=2", "trainer.device=cpu",
        f"trainer.max_epochs={EPOCHS}", "evaluation.n_boot=20", "logger.overlay_every_n_epochs=null",
        f"logger.tracking_uri={uri}",
        "data.samples_per_epoch=40",  # 10 steps per epoch: a progress bar would redraw within each epoch
        "optim.lr=0.01",  # a Dice above 0 within two epochs
    ]  # fmt: skip
    command = train_command(["-m", "seed=0,0", *overrides, f"hydra.sweep.dir={root / 'sweep'}"])
    log_path = root / "log.txt"
    with log_path.open("wb") as log_file:  # a file, as `> log.txt 2>&1` gives: not a terminal
        code = subprocess.run(command, cwd=REPO, env=subprocess_env(), stdout=log_file, stderr=subprocess.STDOUT,
                              timeout=300).returncode  # fmt: skip
    log = log_path.read_bytes()
    assert code == 0, log.decode(errors="replace")[-4000:]
    return {"root": root, "uri": uri, "sweep_dir": root / "sweep", "log": log, "overrides": overrides}


def _lines(sweep: dict) -> list[str]:
    return sweep["log"].decode().splitlines()


def _runs(sweep: dict) -> list:
    runs = sorted(mlflow_runs(sweep["uri"]), key=lambda r: r.data.tags.get("sweep_job", ""))
    assert len(runs) == 2, [r.info.run_name for r in runs]
    return runs


def test_two_runs_of_one_config_get_unique_meaningful_names(sweep):
    names = [run.info.run_name for run in _runs(sweep)]
    assert all(re.fullmatch(r"default-unet-[0-9a-f]{6}", name) for name in names), names
    assert names[0] != names[1]


def test_tags_name_the_run_folder_sweep_overrides_and_recipe(sweep):
    for job, run in enumerate(_runs(sweep)):
        tags = run.data.tags
        assert tags["run_folder"] == str((sweep["sweep_dir"] / str(job)).resolve())
        assert (tags["sweep_id"], tags["sweep_job"]) == (str(sweep["sweep_dir"].resolve()), str(job))
        # as Hydra records them: a sweep escapes the ':' of sqlite:///
        assert tags["overrides"].replace("\\:", ":").split() == ["seed=0", *sweep["overrides"]]
        assert (tags["recipe"], tags["model"], tags["dataset"]) == ("default", "unet", "nerves_vessels")
        assert "fold" not in tags  # not a cross-validation fold


def test_run_log_history_and_progress_plot_are_uploaded(sweep, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=sweep["uri"])
    for job, run in enumerate(_runs(sweep)):
        run_dir = sweep["sweep_dir"] / str(job)
        assert run.info.status == "FINISHED"
        assert {"train.log", "metrics.jsonl", "progress.png"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }
        assert (run_dir / "train.log").is_file() and not (run_dir / "cli.log").exists()
        log = Path(
            client.download_artifacts(run.info.run_id, "train.log", str(tmp_path / str(job)))
        ).read_text()
        assert f"MLflow run {run.info.run_name} ({run.info.run_id})" in log.splitlines()[-1]  # uploaded last
        history = Path(client.download_artifacts(run.info.run_id, "metrics.jsonl", str(tmp_path / str(job))))
        assert history.read_text() == (run_dir / "metrics.jsonl").read_text()
        plot = cv2.imread(
            client.download_artifacts(run.info.run_id, "progress.png", str(tmp_path / str(job)))
        )
        assert plot.shape == (600, 800, 3) and plot.std() > 10  # drawn, not blank


def test_training_log_written_to_a_file_has_no_carriage_returns(sweep):
    # `tpnet-train ... > log.txt` (CI, SLURM's slurm-*.out) and the run folder's train.log read well in `less`:
    # no progress-bar frames, one plain line per epoch.
    assert b"\r" not in sweep["log"], repr(sweep["log"][max(0, sweep["log"].find(b"\r") - 200) :][:400])
    for job in (0, 1):
        run_log = (sweep["sweep_dir"] / str(job) / "train.log").read_bytes()
        assert b"\r" not in run_log
        assert re.findall(rb"\]\[INFO\] - epoch (\d+)/2  train/loss=", run_log) == [b"1", b"2"]


def test_console_says_config_device_data_model_each_epoch_and_where_things_are(sweep):
    lines = _lines(sweep)
    for start in ("overrides: seed=0 data.root=", "config: data=synthetic model=unet ", "device cpu (trainer.device=cpu)",
                  "data nerves_vessels: subjects/frames train 4/8, val 1/2, test 1/2; training at 0.2 mm/px",
                  "model UNet (model=unet): "):  # fmt: skip
        assert sum(line.startswith(f"tpnet-train: {start}") for line in lines) == 2, (start, lines)
    mlflow_lines = [line for line in lines if line.startswith("tpnet-train: MLflow run default-unet-")]
    assert len(mlflow_lines) == 4  # at start and at the end of each run
    epochs = [line for line in lines if re.match(r"tpnet-train: epoch \d+/2  ", line)]
    assert len(epochs) == 2 * EPOCHS, lines
    for line in epochs:
        assert re.search(
            r"train/loss=\d\.\d{4}  val/loss=\d\.\d{4}  val/dice_mean=\d\.\d{4}  lr=\S+  \d+\.\d s", line
        )
        assert "det_f1" not in line  # undefined here: not shown as a number
    assert epochs[0].endswith("new best val/dice_mean")
    assert sum(line.startswith("tpnet-train: test (1 subject, 2 frames, 0 true TrPs") for line in lines) == 2
    assert any("run folder: " in line for line in lines)
    assert any(
        line.strip().startswith("tpnet-train:   best checkpoint: checkpoints/best.pt (epoch")
        for line in lines
    )
    assert "Traceback" not in sweep["log"].decode()


def test_without_trigger_point_classes_best_pt_follows_dice_said_once(sweep):
    notes = [line for line in _lines(sweep) if "trainer.monitor=val/det_f1 cannot be computed" in line]
    assert len(notes) == 2  # once per run
    assert "(the dataset has no trigger-point class): monitoring val/dice_mean (max)" in notes[0]
    for job in (0, 1):
        run_dir = sweep["sweep_dir"] / str(job)
        assert "monitoring val/dice_mean (max)" in (run_dir / "train.log").read_text()
        history = read_history(run_dir)
        best = load_checkpoint(run_dir / "checkpoints/best.pt")
        dice = [row["val/dice_mean"] for row in history]
        assert best["best_metric"] == max(dice) and best["epoch"] == 1 + dice.index(max(dice))
        assert all(row["val/det_f1"] is None for row in history)  # undefined, not 1.0


def test_metrics_json_has_no_f1_for_a_split_without_trigger_points(sweep):
    report = json.loads((sweep["sweep_dir"] / "0" / "metrics.json").read_text())
    assert report["n_gt_trp"] == 0 and report["dice_mean"] is not None
    for key in ("det_f1", "det_precision", "det_recall", "det_f1@3mm"):
        assert report[key] is None and report["ci95"][key] == [None, None], key
        assert "no true trigger point" in report["undefined"][key]
    assert not (sweep["sweep_dir"] / "0" / "calibration.json").exists()  # nothing to calibrate F1 on


def test_a_second_run_into_a_finished_run_folder_ends_in_one_line(sweep):
    run_dir = sweep["sweep_dir"] / "0"
    before = (run_dir / "metrics.jsonl").read_text()
    result = run_train([*sweep["overrides"], f"hydra.run.dir={run_dir}"], timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"tpnet-train: configuration error: hydra.run.dir: {run_dir} already holds a run ("
    )
    assert line.endswith("pass trainer.resume=auto to continue it, or choose a new hydra.run.dir")
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_a_run_folder_holding_only_a_log_is_not_refused(tmp_path, monkeypatch, capsys):
    # A run that failed at start (a typo) leaves train.log (and .hydra/) behind: the next try may use the folder.
    from tpnet.training import cli

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.log").write_text("[...][tpnet][ERROR] - configuration error: trainer.max_epoch: ...\n")
    missing = tmp_path / "no_dataset"
    monkeypatch.setattr(sys, "argv", ["tpnet-train", f"hydra.run.dir={run_dir}", f"data.root={missing}"])
    with pytest.raises(SystemExit):
        cli.main()
    stderr = capsys.readouterr().err
    # Past the run-folder check: it got as far as the data set-up, which names the missing dataset.
    assert "already holds a run" not in stderr and str(missing) in stderr, stderr
