"""``tpnet-export checkpoint=PATH output=PATH.pt [format=pt2] [register_name=NAME]``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from tpnet.configuration import (
    ConfigError,
    ExportSchema,
    check_command_line,
    config_dir,
    validate_export_config,
)

log = logging.getLogger("tpnet")


def run_export(cfg: DictConfig) -> dict:
    from tpnet.core.model_file import build_meta
    from tpnet.data.datamodule import frame_dataset, setup_data
    from tpnet.export.parity import export_model
    from tpnet.export.registry import log_export_to_mlflow
    from tpnet.models.from_checkpoint import load_deployable_model
    from tpnet.tracking.mlflow_logger import resolve_tracking_uri

    checkpoint = Path(cfg.checkpoint)
    model, state = load_deployable_model(checkpoint)
    train_cfg = OmegaConf.create(state["config"])
    meta = state["meta"]

    real_inputs = []
    if int(cfg.parity_frames) > 0:
        try:
            data_cfg = train_cfg.data
            data_cfg.spacing_mm = float(meta["spacing_mm"])
            data = setup_data(
                data_cfg, int(train_cfg.seed), train_cfg.cv.fold, train_cfg.cv.folds, check=False
            )
            frames = frame_dataset(data, "val")
            real_inputs = [frames[i]["image"] for i in range(min(int(cfg.parity_frames), len(frames)))]
        except Exception as exc:  # the training data may not be on this machine; random inputs still run
            log.warning("parity on real frames skipped: training dataset unavailable (%s)", exc)

    model_meta = build_meta(**meta, export_method="script", mlflow_run_id=state.get("mlflow_run_id"))
    fmt = str(cfg.format)  # torchscript | pt2 | onnx (export_model in export/parity.py dispatches)
    report = export_model(model, model_meta, Path(cfg.output), fmt=fmt, real_inputs=real_inputs,
                          atol=float(cfg.atol), checkpoint=checkpoint)  # fmt: skip
    log.info("exported %s", json.dumps(report))
    if cfg.log_to_mlflow:
        report["mlflow"] = log_export_to_mlflow(
            Path(cfg.output),
            state.get("mlflow_run_id"),
            resolve_tracking_uri(cfg.tracking_uri),
            cfg.register_name,
        )
    return report


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def _main(cfg: DictConfig) -> None:
    # Before any heavy import, the checkpoint or the data: a typo fails in about a second, naming the key.
    try:
        validate_export_config(cfg)
    except ConfigError as exc:
        _config_error(exc)

    from tpnet.core.checkpoint import CheckpointError
    from tpnet.export.export import ExportError
    from tpnet.export.parity import ParityError

    try:
        run_export(cfg)
    except (CheckpointError, ExportError, ParityError) as exc:
        print(f"tpnet-export: {exc}", file=sys.stderr)
        sys.exit(2)


def _config_error(exc: ConfigError) -> None:
    print(f"tpnet-export: configuration error: {exc}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    try:
        check_command_line(sys.argv[1:], ExportSchema, "tpnet-export")
    except ConfigError as exc:
        _config_error(exc)
    _main()


if __name__ == "__main__":
    main()
