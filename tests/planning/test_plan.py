"""The plan's rules on crafted fingerprints: spacing coarsens only while small structures keep their pixels,
the patch is a multiple of 2**depth inside the median frame, the batch grows with the budget, values a person
set keep their value and source, and a dataset without trigger points plans too."""

from __future__ import annotations

import json

import pytest
import torch

from tpnet.planning.fingerprint import Fingerprint, FrameFingerprint, Structure
from tpnet.planning.plan import (
    CONFIG_KEYS,
    MAX_BATCH_CPU,
    MAX_COARSENING,
    MAX_DEPTH,
    MIN_BATCH,
    MIN_BOTTLENECK_PX,
    MIN_COARSENING,
    MIN_STEPS_PER_EPOCH,
    MIN_STRUCTURE_PX,
    PLAN_KEYS,
    Plan,
    make_plan,
    receptive_field_px,
    unet_training_memory_mb,
)

TRP_CLASSES = ("background", "active_trp", "latent_trp", "vessel")


def crafted(
    minor_mm: float, major_mm: float, spacing_mm: float = 0.1, shape_px: tuple[int, int] = (256, 256),
    classes: tuple[str, ...] = TRP_CLASSES, n_frames: int = 40,
) -> Fingerprint:  # fmt: skip
    frames = tuple(
        FrameFingerprint(
            sample_id=f"f{i}",
            subject_id=f"s{i // 4}",
            spacing_mm=spacing_mm,
            shape_px=shape_px,
            has_swe=True,
            bmode_mean=0.4,
            bmode_std=0.2,
            bmode_p005=0.0,
            bmode_p995=0.95,
            imaged_fraction=1.0,
            structures=(Structure(classes[1], minor_mm * major_mm, minor_mm, major_mm),),
        )  # fmt: skip
        for i in range(n_frames)
    )
    return Fingerprint("crafted", classes, frames, {"mean": 0.2, "std": 0.1, "p005": 0.0, "p995": 0.6})


@pytest.mark.parametrize("minor_mm", [0.6, 1.3, 1.5, 2.0, 2.6, 10.0])
def test_spacing_coarsens_only_while_small_structures_keep_their_pixels(minor_mm):
    plan = make_plan(crafted(minor_mm, 6.0), device_type="cpu")
    spacing = plan.value("spacing_mm")
    assert plan.values["spacing_mm"].source == "fingerprint"
    assert 0.1 <= spacing <= MAX_COARSENING * 0.1 + 1e-9  # never finer than the median, at most 2x coarser
    if spacing > 0.1:
        assert minor_mm / spacing >= MIN_STRUCTURE_PX  # coarsened, but the structures keep >= 12 px
    if minor_mm / 0.1 < MIN_STRUCTURE_PX * MIN_COARSENING:
        assert spacing == 0.1  # below the limit at the median, or too little to gain: not coarsened
    if minor_mm == 2.0:
        assert spacing == pytest.approx(0.16)  # 2.0 mm / 12 px = 0.167, rounded down
    if minor_mm == 10.0:
        assert spacing == pytest.approx(0.2)  # capped at 2x the median


@pytest.mark.parametrize(
    ("shape_px", "major_mm"), [((256, 256), 6.0), ((70, 90), 1.5), ((400, 300), 20.0), ((40, 48), 3.0)]
)
def test_patch_is_a_multiple_of_2_to_the_depth_inside_the_median_frame(shape_px, major_mm):
    plan = make_plan(crafted(1.0, major_mm, shape_px=shape_px), device_type="cpu")
    patch, depth = plan.value("patch_size"), plan.value("depth")
    assert all(side % 2**depth == 0 and side >= 2**depth for side in patch)
    scale = 0.1 / plan.value("spacing_mm")
    assert patch[0] <= shape_px[0] * scale + 1e-6 and patch[1] <= shape_px[1] * scale + 1e-6
    # The receptive field covers the patch, unless the bottleneck already is at its smallest.
    assert receptive_field_px(depth) >= max(patch) or min(patch) // 2 ** (depth + 1) < MIN_BOTTLENECK_PX
    assert 1 <= depth <= MAX_DEPTH


def test_a_bigger_budget_gives_a_bigger_or_equal_batch_and_the_batch_fits():
    fp = crafted(1.0, 6.0, n_frames=1000)  # enough frames that the steps-per-epoch rule does not bind
    batches = []
    for budget in (64, 256, 1024, 4096, 16384):
        plan = make_plan(fp, memory_budget_mb=budget, device_type="cuda")
        batches.append(plan.value("batch_size"))
        assert plan.memory_budget_mb == budget
        assert plan.estimated_memory_mb <= budget or plan.value("batch_size") == 2
    assert batches == sorted(batches) and batches[0] >= 2 and batches[-1] == 32  # capped
    assert batches[0] < batches[-1]
    # A small budget shrinks the patch rather than the batch below 2.
    small = make_plan(fp, memory_budget_mb=64, device_type="cpu")
    large = make_plan(fp, memory_budget_mb=16384, device_type="cpu")
    assert small.value("patch_size")[0] <= large.value("patch_size")[0]


def test_the_batch_leaves_enough_steps_per_epoch():
    """Memory alone would take the whole small dataset as one batch: a handful of optimiser steps in a run."""
    for n_frames, expected in ((5, MIN_BATCH), (72, 4), (160, 10)):
        plan = make_plan(crafted(1.0, 2.0, shape_px=(64, 64), n_frames=n_frames), memory_budget_mb=16384,
                         device_type="cuda")  # fmt: skip
        assert plan.value("batch_size") == expected, n_frames
        assert n_frames // plan.value("batch_size") >= min(MIN_STEPS_PER_EPOCH, n_frames // MIN_BATCH)


def test_a_cpu_plan_keeps_the_batch_small():
    fp = crafted(1.0, 2.0, shape_px=(64, 64), n_frames=2000)
    assert make_plan(fp, memory_budget_mb=16384, device_type="cpu").value("batch_size") == MAX_BATCH_CPU
    assert make_plan(fp, memory_budget_mb=16384, device_type="cuda").value("batch_size") > MAX_BATCH_CPU


def test_values_a_person_set_keep_their_value_and_source():
    overrides = {
        "spacing_mm": (0.3, "config"),
        "patch_size": ([96, 96], "command line"),
        "batch_size": (3, "command line"),
        "bmode_norm": ("none", "config"),
    }
    plan = make_plan(crafted(1.0, 6.0), device_type="cpu", overrides=overrides)
    for key, (value, source) in overrides.items():
        assert plan.value(key) == value and plan.values[key].source == source
    # The rest is planned around them: depth from the 96 px patch (receptive field 200 px at depth 4 > 96).
    assert plan.values["depth"].source == "fingerprint" and plan.value("depth") == 3
    assert plan.values["fg_fraction"].source == "default" and plan.value("fg_fraction") == 0.33
    # An explicit depth decides the patch's multiple.
    depth_set = make_plan(crafted(1.0, 6.0, shape_px=(200, 200)), overrides={"depth": (2, "config")})
    assert depth_set.value("depth") == 2 and all(s % 4 == 0 for s in depth_set.value("patch_size"))
    with pytest.raises(ValueError, match="unknown plan key"):
        make_plan(crafted(1.0, 6.0), overrides={"lr": (0.1, "config")})


def test_a_dataset_without_trigger_points_plans():
    fp = crafted(0.4, 30.0, spacing_mm=0.08, shape_px=(512, 512), classes=("background", "aponeurosis"))
    plan = make_plan(fp, device_type="cpu")
    assert plan.value("spacing_mm") == 0.08  # thin bands: no coarsening
    assert "no TrP class" in plan.values["fg_fraction"].why
    assert set(plan.values) == set(PLAN_KEYS)


def test_a_network_without_depth_keeps_its_stride():
    plan = make_plan(crafted(1.0, 6.0), size_multiple=32)
    assert plan.value("depth") is None and all(s % 32 == 0 for s in plan.value("patch_size"))


def test_plan_json_round_trip_and_table():
    plan = make_plan(crafted(2.0, 6.0), device_type="cpu")
    again = Plan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict()
    assert json.loads(plan.to_json())["values"]["spacing_mm"] == {
        "value": plan.value("spacing_mm"), "source": "fingerprint", "why": plan.values["spacing_mm"].why,
    }  # fmt: skip
    table = plan.describe()
    for key in PLAN_KEYS:
        assert CONFIG_KEYS[key] in table
    assert "fingerprint" in table and "default" in table


def _saved_bytes_per_sample(side: int, base_width: int, depth: int) -> float:
    from tpnet.models.unet import UNet

    model = UNet(3, 4, base_width=base_width, depth=depth)
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(2, 3, side, side)).logsumexp(1).mean()
    return sum(seen.values()) / 2


@pytest.mark.parametrize(("side", "base_width", "depth"), [(64, 16, 2), (96, 16, 4), (64, 8, 3)])
def test_memory_estimate_follows_the_unets_saved_activations(side, base_width, depth):
    """The estimate (activations x 2 for backward) against autograd's saved tensors of tpnet's U-Net."""
    measured_mb = 2 * _saved_bytes_per_sample(side, base_width, depth) / 2**20
    estimated_mb = unet_training_memory_mb((side, side), 2, depth, base_width) - unet_training_memory_mb(
        (side, side), 1, depth, base_width
    )
    assert 0.7 <= estimated_mb / measured_mb <= 1.5, (estimated_mb, measured_mb)
