"""``tpnet-train``: Hydra entry point (``python scripts/train.py`` is the same program)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from tpnet.configuration import (
    ConfigError,
    check_run_folder,
    config_dir,
    run_dir_from_hydra,
    validate_train_config,
)
from tpnet.core.run_lock import FolderLockedError, lock_folder, unlock_folder

log = logging.getLogger("tpnet")

RUN_LOCK_NAME = ".tpnet-train.lock"


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _main(cfg: DictConfig) -> float | None:
    # Validate before the heavy imports: a typo fails in about a second, before any data or training.
    try:
        validate_train_config(cfg)
    except ConfigError as exc:
        _fail(f"configuration error: {exc}")

    run_dir = run_dir_from_hydra()
    # One tpnet-train per run folder (metrics.jsonl, checkpoints, one MLflow run). Under torchrun only rank 0
    # (RANK, set before the process group exists) writes the folder, so only it takes the lock.
    lock = None
    if int(os.environ.get("RANK", "0")) == 0:
        try:
            lock = lock_folder(
                run_dir, RUN_LOCK_NAME, "tpnet-train", "wait for it, or choose another hydra.run.dir"
            )
        except FolderLockedError as exc:
            _fail(str(exc))
    try:
        return _locked_main(cfg, run_dir)
    finally:
        if lock is not None:
            unlock_folder(lock)


def _locked_main(cfg: DictConfig, run_dir: Path) -> float | None:
    try:
        check_run_folder(run_dir, cfg.trainer.resume)
    except ConfigError as exc:
        _fail(f"configuration error: {exc}")

    from tpnet.core.checkpoint import CheckpointError
    from tpnet.data.check import DatasetCheckError
    from tpnet.training.train import NonFiniteLossError, train

    try:
        final = train(cfg)
    except ConfigError as exc:  # found once the data are known (e.g. trainer.monitor names no class)
        _fail(f"configuration error: {exc}")
    except (CheckpointError, DatasetCheckError, NonFiniteLossError) as exc:
        # Expected failures: a clear message and a non-zero exit, not a traceback.
        _fail(str(exc))
    # Returned to Hydra's sweepers (e.g. Optuna): the monitored validation metric (None when the run fell back
    # to another monitor, see train.py).
    value = final.get(f"best/{cfg.trainer.monitor}")
    return None if value is None else float(value)


def _fail(message: str) -> None:
    log.error(message)
    print(f"tpnet-train: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
