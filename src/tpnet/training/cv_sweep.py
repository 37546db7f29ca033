"""Cross-validation sweeps (``tpnet-train -m cv.fold=0,1,2,3,4``): one answer at the end, nnU-Net style.

- ``CrossValidationCallback`` (``hydra.callbacks`` in train.yaml), in the process that launches the sweep: at
  ``on_multirun_start`` an MLflow parent run for the sweep (its id in ``<sweep>/cv_parent_run.json``); at
  ``on_multirun_end`` the summary (``tpnet.evaluation.cross_validation``): cv_summary.json / .md, the sweep's
  plan.json, the pooled metrics in the parent run. A sweep without cv.fold (``-m optim.lr=...``) is left alone.
- ``fold_tags`` (train.py, at run start, in whatever process runs the job): ``mlflow.parentRunId`` and cv tags.
- ``after_fold`` (train.py, after calibration): the fold's out-of-fold predictions, ``oof_records.json``.

Importing this module must stay light (Hydra instantiates the callback for every run, single runs included):
no torch, MLflow or tpnet.evaluation at module level.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- in each job
def fold_tags(cfg: DictConfig, run_dir: Path) -> dict[str, str]:
    """MLflow tags of a fold's run: cv.fold / cv.folds / cv.sweep_dir, and ``mlflow.parentRunId`` when the sweep
    has a parent run in the same tracking store. Empty for a run that is not a fold. Never raises."""
    try:
        if OmegaConf.select(cfg, "cv.fold", default=None) is None:
            return {}
        from tpnet.evaluation.cross_validation import parent_run_info
        from tpnet.tracking.mlflow_logger import resolve_tracking_uri

        tags = {"cv.fold": str(cfg.cv.fold), "cv.folds": str(cfg.cv.folds)}
        sweep_dir = _job_sweep_dir()
        if sweep_dir is None:
            return tags
        tags["cv.sweep_dir"] = str(sweep_dir)
        parent = parent_run_info(sweep_dir)
        if parent and parent.get("tracking_uri") == resolve_tracking_uri(cfg.logger.tracking_uri):
            tags["mlflow.parentRunId"] = str(parent["run_id"])
        return tags
    except Exception as exc:  # tags are a convenience: never the reason a fold does not train
        log.warning("cross-validation tags not set: %s", exc)
        return {}


def _job_sweep_dir() -> Path | None:
    """The sweep folder of the running job (Hydra multirun), absolute; None outside a sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return None
        return Path(str(hydra_cfg.sweep.dir)).resolve()
    except (ImportError, ValueError, AttributeError):
        return None


def _job_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except (ImportError, ValueError, AttributeError):
        return []


def after_fold(
    cfg: DictConfig, best_path: Path, data: Any, device: Any, amp_dtype: Any, classes: list[str], run_dir: Path,
    tracker: Any,
) -> Path:  # fmt: skip
    """Rank 0, after calibration: predict this fold's validation subjects (the ones it did not train on) with its
    best checkpoint and the post-processing stored in it, write ``oof_records.json`` and log it."""
    from tpnet.core.confidence import Calibration
    from tpnet.core.postprocess import PostprocessParams
    from tpnet.data.datamodule import split_frames
    from tpnet.evaluation.cross_validation import OOF_FILE, oof_document, write_json
    from tpnet.evaluation.evaluate import evaluate
    from tpnet.models.from_checkpoint import load_deployable_model

    model, state = load_deployable_model(best_path, device)
    params = PostprocessParams.from_dict(state["meta"]["postprocess"])
    calibration = Calibration.from_meta(state["meta"])
    _, records = evaluate(
        model, split_frames(data, "val", cfg.data.num_workers), classes, int(model.size_multiple), params, device,
        amp_dtype=amp_dtype, tta=calibration.tta, calibration=calibration, roles=data.spec.class_roles,
    )  # fmt: skip
    non_test = {row.subject_id for split in ("train", "val") for row in data.splits[split]}
    document = oof_document(
        records, classes, fold=int(cfg.cv.fold), folds=int(cfg.cv.folds), checkpoint=str(best_path),
        postprocess=params.to_dict(),
        # train.py calibrates on the validation split before this hook: on these same subjects.
        calibrated_on_these_subjects=bool(cfg.calibration.enabled),
        non_test_subjects=non_test, overrides=_job_overrides(), mlflow_run_id=getattr(tracker, "run_id", None),
        roles=data.spec.class_roles.to_dict(),
    )  # fmt: skip
    path = write_json(run_dir / OOF_FILE, document)
    tracker.log_artifact(path)
    metrics = document["metrics"]
    tracker.log_metrics(
        {f"oof/{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float) and not k.startswith("n_")
         and v is not None and math.isfinite(v)},
        step=int(cfg.trainer.max_epochs),
    )  # fmt: skip
    log.info("out-of-fold predictions of fold %s (%d frames of %d subjects): %s", cfg.cv.fold, len(records),
             len(document["subjects"]), path)  # fmt: skip
    return path


# ----------------------------------------------------------------------------------------------- the sweep
def sweep_folds(config: DictConfig) -> list[int] | None:
    """The folds a multirun launches (``cv.fold=0,1,2`` on the command line or in ``hydra.sweeper.params``, or a
    cv.fold set in the config); None when the sweep is not a cross-validation."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(_sweep_arguments(config)):
        if override.get_key_element().lstrip("+~") != "cv.fold":
            continue
        if override.is_sweep_override():
            return [int(v) for v in override.sweep_string_iterator()]
        value = override.value()
        return None if value is None else [int(value)]
    fold = OmegaConf.select(config, "cv.fold", default=None)
    return None if fold is None else [int(fold)]


def _sweep_arguments(config: DictConfig) -> list[str]:
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    return [f"{k}={v}" for k, v in params.items()] + [str(o) for o in task]  # type: ignore[union-attr]


def _n_jobs(config: DictConfig) -> int | None:
    """How many jobs the basic sweeper launches (the product of the sweeps); None when it cannot tell."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        n = 1
        for override in OverridesParser.create().parse_overrides(_sweep_arguments(config)):
            if override.is_sweep_override():
                n *= len(list(override.sweep_string_iterator()))
        return n
    except Exception:  # a glob or a sweeper plugin's own syntax
        return None


class CrossValidationCallback(Callback):
    """Hydra callback: a parent MLflow run at sweep start, the CV summary at sweep end."""

    def __init__(self, **kwargs: Any) -> None:
        self.options = kwargs
        self.sweep_dir: Path | None = None  # set only for a cross-validation sweep launched from this process
        self.n_jobs: int | None = None
        self.ended: int = 0
        self.failed: list[str] = []
        self.finished = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folds = sweep_folds(config)
        if folds is None:
            return  # not a cross-validation: leave the sweep alone
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self.n_jobs = _n_jobs(config)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        _start_parent_run(config, self.sweep_dir, folds)
        print(f"tpnet-train: cross-validation over folds {folds} of cv.folds={config.cv.folds} in {self.sweep_dir}; "
              f"summary at the end: {self.sweep_dir}/cv_summary.json", file=sys.stderr)  # fmt: skip

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.sweep_dir is None:
            return  # a single run, a job in another process (submitit), or not a cross-validation
        from hydra.core.utils import JobStatus

        self.ended += 1
        if job_return.status == JobStatus.FAILED:
            # JobReturn.return_value re-raises a failed job's exception; the stored one is only for the message.
            self.failed.append(f"{job_return.overrides}: {getattr(job_return, '_return_value', None)!r}")
            log.warning("cross-validation job failed: %s", self.failed[-1])
        # Hydra's basic sweeper raises after a failed job instead of calling on_multirun_end: summarise the
        # folds that did finish once the last job has ended.
        if self.failed and self.n_jobs is not None and self.ended >= self.n_jobs:
            self._summarise(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep_dir is not None and not self.finished:
            self._summarise(config)

    def _summarise(self, config: DictConfig) -> None:
        self.finished = True
        assert self.sweep_dir is not None
        n_boot = int(OmegaConf.select(config, "evaluation.n_boot", default=1000))
        seed = int(OmegaConf.select(config, "seed", default=0))
        try:
            from tpnet.evaluation.cross_validation import record_summary

            for line in record_summary(self.sweep_dir, n_boot=n_boot, seed=seed)[1]:
                print(f"tpnet-train: {line}", file=sys.stderr)
        except Exception as exc:  # the folds are trained: a summary failure must not lose them
            log.exception("cross-validation summary failed")
            print(f"tpnet-train: cross-validation summary failed ({type(exc).__name__}: {exc}); the folds are in "
                  f"{self.sweep_dir}: run `tpnet-cv summarize {self.sweep_dir}`", file=sys.stderr)  # fmt: skip


def _start_parent_run(config: DictConfig, sweep_dir: Path, folds: list[int]) -> None:
    """The sweep's MLflow parent run (reused when the folder already has one: a sweep run again to resume),
    recorded in ``<sweep>/cv_parent_run.json`` for the jobs' ``fold_tags``. Tracking off: nothing."""
    if not bool(OmegaConf.select(config, "logger.enabled", default=False)):
        return
    from tpnet.core.atomic import atomic_write_text
    from tpnet.evaluation.cross_validation import PARENT_RUN_FILE, parent_run_info
    from tpnet.tracking.mlflow_logger import MlflowTracker, resolve_tracking_uri

    try:
        uri = resolve_tracking_uri(OmegaConf.select(config, "logger.tracking_uri", default=None))
        experiment = str(OmegaConf.select(config, "logger.experiment_name", default="tpnet"))
    except Exception as exc:  # an interpolation only a job can resolve
        log.warning("no MLflow parent run for the sweep: %s", exc)
        return
    previous = parent_run_info(sweep_dir)
    run_id = previous["run_id"] if previous and previous.get("tracking_uri") == uri else None
    tracker = MlflowTracker(uri, experiment, run_name=f"cv-{len(folds)}fold-{sweep_dir.name}", run_id=run_id)
    overrides = " ".join(str(o) for o in config.hydra.overrides.task)
    tracker.start({"cv.role": "parent", "cv.sweep_dir": str(sweep_dir), "cv.overrides": overrides})
    if not tracker.run_id:
        print(f"tpnet-train: WARNING: no MLflow parent run for the sweep ({tracker.summary_of_losses()})",
              file=sys.stderr)  # fmt: skip
        return
    tracker.log_params({
        "cv.n_folds": int(config.cv.folds), "cv.folds_in_sweep": ",".join(map(str, folds)),
        "cv.sweep_dir": str(sweep_dir), "cv.overrides": overrides,
    })  # fmt: skip
    info = {"run_id": tracker.run_id, "tracking_uri": tracker.tracking_uri, "experiment_name": experiment}
    atomic_write_text(sweep_dir / PARENT_RUN_FILE, json.dumps(info, indent=2) + "\n")
