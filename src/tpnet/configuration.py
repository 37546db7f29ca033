"""Hydra glue shared by the ML-engineer tools (train, eval, export): where configs live, schema checks that
turn a typo into a clear error at start, and the config fingerprint. Never imported by the inference path."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import io
import json
import math
import os
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from tpnet.core.encoding import DEFAULT_KPA_CLIP, DEFAULT_KPA_SCALE


def config_dir() -> str:
    """``$TPNET_CONFIG_DIR`` when set (an override: a folder with the same layout), else the configs shipped
    inside the package (``tpnet/configs/``, package data), so editable and wheel installs alike need no
    environment variable."""
    env = os.environ.get("TPNET_CONFIG_DIR")
    if env:
        return str(Path(env).resolve())
    return str(Path(__file__).resolve().parent / "configs")


def config_fingerprint(resolved: dict[str, Any]) -> str:
    """Stable hash of the resolved config (run-location keys excluded), to tell models apart."""
    core = {k: v for k, v in resolved.items() if k not in {"hydra", "paths"}}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_dir_from_hydra() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


@dataclass(frozen=True)
class RunContext:
    """How Hydra launched this run: what its MLflow name and tags and the console say about it."""

    run_dir: Path
    overrides: tuple[str, ...] = ()  # the command line's key=value overrides (hydra.overrides.task)
    choices: dict[str, str] = field(default_factory=dict)  # config group -> option (model -> unet, ...)
    sweep_dir: Path | None = None  # -m (multirun) only: the sweep's folder and this job's number in it
    job_num: int | None = None

    @property
    def recipe(self) -> str:
        """The ``experiment=`` recipe, or "default"."""
        return self.choices.get("experiment") or "default"

    @property
    def model(self) -> str:
        return self.choices.get("model") or "model"


def run_context_from_hydra() -> RunContext:
    """The running Hydra job's context; outside Hydra (a script calling train()): the current folder, nothing
    else known."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return RunContext(run_dir=Path.cwd())
    hydra_cfg = HydraConfig.get()
    choices = {
        str(group): str(option)
        # Hydra lists the choices last group first; hydra/launcher etc. are Hydra's own
        for group, option in reversed(list(hydra_cfg.runtime.choices.items()))
        if option is not None and not str(group).startswith("hydra/")
    }
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    return RunContext(
        run_dir=Path(hydra_cfg.runtime.output_dir),
        overrides=tuple(str(o) for o in hydra_cfg.overrides.task),
        choices=choices,
        sweep_dir=Path(hydra_cfg.sweep.dir).resolve() if multirun else None,
        job_num=int(hydra_cfg.job.num) if multirun else None,
    )


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
    appearance: str = "literature"
    # Active vs latent effect sizes (issue #14, docs/synthetic-data.md): active TrPs' stiffness ratio is
    # multiplied by this, and they are this many dB darker than latent ones. Defaults: no reliable difference.
    active_stiffness_factor: float = 1.0
    active_echo_db: float = 0.0


@dataclass
class CacheSchema:
    enabled: bool = True
    dir: str = ".cache/tpnet/preprocessed"
    workers: int | None = None


@dataclass
class SourceSchema:
    root: str = "???"
    weight: float = 1.0
    name: str | None = None


@dataclass
class DataSchema:
    root: str | None = None
    # Several contract datasets at once (issue #16, tpnet.data.sources); null = root (or the synthetic set).
    sources: list[SourceSchema] | None = None
    classes: list[str] | None = None  # the run's classes with sources; null = the sources' merged by name
    partial_labels: str = "marginal"  # a class a source does not label: marginal (unknown) | background
    synthetic: SyntheticSchema = field(default_factory=SyntheticSchema)
    channels: list[str] = field(default_factory=lambda: ["bmode", "elasto", "elasto_valid"])
    kpa_scale: float = DEFAULT_KPA_SCALE
    kpa_clip: float = DEFAULT_KPA_CLIP
    # null = planned at the start of training (tpnet.planning); a value wins
    spacing_mm: float | None = None
    patch_size: list[int] | None = None
    batch_size: int | None = None
    num_workers: int = 2
    fg_fraction: float | None = None
    bmode_norm: str | None = None
    # 2.5-D input for sweeps (issue #17): each slice with its k neighbours on each side as extra B-mode channels
    context_slices: int = 0
    context_spacing_mm: float | None = (
        None  # mm between context planes; null = the sweeps' median slice spacing
    )
    cache: CacheSchema = field(default_factory=CacheSchema)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    samples_per_epoch: int | None = None


@dataclass
class PlanSchema:
    enabled: bool = True
    memory_budget_mb: float | None = None


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
    progress_plot: bool = True


@dataclass
class PostprocessSchema:
    threshold: float = 0.5
    min_area_mm2: float = 2.0
    match_mm: float = 5.0
    min_mean_prob: float = 0.0
    min_volume_mm3: float = 2.0


@dataclass
class GuidanceSchema:  # tpnet.core.needle_path.GuidanceParams
    min_clearance_mm: float = 3.0
    min_angle_deg: float = 15.0
    max_angle_deg: float = 70.0
    angle_step_deg: float = 1.0
    critical_prob_threshold: float = 0.1
    min_critical_area_mm2: float = 0.5


@dataclass
class CalibrationSchema:
    enabled: bool = True
    thresholds: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7])
    min_areas_mm2: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 6.0])
    min_mean_probs: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.6, 0.7])
    # Confidence (issue #14), fitted on validation after the post-processing above.
    tta: bool = True  # fit on lateral-flip TTA predictions: what tpnet-infer runs by default
    temperature: bool = True  # pixel-level temperature scaling of the log-probabilities
    detection: bool = True  # detection confidence = P(true trigger point | component evidence)
    active_band: float = 0.1  # |p_active - 0.5| below this: class "indeterminate"


@dataclass
class EvaluationSchema:
    n_boot: int = 1000


_SCHEMAS = {
    "trainer": TrainerSchema, "data": DataSchema, "plan": PlanSchema, "cv": CVSchema, "logger": LoggerSchema,
    "postprocess": PostprocessSchema, "calibration": CalibrationSchema, "evaluation": EvaluationSchema,
    "guidance": GuidanceSchema,
}  # fmt: skip
# The sections of tpnet-train's config: the schemas above, the seed, and the groups whose keys are the
# arguments of their ``_target_`` (checked when they are built).
TRAIN_KEYS: tuple[str, ...] = (*_SCHEMAS, "seed", "model", "loss", "optim", "scheduler", "augment")
_CHOICES = {
    "trainer.device": ("auto", "cpu", "cuda"),
    "trainer.precision": ("auto", "fp32", "bf16", "fp16"),
    "trainer.monitor_mode": ("min", "max"),
    "trainer.nan_policy": ("skip", "stop"),
    "data.bmode_norm": (None, "none", "zscore_frame"),  # tpnet.core.encoding.BMODE_NORMS, or null = planned
    "data.synthetic.appearance": ("literature", "wide", "shifted"),  # tpnet.data.synth.APPEARANCES
    "data.partial_labels": ("marginal", "background"),  # tpnet.data.sources.PARTIAL_LABEL_MODES
}


class ConfigError(ValueError):
    """A configuration value that cannot work; ``str()`` is "<key>: <why>"."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: {why}")
        self.key = key


# What an epoch logs that ``trainer.monitor`` may name: the losses and tpnet.evaluation.metrics.aggregate's
# metrics under val/ (tests/training/test_config_errors.py keeps this list in step with aggregate). Also
# val/dice/<class>, val/iou/<class> (checked against the dataset's classes once it is loaded) and
# val/det_f1@<r>mm for r in DETECTION_RADII_MM or postprocess.match_mm.
MONITORS: tuple[str, ...] = (
    "train/loss", "val/loss", "val/dice_mean", "val/det_f1", "val/det_precision", "val/det_recall",
    "val/fp_per_frame", "val/loc_err_mm", "val/class_acc", "val/frame_auc",
)  # fmt: skip
PER_CLASS_MONITORS: tuple[str, ...] = ("val/dice/", "val/iou/")
DETECTION_RADII_MM: tuple[float, ...] = (3.0, 5.0, 10.0)  # tpnet.evaluation.metrics.DEFAULT_RADII_MM

# Files a run writes into its folder: one of them there means the folder already holds a (started) run.
RUN_FOLDER_MARKERS: tuple[str, ...] = (
    "checkpoints/last.pt",
    "config.yaml",
    "metrics.jsonl",
    "mlflow_run_id.txt",
)


def validate_train_config(cfg: DictConfig) -> None:
    """Fail at start, with the key's name, on unknown keys, wrong types and values out of range."""
    for key in cfg:
        if key not in TRAIN_KEYS:
            raise ConfigError(str(key), _unknown_key_reason(str(key), set(TRAIN_KEYS), "tpnet-train"))
    for key, schema in _SCHEMAS.items():
        if key == "plan" and "plan" not in cfg:
            continue  # a config folder from before planning (TPNET_CONFIG_DIR): planning with its defaults
        try:
            OmegaConf.merge(OmegaConf.structured(schema), cfg[key])
        except Exception as exc:  # omegaconf's ValidationError / ConfigKeyError
            # omegaconf names the key relative to the schema ("max_epochs"): give the full dotted name.
            where = f"{key}.{exc.full_key}" if getattr(exc, "full_key", None) else key
            reason = str(exc).splitlines()[0]
            if type(exc).__name__ == "ConfigKeyError":
                known = {f"{key}.{k}" for k in schema_keys(schema)}
                reason = _unknown_key_reason(where, known, "tpnet-train")
            raise ConfigError(where, reason) from exc
    for dotted, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, dotted)
        if value not in allowed:
            shown = [a if a is not None else "null" for a in allowed]
            raise ConfigError(dotted, f"{value!r} is not one of {shown}")
    fold = cfg.cv.fold
    if fold is not None and not 0 <= int(fold) < int(cfg.cv.folds):
        raise ConfigError("cv.fold", f"{fold} must be in [0, cv.folds={cfg.cv.folds})")
    for key, allowed, why in _RANGES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None and key in _OPTIONAL:
            continue
        if not _is_number(value) or not allowed(value):
            raise ConfigError(key, f"{value!r} is out of range: {why}")
    _check_seed(cfg.get("seed"))
    if cfg.data.patch_size is not None:
        _check_patch_size(list(cfg.data.patch_size))
    _check_depth(cfg.model.get("depth"))
    _check_channels(list(cfg.data.channels))
    _check_fractions(float(cfg.data.val_fraction), float(cfg.data.test_fraction))
    _check_device(str(cfg.trainer.device))
    _check_resume_file(cfg.trainer.resume)
    _check_ranges(cfg, _POSTPROCESS_RANGES)
    _check_ranges(cfg, [("evaluation.n_boot", lambda v: v >= 1, "at least 1 bootstrap resample")])
    _check_calibration(cfg.calibration)
    check_monitor_name(str(cfg.trainer.monitor), float(cfg.postprocess.match_mm))


def _check_calibration(calibration: DictConfig) -> None:
    for key, allowed, why in (
        ("thresholds", lambda v: 0 < v <= 1, "summed TrP probabilities in (0, 1]"),
        ("min_areas_mm2", lambda v: 0 <= v < math.inf, "areas of 0 mm^2 or more"),
        ("min_mean_probs", lambda v: 0 <= v < 1, "mean TrP probabilities in [0, 1)"),
    ):
        values = list(calibration[key])
        if not values or not all(_is_number(v) and allowed(v) for v in values):
            raise ConfigError(f"calibration.{key}", f"{values} must be a non-empty list of {why}")


# ---- tpnet-eval and tpnet-export: the whole config is one schema ----------------------------------------------


@dataclass
class EvalDataSchema:
    root: str | None = None


@dataclass
class EvalGuidanceSchema:  # tpnet-eval: null = the value the model was validated with (its meta "guidance")
    min_clearance_mm: float | None = None
    min_angle_deg: float | None = None
    max_angle_deg: float | None = None
    angle_step_deg: float | None = None
    critical_prob_threshold: float | None = None
    min_critical_area_mm2: float | None = None


@dataclass
class EvalSchema:
    checkpoint: Any = MISSING  # a path, or a list of paths (the folds of a cross-validation: one ensemble)
    split: str = "test"
    data: EvalDataSchema = field(default_factory=EvalDataSchema)
    output: str | None = None
    device: str = "auto"
    tta: bool | None = None  # None: the model's calibration.tta
    evaluation: EvaluationSchema = field(default_factory=EvaluationSchema)  # the same key as tpnet-train's
    log_to_mlflow: bool = True
    tracking_uri: str | None = None
    postprocess: PostprocessSchema | None = None
    guidance: EvalGuidanceSchema = field(default_factory=EvalGuidanceSchema)


@dataclass
class ExportSchema:
    checkpoint: Any = MISSING  # a path, or a list of paths (the folds of a cross-validation: one ensemble)
    output: str = MISSING
    format: str = "torchscript"
    parity_frames: int = 4
    atol: float = 1.0e-4
    log_to_mlflow: bool = True
    mlflow_model: bool = True  # also log the file as an MLflow Model (LoggedModel) of the training run
    register_name: str | None = None
    register_alias: str | None = None  # e.g. champion: models:/<register_name>@champion
    tracking_uri: str | None = None


_POSTPROCESS_RANGES: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("postprocess.threshold", lambda v: 0 < v <= 1, "a summed TrP probability must be in (0, 1]"),
    ("postprocess.min_area_mm2", lambda v: 0 <= v < math.inf, "must be 0 or more (mm^2)"),
    ("postprocess.match_mm", lambda v: 0 < v < math.inf, "must be a positive distance in mm"),
    ("postprocess.min_mean_prob", lambda v: 0 <= v < 1, "a mean TrP probability must be in [0, 1)"),
)
_EVAL_RANGES: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("evaluation.n_boot", lambda v: v >= 1, "at least 1 bootstrap resample"),
)
_EXPORT_RANGES: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("parity_frames", lambda v: v >= 0, "must be 0 (random inputs only) or more"),
    ("atol", lambda v: 0 < v < math.inf, "the allowed logit difference must be positive"),
)


def validate_eval_config(cfg: DictConfig) -> None:
    """``tpnet-eval``'s config: unknown keys, wrong types, a missing checkpoint and values out of range fail at
    start with the key's name (before torch, the checkpoint or the data are touched)."""
    _check_schema(cfg, EvalSchema, "tpnet-eval")
    _check_choice(cfg, "split", ("train", "val", "test"))
    device = str(cfg.device)
    if device not in ("auto", "cpu", "cuda") and not _is_cuda_index(device):
        raise ConfigError("device", f"{device!r} is not one of ['auto', 'cpu', 'cuda', 'cuda:<index>']")
    _check_device(device, "device")
    _check_ranges(cfg, _EVAL_RANGES)
    if cfg.postprocess is not None:
        _check_ranges(cfg, [r for r in _POSTPROCESS_RANGES if r[0].split(".")[1] in cfg.postprocess])


def validate_export_config(cfg: DictConfig) -> None:
    """``tpnet-export``'s config, checked like :func:`validate_eval_config`."""
    _check_schema(cfg, ExportSchema, "tpnet-export")
    _check_choice(cfg, "format", ("torchscript", "pt2", "onnx"))
    _check_ranges(cfg, _EXPORT_RANGES)


def check_command_line(argv: Sequence[str], schema: type, tool: str) -> None:
    """An override of a key the tool's config does not have (``checkpint=...``, ``+n_bot=5``) is a
    :class:`ConfigError` naming it (and the nearest key) before Hydra composes anything: Hydra itself would
    refuse the first in its own words with exit 1, and append the second silently. Command lines Hydra
    cannot parse are left for Hydra to report."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.main import get_args_parser  # hydra-core 1.3's own argument parser (re-exported there)

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = get_args_parser().parse_args(list(argv))
        overrides = OverridesParser.create().parse_overrides(list(args.overrides))
    except (SystemExit, Exception):  # argparse exits on a bad flag; Hydra reports both kinds itself
        return
    known = schema_keys(schema)
    for override in overrides:
        key = override.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or override.is_delete():
            continue
        if key not in known:
            raise ConfigError(key, _unknown_key_reason(key, known, tool))


def schema_keys(schema: type, prefix: str = "") -> set[str]:
    """Every dotted key of a (nested) dataclass schema, the nested sections included."""
    keys = set()
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        name = prefix + f.name
        keys.add(name)
        for candidate in (hints[f.name], *typing.get_args(hints[f.name])):
            if dataclasses.is_dataclass(candidate):
                keys |= schema_keys(candidate, name + ".")
    return keys


def _unknown_key_reason(key: str, known: set[str], tool: str) -> str:
    """Why ``key`` is refused: not a key, the nearest known key, and the keys of its section."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = sorted(k[len(parent) :] for k in known if k.startswith(parent) and "." not in k[len(parent) :])
    where = f"{tool}'s {parent[:-1]} section" if parent and siblings else f"{tool}'s config"
    return f"not a key of {where} ({hint}keys: {', '.join(siblings)})"


def _check_schema(cfg: DictConfig, schema: type, tool: str) -> None:
    try:
        OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except Exception as exc:  # omegaconf's ValidationError / ConfigKeyError
        key = str(getattr(exc, "full_key", None) or "") or "config"
        if type(exc).__name__ == "ConfigKeyError":
            raise ConfigError(key, _unknown_key_reason(key, schema_keys(schema), tool)) from exc
        raise ConfigError(key, str(exc).splitlines()[0]) from exc
    for f in dataclasses.fields(schema):
        if f.default is MISSING and (f.name not in cfg or OmegaConf.is_missing(cfg, f.name)):
            raise ConfigError(f.name, f"is required: pass {f.name}=PATH")


def _check_choice(cfg: DictConfig, key: str, allowed: Sequence[str]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not one of {list(allowed)}")


def _check_ranges(cfg: DictConfig, ranges: Sequence[tuple[str, Callable[[float], bool], str]]) -> None:
    for key, allowed, why in ranges:
        value = OmegaConf.select(cfg, key, default=None)
        if not _is_number(value) or not allowed(value):
            raise ConfigError(key, f"{value!r} is out of range: {why}")


def _is_cuda_index(device: str) -> bool:
    return device.startswith("cuda:") and device[5:].isdigit()


def check_run_folder(run_dir: Path, resume: Any) -> None:
    """Without ``trainer.resume``, refuse a run folder that already holds a run: the new run would overwrite its
    checkpoints and interleave its metrics.jsonl. ``trainer.resume=auto`` continues that run instead."""
    if resume not in (None, "", False):
        return
    found = [name for name in RUN_FOLDER_MARKERS if (run_dir / name).exists()]
    if found:
        raise ConfigError(
            "hydra.run.dir",
            f"{run_dir} already holds a run ({', '.join(found)}); pass trainer.resume=auto to continue it, "
            "or choose a new hydra.run.dir",
        )


def check_monitor_name(monitor: str, match_mm: float, classes: Sequence[str] | None = None) -> None:
    """``trainer.monitor`` must name a metric the epochs log; per-class names are checked once ``classes``
    (the dataset's) are known."""
    radii = sorted({*DETECTION_RADII_MM, float(match_mm)})
    at_radius = [f"val/det_f1@{r:g}mm" for r in radii]
    if monitor in MONITORS or monitor in at_radius:
        return
    for prefix in PER_CLASS_MONITORS:
        if monitor.startswith(prefix) and monitor != prefix:
            if classes is None or monitor[len(prefix) :] in classes:
                return
            raise ConfigError(
                "trainer.monitor",
                f"{monitor!r} names no class of the dataset; classes: {list(classes)}",
            )
    valid = [*MONITORS, *at_radius, *(f"{p}<class>" for p in PER_CLASS_MONITORS)]
    raise ConfigError("trainer.monitor", f"{monitor!r} is not a logged metric; valid: {', '.join(valid)}")


# (key, test, why): numeric keys out of range. Keys in _OPTIONAL may also be null.
_RANGES: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("data.batch_size", lambda v: v >= 1, "must be at least 1"),
    ("data.num_workers", lambda v: v >= 0, "must be 0 (load in the main process) or more"),
    ("data.spacing_mm", lambda v: 0 < v < math.inf, "must be a positive pixel size in mm (or null)"),
    ("data.kpa_scale", lambda v: 0 < v < math.inf, "must be positive"),
    ("data.kpa_clip", lambda v: 0 < v < math.inf, "must be positive"),
    ("data.fg_fraction", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("data.context_slices", lambda v: 0 <= v <= 16, "must be 0 (2-D) to 16 neighbour slices on each side"),
    (
        "data.context_spacing_mm",
        lambda v: 0 < v < math.inf,
        "must be a positive slice spacing in mm (or null)",
    ),
    ("data.samples_per_epoch", lambda v: v >= 1, "must be at least 1 (or null: one pass over the frames)"),
    (
        "data.synthetic.active_stiffness_factor",
        lambda v: 0 < v < math.inf,
        "must be a positive factor (1 = no difference)",
    ),
    (
        "data.synthetic.active_echo_db",
        lambda v: -math.inf < v < math.inf,
        "must be a finite number of dB (0 = no difference)",
    ),
    (
        "calibration.active_band",
        lambda v: 0 <= v < 0.5,
        "must be in [0, 0.5): |p_active - 0.5| below it is 'indeterminate'",
    ),
    ("optim.lr", lambda v: 0 < v < math.inf, "the learning rate must be positive"),
    ("trainer.accumulate_grad_batches", lambda v: v >= 1, "must be at least 1 (1 = no accumulation)"),
    ("trainer.max_epochs", lambda v: v >= 1, "must be at least 1"),
    ("trainer.val_every_n_epochs", lambda v: v >= 1, "must be at least 1"),
    ("trainer.grad_clip_norm", lambda v: 0 < v < math.inf, "must be positive (or null: no clipping)"),
    ("trainer.ema_decay", lambda v: 0 < v < 1, "must be in (0, 1) (or null: no EMA)"),
    ("trainer.early_stopping_patience", lambda v: v >= 1, "must be at least 1 (or null: no early stopping)"),
    ("trainer.max_skipped_steps", lambda v: v >= 0, "must be 0 or more"),
    ("trainer.ddp_timeout_s", lambda v: v > 0, "must be positive"),
    ("cv.folds", lambda v: v >= 2, "k-fold needs at least 2 folds"),
    ("plan.memory_budget_mb", lambda v: 0 < v < math.inf, "must be positive (MB), or null: per device"),
)
_OPTIONAL = {
    "data.spacing_mm", "data.context_spacing_mm", "data.samples_per_epoch", "trainer.grad_clip_norm", "trainer.ema_decay",
    "trainer.early_stopping_patience", "data.batch_size", "data.fg_fraction", "plan.memory_budget_mb",
}  # fmt: skip


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _check_seed(seed: Any) -> None:
    # numpy's legacy seeding takes 0 <= seed < 2**32
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError("seed", f"{seed!r} is not an integer in [0, 2**32)")


def _check_patch_size(patch: list[Any]) -> None:
    if len(patch) != 2 or not all(_is_number(v) and int(v) == v and v >= 1 for v in patch):
        raise ConfigError(
            "data.patch_size", f"{patch} must be two positive integers [height, width] in pixels"
        )


def _check_depth(depth: Any) -> None:
    # model.depth of the U-Net; null = planned. Other models have no depth key.
    if depth is not None and (not _is_number(depth) or int(depth) != depth or not 1 <= depth <= 8):
        raise ConfigError("model.depth", f"{depth!r} must be an integer from 1 to 8 (or null: planned)")


def _check_channels(channels: list[Any]) -> None:
    from tpnet.core.encoding import CHANNEL_NAMES  # numpy + OpenCV: light next to the training imports

    if not channels or channels[0] != "bmode":
        raise ConfigError(
            "data.channels",
            f"{channels} has no B-mode first channel: the network always reads B-mode, so the list must start "
            f"with 'bmode' (then optionally {list(CHANNEL_NAMES[1:])})",
        )
    unknown = [c for c in channels if c not in CHANNEL_NAMES]
    if unknown or len(set(channels)) != len(channels):
        raise ConfigError(
            "data.channels",
            f"{channels}: use each of {list(CHANNEL_NAMES)} at most once (unknown: {unknown})",
        )


def _check_fractions(val: float, test: float) -> None:
    for key, value in (("data.val_fraction", val), ("data.test_fraction", test)):
        if not 0 <= value < 1:
            raise ConfigError(key, f"{value!r} is out of range: a share of the subjects must be in [0, 1)")
    if val + test >= 1:
        raise ConfigError(
            "data.val_fraction", f"{val} + data.test_fraction {test} leave no subject for training"
        )


def _check_device(device: str, key: str = "trainer.device") -> None:
    if device != "cuda" and not _is_cuda_index(device):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(key, f"{device} but no CUDA device is available; use {key}=cpu or auto")


def _check_resume_file(resume: Any) -> None:
    if resume in (None, "", False, "auto"):
        return
    path = Path(str(resume)).expanduser()
    if not path.is_file():
        raise ConfigError(
            "trainer.resume", f"{path}: no such checkpoint file (use auto, or the path of a last.pt)"
        )
