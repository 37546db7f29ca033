"""What a person reads while ``tpnet-train`` runs: a short start summary, one line per epoch, the test metrics with
their intervals and where everything is.

Everything goes through ``logging``: Hydra's job_logging (``configs/hydra/job_logging/tpnet_train.yaml``) sends
each record to the console (stderr, ``ConsoleFormatter``: "tpnet-train: ...", no timestamps) and to the run's
``train.log`` (timestamps, logger names). A record logged with ``extra=FILE_ONLY`` reaches the log file only.
Importing this module stays light (no torch): Hydra builds the formatter before any configuration check runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

FILE_ONLY = {"file_only": True}

# The validation metrics an epoch line shows (when defined); MLflow and metrics.jsonl have them all.
EPOCH_METRICS = ("val/dice_mean", "val/det_f1")
# The test metrics the end of a run shows, with their 95 % intervals; metrics.json has them all.
TEST_METRICS = ("det_f1", "det_precision", "det_recall", "loc_err_mm", "dice_mean")


class ConsoleFormatter(logging.Formatter):
    """``<prefix>: [WARNING: ][(other.library) ]message``: short lines for a terminal; the log file keeps the
    timestamps. A multi-line message (a table) gets the prefix once."""

    def __init__(self, prefix: str = "tpnet-train") -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        ours = record.name == "tpnet" or record.name.startswith("tpnet.")
        source = "" if ours or record.name == "root" else f"({record.name}) "
        text = f"{self.prefix}: {level}{source}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class ConsoleHandler(logging.StreamHandler):
    """A stream handler that leaves out records logged with ``extra=FILE_ONLY`` (details for train.log)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "file_only", False):
            super().emit(record)


# ---- start ------------------------------------------------------------------------------------------------------
def config_lines(overrides: Sequence[str], choices: Mapping[str, str]) -> list[str]:
    """The command line's overrides and the option chosen in every config group: the config in two lines
    (config.yaml in the run folder has it resolved)."""
    groups = " ".join(f"{group}={option}" for group, option in choices.items())
    return [f"overrides: {' '.join(overrides) if overrides else '(none: the defaults)'}", f"config: {groups}"]


def device_line(device: str, requested: str, precision: str, detail: str = "") -> str:
    """``device cuda:0 (NVIDIA H200; trainer.device=auto), precision bf16``: the device is always said, so a
    machine with a GPU never trains on its CPU unnoticed."""
    why = f"{detail}; " if detail else ""
    return f"device {device} ({why}trainer.device={requested}), precision {precision}"


def data_line(name: str, sizes: Mapping[str, tuple[int, int]], spacing_mm: float) -> str:
    """``data NAME: subjects/frames train 4/12, val 1/3, test 1/3; training at 0.2 mm/px``."""
    counts = ", ".join(f"{split} {subjects}/{frames}" for split, (subjects, frames) in sizes.items())
    return f"data {name}: subjects/frames {counts}; training at {spacing_mm:.4g} mm/px"


def model_line(name: str, option: str, n_parameters: int, gflops: float, patch: Sequence[int]) -> str:
    size = "x".join(str(int(p)) for p in patch)
    return f"model {name} (model={option}): {n_parameters:,} parameters, {gflops:.3g} GFLOPs per {size} patch"


# ---- per epoch --------------------------------------------------------------------------------------------------
def epoch_line(
    epoch: int, max_epochs: int, metrics: Mapping[str, float], seconds: float, monitor: str, improved: bool
) -> str:
    """One line per epoch: ``epoch 3/30  train/loss=0.8123  val/loss=0.7345  val/dice_mean=0.4120
    val/det_f1=0.5330  lr=2.94e-04  12.3 s  new best val/det_f1``. Undefined (NaN) metrics are left out."""
    shown = ["train/loss", "val/loss", *EPOCH_METRICS]
    if monitor not in shown:
        shown.append(monitor)
    parts = [f"epoch {epoch}/{max_epochs}"]
    parts += [f"{key}={metrics[key]:.4f}" for key in shown if _defined(metrics.get(key))]
    if _defined(metrics.get("lr")):
        parts.append(f"lr={metrics['lr']:.3g}")
    parts.append(f"{seconds:.1f} s")
    if improved:
        parts.append(f"new best {monitor}")
    return "  ".join(parts)


# ---- end --------------------------------------------------------------------------------------------------------
def report_lines(report: Mapping[str, Any], split: str = "test") -> list[str]:
    """The test metrics with their 95 % intervals, and why the undefined ones are undefined (null in
    metrics.json)."""
    ci = report.get("ci95", {})
    shown = []
    for key in TEST_METRICS:
        value = report.get(key)
        if _defined(value):
            lo, hi = ci.get(key, (None, None))
            interval = f" [{lo:.3f}, {hi:.3f}]" if _defined(lo) and _defined(hi) else ""
            shown.append(f"{key} {value:.3f}{interval}")
    counts = ", ".join(
        _count(report.get(key), what) for key, what in (("n_subjects", "subject"), ("n_frames", "frame"),
                                                        ("n_gt_trp", "true TrP"))
    )  # fmt: skip
    head = f"{split} ({counts}; 95 % CI over subjects): "
    lines = [head + (", ".join(shown) if shown else "no metric defined")]
    by_reason: dict[str, list[str]] = {}
    for key, reason in report.get("undefined", {}).items():
        if key in TEST_METRICS:
            by_reason.setdefault(reason, []).append(key)
    lines += [
        f"{split} {', '.join(keys)} undefined (null in metrics.json): {why}"
        for why, keys in by_reason.items()
    ]
    return lines


def where_lines(run_dir: str, files: Mapping[str, str], mlflow: str | None) -> list[str]:
    """``run folder: ...`` then one indented line per file that exists (label -> path inside the folder)."""
    width = max((len(label) for label in files), default=0)
    lines = [f"run folder: {run_dir}"]
    lines += [f"  {label + ':':<{width + 1}} {path}" for label, path in files.items()]
    if mlflow:
        lines.append(mlflow)
    return lines


def _count(n: Any, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _defined(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
