"""The plan in a training run: which values a person set (config or command line), planning the rest on the
non-test frames, writing plan.json, and putting the planned values into the run's config.

"null = planned": a planned key left null in the config is planned; a value in the config or on the command
line wins and is recorded with that source. A resumed run (``trainer.resume=auto``) reuses its plan.json, so it
continues with exactly the values it started with.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from tpnet.core.atomic import atomic_write_text
from tpnet.core.contract import DatasetSpec, ManifestRow
from tpnet.planning.fingerprint import dataset_fingerprint
from tpnet.planning.plan import CONFIG_KEYS, PLAN_KEYS, Plan, make_plan

PLAN_FILE = "plan.json"
# The training defaults when planning is off (plan.enabled=false) and a key is left null: the recipe tpnet
# trained with before it planned (spacing: the median, as the datamodule chooses it).
UNPLANNED_DEFAULTS: dict[str, Any] = {
    "patch_size": [128, 128],
    "depth": 4,
    "batch_size": 8,
    "fg_fraction": 0.33,
    "bmode_norm": "none",
}


def plan_rows(splits: dict[str, list[ManifestRow]]) -> list[ManifestRow]:
    """The frames a plan is made from: every non-test frame, so each CV fold and the plain split (whose test
    subjects are the same, see tpnet.data.splits) share one plan. Sorted by sample: a fold's train-then-val
    order would change float sums (mean grey levels) in the last digits and make the folds' plan.json differ."""
    return sorted([*splits.get("train", []), *splits.get("val", [])], key=lambda row: row.sample_id)


def command_line_keys() -> set[str]:
    """Dotted keys given on this run's command line (Hydra's task overrides); empty outside a Hydra app."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError, AttributeError):  # HydraConfig not set: composed by a script
        return set()
    return {item.split("=", 1)[0].lstrip("+~") for item in task if "=" in item}


def config_overrides(
    cfg: DictConfig, given_on_command_line: Iterable[str] = ()
) -> dict[str, tuple[Any, str]]:
    """Plan key -> (value, source) for every planned key the config sets (not null); source "command line" when
    the key was given there, else "config". A model without a ``depth`` key gets no depth override."""
    command_line = set(given_on_command_line)
    out: dict[str, tuple[Any, str]] = {}
    for key in PLAN_KEYS:
        dotted = CONFIG_KEYS[key]
        value = OmegaConf.select(cfg, dotted, default=None)
        if value is None:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        out[key] = (value, "command line" if dotted in command_line else "config")
    return out


def model_has_depth(cfg: DictConfig) -> bool:
    return "depth" in cfg.model


def plan_from_config(
    cfg: DictConfig,
    spec: DatasetSpec,
    splits: dict[str, list[ManifestRow]],
    device_type: str,
    total_device_mb: float | None = None,
    size_multiple: int | None = None,
    workers: int = 4,
) -> Plan:
    """The run's plan: the config's values kept, the null ones planned from the non-test frames (or, with
    plan.enabled=false, taken from UNPLANNED_DEFAULTS)."""
    from tpnet.planning.plan import default_memory_budget_mb

    overrides = config_overrides(cfg, command_line_keys())
    has_depth = model_has_depth(cfg)
    if not has_depth:
        overrides.pop("depth", None)
    plan_cfg = cfg.get("plan") or {}
    if not plan_cfg.get("enabled", True):
        for key, value in UNPLANNED_DEFAULTS.items():
            if key not in overrides and (key != "depth" or has_depth):
                overrides[key] = (value, "default")
    fingerprint = dataset_fingerprint(spec, plan_rows(splits), workers=workers)
    if not plan_cfg.get("enabled", True) and "spacing_mm" not in overrides:
        overrides["spacing_mm"] = (fingerprint.summary()["spacing_mm"]["median"], "default")
    budget = plan_cfg.get("memory_budget_mb") or default_memory_budget_mb(device_type, total_device_mb)
    return make_plan(
        fingerprint,
        memory_budget_mb=float(budget),
        device_type=device_type,
        overrides=overrides,
        base_width=int(cfg.model.get("base_width", 16)),
        in_channels=len(cfg.data.channels) + 2 * int(cfg.data.get("context_slices") or 0),
        size_multiple=None if has_depth else (size_multiple or 32),
    )


def apply_plan(cfg: DictConfig, plan: Plan) -> None:
    """Write the plan's values into ``cfg`` (data.* and, for a model with a depth, model.depth)."""
    for key in PLAN_KEYS:
        dotted = CONFIG_KEYS[key]
        if key == "depth" and not model_has_depth(cfg):
            continue
        with open_dict(cfg):
            OmegaConf.update(cfg, dotted, plan.value(key), merge=False)


def write_plan(plan: Plan, run_dir: Path) -> Path:
    path = run_dir / PLAN_FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, plan.to_json())
    return path


def stored_plan(run_dir: Path, resume: Any) -> Plan | None:
    """The plan a resumed run started with (``trainer.resume=auto`` and plan.json in the run folder)."""
    path = run_dir / PLAN_FILE
    if resume == "auto" and path.is_file():
        return Plan.from_json(path.read_text())
    return None


def mlflow_params(plan: Plan) -> dict[str, str]:
    """``plan.<key>`` = value and ``plan.<key>.source``, plus the budget it was planned for."""
    out: dict[str, str] = {}
    for key in PLAN_KEYS:
        out[f"plan.{key}"] = str(plan.value(key))
        out[f"plan.{key}.source"] = plan.values[key].source
    out["plan.budget_mb"] = f"{plan.memory_budget_mb:.0f}"
    return out


def fill_unplanned(cfg: DictConfig) -> DictConfig:
    """Give every planned key still null its fixed default (UNPLANNED_DEFAULTS; spacing stays null: the
    datamodule takes the median). For code that composes tpnet-train's config and builds from it without a
    dataset to plan from (config tests, the benchmark script). Returns ``cfg``, changed in place."""
    for key, value in UNPLANNED_DEFAULTS.items():
        dotted = CONFIG_KEYS[key]
        if key == "depth" and not model_has_depth(cfg):
            continue
        if OmegaConf.select(cfg, dotted, default=None) is None:
            with open_dict(cfg):
                OmegaConf.update(cfg, dotted, value, merge=False)
    return cfg
