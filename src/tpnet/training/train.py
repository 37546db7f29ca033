"""The training loop, top to bottom: set up, (resume), then per epoch train -> validate -> log -> checkpoint.

Launch with ``tpnet-train key=value ...`` (Hydra), alone or under ``torchrun`` for DDP.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from tpnet import __version__
from tpnet.atomic import atomic_write_text
from tpnet.configuration import ConfigError, check_monitor_name, config_fingerprint, run_dir_from_hydra
from tpnet.data.datamodule import frame_dataset, frame_loader, setup_data, train_loader
from tpnet.evaluation.evaluate import evaluate, evaluation_report, save_metrics_json
from tpnet.evaluation.metrics import aggregate
from tpnet.inference.postprocess import PostprocessParams
from tpnet.models import build_model
from tpnet.models.summary import count_flops, count_parameters
from tpnet.tracking.mlflow_logger import MlflowTracker, default_tags, flatten
from tpnet.training import distributed, fault_injection
from tpnet.training.calibrate import calibrate_postprocess
from tpnet.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_deployable_model,
    restore_rng_state,
    save_checkpoint,
)
from tpnet.training.distributed import DistInfo, EpochSampler
from tpnet.training.ema import EMA
from tpnet.training.label_set import choose_monitor, label_set_warnings, summarise_labels
from tpnet.training.overlays import write_overlays
from tpnet.training.validate import validate_frames

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "trainer.device=cuda but no CUDA device is available; use trainer.device=cpu or auto"
        )
    return torch.device(name)


def amp_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """None = full fp32. ``auto``: bf16 on GPUs that support it, else fp16 (with a grad scaler); fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    ckpt_dir = run_dir / "checkpoints"
    seed = int(cfg.seed)
    seed_everything(seed)  # same seed on every rank: identical initial weights
    torch.backends.cudnn.benchmark = not tcfg.deterministic

    # ---- data: rank 0 generates/checks first, the others then read the same files --------------------------
    if info.is_main:
        data = setup_data(cfg.data, seed, cfg.cv.fold, cfg.cv.folds, check=True)
    distributed.barrier(info)
    if not info.is_main:
        data = setup_data(cfg.data, seed, cfg.cv.fold, cfg.cv.folds, check=False)
    classes = list(data.spec.classes)
    monitor, mode = _check_labels_and_pick_monitor(cfg, data, classes, info)
    transform = instantiate(cfg.augment)
    sampler = EpochSampler(len(data.splits["train"]), cfg.data.samples_per_epoch, seed, info)
    loader = train_loader(data, cfg.data, transform, sampler, seed, device)
    val_set = frame_dataset(data, "val")
    val_loader = frame_loader(
        val_set, list(range(info.rank, len(val_set), info.world_size)), cfg.data.num_workers
    )

    # ---- model, loss, optimiser, schedule ------------------------------------------------------------------
    model = build_model(cfg.model, data.encoding.in_channels, len(classes)).to(device)
    # channels_last helps oneDNN on CPU too (about +25 % for the demo U-Net here), not only cuDNN.
    memory_format = torch.channels_last if tcfg.channels_last else torch.preserve_format
    model = model.to(memory_format=memory_format)
    loss_fn = instantiate(cfg.loss)
    optimizer = instantiate(cfg.optim)(params=model.parameters())
    accumulate = int(tcfg.accumulate_grad_batches)
    steps_per_epoch = max(1, len(loader) // accumulate)
    max_epochs = int(tcfg.max_epochs)
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer, total_steps=steps_per_epoch * max_epochs)
    amp_dtype = amp_dtype_for(tcfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = EMA(model, float(tcfg.ema_decay)) if tcfg.ema_decay else None
    params = PostprocessParams.from_dict(OmegaConf.to_container(cfg.postprocess))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    meta = {
        "tpnet_version": __version__,
        "model_name": str(cfg.model._target_).rsplit(".", 1)[-1],
        "classes": classes,
        "encoding": data.encoding.to_dict(),
        "spacing_mm": data.spacing_mm,
        "size_multiple": int(model.size_multiple),
        "postprocess": params.to_dict(),
        "config_fingerprint": config_fingerprint(resolved),
        "dataset_name": data.spec.name,
        "dataset_fingerprint": data.fingerprint,
    }

    # ---- resume ------------------------------------------------------------------------------------------
    start_epoch, global_step, best_metric, run_id, bad_epochs = 0, 0, None, None, 0
    rng_state = None
    resume_path = _resume_path(tcfg.resume, ckpt_dir)
    run_id_file = run_dir / "mlflow_run_id.txt"
    if resume_path is None and tcfg.resume == "auto" and run_id_file.is_file():
        # Killed before the first checkpoint: continue the MLflow run that attempt created, not a second one.
        run_id = run_id_file.read_text().strip() or None
    if resume_path is not None:
        state = load_checkpoint(resume_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        rng_state = state["rng"]
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        best_metric, run_id, bad_epochs = (
            state["best_metric"],
            state["mlflow_run_id"],
            int(state["bad_epochs"]),
        )
        log.info("resumed from %s at epoch %d", resume_path, start_epoch)

    train_model: torch.nn.Module = model
    if info.enabled:
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if tcfg.compile:
        train_model = torch.compile(train_model)

    # ---- tracking (rank 0 only) ------------------------------------------------------------------------------
    tracker = MlflowTracker(
        cfg.logger.tracking_uri,
        cfg.logger.experiment_name,
        run_name=cfg.logger.run_name,
        run_id=run_id,
        enabled=bool(cfg.logger.enabled) and info.is_main,
    )
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        tracker.start(default_tags(str(device), data.spec.name, data.fingerprint))
        tracker.log_params(flatten(resolved))
        sample_shape = (1, data.encoding.in_channels, *cfg.data.patch_size)
        tracker.log_params(
            {
                "model.n_parameters": count_parameters(model),
                "model.gflops_per_patch": count_flops(model, sample_shape) / 1e9,
            }
        )
        tracker.log_artifact(run_dir / "config.yaml")
        if tracker.run_id:
            run_id_file.write_text(tracker.run_id + "\n")
        if start_epoch:
            _truncate_history(run_dir / "metrics.jsonl", start_epoch)

    # Restore the RNG streams last, just before the first epoch: whatever set-up consumed random numbers above,
    # the resumed epochs then draw exactly what the uninterrupted run drew.
    if rng_state is not None:
        restore_rng_state(rng_state)

    # ---- epochs ------------------------------------------------------------------------------------------------
    history_path = run_dir / "metrics.jsonl"
    for epoch in range(start_epoch, max_epochs):
        fault_injection.kill_rank(info.rank, epoch)
        loader.sampler.set_epoch(epoch)  # PatchSampler: reshuffles and carries the epoch to the workers
        train_loss, images_per_s, global_step = train_one_epoch(
            train_model, model, loader, loss_fn, optimizer, scheduler, scaler, ema, amp_dtype, memory_format,
            device, info, tcfg, epoch, global_step,
        )  # fmt: skip
        metrics = {
            "train/loss": train_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "throughput/img_per_s": images_per_s,
        }

        if (epoch + 1) % int(tcfg.val_every_n_epochs) == 0 or epoch + 1 == max_epochs:
            eval_model = ema.module if ema is not None else model
            want_overlays = info.is_main and _every(epoch, cfg.logger.overlay_every_n_epochs, max_epochs)
            fault_injection.stall("validate", epoch + 1)
            records, losses, kept = validate_frames(
                eval_model, list(val_loader_iter(val_loader)), loss_fn, classes, params, device, amp_dtype,
                keep_predictions=3 if want_overlays else 0,
            )  # fmt: skip
            records = distributed.gather_objects(records, info)
            losses = distributed.gather_objects(losses, info)
            val = aggregate(records, classes)
            if info.is_main:
                log.info("validated %d frames from %d rank(s)", len(records), info.world_size)
            metrics["val/loss"] = float(np.mean(losses)) if losses else math.nan
            metrics.update(_metric_values(val, "val/"))
            if kept:
                for path in write_overlays(kept, classes, run_dir / "overlays" / f"epoch_{epoch + 1:03d}"):
                    tracker.log_artifact(path, f"overlays/epoch_{epoch + 1:03d}")

        value = metrics.get(monitor)
        improved = value is not None and not math.isnan(value) and _better(value, best_metric, mode)
        if improved:
            best_metric, bad_epochs = float(value), 0
        elif value is not None:
            bad_epochs += 1

        if info.is_main:
            _log_epoch(tracker, history_path, metrics, epoch)
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "epoch": epoch + 1,
                "global_step": global_step,
                "best_metric": best_metric,
                "bad_epochs": bad_epochs,
                "rng": capture_rng_state(),
                "config": resolved,
                "mlflow_run_id": tracker.run_id,
                "meta": meta,
            }
            # best first: if killed between the two writes, resume redoes this epoch and rewrites both.
            if improved:
                save_checkpoint(state, ckpt_dir / "best.pt")
            save_checkpoint(state, ckpt_dir / "last.pt")
        distributed.barrier(info)

        patience = tcfg.early_stopping_patience
        if patience and bad_epochs >= int(patience):
            log.info("early stopping: %s did not improve for %d epochs", monitor, bad_epochs)
            break

    # ---- final: best checkpoint on the test split, metrics.json ------------------------------------------------
    final: dict[str, float] = {"best/" + monitor: best_metric if best_metric is not None else math.nan}
    if info.is_main:
        best_path = ckpt_dir / "best.pt" if (ckpt_dir / "best.pt").exists() else ckpt_dir / "last.pt"
        if cfg.calibration.enabled and data.splits["val"]:
            calibrate_checkpoint(best_path, data, device, amp_dtype, cfg, classes, params, run_dir, tracker)
        if tcfg.test_after_training and data.splits["test"]:
            report = evaluate_checkpoint_on(best_path, data, "test", device, amp_dtype, cfg, classes)
            save_metrics_json(run_dir / "metrics.json", report)
            tracker.log_metrics(_metric_values(report, "test/"), step=max_epochs)
            tracker.log_artifact(run_dir / "metrics.json")
            final.update(_metric_values(report, "test/"))
        if cfg.logger.log_checkpoint and best_path.exists():
            tracker.log_artifact(best_path, "checkpoints")
        lost = tracker.summary_of_losses()
        if lost:
            log.warning(lost)
            (run_dir / "mlflow_not_logged.txt").write_text(lost + "\n")
        tracker.end("FINISHED")
        log.info("run folder: %s", run_dir)
    return final


def train_one_epoch(
    train_model, model, loader, loss_fn, optimizer, scheduler, scaler, ema, amp_dtype, memory_format,
    device, info, tcfg, epoch, global_step,
) -> tuple[float, float, int]:  # fmt: skip
    """One pass over the epoch's patches; returns (mean loss across ranks, images/s, global step)."""
    train_model.train()
    accumulate = int(tcfg.accumulate_grad_batches)
    total_loss, n_batches, n_images, skipped = 0.0, 0, 0, 0
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{tcfg.max_epochs}",
        disable=not info.is_main,
        leave=False,
        mininterval=2,
    )
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for step, (images, masks) in enumerate(bar):
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        masks = masks.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = train_model(images)
        loss = loss_fn(logits.float(), masks)
        # Every rank must take the same decision, or DDP's next all-reduce hangs.
        if distributed.any_across_ranks(not bool(torch.isfinite(loss)), info, device):
            if tcfg.nan_policy == "stop":
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch + 1}, step {step}; stopping (trainer.nan_policy=stop). "
                    "checkpoints/last.pt holds the last good epoch: resume with trainer.resume=auto after fixing "
                    "the cause (lower optim.lr, trainer.precision=fp32, check the data)"
                )
            skipped += 1
            optimizer.zero_grad(set_to_none=True)
            if skipped > int(tcfg.max_skipped_steps):
                raise NonFiniteLossError(
                    f"more than {tcfg.max_skipped_steps} non-finite losses in epoch {epoch + 1}"
                )
            log.warning("non-finite loss at epoch %d step %d: step skipped", epoch + 1, step)
            continue
        scaler.scale(loss / accumulate).backward()
        if (step + 1) % accumulate == 0:
            if tcfg.grad_clip_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(tcfg.grad_clip_norm))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            global_step += 1
            if ema is not None:
                ema.update(model)
        if step == 1:
            fault_injection.stall("train", epoch + 1)  # mid-epoch: after one optimiser step, before the next
        total_loss += float(loss.detach())
        n_batches += 1
        n_images += images.shape[0]
        if info.is_main and step % 10 == 0:
            bar.set_postfix(
                loss=f"{total_loss / n_batches:.4f}", img_s=f"{n_images / (time.perf_counter() - start):.1f}"
            )
    elapsed = time.perf_counter() - start
    # No batch at all (every step non-finite and skipped): NaN, not a misleading 0.
    mean_loss = distributed.mean_across_ranks(total_loss / n_batches if n_batches else math.nan, info, device)
    return mean_loss, n_images * info.world_size / max(elapsed, 1e-9), global_step


def _split_frames(data, split: str, cfg):
    loader = frame_loader(
        frame_dataset(data, split), list(range(len(data.splits[split]))), cfg.data.num_workers
    )
    return val_loader_iter(loader)


def calibrate_checkpoint(
    path, data, device, amp_dtype, cfg, classes, params, run_dir, tracker
) -> PostprocessParams:
    """Pick threshold and minimum area on the validation split and store them in the checkpoint's metadata."""
    model, state = load_deployable_model(path, device)
    best, grid = calibrate_postprocess(
        model, _split_frames(data, "val", cfg), classes, params, device, amp_dtype,
        cfg.calibration.thresholds, cfg.calibration.min_areas_mm2,
    )  # fmt: skip
    state["meta"]["postprocess"] = best.to_dict()
    save_checkpoint(state, path)
    atomic_write_text(
        run_dir / "calibration.json", json.dumps({"chosen": best.to_dict(), "grid": grid}, indent=2)
    )
    tracker.set_tags({"postprocess.threshold": best.threshold, "postprocess.min_area_mm2": best.min_area_mm2})
    tracker.log_artifact(run_dir / "calibration.json")
    log.info("post-processing calibrated on validation: threshold %.2f, min area %.1f mm2", best.threshold,
             best.min_area_mm2)  # fmt: skip
    return best


def evaluate_checkpoint_on(path, data, split, device, amp_dtype, cfg, classes) -> dict:
    """The metrics.json report of a checkpoint on one split, with the post-processing stored in it."""
    model, state = load_deployable_model(path, device)
    params = PostprocessParams.from_dict(state["meta"]["postprocess"])
    _, records = evaluate(
        model,
        _split_frames(data, split, cfg),
        classes,
        int(model.size_multiple),
        params,
        device,
        amp_dtype=amp_dtype,
    )
    report = evaluation_report(records, classes, n_boot=int(cfg.evaluation.n_boot), seed=int(cfg.seed))
    report.update(split=split, checkpoint=str(path), postprocess=params.to_dict())
    return report


def val_loader_iter(loader):
    for batch in loader:
        yield from batch


def _check_labels_and_pick_monitor(
    cfg: DictConfig, data: Any, classes: list[str], info: DistInfo
) -> tuple[str, str]:
    """Warn about a degenerate label set; the monitor to use (``trainer.monitor``, or a fallback that can be
    computed on these data). Rank 0 reads the masks and decides; every rank must monitor the same metric."""
    check_monitor_name(str(cfg.trainer.monitor), float(cfg.postprocess.match_mm), classes)
    choice = None
    if info.is_main:
        summary = summarise_labels(data)
        for message in label_set_warnings(summary, classes, data.spacing_mm):
            _warn(message)
        choice = choose_monitor(str(cfg.trainer.monitor), str(cfg.trainer.monitor_mode), summary, classes)
        if choice[2]:
            _warn(choice[2])
    monitor, mode, _ = distributed.broadcast_object(choice, info)
    return monitor, mode


def _warn(message: str) -> None:
    """Logged (run folder's log) and printed: a warning about the data must not hide among the epoch lines."""
    log.warning(message)
    print(f"tpnet-train: WARNING: {message}", file=sys.stderr)


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


def _metric_values(report: dict[str, Any], prefix: str) -> dict[str, float]:
    """The metrics worth a curve: numbers, without counts (n_frames, ...) or nested records (ci95, ...)."""
    return {
        prefix + k: float(v)
        for k, v in report.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and not k.startswith("n_")
    }


def _log_epoch(tracker: MlflowTracker, history_path: Path, metrics: dict[str, float], epoch: int) -> None:
    tracker.log_metrics(metrics, step=epoch + 1)
    with history_path.open("a") as fh:
        fh.write(
            json.dumps({"epoch": epoch + 1, **{k: (None if v != v else v) for k, v in metrics.items()}})
            + "\n"
        )
    shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in _SHOWN)
    log.info("epoch %d: %s", epoch + 1, shown)


_SHOWN = ("train/loss", "val/loss", "val/dice_mean", "val/det_f1", "val/loc_err_mm", "throughput/img_per_s")
