"""``tpnet-eval checkpoint=PATH [data.root=...] [split=test]``: metrics.json with 95% bootstrap CIs.

``checkpoint=[fold0/.../best.pt, ...]`` scores the folds' ensemble (probabilities averaged, the model
``tpnet-export`` writes for the same list) on the test split the folds share.
"""

from __future__ import annotations

import json
import logging
import os
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

DEFAULT_EXPERIMENT = "tpnet"  # training's default: an ensemble's run joins its members' experiment if it can
# The figures the log line shows.
SUMMARY_KEYS = ("det_f1", "det_precision", "det_recall", "loc_err_mm", "dice_mean")
SUMMARY_KEYS += ("guidance/unsafe_called_safe_rate", "n_paths_called_safe", "n_called_safe_truly_unsafe")


def run_eval(cfg: DictConfig) -> dict:
    from tpnet.core.confidence import Calibration
    from tpnet.core.contract import parse_roles
    from tpnet.core.device import pick_device
    from tpnet.core.postprocess import PostprocessParams
    from tpnet.data.datamodule import frame_dataset, frame_loader, iter_frames
    from tpnet.evaluation.evaluate import evaluate, evaluation_report, save_metrics_json
    from tpnet.evaluation.sweeps import scorer_for_split, sweep_report
    from tpnet.models.ensemble import EnsembleError
    from tpnet.models.from_checkpoint import load_deployable

    device = pick_device(cfg.device)
    deployable = load_deployable(cfg.checkpoint, device)
    first_path, state, meta, ensemble = (
        deployable.paths[0],
        deployable.first_state,
        deployable.meta,
        deployable.ensemble,
    )
    if ensemble and cfg.split != "test":
        # Each fold trained on the other folds' validation subjects: only the held-out test split is unseen by all.
        raise EnsembleError(
            f"an ensemble of {ensemble['n_members']} folds is scored on split=test only; split={cfg.split} "
            "holds frames some members trained on"
        )
    # The data set-up of the (first) checkpoint: same dataset, seed and split logic as a single model.
    data = _member_data(state, meta, cfg.data.root, check=True)
    if ensemble:
        _check_same_test_split(deployable, data, cfg.data.root)
    if list(data.spec.classes) != list(meta["classes"]):
        raise SystemExit(
            f"{first_path}: model classes {meta['classes']} differ from the dataset's {list(data.spec.classes)}"
        )
    params = PostprocessParams.from_dict(
        OmegaConf.to_container(cfg.postprocess) if cfg.postprocess else meta["postprocess"]
    )
    roles = parse_roles(meta.get("roles"), meta["classes"], str(first_path))  # absent: the naming rule
    guidance = _guidance_params(cfg, meta)
    dataset = frame_dataset(data, cfg.split)
    if len(dataset) == 0:
        raise SystemExit(f"split {cfg.split!r} of {data.spec.root} is empty")
    frames = frame_loader(
        dataset, list(range(len(dataset))), int(OmegaConf.create(state["config"]).data.num_workers)
    )
    calibration = Calibration.from_meta(meta)
    tta = calibration.tta if cfg.tta is None else bool(cfg.tta)  # null: as the model was calibrated
    sweeps = scorer_for_split(
        data.splits[cfg.split], meta["classes"], params.match_mm, roles, params.min_volume_mm3
    )
    _, records = evaluate(
        deployable.model,
        iter_frames(frames),
        meta["classes"],
        int(meta["size_multiple"]),
        params,
        device,
        tta=tta,
        calibration=calibration,
        roles=roles,
        guidance=guidance,
        sweeps=sweeps,
    )
    seed = int(state["config"]["seed"])
    report = evaluation_report(records, meta["classes"], n_boot=int(cfg.evaluation.n_boot), seed=seed)
    sweeps_3d = sweep_report(sweeps, int(cfg.evaluation.n_boot), seed)
    if sweeps_3d is not None:  # slices of sweeps: the 3-D figures beside the per-slice (2-D) ones
        report["sweeps_3d"] = sweeps_3d
    report.update(
        split=cfg.split,
        checkpoint=[str(p.resolve()) for p in deployable.paths] if ensemble else str(first_path.resolve()),
        dataset=str(data.spec.root),
        tta=tta,
        guidance=guidance.to_dict(),
    )
    if ensemble:
        report["ensemble"] = ensemble
        report["postprocess"] = params.to_dict()
    output = Path(cfg.output) if cfg.output else _default_output(deployable.paths, ensemble, cfg.split)
    save_metrics_json(output, report)
    _draw_reliability(report, output.with_name(f"reliability_{output.stem}.png"), cfg.split)
    if cfg.log_to_mlflow:
        if ensemble:
            _log_to_ensemble_run(cfg, ensemble, report, output)
        elif state.get("mlflow_run_id"):
            _log_to_run(cfg, state["mlflow_run_id"], report, output)
    summary = {k: report[k] for k in SUMMARY_KEYS if k in report}
    log.info("%s split: %s", cfg.split, json.dumps(summary))
    log.info("wrote %s", output)
    return report


def _guidance_params(cfg: DictConfig, meta: dict):
    """The needle-guidance settings the paths are planned and judged with: the ones the model was validated
    with (its meta ``guidance``; the GuidanceParams defaults for a model without), each replaced by eval.yaml's
    ``guidance.<key>`` where that is not null."""
    from tpnet.core.needle_path import GuidanceParams

    chosen = dict(meta.get("guidance") or {})
    overrides = OmegaConf.to_container(cfg.guidance) if cfg.get("guidance") else {}
    chosen.update({k: v for k, v in overrides.items() if v is not None})
    return GuidanceParams.from_dict(chosen)


def _member_data(state: dict, meta: dict, root: str | None, check: bool):
    from tpnet.data.datamodule import setup_data

    train_cfg = OmegaConf.create(state["config"])
    data_cfg = train_cfg.data
    if root:
        data_cfg.root = str(root)
        if data_cfg.get("sources"):  # a multi-source model scored on one dataset: that dataset alone
            data_cfg.sources = None
    data_cfg.spacing_mm = float(meta["spacing_mm"])  # evaluate at the scale the model was trained at
    return setup_data(data_cfg, int(train_cfg.seed), train_cfg.cv.fold, train_cfg.cv.folds, check=check)


def _check_same_test_split(deployable, data, root: str | None) -> None:
    """Every member must hold out the same test subjects (same dataset, seed and test fraction), or some
    member may have trained on frames the ensemble is scored on."""
    from tpnet.models.ensemble import EnsembleError

    expected = [row.sample_id for row in data.splits["test"]]
    for path, state in zip(deployable.paths[1:], deployable.states[1:], strict=True):
        test = [
            row.sample_id for row in _member_data(state, deployable.meta, root, check=False).splits["test"]
        ]
        if test != expected:
            differing = sorted(set(test) ^ set(expected))
            raise EnsembleError(
                f"{path}: its test split differs from {deployable.paths[0]}'s ({len(test)} vs {len(expected)} "
                f"frames, e.g. {differing[:3]}); the members of one ensemble must share the seed, the test "
                "fraction and the dataset"
            )


def _default_output(paths: list[Path], ensemble: dict | None, split: str) -> Path:
    """A single checkpoint: ``<run dir>/eval/``. An ensemble: ``<the runs' common folder>/<ensemble name>/eval/``
    (a sweep's folder for a cross-validation), never inside one member's run."""
    from tpnet.models.ensemble import ensemble_run_name

    if not ensemble:
        return paths[0].resolve().parent.parent / "eval" / f"metrics_{split}.json"
    run_dirs = [str(p.resolve().parent.parent) for p in paths]
    try:
        common = Path(os.path.commonpath(run_dirs))
    except ValueError:  # different drives
        common = Path.cwd()
    return common / ensemble_run_name(ensemble) / "eval" / f"metrics_{split}.json"


def _log_to_run(cfg: DictConfig, run_id: str, report: dict, output: Path) -> None:
    """Attach the metrics to the checkpoint's own MLflow run (never fatal: the JSON file is already written)."""
    from tpnet.tracking.mlflow_logger import MlflowTracker

    tracker = MlflowTracker(cfg.tracking_uri, DEFAULT_EXPERIMENT, run_id=run_id)
    tracker.start()
    _log_report(cfg, tracker, report, output)


def _log_to_ensemble_run(cfg: DictConfig, ensemble: dict, report: dict, output: Path) -> None:
    """An ensemble's metrics go to a run of its own (``ensemble-<n>folds-<id>``, tagged with the members' runs;
    the one its export made when there is one), never to one member's run."""
    from tpnet.models.ensemble import ensemble_run_name, ensemble_tags
    from tpnet.tracking.mlflow_logger import MlflowTracker

    tracker = MlflowTracker(cfg.tracking_uri, DEFAULT_EXPERIMENT, run_name=ensemble_run_name(ensemble))
    tags = ensemble_tags(ensemble)
    try:
        client = tracker.client
        member_runs = [m["mlflow_run_id"] for m in ensemble["members"] if m["mlflow_run_id"]]
        if member_runs:
            experiment_id = client.get_run(member_runs[0]).info.experiment_id
            tracker.experiment_name = client.get_experiment(experiment_id).name
        experiment = client.get_experiment_by_name(tracker.experiment_name)
        if experiment is not None:
            query = f"tags.`tpnet.ensemble.id` = '{ensemble['id']}'"
            found = client.search_runs([experiment.experiment_id], query, max_results=1)
            tracker.run_id = found[0].info.run_id if found else None
    except Exception as exc:  # a member's run may be in another store; the tracker reports what gets lost
        log.warning(
            "MLflow: members' runs not found (%s: %s); a new run records the ensemble",
            type(exc).__name__,
            exc,
        )
    tracker.start(tags=tags)
    _log_report(cfg, tracker, report, output)


def _draw_reliability(report: dict, path: Path, split: str) -> None:
    """The reliability diagram beside metrics.json; one that cannot be drawn is said, never fatal."""
    from tpnet.evaluation.reliability_plot import draw_reliability

    if "reliability" not in report:
        return
    try:
        draw_reliability(report, path, f"{split} split")
        log.info("wrote %s", path)
    except Exception as exc:  # matplotlib missing or failing: metrics.json holds the curves
        log.warning("reliability diagram not drawn (%s: %s)", type(exc).__name__, exc)


def _log_report(cfg: DictConfig, tracker, report: dict, output: Path) -> None:
    from tpnet.evaluation.evaluate import metric_values

    prefix = f"{cfg.split}/" if not cfg.data.root else f"{cfg.split}_external/"
    # Metrics are numbers (a bool is an int to Python): flags such as tta are settings, so tags.
    values = metric_values(report, prefix)
    flags = {prefix + k: str(v).lower() for k, v in report.items() if isinstance(v, bool)}
    tracker.log_metrics(values, step=0)
    tracker.set_tags(flags)
    tracker.log_artifact(output, "eval")
    diagram = output.with_name(f"reliability_{output.stem}.png")
    if diagram.is_file():
        tracker.log_artifact(diagram, "eval")
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
    from tpnet.models.ensemble import EnsembleError

    try:
        run_eval(cfg)
    except (CheckpointError, EnsembleError) as exc:
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
