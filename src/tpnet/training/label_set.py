"""Degenerate label sets, seen at start: no trigger-point class, masks that are all empty, frames too small to
hold anything. Such data train to a "perfect" detection F1 of 1.0 (nothing to find, nothing found), so the
trainer warns, and falls back from a monitor that cannot be computed to one that can (``choose_monitor``)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tpnet.core.contract import resolve_path, trp_class_indices
from tpnet.core.io import read_mask
from tpnet.data.datamodule import DataSetup
from tpnet.data.dataset import frame_spacing_mm

# A frame whose shorter side (after resampling to the training spacing) is below this holds no usable
# anatomy: the smallest trigger points are ~2 mm across, the network downsamples 8-16x.
MIN_FRAME_SIDE_PX = 16

# Monitors that count trigger points: meaningless without a TrP in the validation masks.
_DETECTION_MONITORS = ("val/det_", "val/fp_per_frame", "val/loc_err_mm", "val/class_acc", "val/frame_auc")


@dataclass
class SplitLabels:
    """What the masks of one split hold."""

    n_frames: int = 0
    labels: set[int] = field(default_factory=set)  # label values present in at least one mask
    small: list[tuple[str, tuple[int, int]]] = field(default_factory=list)  # (sample_id, resampled H x W)


def summarise_labels(data: DataSetup, splits: Sequence[str] = ("train", "val"), workers: int = 4) -> dict:
    """Read every mask of ``splits`` once: labels present and frames too small (resampled size)."""
    out: dict[str, SplitLabels] = {}
    for split in splits:
        rows = data.splits[split]

        def one(row):
            mask = read_mask(resolve_path(data.spec.root, row.mask))
            scale = frame_spacing_mm(data.spec, row) / data.spacing_mm
            shape = tuple(max(1, round(s * scale)) for s in mask.shape)
            return row.sample_id, set(np.unique(mask).tolist()), shape

        summary = SplitLabels(n_frames=len(rows))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # OpenCV decodes without the GIL
            for sample_id, labels, shape in pool.map(one, rows):
                summary.labels |= labels
                if min(shape) < MIN_FRAME_SIDE_PX:
                    summary.small.append((sample_id, shape))
        out[split] = summary
    return out


def label_set_warnings(
    summary: dict[str, SplitLabels], classes: Sequence[str], spacing_mm: float
) -> list[str]:
    """One line per degenerate property of the data, for the start of training."""
    warnings = []
    trp = trp_class_indices(classes)
    train = summary["train"]
    if not trp:
        warnings.append(
            f"dataset.yaml classes {list(classes)} include no trigger-point class (a name ending in _trp): "
            "nothing to detect, detection metrics (det_f1, ...) are meaningless"
        )
    if not train.labels - {0}:
        warnings.append(
            f"all {train.n_frames} training masks are empty (background only): the model can only learn "
            "background, and a detection F1 of 1.0 then means nothing was there to find"
        )
    elif trp and not train.labels & set(trp):
        warnings.append(
            f"no training mask contains a trigger point ({', '.join(classes[i] for i in trp)}): the model "
            "cannot learn to detect them"
        )
    for split, labels in summary.items():
        if labels.small:
            sample_id, (h, w) = min(labels.small, key=lambda item: min(item[1]))
            warnings.append(
                f"{len(labels.small)} of {labels.n_frames} {split} frames are smaller than {MIN_FRAME_SIDE_PX} px "
                f"on a side at {spacing_mm:.4g} mm/px (smallest: {sample_id}, {h}x{w} px): too small to hold a "
                "trigger point"
            )
    return warnings


def choose_monitor(
    monitor: str, mode: str, summary: dict[str, SplitLabels], classes: Sequence[str]
) -> tuple[str, str, str | None]:
    """(monitor, mode, why it was replaced or None). A monitor the validation masks cannot give a meaning to
    (TrP detection without a TrP, Dice of an absent class) would leave ``best.pt`` at epoch 1 forever (or never
    write it): fall back to ``val/loss`` (min), or ``train/loss`` (min) without validation frames."""
    val = summary["val"]
    why = None
    if monitor.startswith("val/") and val.n_frames == 0:
        why = "the validation split has no frame"
    elif monitor.startswith(_DETECTION_MONITORS):
        if not trp_class_indices(classes):
            why = "the dataset has no trigger-point class"
        elif not val.labels & set(trp_class_indices(classes)):
            why = "no validation mask contains a trigger point"
    elif monitor == "val/dice_mean" and not val.labels - {0}:
        why = "every validation mask is empty"
    elif monitor.startswith(("val/dice/", "val/iou/")):
        name = monitor.split("/", 2)[2]
        if name in classes and classes.index(name) not in val.labels:
            why = f"no validation mask contains class {name}"
    if why is None:
        return monitor, mode, None
    fallback = "val/loss" if val.n_frames else "train/loss"
    return (
        fallback,
        "min",
        f"trainer.monitor={monitor} cannot be computed ({why}): monitoring {fallback} (min)",
    )
