"""The console lines of tpnet-train (tpnet.training.console): what they say, and what they leave out. The real run's
console is checked in test_readable_runs.py."""

from __future__ import annotations

import io
import logging
import math

from tpnet.training.console import (
    FILE_ONLY,
    ConsoleFormatter,
    ConsoleHandler,
    config_lines,
    epoch_line,
    report_lines,
)


def _console_and_file(name: str) -> tuple[logging.Logger, io.StringIO, io.StringIO]:
    """A logger wired as configs/hydra/job_logging/tpnet_train.yaml wires the root logger."""
    console, file = io.StringIO(), io.StringIO()
    to_console = ConsoleHandler(console)
    to_console.setFormatter(ConsoleFormatter("tpnet-train"))
    to_file = logging.StreamHandler(file)
    to_file.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    logger = logging.getLogger(name)
    logger.handlers[:] = [to_console, to_file]
    logger.propagate, logger.level = False, logging.INFO
    return logger, console, file


def test_console_lines_are_short_and_file_only_records_stay_in_the_log():
    logger, console, file = _console_and_file("tpnet.training.train")
    logger.info("epoch 1/3  train/loss=1.0000")
    logger.warning("no validation mask contains a trigger point")
    logger.info("validated 3 frames from 1 rank(s)", extra=FILE_ONLY)
    logger.error("configuration error: x: y", extra=FILE_ONLY)  # the CLI prints it itself: one line, not two
    assert console.getvalue().splitlines() == [
        "tpnet-train: epoch 1/3  train/loss=1.0000",
        "tpnet-train: WARNING: no validation mask contains a trigger point",
    ]
    assert file.getvalue().splitlines() == [
        "[tpnet.training.train][INFO] - epoch 1/3  train/loss=1.0000",
        "[tpnet.training.train][WARNING] - no validation mask contains a trigger point",
        "[tpnet.training.train][INFO] - validated 3 frames from 1 rank(s)",
        "[tpnet.training.train][ERROR] - configuration error: x: y",
    ]
    other, console, _ = _console_and_file("mlflow.store")
    other.warning("slow")
    assert console.getvalue() == "tpnet-train: WARNING: (mlflow.store) slow\n"  # whose message it is


def test_epoch_line_shows_defined_metrics_lr_time_and_new_best():
    metrics = {"train/loss": 0.81234, "val/loss": 0.7, "val/dice_mean": 0.4121, "val/det_f1": math.nan,
               "lr": 2.94e-4, "val/frame_auc": 0.77, "throughput/img_per_s": 50.0}  # fmt: skip
    line = epoch_line(3, 30, metrics, 12.34, "val/frame_auc", improved=True)
    assert line == (
        "epoch 3/30  train/loss=0.8123  val/loss=0.7000  val/dice_mean=0.4121  val/frame_auc=0.7700  "
        "lr=0.000294  12.3 s  new best val/frame_auc"
    )  # det_f1 undefined (NaN): left out; the monitor is shown though not a default column
    assert epoch_line(4, 30, {"train/loss": 0.5, "lr": 1e-3}, 2.0, "val/det_f1", improved=False) == (
        "epoch 4/30  train/loss=0.5000  lr=0.001  2.0 s"
    )  # not a validation epoch


def test_test_lines_give_intervals_and_why_metrics_are_undefined():
    report = {
        "n_subjects": 3, "n_frames": 9, "n_gt_trp": 0, "dice_mean": 0.5, "det_f1": None, "det_recall": None,
        "ci95": {"dice_mean": [0.4, 0.61], "det_f1": [None, None]},
        "undefined": {"det_f1": "nothing to find", "det_recall": "nothing to find", "dice/nerve": "absent"},
    }  # fmt: skip
    assert report_lines(report) == [
        "test (3 subjects, 9 frames, 0 true TrPs; 95 % CI over subjects): dice_mean 0.500 [0.400, 0.610]",
        "test det_f1, det_recall undefined (null in metrics.json): nothing to find",
    ]


def test_config_lines_say_the_overrides_and_the_groups():
    assert config_lines([], {"data": "synthetic", "model": "unet"}) == [
        "overrides: (none: the defaults)",
        "config: data=synthetic model=unet",
    ]
