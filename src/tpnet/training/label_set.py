"""Degenerate label sets, seen at start: no trigger-point class, masks that are all empty, frames too small to
hold anything, empty splits. On such data detection metrics are undefined (an F1 with nothing to find is NaN,
see tpnet.evaluation.metrics), so the trainer warns, and falls back from a monitor that cannot be computed to one
that can (``choose_monitor``): mean foreground Dice, or the loss where there is no foreground at all."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tpnet.core.contract import ClassRoles, trp_class_indices
from tpnet.data.datamodule import DataSetup
from tpnet.data.dataset import frame_spacing_mm, read_row_mask

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


def summarise_labels(
    data: DataSetup, splits: Sequence[str] = ("train", "val", "test"), workers: int = 4
) -> dict[str, SplitLabels]:
    """Read every mask of ``splits`` once: labels present and frames too small (resampled size)."""
    out: dict[str, SplitLabels] = {}
    for split in splits:
        rows = data.splits[split]

        def one(row):
            mask = read_row_mask(data.spec, row)
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
    summary: dict[str, SplitLabels],
    classes: Sequence[str],
    spacing_mm: float,
    roles: ClassRoles | None = None,
) -> list[str]:
    """One line per degenerate property of the data, for the start of training (``roles``: which classes are
    trigger points; None: the naming rule)."""
    warnings = []
    trp = trp_class_indices(classes, roles)
    train = summary["train"]
    if not trp:
        rule = "its roles name none" if roles is not None else "a name ending in _trp"
        warnings.append(
            f"dataset.yaml classes {list(classes)} include no trigger-point class ({rule}): "
            "nothing to detect, detection metrics (det_f1, ...) are undefined (null in metrics.json)"
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
    for split, name in (("val", "validation"), ("test", "test")):
        labels = summary.get(split)
        if labels is None:
            continue
        if not labels.n_frames:
            consequence = _EMPTY_SPLIT[split]
            warnings.append(f"the {name} split is empty (no labelled frame): {consequence}")
        elif trp and not labels.labels & set(trp):
            warnings.append(
                f"no {name} mask contains a trigger point: detection metrics (det_f1, precision, recall) are "
                f"undefined on the {name} split (null in {'metrics.json' if split == 'test' else 'metrics.jsonl'})"
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


_EMPTY_SPLIT = {
    "val": "no validation metrics, best.pt follows train/loss, post-processing is not calibrated "
    "(raise data.val_fraction, or add subjects)",
    "test": "no test metrics (metrics.json) at the end (raise data.test_fraction, or add subjects)",
}


def choose_monitor(
    monitor: str,
    mode: str,
    summary: dict[str, SplitLabels],
    classes: Sequence[str],
    roles: ClassRoles | None = None,
) -> tuple[str, str, str | None]:
    """(monitor, mode, why it was replaced or None). A monitor the validation masks cannot give a meaning to (TrP
    detection without a true TrP, Dice of an absent class) is undefined every epoch and would never select a
    best.pt: fall back to the mean foreground Dice ``val/dice_mean`` (max), to ``val/loss`` (min) when no
    validation mask holds any foreground, or to ``train/loss`` (min) without validation frames."""
    val = summary["val"]
    trp = set(trp_class_indices(classes, roles))
    why = None
    if monitor.startswith("val/") and val.n_frames == 0:
        why = "the validation split has no frame"
    elif monitor.startswith(_DETECTION_MONITORS):
        if not trp:
            why = "the dataset has no trigger-point class"
        elif not val.labels & trp:
            why = "no validation mask contains a trigger point"
    elif monitor == "val/dice_mean" and not val.labels - {0}:
        why = "every validation mask is empty"
    elif monitor.startswith(("val/dice/", "val/iou/")):
        name = monitor.split("/", 2)[2]
        if name in classes and classes.index(name) not in val.labels:
            why = f"no validation mask contains class {name}"
    if why is None:
        return monitor, mode, None
    if not val.n_frames:
        fallback, fallback_mode, what = "train/loss", "min", "the training loss"
    elif val.labels - {0}:
        fallback, fallback_mode, what = "val/dice_mean", "max", "the mean foreground Dice"
    else:
        fallback, fallback_mode, what = "val/loss", "min", "the validation loss"
    return (
        fallback,
        fallback_mode,
        f"trainer.monitor={monitor} cannot be computed ({why}): monitoring {fallback} ({fallback_mode}), {what}, "
        "to select best.pt",
    )


def has_trigger_points(labels: SplitLabels, classes: Sequence[str], roles: ClassRoles | None = None) -> bool:
    """Whether any mask of the split holds a trigger point (else its detection metrics are undefined)."""
    return bool(labels.labels & set(trp_class_indices(classes, roles)))
