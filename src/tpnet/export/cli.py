"""``tpnet-export checkpoint=PATH output=PATH.pt [format=pt2] [register_name=NAME [register_alias=champion]]``.

``checkpoint=[fold0/.../best.pt,fold1/...]`` exports the folds' ensemble (``tpnet.models.ensemble``) as one file.
"""

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

MLFLOW_EXAMPLE_SIDE_PX = 64  # the MLflow Model's input example: a corner of a real frame, kept small (JSON)


def run_export(cfg: DictConfig) -> dict:
    from tpnet.core.model_file import build_meta
    from tpnet.data.datamodule import frame_dataset
    from tpnet.export.export import ExportError
    from tpnet.export.parity import export_model
    from tpnet.models.from_checkpoint import load_deployable

    deployable = load_deployable(cfg.checkpoint)
    output = Path(cfg.output)
    for path in deployable.paths:  # export_model guards one checkpoint; an ensemble has several inputs
        if output.resolve() == path.resolve():
            raise ExportError(f"{output}: refusing to overwrite the input checkpoint")
    state, meta, ensemble = deployable.first_state, deployable.meta, deployable.ensemble
    if ensemble:
        log.info("exporting the ensemble of %d checkpoints (%s); post-processing: %s",
                 ensemble["n_members"], ", ".join(map(str, deployable.paths)), ensemble["postprocess_rule"])  # fmt: skip

    # Real parity frames from the (first) checkpoint's validation split, as its training saw them.
    real_inputs, data = [], None
    if int(cfg.parity_frames) > 0:
        try:
            data = _training_data(state, meta)
            frames = frame_dataset(data, "val")
            real_inputs = [frames[i]["image"] for i in range(min(int(cfg.parity_frames), len(frames)))]
        except Exception as exc:  # the training data may not be on this machine; random inputs still run
            log.warning("parity on real frames skipped: training dataset unavailable (%s)", exc)

    run_id = None if ensemble else state.get("mlflow_run_id")
    model_meta = build_meta(**meta, export_method="script", mlflow_run_id=run_id)
    if ensemble:
        model_meta["ensemble"] = ensemble  # an optional key: validate_meta checks the required ones only
    fmt = str(cfg.format)  # torchscript | pt2 | onnx (export_model in export/parity.py dispatches)
    report = export_model(deployable.model, model_meta, output, fmt=fmt, real_inputs=real_inputs,
                          atol=float(cfg.atol), checkpoint=deployable.paths[0])  # fmt: skip
    if ensemble:
        report["ensemble"] = {"n_members": ensemble["n_members"], "id": ensemble["id"]}
    log.info("exported %s", json.dumps(report))
    if cfg.log_to_mlflow:
        report["mlflow"] = _log_to_mlflow(cfg, deployable, output, real_inputs, data)
    return report


def _log_to_mlflow(cfg: DictConfig, deployable, output: Path, real_inputs: list, data) -> dict:
    from tpnet.export.registry import DatasetRef, NewRun, log_export_to_mlflow
    from tpnet.models.ensemble import ensemble_run_name, ensemble_tags
    from tpnet.tracking.mlflow_logger import resolve_tracking_uri

    meta, ensemble = deployable.meta, deployable.ensemble
    new_run = None
    if ensemble:  # no single training run: a run of its own, tagged with the members' runs
        member_runs = [m["mlflow_run_id"] for m in ensemble["members"] if m["mlflow_run_id"]]
        new_run = NewRun(ensemble_run_name(ensemble), ensemble_tags(ensemble), (member_runs or [None])[0])
    dataset = None
    if meta.get("dataset_name") and meta.get("dataset_fingerprint"):
        source = str(data.spec.root / "manifest.csv") if data is not None else str(meta["dataset_name"])
        dataset = DatasetRef(str(meta["dataset_name"]), str(meta["dataset_fingerprint"]), source)
    mlflow_model = bool(cfg.mlflow_model)
    return log_export_to_mlflow(
        output,
        None if ensemble else deployable.first_state.get("mlflow_run_id"),
        resolve_tracking_uri(cfg.tracking_uri),
        cfg.register_name,
        network=deployable.model if mlflow_model else None,
        input_example=_mlflow_example(real_inputs, int(meta["size_multiple"])) if mlflow_model else None,
        register_alias=cfg.register_alias,
        dataset=dataset,
        new_run=new_run,
    )


def _training_data(state: dict, meta: dict):
    from tpnet.data.datamodule import setup_data

    train_cfg = OmegaConf.create(state["config"])
    data_cfg = train_cfg.data
    data_cfg.spacing_mm = float(meta["spacing_mm"])
    return setup_data(data_cfg, int(train_cfg.seed), train_cfg.cv.fold, train_cfg.cv.folds, check=False)


def _mlflow_example(real_inputs: list, multiple: int):
    """A batch of 2 (so MLflow's torch.export keeps the batch dynamic): the top-left corner of the first real
    frame, cropped to a multiple of the stride; None (random) without real frames or when it is too small."""
    import torch

    if not real_inputs:
        return None
    frame = torch.as_tensor(real_inputs[0]).float()
    height, width = (min(side, MLFLOW_EXAMPLE_SIDE_PX) // multiple * multiple for side in frame.shape[-2:])
    if height == 0 or width == 0:
        return None
    corner = frame[..., :height, :width]
    return torch.stack([corner, corner.flip(-1)]).numpy()


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
    from tpnet.models.ensemble import EnsembleError

    try:
        run_export(cfg)
    except (CheckpointError, EnsembleError, ExportError, ParityError) as exc:
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
