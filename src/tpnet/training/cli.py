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
    from tpnet.training.train import train  # heavy imports after Hydra has parsed the command line

    validate_train_config(cfg)
    final = train(cfg)
    # Returned to Hydra's sweepers (e.g. Optuna): the monitored validation metric.
    value = final.get(f"best/{cfg.trainer.monitor}")
    return None if value is None else float(value)


def main() -> None:
    try:
        _main()
    except ConfigError as exc:
        print(f"tpnet-train: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
