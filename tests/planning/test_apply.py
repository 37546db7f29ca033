"""The plan in tpnet-train's config: the demo recipe keeps its fixed values, null keys are planned, planning off
gives the fixed defaults, and forced-foreground patches of a dataset without trigger points hold its structures."""

from __future__ import annotations

import numpy as np
from hydra import compose, initialize_config_dir
from test_fingerprint import write_dataset

from tpnet.configuration import config_dir, validate_train_config
from tpnet.core.contract import load_manifest, load_spec
from tpnet.core.encoding import Encoding
from tpnet.data.dataset import TrainPatchDataset
from tpnet.planning.apply import apply_plan, config_overrides, fill_unplanned, plan_from_config


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_the_cpu_demo_keeps_its_recipe_and_the_default_leaves_the_planned_keys_null():
    demo = config_overrides(compose_train(["experiment=cpu_demo"]))
    assert {k: v for k, (v, _) in demo.items()} == {
        "spacing_mm": 0.2, "patch_size": [96, 96], "depth": 4, "batch_size": 16, "fg_fraction": 0.33,
        "bmode_norm": "none",
    }  # fmt: skip
    assert {source for _, source in demo.values()} == {"config"}
    default = compose_train([])
    validate_train_config(default)
    assert config_overrides(default) == {}
    assert config_overrides(default, ["data.batch_size"]) == {}  # only values that are set count
    given = config_overrides(compose_train(["data.batch_size=3"]), ["data.batch_size"])
    assert given == {"batch_size": (3, "command line")}


def _band_dataset(tmp_path):
    frames = []
    for i in range(4):
        mask = np.zeros((96, 96), np.uint8)
        mask[70 + i : 74 + i, :] = 1  # a thin aponeurosis near the bottom
        frames.append({"bmode": np.full(mask.shape, 0.5, np.float32), "mask": mask, "subject": f"s{i}"})
    return write_dataset(tmp_path / "apo", ["background", "aponeurosis"], frames)


def test_planning_on_and_off_and_forced_patches_without_trigger_points(tmp_path):
    root = _band_dataset(tmp_path)
    spec, rows = load_spec(root), load_manifest(root)
    splits = {"train": rows[:3], "val": rows[3:], "test": []}
    cfg = compose_train([f"data.root={root}"])
    plan = plan_from_config(cfg, spec, splits, "cpu")
    apply_plan(cfg, plan)
    assert cfg.data.patch_size == plan.value("patch_size") and cfg.model.depth == plan.value("depth")
    assert cfg.data.bmode_norm == "zscore_frame" and plan.values["patch_size"].source == "fingerprint"

    off = compose_train([f"data.root={root}", "plan.enabled=false"])
    unplanned = plan_from_config(off, spec, splits, "cpu")
    assert unplanned.value("patch_size") == [128, 128] and unplanned.value("depth") == 4
    assert unplanned.value("spacing_mm") == 0.1 and unplanned.value("bmode_norm") == "none"
    assert {unplanned.values[k].source for k in ("patch_size", "depth", "spacing_mm")} == {"default"}
    assert fill_unplanned(compose_train([])).model.depth == 4

    patches = TrainPatchDataset(spec, rows, Encoding(), 0.1, (32, 32), seed=0)
    assert all(patches[(i, True)][1].max() == 1 for i in range(4))  # forced: centred on the band
