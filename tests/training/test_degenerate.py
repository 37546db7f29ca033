"""Degenerate label sets (all masks empty, no trigger-point class, 1x1 frames) are warned about at start, and a
monitor that cannot be computed on them falls back to one that can, so ``best.pt`` follows a real metric."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tpnet.configuration import DETECTION_RADII_MM, MONITORS, ConfigError, check_monitor_name
from tpnet.core.checkpoint import load_checkpoint
from tpnet.training.label_set import choose_monitor, label_set_warnings, summarise_labels
from train_helpers import read_history, run_train, tiny_overrides


def _copy_of_synthetic(synthetic_cache: Path, to: Path) -> Path:
    (source,) = [p for p in synthetic_cache.iterdir() if (p / "manifest.csv").is_file()]
    return shutil.copytree(source, to)


def _masks(root: Path) -> list[Path]:
    with (root / "manifest.csv").open() as fh:
        return [root / row["mask"] for row in csv.DictReader(fh)]


def _setup(root: Path, synthetic_cache: Path):
    from hydra import compose, initialize_config_dir

    from tpnet.configuration import config_dir
    from tpnet.data.datamodule import setup_data

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", [*tiny_overrides(synthetic_cache), f"data.root={root}"])
    return setup_data(cfg.data, int(cfg.seed), check=False)


@pytest.mark.slow
def test_all_empty_masks_warn_fall_back_to_val_loss_and_write_best(
    tmp_path, synthetic_cache, tiny_train_overrides
):
    root = _copy_of_synthetic(synthetic_cache, tmp_path / "empty")
    for path in _masks(root):
        cv2.imwrite(str(path), np.zeros_like(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)))
    run_dir = tmp_path / "run"
    result = run_train(
        [*tiny_train_overrides, f"data.root={root}", "trainer.max_epochs=2", "logger.enabled=false",
         f"hydra.run.dir={run_dir}"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "WARNING: all 12 training masks are empty" in result.stderr
    assert "trainer.monitor=val/det_f1 cannot be computed" in result.stderr
    assert "monitoring val/loss (min)" in result.stderr
    history = read_history(run_dir)
    best = load_checkpoint(run_dir / "checkpoints/best.pt")
    assert best["best_metric"] == min(row["val/loss"] for row in history)
    best_epoch = min(history, key=lambda row: row["val/loss"])["epoch"]
    assert best["epoch"] == best_epoch


def test_no_trigger_point_class_is_warned_and_detection_monitors_fall_back(tmp_path, synthetic_cache):
    root = _copy_of_synthetic(synthetic_cache, tmp_path / "no_trp")
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    spec["classes"] = ["background", "nodule_a", "nodule_b", "vessel"]  # same labels, no *_trp name
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    data = _setup(root, synthetic_cache)
    classes = list(data.spec.classes)
    summary = summarise_labels(data)

    warnings = label_set_warnings(summary, classes, data.spacing_mm)
    assert any("include no trigger-point class" in w for w in warnings), warnings
    for monitor in ("val/det_f1", "val/det_f1@3mm", "val/loc_err_mm", "val/frame_auc", "val/fp_per_frame"):
        chosen, mode, why = choose_monitor(monitor, "max", summary, classes)
        # The vessels are there to segment: best.pt follows their Dice, not the loss.
        assert (chosen, mode) == ("val/dice_mean", "max") and "no trigger-point class" in why
    assert choose_monitor("val/dice_mean", "max", summary, classes) == ("val/dice_mean", "max", None)


def test_frames_smaller_than_the_minimum_are_warned_naming_one(tmp_path, synthetic_cache):
    root = tmp_path / "tiny_frames"
    for sub in ("bmode", "masks"):
        (root / sub).mkdir(parents=True)
    rows = []
    for subject in range(4):
        sample_id = f"s{subject}_f0"
        cv2.imwrite(str(root / f"bmode/{sample_id}.png"), np.full((1, 1), 128, np.uint8))
        cv2.imwrite(str(root / f"masks/{sample_id}.png"), np.ones((1, 1), np.uint8))
        rows.append(f"{sample_id},s{subject},bmode/{sample_id}.png,,masks/{sample_id}.png,0.2")
    (root / "dataset.yaml").write_text("name: tiny\nclasses: [background, active_trp]\nelasto_unit: kPa\n")
    (root / "manifest.csv").write_text(
        "sample_id,subject_id,bmode,elasto,mask,spacing_mm\n" + "\n".join(rows)
    )
    data = _setup(root, synthetic_cache)
    warnings = label_set_warnings(summarise_labels(data), list(data.spec.classes), data.spacing_mm)
    (train_warning,) = [w for w in warnings if " train frames are smaller" in w]
    assert "smaller than 16 px" in train_warning and "1x1 px" in train_warning
    assert any(row.sample_id in train_warning for row in data.splits["train"])


def test_monitor_names_are_the_metrics_an_epoch_logs():
    from tpnet.evaluation.metrics import aggregate, frame_record

    classes = ["background", "active_trp"]
    labels = np.zeros((8, 8), np.int64)
    record = frame_record(labels, labels, [], [], sample_id="a", subject_id="s", num_classes=2)
    logged = {"train/loss", "val/loss", *(f"val/{k}" for k in aggregate([record], classes))}
    assert set(MONITORS) <= logged
    assert {f"val/det_f1@{r:g}mm" for r in DETECTION_RADII_MM} <= logged
    assert {"val/dice/active_trp", "val/iou/active_trp"} <= logged


def test_per_class_monitor_must_name_a_class_of_the_dataset():
    check_monitor_name("val/dice/vessel", 5.0, ["background", "vessel"])
    check_monitor_name("val/dice/vessel", 5.0)  # classes not known yet: checked later
    with pytest.raises(ConfigError, match="trainer.monitor: 'val/dice/vesel' names no class"):
        check_monitor_name("val/dice/vesel", 5.0, ["background", "vessel"])
    with pytest.raises(ConfigError, match="trainer.monitor: 'val/det_f1@7mm' is not a logged metric"):
        check_monitor_name("val/det_f1@7mm", 5.0)


def test_monitor_falls_back_to_dice_where_it_exists_and_empty_splits_are_warned():
    from tpnet.training.label_set import SplitLabels

    classes = ["background", "active_trp", "latent_trp", "vessel"]
    vessels_only = SplitLabels(n_frames=3, labels={0, 3})
    summary = {"train": SplitLabels(12, {0, 1, 3}), "val": vessels_only, "test": SplitLabels(0)}
    chosen, mode, why = choose_monitor("val/det_f1", "max", summary, classes)
    assert (chosen, mode) == ("val/dice_mean", "max")
    assert why.startswith(
        "trainer.monitor=val/det_f1 cannot be computed (no validation mask contains a trigger"
    )
    assert choose_monitor("val/dice/latent_trp", "max", summary, classes)[:2] == ("val/dice_mean", "max")
    assert choose_monitor("val/loss", "min", summary, classes) == ("val/loss", "min", None)
    no_val = {**summary, "val": SplitLabels(0)}
    assert choose_monitor("val/det_f1", "max", no_val, classes)[:2] == ("train/loss", "min")

    warnings = label_set_warnings(summary, classes, 0.2)
    assert any(
        w.startswith("no validation mask contains a trigger point: detection metrics") for w in warnings
    )
    assert any(w.startswith("the test split is empty (no labelled frame): no test metrics") for w in warnings)
    assert any(
        w.startswith("the validation split is empty") for w in label_set_warnings(no_val, classes, 0.2)
    )
