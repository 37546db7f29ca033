"""The training loop, top to bottom: set up, (resume), then per epoch train -> validate -> log -> checkpoint.

Launch with ``tpnet-train key=value ...`` (Hydra), alone or under ``torchrun`` for DDP. ``_train`` reads as the
algorithm; each step is a small function below it, and ``train_one_epoch`` takes one typed ``TrainState``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from tpnet import __version__
from tpnet.configuration import (
    ConfigError,
    RunContext,
    check_monitor_name,
    config_fingerprint,
    run_context_from_hydra,
    run_dir_from_hydra,
)
from tpnet.core.atomic import atomic_write_text
from tpnet.core.checkpoint import load_checkpoint
from tpnet.core.confidence import Calibration
from tpnet.core.contract import ClassRoles, trp_class_indices
from tpnet.core.device import amp_dtype_for, pick_device
from tpnet.core.needle_path import GuidanceParams
from tpnet.core.postprocess import PostprocessParams
from tpnet.core.terminal import progress_bar
from tpnet.data.datamodule import (
    DataSetup,
    frame_dataset,
    frame_loader,
    iter_frames,
    setup_data,
    split_frames,
    train_loader,
)
from tpnet.data.sources import Source, partial_label_table, sample_weights
from tpnet.evaluation.evaluate import (
    evaluate,
    evaluation_report,
    metric_values,
    save_metrics_json,
    score_frame,
)
from tpnet.evaluation.metrics import aggregate, json_safe
from tpnet.evaluation.reliability_plot import draw_reliability
from tpnet.evaluation.sweeps import scorer_for_split, sweep_report
from tpnet.models import build_model
from tpnet.models.from_checkpoint import load_deployable_model
from tpnet.models.summary import count_flops, count_parameters
from tpnet.planning.apply import PLAN_FILE, apply_plan, plan_from_config, stored_plan, write_plan
from tpnet.planning.apply import mlflow_params as plan_mlflow_params
from tpnet.planning.plan import Plan
from tpnet.tracking.mlflow_logger import MlflowTracker, default_tags, flatten, run_tags, unique_run_name
from tpnet.training import console, cv_sweep, distributed, fault_injection, progress_plot
from tpnet.training.calibrate import (
    choose_postprocess,
    fit_confidence,
    fit_pixel_temperature,
    predict_validation,
)
from tpnet.training.calibrate_sweeps import choose_min_volume
from tpnet.training.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from tpnet.training.console import FILE_ONLY
from tpnet.training.distributed import DistInfo, EpochSampler
from tpnet.training.ema import EMA
from tpnet.training.label_set import choose_monitor, has_trigger_points, label_set_warnings, summarise_labels
from tpnet.training.losses import MarginalLoss, deep_supervision
from tpnet.training.model_card import build_model_card, training_input_reference
from tpnet.training.overlays import write_overlays
from tpnet.training.validate import validate_frames

log = logging.getLogger(__name__)

# The run log (written by Hydra's job_logging: configs/hydra/job_logging/tpnet_train.yaml) and the curves.
LOG_FILE, PROGRESS_PLOT = "train.log", "progress.png"

__all__ = [
    "TrainState",
    "EpochStats",
    "build_train_state",
    "train",
    "train_one_epoch",
    "pick_device",
    "amp_dtype_for",
]


class NonFiniteLossError(RuntimeError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------- state
@dataclass
class TrainState:
    """Everything one optimiser step needs, and the step counter it advances.

    ``model`` is the bare network (what checkpoints, EMA and gradient clipping see); ``forward`` is what runs
    the batch: ``model`` itself, or its DDP / ``torch.compile`` wrapper.
    """

    model: torch.nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch.optim.lr_scheduler.LRScheduler (LambdaLR / OneCycleLR / ...)
    scaler: torch.amp.GradScaler
    ema: EMA | None
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    accumulate: int = 1
    grad_clip_norm: float | None = None
    nan_policy: str = "skip"  # or "stop"
    max_skipped_steps: int = 10
    global_step: int = 0
    # augment=gpu: raw crops (dict batch, on the device) -> (images, masks), augmented and encoded there
    on_device_augment: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]] | None = None

    def state_dicts(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dicts(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.global_step = int(state["global_step"])


@dataclass
class EpochStats:
    loss: float  # mean over the epoch's finite steps and over ranks; NaN when every step was skipped
    images_per_s: float  # all ranks together
    data_wait_s: float  # this rank's time spent waiting for the next batch (a loader that keeps up: ~0)
    n_images: int  # this rank's
    seconds: float = 0.0  # this rank's time in the epoch's loop

    @property
    def data_wait_fraction(self) -> float:
        """Share of the epoch spent waiting for the loader: ~0 when the loader keeps the device busy."""
        return self.data_wait_s / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Progress:
    """Where the run stands between epochs: saved in every checkpoint, restored on resume."""

    epoch: int = 0  # epochs completed
    best_metric: float | None = None
    bad_epochs: int = 0  # validated epochs since the monitor last improved (early stopping)
    mlflow_run_id: str | None = None

    def record(self, value: float | None, mode: str) -> bool:
        """Count one epoch's monitor value; True when it is the new best."""
        if value is None:
            return False  # not a validation epoch
        if not math.isnan(value) and _better(value, self.best_metric, mode):
            self.best_metric, self.bad_epochs = float(value), 0
            return True
        self.bad_epochs += 1
        return False


# ----------------------------------------------------------------------------------------------- the job
def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job; returns the final metrics (test split when evaluated, else best validation)."""
    device = pick_device(cfg.trainer.device)
    info = distributed.setup(device.type, timeout_s=float(cfg.trainer.ddp_timeout_s))
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        return _train(cfg, device, info)
    finally:
        distributed.cleanup()


def _train(cfg: DictConfig, device: torch.device, info: DistInfo) -> dict[str, float]:
    tcfg = cfg.trainer
    if info.enabled:
        log.info("distributed: rank %d of world size %d", info.rank, info.world_size)
    run_dir = Path(distributed.broadcast_object(str(run_dir_from_hydra()), info))
    context = run_context_from_hydra()
    ckpt_dir = run_dir / "checkpoints"
    seed_everything(int(cfg.seed))  # same seed on every rank: identical initial weights
    torch.backends.cudnn.benchmark = not tcfg.deterministic
    if info.is_main:
        _say_config(cfg, context, device)

    # ---- set-up: data, monitor, loaders, model and optimisation ---------------------------------------------
    data = _set_up_data(cfg, info)
    plan = _plan_run(cfg, data, device, run_dir, info)  # fills the null (planned) keys of cfg before any use
    classes = list(data.spec.classes)
    monitor, mode, val_has_trp = _check_labels_and_pick_monitor(cfg, data, classes, info)
    augment = instantiate(cfg.augment)
    # Multi-source runs (data.sources) draw each source's share of the samples by its weight.
    weights = sample_weights(data.sources) if data.sources else None
    loader = train_loader(
        data, cfg.data, augment,
        EpochSampler(len(data.splits["train"]), cfg.data.samples_per_epoch, int(cfg.seed), info, weights),
        int(cfg.seed), device,
    )  # fmt: skip
    val_set = frame_dataset(data, "val")
    val_loader = frame_loader(
        val_set, list(range(info.rank, len(val_set), info.world_size)), cfg.data.num_workers
    )
    state = build_train_state(
        cfg, data.encoding.in_channels, len(classes), len(loader), device, partial_label_table(data.sources)
    )
    state.on_device_augment = on_device_augment(augment, data.encoding, cfg.data.patch_size)
    params = PostprocessParams.from_dict(OmegaConf.to_container(cfg.postprocess))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    meta = _model_meta(cfg, data, state.model, params, resolved)
    model_size = _model_size(state.model, data, cfg, meta, context, info)

    # ---- resume, then wrap for DDP / compile and start tracking ------------------------------------------------
    progress, rng_state = _resume(tcfg.resume, ckpt_dir, run_dir, state, device)
    state.forward = _wrap_for_training(state.model, tcfg, info, device)
    tracker = _start_tracking(cfg, context, run_dir, resolved, model_size, data, device, progress, info, plan)
    # Restore the RNG streams last, just before the first epoch: whatever set-up consumed random numbers above,
    # the resumed epochs then draw exactly what the uninterrupted run drew.
    if rng_state is not None:
        restore_rng_state(rng_state)

    # ---- epochs ------------------------------------------------------------------------------------------------
    max_epochs = int(tcfg.max_epochs)
    plot = bool(cfg.logger.get("progress_plot", True))
    redraw = progress_plot.RedrawClock()
    with _end_tracking_on_failure(tracker, run_dir, info):
        for epoch in range(progress.epoch, max_epochs):
            fault_injection.kill_rank(info.rank, epoch)
            start = time.perf_counter()
            loader.sampler.set_epoch(epoch)  # PatchSampler: reshuffles and carries the epoch to the workers
            stats = train_one_epoch(state, loader, epoch, max_epochs, info)
            metrics = {
                "train/loss": stats.loss,
                "lr": state.optimizer.param_groups[0]["lr"],
                "throughput/img_per_s": stats.images_per_s,
                "throughput/data_wait_fraction": stats.data_wait_fraction,  # rank 0's; 0 = never waited
            }
            validating = bool(data.splits["val"]) and (
                (epoch + 1) % int(tcfg.val_every_n_epochs) == 0 or epoch + 1 == max_epochs
            )
            if validating:
                metrics.update(
                    _validate(
                        state,
                        val_loader,
                        classes,
                        params,
                        cfg,
                        run_dir,
                        tracker,
                        epoch,
                        info,
                        data.sources,
                        data.spec.class_roles,
                    )
                )
            metrics["throughput/epoch_s"] = time.perf_counter() - start
            improved = progress.record(metrics.get(monitor), mode)
            progress.epoch = epoch + 1
            if info.is_main:
                _log_epoch(tracker, run_dir / "metrics.jsonl", metrics, epoch)
                log.info(console.epoch_line(epoch + 1, max_epochs, metrics, metrics["throughput/epoch_s"],
                                            monitor, improved))  # fmt: skip
                if plot and validating and redraw.due():
                    _draw_progress(run_dir, monitor, mode, tracker, context)
                _save_checkpoints(state, progress, ckpt_dir, improved, resolved, meta, tracker.run_id)
            distributed.barrier(info)
            patience = tcfg.early_stopping_patience
            if patience and progress.bad_epochs >= int(patience):
                log.info("early stopping: %s did not improve for %d epochs", monitor, progress.bad_epochs)
                break

        # ---- finish: calibrate and test the best checkpoint -------------------------------------------------
        final: dict[str, float] = {
            "best/" + monitor: progress.best_metric if progress.best_metric is not None else math.nan
        }
        if info.is_main:
            final.update(
                _finish(cfg, data, device, state.amp_dtype, classes, params, run_dir, ckpt_dir, tracker,
                        monitor, mode, val_has_trp, context)
            )  # fmt: skip
    return final


def train_one_epoch(
    state: TrainState,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    epoch: int,
    max_epochs: int,
    info: DistInfo | None = None,
) -> EpochStats:
    """One pass over ``batches`` (images, masks): forward under autocast, loss in float32, backward, and an
    optimiser + scheduler (+ EMA) step every ``state.accumulate`` batches. A non-finite loss skips the step
    (``nan_policy=skip``, at most ``max_skipped_steps``) or stops the run (``stop``); every rank decides alike."""
    info = info or DistInfo()
    (state.forward if isinstance(state.forward, torch.nn.Module) else state.model).train()
    total_loss, n_batches, n_images, skipped = 0.0, 0, 0, 0
    wait = _WaitClock(batches)
    bar = progress_bar(
        wait, enabled=info.is_main, desc=f"epoch {epoch + 1}/{max_epochs}", leave=False, mininterval=2
    )
    start = time.perf_counter()
    state.optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(bar):
        images, masks = batch_to_device(batch, state)
        with torch.autocast(
            state.device.type, dtype=state.amp_dtype or torch.float32, enabled=state.amp_dtype is not None
        ):
            logits = state.forward(images)
        loss = state.loss_fn(_float32(logits), masks)
        # Every rank must take the same decision, or DDP's next all-reduce hangs.
        if distributed.any_across_ranks(not bool(torch.isfinite(loss)), info, state.device):
            skipped += 1
            _on_non_finite_loss(state, epoch, step, skipped)
            continue
        state.scaler.scale(loss / state.accumulate).backward()
        if (step + 1) % state.accumulate == 0:
            _optimiser_step(state)
        if step == 1:
            fault_injection.stall("train", epoch + 1)  # mid-epoch: after one optimiser step, before the next
        total_loss += float(loss.detach())
        n_batches += 1
        n_images += images.shape[0]
        if step % 10 == 0:
            bar.set_postfix(
                loss=f"{total_loss / n_batches:.4f}", img_s=f"{n_images / (time.perf_counter() - start):.1f}"
            )
    if state.device.type == "cuda":
        torch.cuda.synchronize(state.device)
    elapsed = time.perf_counter() - start
    # No batch at all (every step non-finite and skipped): NaN, not a misleading 0.
    mean_loss = distributed.mean_across_ranks(
        total_loss / n_batches if n_batches else math.nan, info, state.device
    )
    return EpochStats(
        mean_loss, n_images * info.world_size / max(elapsed, 1e-9), wait.seconds, n_images, elapsed
    )


def on_device_augment(augment: Any, encoding: Any, patch_size: Any) -> Callable | None:
    """augment=gpu's per-batch step (raw crops on the device -> encoded images, masks), or None for a CPU
    augmentation (which runs in the loader workers)."""
    if not getattr(augment, "on_device", False):
        return None
    return functools.partial(augment, encoding=encoding, patch_size=tuple(int(s) for s in patch_size))


def batch_to_device(batch: Any, state: TrainState) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch -> (float images in the model's memory format, int64 masks) on the device. The loader's
    batches are compact (float16 images, uint8 masks, pinned on CUDA): copied asynchronously, widened there."""
    if isinstance(batch, dict):  # augment=gpu: margin crops in physical units, augmented here per batch
        # The seeds stay on the host: they seed the augmentation's parameter draws there (no device sync).
        on_device = {k: v if k == "seed" else v.to(state.device, non_blocking=True) for k, v in batch.items()}
        images, masks = state.on_device_augment(on_device)
    else:
        images, masks = batch
        images = images.to(state.device, non_blocking=True).float()
        masks = masks.to(state.device, non_blocking=True).long()
    return images.contiguous(memory_format=state.memory_format), masks


def _float32(logits: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """Losses run in float32; a deep-supervised model returns one logit map per decoder level."""
    if isinstance(logits, list | tuple):
        return [x.float() for x in logits]
    return logits.float()


class _WaitClock:
    """Iterates ``batches`` and adds up the time spent waiting for each next batch."""

    def __init__(self, batches: Iterable) -> None:
        self.batches, self.seconds = batches, 0.0

    def __iter__(self):
        iterator = iter(self.batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield batch

    def __len__(self) -> int:
        return len(self.batches)  # for the progress bar's total


def _optimiser_step(state: TrainState) -> None:
    if state.grad_clip_norm:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), float(state.grad_clip_norm))
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    state.global_step += 1
    if state.ema is not None:
        state.ema.update(state.model)


def _on_non_finite_loss(state: TrainState, epoch: int, step: int, skipped: int) -> None:
    if state.nan_policy == "stop":
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1}, step {step}; stopping (trainer.nan_policy=stop). "
            "checkpoints/last.pt holds the last good epoch: resume with trainer.resume=auto after fixing "
            "the cause (lower optim.lr, trainer.precision=fp32, check the data)"
        )
    state.optimizer.zero_grad(set_to_none=True)
    if skipped > state.max_skipped_steps:
        raise NonFiniteLossError(
            f"more than {state.max_skipped_steps} non-finite losses in epoch {epoch + 1}"
        )
    log.warning("non-finite loss at epoch %d step %d: step skipped", epoch + 1, step)


# ----------------------------------------------------------------------------------------------- set-up
def build_train_state(
    cfg: DictConfig,
    in_channels: int,
    num_classes: int,
    batches_per_epoch: int,
    device: torch.device,
    label_sets: dict[int, tuple[int, ...]] | None = None,
) -> TrainState:
    """Network, loss, optimiser, schedule, grad scaler and EMA from the config's groups (Hydra ``instantiate``).
    ``label_sets``: the partial-label codes of a multi-source run (``MarginalLoss``). The benchmark builds its
    training step through here too."""
    tcfg = cfg.trainer
    model = build_model(cfg.model, in_channels, num_classes).to(device)
    # channels_last helps oneDNN on CPU too (about +25 % for the demo U-Net here), not only cuDNN.
    memory_format = torch.channels_last if tcfg.channels_last else torch.preserve_format
    model = model.to(memory_format=memory_format)
    loss_fn = instantiate(cfg.loss)
    if label_sets:  # inside deep supervision: each decoder level gets the codes, downsampled as labels
        loss_fn = MarginalLoss(loss_fn, label_sets)
    loss_fn = deep_supervision(loss_fn, bool(cfg.model.get("deep_supervision", False)))
    optimizer = instantiate(cfg.optim)(params=model.parameters())
    accumulate = int(tcfg.accumulate_grad_batches)
    steps_per_epoch = max(1, batches_per_epoch // accumulate)
    scheduler = instantiate(cfg.scheduler)(
        optimizer=optimizer, total_steps=steps_per_epoch * int(tcfg.max_epochs)
    )
    amp_dtype = amp_dtype_for(tcfg.precision, device)
    return TrainState(
        model=model,
        forward=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        ema=EMA(model, float(tcfg.ema_decay)) if tcfg.ema_decay else None,
        device=device,
        amp_dtype=amp_dtype,
        memory_format=memory_format,
        accumulate=accumulate,
        grad_clip_norm=float(tcfg.grad_clip_norm) if tcfg.grad_clip_norm else None,
        nan_policy=str(tcfg.nan_policy),
        max_skipped_steps=int(tcfg.max_skipped_steps),
    )


def _set_up_data(cfg: DictConfig, info: DistInfo) -> DataSetup:
    """Rank 0 generates/checks the dataset first; the others then read the same files."""
    seed = int(cfg.seed)
    if info.is_main:
        data = setup_data(cfg.data, seed, cfg.cv.fold, cfg.cv.folds, check=True)
    distributed.barrier(info)
    if not info.is_main:
        data = setup_data(cfg.data, seed, cfg.cv.fold, cfg.cv.folds, check=False)
    return data


def _plan_run(cfg: DictConfig, data: DataSetup, device: torch.device, run_dir: Path, info: DistInfo) -> Plan:
    """Rank 0 plans (or, resuming, reads the run's plan.json) and writes plan.json; every rank then applies the
    same plan to its config and data set-up, so config.yaml, the checkpoints' meta and the loaders agree."""
    text = None
    if info.is_main:
        plan = stored_plan(run_dir, cfg.trainer.resume)
        if plan is None:
            total_mb = None
            if device.type == "cuda":
                total_mb = torch.cuda.get_device_properties(device).total_memory / 2**20
            # A multi-source run is planned from its primary (first) source.
            plan = plan_from_config(cfg, data.primary.spec, data.primary.splits, device.type, total_mb)
        write_plan(plan, run_dir)
        log.info("experiment plan: %s", run_dir / PLAN_FILE, extra=FILE_ONLY)
        log.info(plan.describe())  # the table, once
        text = plan.to_json()
    plan = Plan.from_json(distributed.broadcast_object(text, info))
    apply_plan(cfg, plan)
    data.spacing_mm = float(plan.value("spacing_mm"))
    data.encoding = dataclasses.replace(data.encoding, bmode_norm=str(plan.value("bmode_norm")))
    return plan


def _model_meta(
    cfg: DictConfig, data: DataSetup, model: torch.nn.Module, params: PostprocessParams, resolved: dict
) -> dict[str, Any]:
    """What every checkpoint carries about its model: exported files copy it into their metadata."""
    return {
        "tpnet_version": __version__,
        "model_name": str(cfg.model._target_).rsplit(".", 1)[-1],
        "classes": list(data.spec.classes),
        "roles": data.spec.class_roles.to_dict(),
        "encoding": data.encoding.to_dict(),
        "spacing_mm": data.spacing_mm,
        "size_multiple": int(model.size_multiple),
        "postprocess": params.to_dict(),
        "guidance": GuidanceParams.from_dict(OmegaConf.to_container(cfg.guidance)).to_dict(),
        "config_fingerprint": config_fingerprint(resolved),
        "dataset_name": data.spec.name,
        "dataset_fingerprint": data.fingerprint,
    }


def _resume(
    resume: Any, ckpt_dir: Path, run_dir: Path, state: TrainState, device: torch.device
) -> tuple[Progress, dict | None]:
    """Load the checkpoint to resume from (if any) into ``state``; returns the progress and the RNG state to
    restore just before the first epoch."""
    path = _resume_path(resume, ckpt_dir)
    if path is None:
        run_id_file = run_dir / "mlflow_run_id.txt"
        run_id = None
        if resume == "auto" and run_id_file.is_file():
            # Killed before the first checkpoint: continue the MLflow run that attempt created, not a second one.
            run_id = run_id_file.read_text().strip() or None
        return Progress(mlflow_run_id=run_id), None
    checkpoint = load_checkpoint(path, map_location=device)
    state.load_state_dicts(checkpoint)
    log.info("resumed from %s at epoch %d", path, int(checkpoint["epoch"]))
    progress = Progress(
        epoch=int(checkpoint["epoch"]),
        best_metric=checkpoint["best_metric"],
        bad_epochs=int(checkpoint["bad_epochs"]),
        mlflow_run_id=checkpoint["mlflow_run_id"],
    )
    return progress, checkpoint["rng"]


def _wrap_for_training(
    model: torch.nn.Module, tcfg: DictConfig, info: DistInfo, device: torch.device
) -> torch.nn.Module:
    wrapped: torch.nn.Module = model
    if info.enabled:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tcfg.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def _start_tracking(
    cfg: DictConfig, context: RunContext, run_dir: Path, resolved: dict, model_size: dict[str, float],
    data: DataSetup, device: torch.device, progress: Progress, info: DistInfo, plan: Plan,
) -> MlflowTracker:  # fmt: skip
    """The MLflow run (rank 0 only; a new one, or the resumed run's) and the run folder's config.yaml. A new run
    is named ``<recipe>-<model>[-fold<k>]-<random>`` unless ``logger.run_name`` is set."""
    fold = None if cfg.cv.fold is None else int(cfg.cv.fold)
    tracker = MlflowTracker(
        cfg.logger.tracking_uri,
        cfg.logger.experiment_name,
        run_name=cfg.logger.run_name or unique_run_name(context.recipe, context.model, fold),
        run_id=progress.mlflow_run_id,
        enabled=bool(cfg.logger.enabled) and info.is_main,
    )
    if not info.is_main:
        return tracker
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    tracker.start({
        **default_tags(str(device), data.spec.name, data.fingerprint),
        **run_tags(run_dir, context.recipe, context.model, context.overrides, fold, context.sweep_dir,
                   context.job_num),
        **cv_sweep.fold_tags(cfg, run_dir),
    })  # fmt: skip
    tracker.log_params(flatten(resolved))
    tracker.log_params(model_size)
    tracker.log_params(plan_mlflow_params(plan))
    tracker.log_artifact(run_dir / "config.yaml")
    tracker.log_artifact(run_dir / PLAN_FILE)
    if tracker.run_id:
        (run_dir / "mlflow_run_id.txt").write_text(tracker.run_id + "\n")
        log.info(tracker.describe())
    if progress.epoch:
        _truncate_history(run_dir / "metrics.jsonl", progress.epoch)
    return tracker


@contextlib.contextmanager
def _end_tracking_on_failure(tracker: MlflowTracker, run_dir: Path, info: DistInfo):
    """A run that fails or is interrupted still uploads its log and history, and its MLflow run ends FAILED
    (KILLED on Ctrl-C) instead of staying RUNNING; ``trainer.resume=auto`` continues the same run later."""
    try:
        yield
    except BaseException as exc:
        if info.is_main and tracker.run_id:
            interrupted = isinstance(exc, KeyboardInterrupt)
            status = "KILLED" if interrupted else "FAILED"
            # The CLI says what failed; an interruption has no other message.
            log.warning("run ended early (%s%s): MLflow run marked %s; trainer.resume=auto continues it",
                        type(exc).__name__, f": {exc}" if str(exc) else "", status,
                        extra=None if interrupted else FILE_ONLY)  # fmt: skip
            _upload_run_files(tracker, run_dir, ("metrics.jsonl", PROGRESS_PLOT, LOG_FILE))
            tracker.end(status)
        raise


def _upload_run_files(
    tracker: MlflowTracker, run_dir: Path, names: tuple[str, ...] = ("metrics.jsonl", LOG_FILE)
) -> None:
    """The per-epoch history and the run log (as far as it goes now), and whatever else ``names`` lists."""
    for name in names:
        if (run_dir / name).is_file():
            tracker.log_artifact(run_dir / name)


# ----------------------------------------------------------------------------------------------- per epoch
def _validate(
    state: TrainState, val_loader: Iterable, classes: list[str], params: PostprocessParams, cfg: DictConfig,
    run_dir: Path, tracker: MlflowTracker, epoch: int, info: DistInfo, sources: Sequence[Source] = (),
    roles: ClassRoles | None = None,
) -> dict[str, float]:  # fmt: skip
    """Full-frame validation of the EMA weights (when kept) on this rank's frames, gathered on every rank;
    overlays of a few frames every ``logger.overlay_every_n_epochs``."""
    eval_model = state.ema.module if state.ema is not None else state.model
    max_epochs = int(cfg.trainer.max_epochs)
    want_overlays = info.is_main and _every(epoch, cfg.logger.overlay_every_n_epochs, max_epochs)
    fault_injection.stall("validate", epoch + 1)
    records, losses, kept = validate_frames(
        eval_model, list(iter_frames(val_loader)), state.loss_fn, classes, params, state.device, state.amp_dtype,
        keep_predictions=3 if want_overlays else 0, roles=roles,
    )  # fmt: skip
    records = distributed.gather_objects(records, info)
    losses = distributed.gather_objects(losses, info)
    if info.is_main:
        # On the console only when sharded across ranks (it shows the gather worked); else one line per epoch.
        log.info("validated %d frames from %d rank(s)", len(records), info.world_size,
                 extra=None if info.enabled else FILE_ONLY)  # fmt: skip
    metrics = {"val/loss": float(np.mean(losses)) if losses else math.nan}
    metrics.update(metric_values(aggregate(records, classes), "val/"))
    for source in sources:  # multi-source runs: each source's own figures, val/<source>/...
        mine = [r for r in records if r.sample_id.startswith(source.name + "/")]
        if mine:
            metrics.update(_source_metrics(aggregate(mine, classes), source, classes, roles))
    if kept:
        for path in write_overlays(kept, classes, run_dir / "overlays" / f"epoch_{epoch + 1:03d}", roles):
            tracker.log_artifact(path, f"overlays/epoch_{epoch + 1:03d}")
    return metrics


# Figures about trigger-point detection (not per class): a source that labels no trigger point cannot give them.
_TRP_DETECTION_METRICS = ("det_", "loc_err", "class_", "frame_", "detection_", "active_")


def _source_metrics(
    report: dict, source: Source, classes: Sequence[str], roles: ClassRoles
) -> dict[str, float]:
    """One source's validation figures as ``val/<source>/...``, without those it cannot measure: the classes
    it does not label, and trigger-point detection when it does not label every TrP class."""
    prefix = f"val/{source.name}/"
    unknown = {classes[k] for k in source.unlabelled}
    no_trp = bool(set(trp_class_indices(classes, roles)) & set(source.unlabelled))
    kept = {}
    for key, value in metric_values(report, prefix).items():
        metric = key.removeprefix(prefix)
        per_class = metric.rsplit("/", 1)[-1] if "/" in metric else None
        if per_class in unknown:
            continue
        if no_trp and per_class not in classes and metric.startswith(_TRP_DETECTION_METRICS):
            continue
        kept[key] = value
    return kept


def _save_checkpoints(
    state: TrainState, progress: Progress, ckpt_dir: Path, improved: bool, resolved: dict, meta: dict,
    run_id: str | None,
) -> None:  # fmt: skip
    checkpoint = {
        **state.state_dicts(),
        "epoch": progress.epoch,
        "global_step": state.global_step,
        "best_metric": progress.best_metric,
        "bad_epochs": progress.bad_epochs,
        "rng": capture_rng_state(),
        "config": resolved,
        "mlflow_run_id": run_id,
        "meta": meta,
    }
    # best first: if killed between the two writes, resume redoes this epoch and rewrites both.
    if improved:
        save_checkpoint(checkpoint, ckpt_dir / "best.pt")
    save_checkpoint(checkpoint, ckpt_dir / "last.pt")


# ----------------------------------------------------------------------------------------------- finish
def _finish(
    cfg: DictConfig, data: DataSetup, device: torch.device, amp_dtype: torch.dtype | None, classes: list[str],
    params: PostprocessParams, run_dir: Path, ckpt_dir: Path, tracker: MlflowTracker, monitor: str, mode: str,
    val_has_trp: bool, context: RunContext,
) -> dict[str, float]:  # fmt: skip
    """Rank 0: calibrate post-processing on validation, test the best checkpoint, say where everything is,
    close the MLflow run."""
    final: dict[str, float] = {}
    best_path = ckpt_dir / "best.pt" if (ckpt_dir / "best.pt").exists() else ckpt_dir / "last.pt"
    validation = None
    if cfg.calibration.enabled and data.splits["val"]:
        if val_has_trp:
            validation = calibrate_checkpoint(best_path, data, device, amp_dtype, cfg, classes, params, run_dir,
                                              tracker)  # fmt: skip
        else:  # every setting would score an undefined F1: keep the configured post-processing
            log.info("post-processing not calibrated: no validation mask contains a trigger point (keeping "
                     "postprocess.threshold=%s, min_area_mm2=%s)", params.threshold, params.min_area_mm2)  # fmt: skip
    if cfg.cv.fold is not None and data.splits["val"]:
        cv_sweep.after_fold(cfg, best_path, data, device, amp_dtype, classes, run_dir, tracker)
    tested = cfg.trainer.test_after_training and data.splits["test"]
    report = None
    if tested:
        report = evaluate_checkpoint_on(best_path, data, "test", device, amp_dtype, cfg, classes)
        save_metrics_json(run_dir / "metrics.json", report)
        tracker.log_metrics(metric_values(report, "test/"), step=int(cfg.trainer.max_epochs))
        tracker.log_artifact(run_dir / "metrics.json")
        _draw_reliability(report, run_dir / "reliability_test.png", "test", tracker)
        final.update(metric_values(report, "test/"))
        for line in console.report_lines(report):
            log.info(line)
    if best_path.exists():
        _write_model_card(best_path, data, validation, report, cfg)
    if cfg.logger.log_checkpoint and best_path.exists():
        tracker.log_artifact(best_path, "checkpoints")
    if cfg.logger.get("progress_plot", True):
        _draw_progress(run_dir, monitor, mode, tracker, context)  # the final curves
    files = {
        "best checkpoint": _describe_best(best_path, run_dir, monitor, mode),
        "test metrics": "metrics.json" if tested else "",
        "progress plot": PROGRESS_PLOT if (run_dir / PROGRESS_PLOT).is_file() else "",
        "history": "metrics.jsonl",
        "run log": LOG_FILE if (run_dir / LOG_FILE).is_file() else "",
    }
    lost = tracker.summary_of_losses()
    if lost:
        log.warning(lost)
        (run_dir / "mlflow_not_logged.txt").write_text(lost + "\n")
    for line in console.where_lines(str(run_dir), {k: v for k, v in files.items() if v}, tracker.describe()):
        log.info(line)
    _upload_run_files(tracker, run_dir)  # last: the log holds the lines above
    tracker.end("FINISHED")
    return final


def _describe_best(best_path: Path, run_dir: Path, monitor: str, mode: str) -> str:
    """``checkpoints/best.pt (epoch 7, val/det_f1=0.5330)``, from the run's history."""
    if best_path.name != "best.pt":
        return f"{best_path.relative_to(run_dir)} (no epoch improved {monitor}: the last epoch's weights)"
    best = progress_plot.best_row(progress_plot.read_history(run_dir / "metrics.jsonl"), monitor, mode)
    where = f" (epoch {best['epoch']}, {monitor}={best[monitor]:.4f})" if best else ""
    return f"{best_path.relative_to(run_dir)}{where}"


def calibrate_checkpoint(path, data, device, amp_dtype, cfg, classes, params, run_dir, tracker) -> dict:
    """On the validation split: the pixel temperature, then threshold and minimum area, then the confidence
    models (training/calibrate.py); stored in the checkpoint's metadata. Returns the validation report with the
    calibration applied (the model card's validation figures)."""
    model, state = load_deployable_model(path, device)
    ccfg, seed = cfg.calibration, int(cfg.seed)
    tta = bool(ccfg.get("tta", False))
    trp = set(trp_class_indices(classes, data.spec.class_roles))
    # Multi-source: confidence is calibrated on the frames of sources that label the trigger points.
    frames = (
        f for f in split_frames(data, "val", cfg.data.num_workers)
        if not trp & set(f.get("unlabelled_classes", ()))
    )  # fmt: skip
    roles = data.spec.class_roles
    cached = predict_validation(model, frames, classes, device, amp_dtype, tta=tta, roles=roles)
    temperature = fit_pixel_temperature(cached, seed) if ccfg.get("temperature", True) else 1.0
    best, grid = choose_postprocess(
        cached, classes, params, ccfg.thresholds, ccfg.min_areas_mm2, ccfg.get("min_mean_probs") or (0.0,),
        roles,
    )  # fmt: skip
    min_volume, volume_grid = choose_min_volume(cached, classes, best, roles)  # sweeps only (issue #17)
    if min_volume is not None:
        best = dataclasses.replace(best, min_volume_mm3=min_volume)
        log.info(
            "sweeps: 3-D trigger points under %.1f mm3 dropped (calibrated on the validation sweeps)",
            min_volume,
        )
    calibration, active_latent = fit_confidence(
        cached, classes, best, temperature, tta, detection=bool(ccfg.get("detection", True)),
        active_band=float(ccfg.get("active_band", 0.1)), n_boot=int(cfg.evaluation.n_boot), seed=seed,
        roles=roles,
    )  # fmt: skip
    records = [
        score_frame(c.probs, c.gt, c.frame["elasto_kpa"], c.spacing_mm, c.frame, classes, best, c.gt_points,
                    calibration=calibration, raw_probs=c.raw_probs, roles=roles)[0]
        for c in cached
    ]  # fmt: skip
    validation = evaluation_report(records, classes, n_boot=int(cfg.evaluation.n_boot), seed=seed)
    validation["active_latent_balanced_acc"] = active_latent["value"]
    validation["ci95"]["active_latent_balanced_acc"] = active_latent["ci95"]
    state["meta"]["postprocess"] = best.to_dict()
    state["meta"]["calibration"] = calibration.to_dict()
    save_checkpoint(state, path)
    validation.update(split="val", checkpoint=str(path), postprocess=best.to_dict())
    document = {"chosen": best.to_dict(), "grid": grid, "confidence": calibration.to_dict(),
                "active_latent_test": active_latent, "min_volume_grid": volume_grid,
                "validation": {k: validation.get(k) for k in _CALIBRATION_FIGURES}}  # fmt: skip
    atomic_write_text(run_dir / "calibration.json", json.dumps(json_safe(document), indent=2))
    tracker.set_tags({
        "postprocess.threshold": best.threshold, "postprocess.min_area_mm2": best.min_area_mm2,
        "postprocess.min_mean_prob": best.min_mean_prob, "calibration.temperature": f"{temperature:.4f}",
        "calibration.active_separable": calibration.active_separable,
    })  # fmt: skip
    tracker.log_metrics(metric_values(validation, "calibration_val/"), step=int(cfg.trainer.max_epochs))
    tracker.log_artifact(run_dir / "calibration.json")
    _draw_reliability(validation, run_dir / "reliability_val.png", "validation", tracker)
    log.info("post-processing calibrated on validation: threshold %.2f, min area %.1f mm2, min mean probability "
             "%.2f", best.threshold, best.min_area_mm2, best.min_mean_prob)  # fmt: skip
    log.info("confidence calibrated on validation: temperature %.3f, detection ECE %s -> %s, active/latent %s",
             temperature, _fmt(validation.get("detection_ece_raw")), _fmt(validation.get("detection_ece")),
             "separable" if calibration.active_separable else "NOT separable (reported 'indeterminate')")  # fmt: skip
    for note in calibration.notes:
        log.info("calibration: %s", note)
    return validation


_CALIBRATION_FIGURES = (
    "pixel_ece_raw", "pixel_ece", "trp_pixel_ece_raw", "trp_pixel_ece", "detection_ece_raw", "detection_ece",
    "detection_brier_raw", "detection_brier", "frame_ece_raw", "frame_ece", "frame_auc", "class_acc", "ci95",
)  # fmt: skip


def _fmt(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _draw_reliability(report: dict, path: Path, split: str, tracker: MlflowTracker) -> None:
    """Reliability diagrams before/after calibration; a plot that cannot be drawn never stops training."""
    if "reliability" not in report:
        return
    try:
        draw_reliability(report, path, f"{split} split")
    except Exception as exc:  # matplotlib missing or failing: metrics.json holds the curves anyway
        log.warning("reliability diagram not drawn (%s: %s); the curves are in metrics.json",
                    type(exc).__name__, exc)  # fmt: skip
        return
    tracker.log_artifact(path)


def _write_model_card(path: Path, data: DataSetup, validation: dict | None, test: dict | None, cfg) -> None:
    """The model card (training/model_card.py) into the checkpoint's metadata, so exports carry it."""
    state = load_checkpoint(path)
    calibration = Calibration.from_meta(state["meta"])
    reference = training_input_reference(data, int(cfg.data.num_workers))
    state["meta"]["model_card"] = build_model_card(
        data, validation, test, calibration.active_separable, reference
    )
    save_checkpoint(state, path)


def evaluate_checkpoint_on(path, data, split, device, amp_dtype, cfg, classes) -> dict:
    """The metrics.json report of a checkpoint on one split, with the post-processing and calibration stored in
    it (TTA as it was calibrated with, as tpnet-infer runs)."""
    model, state = load_deployable_model(path, device)
    params = PostprocessParams.from_dict(state["meta"]["postprocess"])
    calibration = Calibration.from_meta(state["meta"])
    # Needle paths re-measured on the true masks (the unsafe-called-safe rate): at the end only, not per epoch.
    guidance = GuidanceParams.from_dict(state["meta"].get("guidance") or {})
    sweeps = scorer_for_split(
        data.splits[split], classes, params.match_mm, data.spec.class_roles, params.min_volume_mm3
    )
    _, records = evaluate(
        model,
        split_frames(data, split, cfg.data.num_workers),
        classes,
        int(model.size_multiple),
        params,
        device,
        tta=calibration.tta,
        amp_dtype=amp_dtype,
        calibration=calibration,
        roles=data.spec.class_roles,
        guidance=guidance,
        sweeps=sweeps,
    )
    report = evaluation_report(records, classes, n_boot=int(cfg.evaluation.n_boot), seed=int(cfg.seed))
    report.update(
        split=split, checkpoint=str(path), postprocess=params.to_dict(), calibration=calibration.to_dict(),
        guidance=guidance.to_dict(),
    )  # fmt: skip
    sweeps_3d = sweep_report(sweeps, int(cfg.evaluation.n_boot), int(cfg.seed))
    if sweeps_3d is not None:  # slices of sweeps: the 3-D figures beside the per-slice (2-D) ones
        report["sweeps_3d"] = sweeps_3d
    return report


def _check_labels_and_pick_monitor(
    cfg: DictConfig, data: Any, classes: list[str], info: DistInfo
) -> tuple[str, str, bool]:
    """Say the split sizes, warn about a degenerate label set or an empty split; the monitor to use
    (``trainer.monitor``, or a fallback that can be computed on these data), its mode, and whether the
    validation masks hold a trigger point. Rank 0 reads the masks and decides; every rank must monitor the
    same metric."""
    check_monitor_name(str(cfg.trainer.monitor), float(cfg.postprocess.match_mm), classes)
    choice = None
    if info.is_main:
        log.info(console.data_line(data.spec.name, _split_sizes(data), data.spacing_mm))
        # A multi-source run checks its primary (first) source's labels, in that source's own classes.
        primary = data.primary
        primary_classes, primary_roles = list(primary.spec.classes), primary.spec.class_roles
        summary = summarise_labels(primary)
        for message in label_set_warnings(summary, primary_classes, data.spacing_mm, primary_roles):
            _warn(message)
        monitor, mode, why = choose_monitor(
            str(cfg.trainer.monitor), str(cfg.trainer.monitor_mode), summary, primary_classes, primary_roles
        )
        if why:
            _warn(why)
        choice = (monitor, mode, has_trigger_points(summary["val"], primary_classes, primary_roles))
    return tuple(distributed.broadcast_object(choice, info))


def _split_sizes(data: DataSetup) -> dict[str, tuple[int, int]]:
    """(subjects, frames) per split."""
    return {split: (len({row.subject_id for row in rows}), len(rows)) for split, rows in data.splits.items()}


def _say_config(cfg: DictConfig, context: RunContext, device: torch.device) -> None:
    """The start of the console: the command line and config groups, the device and precision."""
    for line in console.config_lines(context.overrides, context.choices):
        log.info(line)
    requested = str(cfg.trainer.device)
    if device.type == "cuda":
        detail = torch.cuda.get_device_name(device)
    else:
        detail = "no CUDA device found" if requested == "auto" else ""
    amp_dtype = amp_dtype_for(str(cfg.trainer.precision), device)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    log.info(console.device_line(str(device), requested, precision, detail))


def _model_size(
    model: torch.nn.Module, data: DataSetup, cfg: DictConfig, meta: dict, context: RunContext, info: DistInfo
) -> dict[str, float]:
    """Parameter count and GFLOPs per training patch (MLflow params), said on the console."""
    size = {"model.n_parameters": count_parameters(model)}
    if info.is_main:
        sample_shape = (1, data.encoding.in_channels, *cfg.data.patch_size)
        size["model.gflops_per_patch"] = count_flops(model, sample_shape) / 1e9
        log.info(console.model_line(meta["model_name"], context.model, size["model.n_parameters"],
                                    size["model.gflops_per_patch"], cfg.data.patch_size))  # fmt: skip
    return size


def _draw_progress(
    run_dir: Path, monitor: str, mode: str, tracker: MlflowTracker, context: RunContext
) -> None:
    """Redraw progress.png from metrics.jsonl and upload it; a plot that cannot be drawn never stops training."""
    try:
        history = progress_plot.read_history(run_dir / "metrics.jsonl")
        title = f"{tracker.run_name or context.recipe}  ({run_dir.name})"
        path = progress_plot.write_progress_plot(history, run_dir / PROGRESS_PLOT, monitor, mode, title)
    except Exception as exc:  # matplotlib missing or failing: metrics.jsonl and MLflow have the curves anyway
        log.warning("progress.png not drawn (%s: %s)", type(exc).__name__, exc)
        return
    tracker.log_artifact(path)


def _warn(message: str) -> None:
    """Console and run log: a warning about the data must not hide among the epoch lines."""
    log.warning(message)


def _resume_path(resume: Any, ckpt_dir: Path) -> Path | None:
    last = ckpt_dir / "last.pt"
    if resume in (None, "", False):
        if last.exists():
            raise ConfigError(
                "trainer.resume", f"{last} already exists: pass trainer.resume=auto to continue that run"
            )
        return None
    if resume == "auto":
        return last if last.exists() else None
    path = Path(str(resume))
    if not path.exists():
        raise ConfigError("trainer.resume", f"{resume}: no such checkpoint")
    return path


def _truncate_history(path: Path, completed_epochs: int) -> None:
    """On resume, drop metrics.jsonl lines of epochs past the checkpoint (killed after logging, before saving):
    the resumed run writes them again, so the file keeps one line per epoch."""

    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("epoch", 0) <= completed_epochs]
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept))


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _every(epoch: int, n: Any, max_epochs: int) -> bool:
    return bool(n) and ((epoch + 1) % int(n) == 0 or epoch + 1 == max_epochs)


def _log_epoch(tracker: MlflowTracker, history_path: Path, metrics: dict[str, float], epoch: int) -> None:
    tracker.log_metrics(metrics, step=epoch + 1)
    with history_path.open("a") as fh:
        fh.write(
            json.dumps({"epoch": epoch + 1, **{k: (None if v != v else v) for k, v in metrics.items()}})
            + "\n"
        )
