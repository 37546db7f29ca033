"""From a dataset's fingerprint to the experiment plan (nnU-Net's rules, for 2-D ultrasound).

Every planned value carries where it came from (``fingerprint``, ``default``, ``config`` or ``command line``) and
why, so a run says which of its settings were chosen for these data and which a person set. The rules:

- spacing_mm: the median pixel size of the frames; coarser only while the small structures (10th percentile of
  the minor extent over every labelled class) stay >= ``MIN_STRUCTURE_PX`` across, only when that gains at least
  ``MIN_COARSENING`` x and at most ``MAX_COARSENING`` x the median (speckle texture is a few pixels wide at the scanner's own pixel size). Never
  finer than the median: finer pixels add no information. Pixels are square (the contract has one pixel size
  per frame), so there is no anisotropy to handle.
- patch_size: the median frame at the target spacing where the memory budget allows it, never smaller than
  ``STRUCTURE_CONTEXT`` x the large structures (90th percentile major extent), a multiple of 2**depth.
- depth: the fewest poolings whose receptive field covers the patch, keeping the bottleneck >= 4 px, at most 6.
- batch_size: the largest that fits the memory budget (an estimate of tpnet's U-Net activations), 2 to 32 and
  no more than the frames.
- fg_fraction: nnU-Net's third of every batch centred on foreground.
- bmode_norm: per-frame z-score over the imaged region (nnU-Net's choice for non-CT images: gain and TGC differ
  between scanners); SWE keeps its physical kPa scale (data.kpa_scale).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tpnet.planning.fingerprint import Fingerprint

PLAN_KEYS: tuple[str, ...] = ("spacing_mm", "patch_size", "depth", "batch_size", "fg_fraction", "bmode_norm")
# Where each planned value lives in tpnet-train's config.
CONFIG_KEYS: dict[str, str] = {
    "spacing_mm": "data.spacing_mm",
    "patch_size": "data.patch_size",
    "depth": "model.depth",
    "batch_size": "data.batch_size",
    "fg_fraction": "data.fg_fraction",
    "bmode_norm": "data.bmode_norm",
}
SOURCES: tuple[str, ...] = ("fingerprint", "default", "config", "command line")

MIN_STRUCTURE_PX = 12.0  # the small structures keep at least this many pixels across
MAX_COARSENING = 2.0  # x the median spacing
MIN_COARSENING = (
    1.2  # a coarser spacing must gain at least this factor, else the median is kept (no gain in speed
)
# worth blurring every frame, and a patch rounded to 2**depth would lose part of the frame)
STRUCTURE_CONTEXT = 6.0  # a patch spans at least this many large structures
MIN_BOTTLENECK_PX = 4
# nnU-Net caps a 2-D network's features at 512: with base width 16 that is 5 poolings. A sixth level would add
# 1024-channel convolutions (~14 M parameters) for a receptive field already wider than most frames.
MAX_DEPTH = 5
MIN_DEPTH = 1
MAX_BATCH = 32
# An epoch (one pass over the frames) must hold this many optimiser steps: memory alone chose batch 32 on 72
# frames, 3 steps an epoch, and F1 0.29 against 0.34 for a plain loop at batch 4 (scripts/generalisation.py).
MIN_STEPS_PER_EPOCH = 16
# On a CPU a bigger batch buys no speed, it costs: batch 32 trained 9 images/s, batch 4 16 images/s (same
# 160 px patches, 2 cores). Batches beyond this only pay where a GPU would otherwise wait.
MAX_BATCH_CPU = 8
MIN_BATCH = 2  # BatchNorm needs more than one sample
DEFAULT_FG_FRACTION = 0.33
DEFAULT_BASE_WIDTH = 16
# Memory budget when none is configured: CPU RAM is shared with the loader workers and the rest of the machine;
# on CUDA the rest goes to cuDNN workspaces, the allocator's fragmentation and full-frame validation.
CPU_BUDGET_MB = 4096.0
CUDA_BUDGET_FRACTION = 0.5
# Saved activations per pixel and channel of a tpnet U-Net level (conv inputs, norm inputs and outputs of both
# convolutions, pooling, upsampling and concatenation): measured with autograd's saved-tensor hooks on
# tpnet.models.unet.UNet, 11-20 (tests/planning/test_plan.py keeps the estimate within range of a measurement).
_SAVED_TENSORS_PER_LEVEL_CHANNEL = 16.0
# Peak training memory over the saved activations: the gradients of the activations during backward.
_BACKWARD_FACTOR = 2.0


@dataclass(frozen=True)
class PlanValue:
    value: Any
    source: str  # one of SOURCES
    why: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"plan value source must be one of {list(SOURCES)}; got {self.source!r}")


@dataclass
class Plan:
    """The planned values (``values[key]`` for key in PLAN_KEYS) and what they were planned from."""

    values: dict[str, PlanValue]
    memory_budget_mb: float
    device_type: str
    estimated_memory_mb: float  # training memory of one batch at the planned patch, batch and depth
    fingerprint: dict[str, Any] = field(default_factory=dict)  # Fingerprint.summary()
    notes: list[str] = field(default_factory=list)

    def value(self, key: str) -> Any:
        return self.values[key].value

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["values"] = {k: asdict(v) for k, v in self.values.items()}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Plan:
        raw = json.loads(text)
        values = {k: PlanValue(**v) for k, v in raw["values"].items()}
        missing = [k for k in PLAN_KEYS if k not in values]
        if missing:
            raise ValueError(f"plan lacks value(s) {missing}")
        return cls(
            values=values,
            memory_budget_mb=float(raw["memory_budget_mb"]),
            device_type=str(raw["device_type"]),
            estimated_memory_mb=float(raw["estimated_memory_mb"]),
            fingerprint=dict(raw.get("fingerprint", {})),
            notes=list(raw.get("notes", [])),
        )

    def describe(self) -> str:
        """A table: one line per planned value (config key, value, source, why), then the notes."""
        fp = self.fingerprint
        head = (
            f"experiment plan for {fp.get('dataset_name', '?')}: {fp.get('n_frames', '?')} labelled frames of "
            f"{fp.get('n_subjects', '?')} subjects (test split left out), {self.device_type} memory budget "
            f"{self.memory_budget_mb:.0f} MB, estimated {self.estimated_memory_mb:.0f} MB per batch"
        )
        rows = [(CONFIG_KEYS[k], _show(self.values[k].value), self.values[k].source, self.values[k].why)
                for k in PLAN_KEYS if k in self.values]  # fmt: skip
        widths = [max(len(r[i]) for r in [("key", "value", "source", ""), *rows]) for i in range(3)]
        lines = [
            head,
            "  ".join(["key".ljust(widths[0]), "value".ljust(widths[1]), "source".ljust(widths[2]), "why"]),
        ]
        lines += [
            "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]), r[3]])
            for r in rows
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def default_memory_budget_mb(device_type: str, total_device_mb: float | None = None) -> float:
    """The budget when ``plan.memory_budget_mb`` is null: CPU_BUDGET_MB, or CUDA_BUDGET_FRACTION of the GPU."""
    if device_type == "cuda" and total_device_mb:
        return float(total_device_mb) * CUDA_BUDGET_FRACTION
    return CPU_BUDGET_MB


def receptive_field_px(depth: int) -> int:
    """Receptive field of tpnet's U-Net (two 3x3 convolutions per level, 2x2 pooling): encoder
    1 + 4 (2**(d+1) - 1) + (2**d - 1), plus the decoder's convolutions 4 (2**d - 1)."""
    return 1 + 4 * (2 ** (depth + 1) - 1) + (2**depth - 1) + 4 * (2**depth - 1)


def unet_training_memory_mb(
    patch: tuple[int, int], batch: int, depth: int, base_width: int = DEFAULT_BASE_WIDTH,
    in_channels: int = 3, num_classes: int = 4,
) -> float:  # fmt: skip
    """Estimated peak memory of one training step of tpnet's U-Net in float32 (activations, their gradients,
    weights with AdamW state). An estimate for planning, not a guarantee."""
    pixels = patch[0] * patch[1]
    per_sample = sum(pixels / 4**level * base_width * 2**level for level in range(depth + 1))
    per_sample *= _SAVED_TENSORS_PER_LEVEL_CHANNEL
    per_sample += pixels * (in_channels + 3 * num_classes)  # input, logits, softmax and loss terms
    activations = 4.0 * per_sample * batch * _BACKWARD_FACTOR
    weights = sum(
        9 * (base_width * 2**level) ** 2 * 4 for level in range(depth + 1)
    )  # ~2 convs/level, both paths
    return (activations + 4.0 * weights * 4) / 2**20  # weights, gradients, two AdamW moments


def make_plan(
    fingerprint: Fingerprint,
    *,
    memory_budget_mb: float | None = None,
    device_type: str = "cpu",
    overrides: Mapping[str, tuple[Any, str]] | None = None,
    base_width: int = DEFAULT_BASE_WIDTH,
    in_channels: int = 3,
    size_multiple: int | None = None,
) -> Plan:
    """The plan for ``fingerprint``. ``overrides``: plan key -> (value, source) for values a person set (source
    "config" or "command line"); they are kept and the other values planned around them. ``size_multiple``:
    for a network without a ``depth`` (a fixed stride), the multiple the patch must have; depth is then not
    planned. ``memory_budget_mb`` None = ``default_memory_budget_mb(device_type)``."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(PLAN_KEYS))
    if unknown:
        raise ValueError(f"unknown plan key(s) {unknown}; plan keys: {list(PLAN_KEYS)}")
    budget = float(memory_budget_mb) if memory_budget_mb else default_memory_budget_mb(device_type)
    summary = fingerprint.summary()
    structures = fingerprint.structures()
    num_classes = len(fingerprint.classes)
    notes: list[str] = []
    values: dict[str, PlanValue] = {}

    def given(key: str) -> PlanValue | None:
        if key in overrides:
            value, source = overrides[key]
            return PlanValue(_plain(value), source, f"set in the {source}")
        return None

    # ---- spacing
    values["spacing_mm"] = given("spacing_mm") or _plan_spacing(summary, structures)
    spacing = float(values["spacing_mm"].value)

    # ---- patch and depth
    frame_px = (summary["frame_mm"]["median_height"] / spacing, summary["frame_mm"]["median_width"] / spacing)
    large_mm = summary["structures"]["all"]["major_mm_p90"]
    min_side = STRUCTURE_CONTEXT * large_mm / spacing if structures else 0.0
    fixed_depth = given("depth")
    fixed_patch = given("patch_size")
    model_has_depth = size_multiple is None

    def depth_of(patch: tuple[float, float]) -> int:
        if fixed_depth is not None:
            return int(fixed_depth.value)
        return _depth_for(patch) if model_has_depth else 0

    def memory(patch: tuple[int, int], batch: int, depth: int) -> float:
        # A network without a depth (ResNet encoders) is estimated as a U-Net of its stride's depth.
        d = depth if model_has_depth else max(1, int(math.log2(size_multiple or 32)))
        return unet_training_memory_mb(patch, batch, d, base_width, in_channels, num_classes)

    if fixed_patch is not None:
        patch = (int(fixed_patch.value[0]), int(fixed_patch.value[1]))
        values["patch_size"] = fixed_patch
        depth = depth_of(patch)
    else:
        patch, depth, why = _plan_patch(frame_px, min_side, large_mm, depth_of, size_multiple, memory, budget)
        values["patch_size"] = PlanValue(list(patch), "fingerprint", why)
    if fixed_depth is not None:
        values["depth"] = fixed_depth
    elif model_has_depth:
        bottleneck = min(patch) // 2**depth
        values["depth"] = PlanValue(
            depth, "fingerprint",
            f"receptive field {receptive_field_px(depth)} px covers the {max(patch)} px patch "
            f"(or the bottleneck reaches {MIN_BOTTLENECK_PX} px: {bottleneck} px), at most {MAX_DEPTH}",
        )  # fmt: skip
    else:
        values["depth"] = PlanValue(None, "default", f"the network has a fixed stride of {size_multiple} px")

    # ---- batch
    device_cap = MAX_BATCH_CPU if device_type == "cpu" else MAX_BATCH
    cap = max(MIN_BATCH, min(device_cap, fingerprint.n_frames // MIN_STEPS_PER_EPOCH))
    values["batch_size"] = given("batch_size") or _plan_batch(patch, depth, cap, memory, budget, device_type)
    batch = int(values["batch_size"].value)
    estimated = memory(patch, batch, depth)
    if estimated > budget:
        notes.append(
            f"estimated {estimated:.0f} MB per batch exceeds the {budget:.0f} MB budget: lower data.batch_size "
            "or data.patch_size, or raise plan.memory_budget_mb"
        )

    # ---- sampling and normalisation
    values["fg_fraction"] = given("fg_fraction") or PlanValue(
        DEFAULT_FG_FRACTION, "default",
        "nnU-Net: a third of every batch is centred on foreground "
        + ("(trigger points)" if _has_trp(fingerprint) else "(any labelled structure: no TrP class)"),
    )  # fmt: skip
    fg = summary["bmode_foreground"]
    stats = summary["bmode_imaged"]
    values["bmode_norm"] = given("bmode_norm") or PlanValue(
        "zscore_frame", "default",
        f"nnU-Net for non-CT images: z-score per frame over the imaged region (frames: median mean "
        f"{stats['median_mean']:.3f}, std {stats['median_std']:.3f}; foreground: mean {_num(fg.get('mean'))}, "
        f"std {_num(fg.get('std'))}); SWE stays in kPa / data.kpa_scale",
    )  # fmt: skip
    if summary["swe_fraction"] == 0:
        notes.append("no frame has SWE: data.channels=[bmode] trains a B-mode-only model")
    return Plan(values, budget, device_type, round(estimated, 1), summary, notes)


# ----------------------------------------------------------------------------------------------- rules
def _plan_spacing(summary: dict[str, Any], structures: list) -> PlanValue:
    median = float(summary["spacing_mm"]["median"])
    if not structures:
        return PlanValue(median, "fingerprint", "median pixel size; no labelled structure to coarsen for")
    small_mm = float(summary["structures"]["all"]["minor_mm_p10"])
    limit = small_mm / MIN_STRUCTURE_PX
    target = _floor_2_significant(min(limit, MAX_COARSENING * median))
    if target < MIN_COARSENING * median:
        return PlanValue(
            median, "fingerprint",
            f"median pixel size; small structures (10th-percentile minor extent {small_mm:.2f} mm) are "
            f"{small_mm / median:.1f} px there; coarsening by {MIN_COARSENING:g}x or more would leave fewer than "
            f"{MIN_STRUCTURE_PX:.0f} px",
        )  # fmt: skip
    bound = (
        "small-structure limit"
        if limit <= MAX_COARSENING * median
        else f"at most {MAX_COARSENING:g}x the median"
    )
    return PlanValue(
        target, "fingerprint",
        f"median {median:.4g} mm coarsened ({bound}): 10th-percentile minor extent {small_mm:.2f} mm -> "
        f"{small_mm / target:.1f} px >= {MIN_STRUCTURE_PX:.0f} px",
    )  # fmt: skip


def _depth_for(patch: tuple[float, float]) -> int:
    """Fewest poolings whose receptive field covers the patch; the bottleneck keeps >= MIN_BOTTLENECK_PX."""
    by_bottleneck = max(MIN_DEPTH, int(math.floor(math.log2(max(min(patch), 1) / MIN_BOTTLENECK_PX))))
    by_field = next(
        (d for d in range(MIN_DEPTH, MAX_DEPTH + 1) if receptive_field_px(d) >= max(patch)), MAX_DEPTH
    )
    return max(MIN_DEPTH, min(by_field, by_bottleneck, MAX_DEPTH))


def _plan_patch(frame_px, min_side, large_mm, depth_of, size_multiple, memory, budget):
    """Shrink from the median frame (keeping its aspect) until a batch of MIN_BATCH fits the budget, but not
    below the structure context; round down to the network's multiple."""
    h0, w0 = frame_px
    scale, shrunk = 1.0, False
    while True:
        h, w = h0 * scale, w0 * scale
        depth = depth_of((h, w))
        multiple = size_multiple or 2**depth
        patch = (max(multiple, int(h // multiple) * multiple), max(multiple, int(w // multiple) * multiple))
        at_floor = max(h, w) * 0.9 < min_side or min(h, w) * 0.9 < 2 * multiple
        if memory(patch, MIN_BATCH, depth) <= budget or at_floor:
            break
        scale *= 0.9
        shrunk = True
    context = (
        f"{STRUCTURE_CONTEXT:g}x the 90th-percentile structure ({large_mm:.1f} mm)"
        if min_side
        else "no structure"
    )
    if shrunk:
        why = (f"median frame {h0:.0f}x{w0:.0f} px shrunk to fit a batch of {MIN_BATCH} in the budget; "
               f"context: {context} = {min_side:.0f} px; multiple of {multiple}")  # fmt: skip
    else:
        why = (f"covers the median frame ({h0:.0f}x{w0:.0f} px at the target spacing), rounded down to a "
               f"multiple of {multiple}; context: {context} = {min_side:.0f} px")  # fmt: skip
    if min_side > max(h0, w0):
        why += "; the frames are smaller than that context"
    return patch, depth, why


def _plan_batch(patch, depth, cap, memory, budget, device_type="cpu") -> PlanValue:
    batch = MIN_BATCH
    while batch < cap and memory(patch, batch + 1, depth) <= budget:
        batch += 1
    if batch < cap:
        limit = "the memory budget"
    elif cap == MAX_BATCH_CPU and device_type == "cpu":
        limit = f"the CPU cap ({MAX_BATCH_CPU}: bigger batches train slower per image on a CPU)"
    elif cap == MAX_BATCH:
        limit = "the cap"
    else:
        limit = f"{MIN_STEPS_PER_EPOCH} optimiser steps per pass over the frames"
    return PlanValue(
        batch, "fingerprint",
        f"largest batch within {limit} (estimated {memory(patch, batch, depth):.0f} MB of {budget:.0f} MB; "
        f"{MIN_BATCH} to {cap})",
    )  # fmt: skip


def _floor_2_significant(x: float) -> float:
    if x <= 0:
        return x
    exponent = math.floor(math.log10(x)) - 1
    return round(math.floor(x / 10**exponent) * 10**exponent, 10)


def _has_trp(fingerprint: Fingerprint) -> bool:
    if fingerprint.trp_classes is not None:  # the dataset's roles
        return bool(set(fingerprint.trp_classes) & set(fingerprint.classes))
    from tpnet.core.contract import trp_class_indices

    return bool(trp_class_indices(fingerprint.classes))


def _plain(value: Any) -> Any:
    """An OmegaConf ListConfig or tuple as a plain list (JSON and comparisons)."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    try:
        return [_plain(v) for v in value]
    except TypeError:
        return value


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
