"""Hydra glue shared by the ML-engineer tools (train, eval, export): where configs live, schema checks that
turn a typo into a clear error at start, and the config fingerprint. Never imported by the inference path."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def config_dir() -> str:
    """``$TPNET_CONFIG_DIR``, else the repository's ``configs/`` (editable install or source checkout)."""
    env = os.environ.get("TPNET_CONFIG_DIR")
    if env:
        return str(Path(env).resolve())
    return str(Path(__file__).resolve().parents[2] / "configs")


def config_fingerprint(resolved: dict[str, Any]) -> str:
    """Stable hash of the resolved config (run-location keys excluded), to tell models apart."""
    core = {k: v for k, v in resolved.items() if k not in {"hydra", "paths"}}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_dir_from_hydra() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


# ---- schemas: types and allowed values of the keys other tools rely on ---------------------------------------


@dataclass
class TrainerSchema:
    device: str = "auto"
    max_epochs: int = 30
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    accumulate_grad_batches: int = 1
    grad_clip_norm: float | None = 1.0
    val_every_n_epochs: int = 1
    monitor: str = "val/det_f1"
    monitor_mode: str = "max"
    early_stopping_patience: int | None = None
    ema_decay: float | None = None
    nan_policy: str = "skip"
    max_skipped_steps: int = 20
    resume: Any = None
    deterministic: bool = True
    test_after_training: bool = True
    ddp_timeout_s: float = 300.0


@dataclass
class SyntheticSchema:
    cache_dir: str = ".cache/tpnet/synthetic"
    subjects: int = 24
    frames_per_subject: int = 8
    seed: int = 0
    height: int = 256
    width: int = 256


@dataclass
class DataSchema:
    root: str | None = None
    synthetic: SyntheticSchema = field(default_factory=SyntheticSchema)
    channels: list[str] = field(default_factory=lambda: ["bmode", "elasto", "elasto_valid"])
    kpa_scale: float = 100.0
    kpa_clip: float = 300.0
    spacing_mm: float | None = None
    patch_size: list[int] = field(default_factory=lambda: [128, 128])
    batch_size: int = 8
    num_workers: int = 2
    fg_fraction: float = 0.33
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    samples_per_epoch: int | None = None


@dataclass
class CVSchema:
    folds: int = 5
    fold: int | None = None


@dataclass
class LoggerSchema:
    enabled: bool = True
    tracking_uri: str | None = None
    experiment_name: str = "tpnet"
    run_name: str | None = None
    overlay_every_n_epochs: int | None = 5
    log_checkpoint: bool = True


_SCHEMAS = {"trainer": TrainerSchema, "data": DataSchema, "cv": CVSchema, "logger": LoggerSchema}
_CHOICES = {
    "trainer.device": ("auto", "cpu", "cuda"),
    "trainer.precision": ("auto", "fp32", "bf16", "fp16"),
    "trainer.monitor_mode": ("min", "max"),
    "trainer.nan_policy": ("skip", "stop"),
}


class ConfigError(ValueError):
    pass


def validate_train_config(cfg: DictConfig) -> None:
    """Fail at start, with the key's name, on unknown keys, wrong types and values out of range."""
    for key, schema in _SCHEMAS.items():
        try:
            OmegaConf.merge(OmegaConf.structured(schema), cfg[key])
        except Exception as exc:  # omegaconf's ValidationError / ConfigKeyError
            # omegaconf names the key relative to the schema ("max_epochs"): give the full dotted name.
            where = f"{key}.{exc.full_key}" if getattr(exc, "full_key", None) else key
            reason = str(exc).splitlines()[0]
            raise ConfigError(f"{where}: {reason}") from exc
    for dotted, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, dotted)
        if value not in allowed:
            raise ConfigError(f"{dotted}={value!r} is not one of {list(allowed)}")
    fold = cfg.cv.fold
    if fold is not None and not 0 <= int(fold) < int(cfg.cv.folds):
        raise ConfigError(f"cv.fold={fold} must be in [0, cv.folds={cfg.cv.folds})")
    if int(cfg.trainer.max_epochs) < 1:
        raise ConfigError("trainer.max_epochs must be >= 1")
