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
    except KeyboardInterrupt:
        _fail(f"interrupted; {run_dir / 'checkpoints/last.pt'} holds the last finished epoch: "
              "trainer.resume=auto continues the run", code=130, end_sweep=True)  # fmt: skip
    # Returned to Hydra's sweepers (e.g. Optuna): the monitored validation metric (None when the run fell back
    # to another monitor, see train.py).
    value = final.get(f"best/{cfg.trainer.monitor}")
    return None if value is None else float(value)


class JobFailed(RuntimeError):
    """A job of a sweep (``-m``) failed; its one-line message is already printed. Hydra records the job as
    FAILED and runs the others (a SystemExit would end the whole sweep, cross-validation summary included)."""


def _fail(message: str, code: int = 2, end_sweep: bool = False) -> None:
    """One line on stderr and in train.log (the console handler leaves the logged copy out), then exit (a
    single run), or fail this job only (a sweep; ``end_sweep`` for an interruption)."""
    from tpnet.training.console import FILE_ONLY

    log.error(message, extra=FILE_ONLY)
    print(f"tpnet-train: {message}", file=sys.stderr)
    if not end_sweep and _in_sweep():
        raise JobFailed(message) from None
    sys.exit(code)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
