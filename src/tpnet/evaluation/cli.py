"""``tpnet-eval checkpoint=PATH [data.root=...] [split=test]``: metrics.json with 95% bootstrap CIs."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from tpnet.configuration import (
    ConfigError,
    EvalSchema,
    check_command_line,
    config_dir,
    validate_eval_config,
)

log = logging.getLogger("tpnet")


def run_eval(cfg: DictConfig) -> dict:
    from tpnet.core.device import pick_device
    from tpnet.core.postprocess import PostprocessParams
    from tpnet.data.datamodule import frame_dataset, frame_loader, iter_frames, setup_data
    from tpnet.evaluation.evaluate import evaluate, evaluation_report, save_metrics_json
    from tpnet.models.from_checkpoint import load_deployable_model

    ckpt_path = Path(cfg.checkpoint)
    device = pick_device(cfg.device)
    model, state = load_deployable_model(ckpt_path, device)
    train_cfg = OmegaConf.create(state["config"])
    meta = state["meta"]
    data_cfg = train_cfg.data
    if cfg.data.root:
        data_cfg.root = str(cfg.data.root)
    data_cfg.spacing_mm = float(meta["spacing_mm"])  # evaluate at the scale the model was trained at
    data = setup_data(data_cfg, int(train_cfg.seed), train_cfg.cv.fold, train_cfg.cv.folds, check=True)
    if list(data.spec.classes) != list(meta["classes"]):
        raise SystemExit(
            f"{ckpt_path}: model classes {meta['classes']} differ from the dataset's {list(data.spec.classes)}"
        )
    params = PostprocessParams.from_dict(
        OmegaConf.to_container(cfg.postprocess) if cfg.postprocess else meta["postprocess"]
    )
    dataset = frame_dataset(data, cfg.split)
    if len(dataset) == 0:
        raise SystemExit(f"split {cfg.split!r} of {data.spec.root} is empty")
    frames = frame_loader(dataset, list(range(len(dataset))), int(data_cfg.num_workers))
    _, records = evaluate(
        model,
        iter_frames(frames),
        meta["classes"],
        int(meta["size_multiple"]),
        params,
        device,
        tta=bool(cfg.tta),
    )
    report = evaluation_report(records, meta["classes"], n_boot=int(cfg.evaluation.n_boot), seed=int(train_cfg.seed))
    report.update(
        split=cfg.split, checkpoint=str(ckpt_path.resolve()), dataset=str(data.spec.root), tta=bool(cfg.tta)
    )
    output = (
        Path(cfg.output)
        if cfg.output
        else ckpt_path.resolve().parent.parent / "eval" / f"metrics_{cfg.split}.json"
    )
    save_metrics_json(output, report)
    if cfg.log_to_mlflow and state.get("mlflow_run_id"):
        _log_to_run(cfg, state["mlflow_run_id"], report, output)
    summary = {
        k: report[k]
        for k in ("det_f1", "det_precision", "det_recall", "loc_err_mm", "dice_mean")
        if k in report
    }
    log.info("%s split: %s", cfg.split, json.dumps(summary))
    log.info("wrote %s", output)
    return report


def _log_to_run(cfg: DictConfig, run_id: str, report: dict, output: Path) -> None:
    """Attach the metrics to the checkpoint's own MLflow run (never fatal: the JSON file is already written)."""
    from tpnet.tracking.mlflow_logger import MlflowTracker

    tracker = MlflowTracker(cfg.tracking_uri, "tpnet", run_id=run_id)
    tracker.start()
    prefix = f"{cfg.split}/" if not cfg.data.root else f"{cfg.split}_external/"
    values = {
        prefix + k: float(v)
        for k, v in report.items()
        if isinstance(v, int | float) and not k.startswith("n_")
    }
    tracker.log_metrics(values, step=0)
    tracker.log_artifact(output, "eval")
    tracker.end("FINISHED")
    lost = tracker.summary_of_losses()
    if lost:
        log.warning(lost)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def _main(cfg: DictConfig) -> None:
    # Before any heavy import, the checkpoint or the data: a typo fails in about a second, naming the key.
    try:
        validate_eval_config(cfg)
    except ConfigError as exc:
        _config_error(exc)

    from tpnet.core.checkpoint import CheckpointError

    try:
        run_eval(cfg)
    except CheckpointError as exc:
        print(f"tpnet-eval: {exc}", file=sys.stderr)
        sys.exit(2)


def _config_error(exc: ConfigError) -> None:
    print(f"tpnet-eval: configuration error: {exc}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    try:
        check_command_line(sys.argv[1:], EvalSchema, "tpnet-eval")
    except ConfigError as exc:
        _config_error(exc)
    _main()


if __name__ == "__main__":
    main()
