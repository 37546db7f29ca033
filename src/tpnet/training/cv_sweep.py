"""Cross-validation sweeps (``tpnet-train -m cv.fold=0,1,2``): placeholder hooks, filled in by issue #13.

``CrossValidationCallback`` is a Hydra callback (``hydra.callbacks`` in train.yaml); ``fold_tags`` and
``after_fold`` are called by ``training/train.py``. Importing this module must stay light (Hydra instantiates
the callback for every run, single runs included): no torch at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def fold_tags(cfg: DictConfig, run_dir: Path) -> dict[str, str]:
    """Extra MLflow tags for a fold's run (``mlflow.parentRunId`` when a sweep's parent run exists)."""
    return {}


def after_fold(
    cfg: DictConfig, best_path: Path, data: Any, device: Any, amp_dtype: Any, classes: list[str], run_dir: Path,
    tracker: Any,
) -> None:  # fmt: skip
    """Rank 0, after calibration: write this fold's out-of-fold predictions (its validation subjects)."""


class CrossValidationCallback(Callback):
    """Hydra callback: a parent MLflow run at sweep start, the CV summary at sweep end."""

    def __init__(self, **kwargs: Any) -> None:
        self.options = kwargs

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        pass

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        pass
