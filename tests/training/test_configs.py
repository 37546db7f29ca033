"""Every option of every config group composes, validates, builds and trains one step, the way ``tpnet-train``
builds it (after lightning-hydra-template's ``tests/test_configs.py``). The options are the yaml files of each
group folder, so a new option is tested without touching this file, and a new group folder fails
``test_every_config_group_is_covered`` until it is listed here.

What it catches: an option whose keys the schema refuses, a ``_target_`` that does not build with the
keys its yaml passes (``scheduler=onecycle`` passed ``warmup_fraction`` to a function that took
``warmup_steps``: a TypeError only after the data set-up), a loss that is not finite on a tiny batch, an
augmentation that breaks a frame, parameters an option leaves without a gradient (DDP would hang on them).

tpnet-eval's and tpnet-export's configs are composed and validated here too. Scheduler options are also
stepped over a whole schedule in tests/training/test_schedulers.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tpnet.configuration import (
    ConfigError,
    EvalSchema,
    ExportSchema,
    config_dir,
    validate_eval_config,
    validate_export_config,
    validate_train_config,
)
from tpnet.core.encoding import Encoding, imaged_region_stats
from tpnet.data.transforms import Frame
from tpnet.models import build_model
from tpnet.planning.apply import fill_unplanned
from tpnet.training.ema import EMA
from tpnet.training.losses import deep_supervision

# The groups tpnet-train composes. hydra/ (launchers) is Hydra's, not the training config's.
GROUPS = ("data", "model", "loss", "optim", "scheduler", "augment", "trainer", "logger", "experiment")
NOT_TRAINING_GROUPS = {"hydra"}
# Options only meaningful under torchrun with several processes (tests/training/test_ddp.py runs them): composed
# and validated here, but not stepped in this single process.
MULTI_PROCESS = {("trainer", "ddp")}
# Values an option leaves required (???): what a user must pass with it.
REQUIRED = {("data", "folder"): ["data.root=/nowhere/dataset"]}

CLASSES = ("background", "active_trp", "latent_trp", "vessel")  # the synthetic dataset's classes
BATCH = 2


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


CASES = [(group, option) for group in GROUPS for option in options(group)]


def compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def validate_here(cfg: DictConfig) -> None:
    """``validate_train_config`` as tpnet-train runs it. An option that asks for CUDA (trainer=gpu) is refused
    by name on a machine without one (the right answer there), and must pass everything else on CPU."""
    if str(cfg.trainer.device) == "cuda" and not torch.cuda.is_available():
        with pytest.raises(ConfigError) as refused:
            validate_train_config(cfg)
        assert refused.value.key == "trainer.device"
        cfg.trainer.device = "cpu"
    validate_train_config(cfg)


def augmented_batch(cfg: DictConfig, encoding: Encoding, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``BATCH`` tiny samples through the configured augmentation, the way tpnet.data.dataset makes a training
    item: a frame cropped with a 25 % margin, augmented with a per-item generator, centre-cropped, encoded."""
    transform = instantiate(cfg.augment)  # None for augment=none (enabled: false)
    margin = int(side * 1.25)
    images, masks, raw = [], [], []
    for index in range(BATCH):
        rng = np.random.default_rng([int(cfg.seed), 0, index])  # (seed, epoch, index) as the dataset seeds it
        mask = np.zeros((margin, margin), np.uint8)
        q = margin // 2
        mask[:q, q:], mask[q:, :q], mask[q:, q:] = 1, 2, 3  # every class present
        mask = np.rot90(mask, index).copy()
        kpa = rng.uniform(5.0, 150.0, (margin, margin)).astype(np.float32)
        kpa[: margin // 4] = np.nan  # no SWE signal near the skin
        frame = Frame(bmode=rng.random((margin, margin), dtype=np.float32), elasto_kpa=kpa, mask=mask)
        if getattr(transform, "on_device", False):  # augment=gpu: the whole batch on the device, below
            raw.append(frame)
            continue
        if transform is not None:
            frame = transform(frame, rng)
        assert frame.bmode.shape == frame.mask.shape == (margin, margin)
        assert set(np.unique(frame.mask)) <= set(range(len(CLASSES)))  # labels stay labels
        assert frame.bmode.min() >= 0.0 and frame.bmode.max() <= 1.0
        o = (margin - side) // 2
        bmode = frame.bmode[o : o + side, o : o + side]
        elasto = None if frame.elasto_kpa is None else frame.elasto_kpa[o : o + side, o : o + side]
        images.append(torch.from_numpy(encoding.encode(bmode, elasto)))
        masks.append(torch.from_numpy(frame.mask[o : o + side, o : o + side].astype(np.int64)))
    if raw:  # as TrainPatchDataset(raw=True) hands the margin crops over, collated
        batch = {
            "bmode": torch.stack([torch.from_numpy(f.bmode).half() for f in raw]),
            "elasto_kpa": torch.stack([torch.from_numpy(f.elasto_kpa).half() for f in raw]),
            "mask": torch.stack([torch.from_numpy(f.mask) for f in raw]),
            "bmode_stats": torch.tensor([imaged_region_stats(f.bmode) for f in raw], dtype=torch.float32),
            "seed": torch.arange(len(raw), dtype=torch.int64) + int(cfg.seed),
        }
        images_t, masks_t = transform(batch, encoding, (side, side))
        assert images_t.shape == (len(raw), encoding.in_channels, side, side) and masks_t.dtype == torch.int64
        assert set(masks_t.unique().tolist()) <= set(range(len(CLASSES)))  # labels stay labels
        return images_t, masks_t
    return torch.stack(images), torch.stack(masks)


def one_training_step(cfg: DictConfig) -> None:
    """Model, loss, optimiser, scheduler (and EMA) built from ``cfg`` as training/train.py builds them; one
    optimiser step and one scheduler step on a tiny augmented batch, on CPU in fp32 (the precision options
    choose fp32 on CPU; trainer.compile is off in every option)."""
    torch.manual_seed(0)
    data = cfg.data
    encoding = Encoding(channels=tuple(data.channels), kpa_scale=data.kpa_scale, kpa_clip=data.kpa_clip)
    # Every option at its configured size: the largest (resnet34_unet, gpu_full's 5-level U-Net) builds and
    # steps in about a second at 32 px, so no width is overridden.
    fill_unplanned(cfg)  # null = planned at the start of training; outside training: the fixed defaults
    model = build_model(cfg.model, encoding.in_channels, len(CLASSES))
    side = max(32, int(model.size_multiple))
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.preserve_format
    model = model.to(memory_format=memory_format)
    loss_fn = deep_supervision(instantiate(cfg.loss), bool(cfg.model.get("deep_supervision", False)))
    optimizer = instantiate(cfg.optim)(params=model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer, total_steps=10)
    ema = EMA(model, float(cfg.trainer.ema_decay)) if cfg.trainer.ema_decay else None
    images, masks = augmented_batch(cfg, encoding, side)
    before = [p.detach().clone() for p in model.parameters()]

    model.train()
    logits = model(images.contiguous(memory_format=memory_format))
    levels = logits if isinstance(logits, list) else [logits]  # deep supervision: one map per decoder level
    assert levels[0].shape == (BATCH, len(CLASSES), side, side)
    loss = loss_fn([x.float() for x in levels] if isinstance(logits, list) else logits.float(), masks)
    assert loss.ndim == 0 and torch.isfinite(loss), loss
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    if cfg.trainer.grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.trainer.grad_clip_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()

    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    unchanged = [n for (n, p), b in zip(model.named_parameters(), before, strict=True) if torch.equal(p, b)]
    assert not unchanged, f"one optimiser step left these weights unchanged: {unchanged[:5]}"
    lr = optimizer.param_groups[0]["lr"]
    assert 0 < lr < math.inf and lr <= float(cfg.optim.lr) * (1 + 1e-6), lr
    if ema is not None:
        ema.update(model)
        first = next(ema.module.parameters())
        assert not torch.equal(first, before[0]) and not torch.equal(first, after[0])  # in between
    logger = cfg.logger
    from tpnet.tracking.mlflow_logger import MlflowTracker

    tracker = MlflowTracker(  # as train.py makes it; start() (the store) is not called here
        logger.tracking_uri, logger.experiment_name, run_name=logger.run_name, enabled=bool(logger.enabled)
    )
    assert tracker.enabled is bool(logger.enabled) and tracker.tracking_uri


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_train_option_composes_validates_builds_and_steps(group, option):
    cfg = compose_train([f"{group}={option}", *REQUIRED.get((group, option), [])])
    validate_here(cfg)
    # Every interpolation resolves (train.py logs and stores the resolved config).
    OmegaConf.to_container(cfg, resolve=True)
    if (group, option) in MULTI_PROCESS:
        return
    one_training_step(cfg)


def test_every_config_group_is_covered():
    found = {p.name for p in Path(config_dir()).iterdir() if p.is_dir()} - NOT_TRAINING_GROUPS
    assert found == set(GROUPS), "a config group folder is missing from (or stale in) GROUPS"
    for group in GROUPS:
        assert options(group), f"no options found in {group}/"
    assert "onecycle" in options("scheduler") and "resnet34_unet" in options("model")


# Keys outside the groups' _target_ arguments that a typo used to slip past (appended with +, then ignored or a
# traceback after the data set-up); tests/training/test_config_errors.py runs the CLI on the older ones.
TRAIN_TYPOS = [
    ("+sead=3", "sead"),
    ("+postprocess.treshold=0.3", "postprocess.treshold"),
    ("postprocess.threshold=0", "postprocess.threshold"),
    ("+evaluation.nboot=50", "evaluation.nboot"),
    ("evaluation.n_boot=0", "evaluation.n_boot"),
    ("calibration.thresholds=[]", "calibration.thresholds"),
    ("calibration.min_areas_mm2=[-1.0]", "calibration.min_areas_mm2"),
    ("+trainer.max_epoch=3", "trainer.max_epoch"),
]


@pytest.mark.parametrize(("override", "key"), TRAIN_TYPOS, ids=[key for _, key in TRAIN_TYPOS])
def test_train_typo_outside_the_groups_is_refused_by_name(override, key):
    cfg = compose_train([override])
    with pytest.raises(ConfigError) as refused:
        validate_train_config(cfg)
    assert refused.value.key == key
    if override.startswith("+"):  # the nearest real key is suggested
        assert "did you mean" in str(refused.value)


# ---- tpnet-eval and tpnet-export --------------------------------------------------------------------------------

TOOLS = {
    "train": ([], validate_train_config, None),
    "eval": (["checkpoint=/nowhere/best.pt"], validate_eval_config, EvalSchema),
    "export": (["checkpoint=/nowhere/best.pt", "output=/nowhere/model.pt"], validate_export_config, ExportSchema),
}  # fmt: skip


def test_every_primary_config_has_a_validator():
    primary = {p.stem for p in Path(config_dir()).glob("*.yaml")}
    assert primary == set(TOOLS), "a new tool config needs a schema check (and a line in TOOLS)"


@pytest.mark.parametrize("name", ["eval", "export"])
def test_tool_config_composes_and_validates(name):
    required, validate, schema = TOOLS[name]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(name, overrides=required)
        bare = compose(name)
    validate(cfg)
    OmegaConf.to_container(cfg, resolve=True)
    # The schema and the yaml name the same keys: no key of the yaml unchecked, no stale key in the schema.
    assert set(cfg) == set(OmegaConf.structured(schema))
    with pytest.raises(ConfigError) as missing:  # the ??? keys are required at start
        validate(bare)
    assert missing.value.key == "checkpoint"
