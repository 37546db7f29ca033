"""``tpnet-train``: Hydra entry point (``python scripts/train.py`` is the same program)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from tpnet.configuration import ConfigError, config_dir, validate_train_config

log = logging.getLogger("tpnet")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _main(cfg: DictConfig) -> float | None:
    # Validate before the heavy imports: a typo fails in about a second, before any data or training.
    try:
        validate_train_config(cfg)
    except ConfigError as exc:
        _fail(f"configuration error: {exc}")

    from tpnet.data.check import DatasetCheckError
    from tpnet.training.checkpoint import CheckpointError
    from tpnet.training.train import NonFiniteLossError, train

    try:
        final = train(cfg)
    except (CheckpointError, DatasetCheckError, NonFiniteLossError) as exc:
        # Expected failures: a clear message and a non-zero exit, not a traceback.
        _fail(str(exc))
    # Returned to Hydra's sweepers (e.g. Optuna): the monitored validation metric.
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
